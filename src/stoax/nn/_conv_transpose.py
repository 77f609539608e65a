"""``ConvTranspose``: the transposed ("fractionally strided") convolution, for upsampling."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stoax._module import Module
from stoax.nn._conv import Padding, _num_spatial, _padding, channels_last
from stoax.nn._init import CONV_LECUN_NORMAL, ZEROS, Initializer, weight_and_bias
from stoax.nn._sizes import positive_int, positive_ints

__all__ = ["ConvTranspose"]


class ConvTranspose(Module):
    """Transposed convolution of a channels-last input ``(..., *spatial, in_channels)``.

    Computed with ``jax.lax.conv_transpose`` as Flax's ``ConvTranspose`` (with
    ``transpose_kernel=False``): the input is dilated by ``stride`` and convolved with
    ``weight``, so ``padding="SAME"`` multiplies each spatial size by the stride and
    ``"VALID"`` gives ``(n - 1) * stride + kernel`` (dilated kernel). Explicit ``(low, high)``
    pairs pad the dilated input, as in ``lax.conv_transpose``. ``kernel_size`` decides the
    number of spatial axes as in :class:`~stoax.nn.Conv`; any number of leading batch axes.

    Args:
        in_channels, out_channels: channel counts.
        kernel_size: an int (1-D) or one int per spatial axis.
        stride, dilation: an int or one int per spatial axis (``dilation`` dilates the kernel).
        padding: ``"SAME"`` (default), ``"VALID"``, an int or ``(low, high)`` pairs.
        use_bias: add a bias (zeros).
        key: key of the initialisation: ``weight`` of shape
            ``(*kernel_size, in_channels, out_channels)`` LeCun-normal (as Flax), ``bias`` zeros.
        kernel_init, bias_init: other initialisers (``jax.nn.initializers``), each drawn from
            its own init key of ``key``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> up = stoax.nn.ConvTranspose(8, 3, (2, 2), stride=2, key=jax.random.key(0))
        >>> up(jnp.ones((4, 16, 16, 8))).shape
        (4, 32, 32, 3)
    """

    weight: jax.Array
    bias: jax.Array | None
    stride: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Padding = "SAME",
        dilation: int | Sequence[int] = 1,
        use_bias: bool = True,
        *,
        key: jax.Array,
        dtype: jnp.dtype = jnp.float32,
        kernel_init: Initializer = CONV_LECUN_NORMAL,
        bias_init: Initializer = ZEROS,
    ):
        name = "ConvTranspose"
        n = 1 if isinstance(kernel_size, int | np.integer) else _num_spatial(kernel_size, name)
        kernel = positive_ints(kernel_size, n, name, "kernel_size")
        in_channels = positive_int(in_channels, name, "in_channels")
        out_channels = positive_int(out_channels, name, "out_channels")
        self.stride = positive_ints(stride, n, name, "stride")
        self.padding = _padding(padding, n, name)
        if self.padding == "SAME_LOWER":
            raise ValueError(f"{name}: padding must be 'SAME', 'VALID', an int or pairs.")
        self.dilation = positive_ints(dilation, n, name, "dilation")
        self.weight, self.bias = weight_and_bias(
            key,
            (*kernel, in_channels, out_channels),
            (out_channels,) if use_bias else None,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=dtype,
            layer=name,
        )

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[:-2])

    @property
    def in_channels(self) -> int:
        return self.weight.shape[-2]

    @property
    def out_channels(self) -> int:
        return self.weight.shape[-1]

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The transposed convolution of ``x``: shape ``(..., *out_spatial, out_channels)``.

        Args:
            x: ``(..., *spatial, in_channels)``, channels last, as many spatial axes as
                ``kernel_size`` has entries.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        return channels_last(
            self,
            x,
            lambda h, w, dims: jax.lax.conv_transpose(
                h,
                w,
                strides=self.stride,
                padding=self.padding,
                rhs_dilation=self.dilation,
                dimension_numbers=dims,
            ),
        )
