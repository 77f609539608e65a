"""``Conv``: 1-, 2- or 3-D convolution over channels-last inputs."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from stoax._errors import LayerValueError
from stoax._module import Module
from stoax.nn._checks import require_float
from stoax.nn._init import CONV_LECUN_NORMAL, ZEROS, Initializer, weight_and_bias
from stoax.nn._sizes import positive_int, positive_ints

if TYPE_CHECKING:
    from stoax.nn._conv_transpose import ConvTranspose

__all__ = ["Conv"]


Padding = str | int | Sequence[int | tuple[int, int]]
_SPATIAL = "DHW"  # names of up to three spatial axes in lax's dimension-number strings
_PADDING_MODES = ("SAME", "SAME_LOWER", "VALID")


class Conv(Module):
    """Convolution of a channels-last input ``(..., *spatial, in_channels)``.

    ``kernel_size`` decides the number of spatial dimensions: an int is a 1-D convolution over
    inputs ``(..., length, C)``, a tuple of two ints a 2-D one over ``(..., height, width, C)``
    (a tuple of one or three ints gives 1-D or 3-D). Any number of leading batch axes, including
    none, is accepted. Computed with ``jax.lax.conv_general_dilated`` (a cross-correlation, as in
    every deep-learning library) in the promoted dtype of the input and the weight.

    Args:
        in_channels, out_channels: channel counts, both divisible by ``groups``.
        kernel_size: an int (1-D) or a tuple of ints, one per spatial dimension.
        stride, dilation: an int or one int per spatial dimension (dilation of the kernel).
        padding: ``"SAME"``, ``"SAME_LOWER"``, ``"VALID"``, an int (on both sides of every spatial
            dimension), or per dimension an int or a ``(low, high)`` pair.
        groups: feature groups: ``groups == in_channels`` is a depthwise convolution.
        use_bias: add a bias; ``bias`` is ``None`` otherwise.
        key: key of the initialisation.
        kernel_init, bias_init: initialisers (``jax.nn.initializers``), each drawn from its own
            init key of ``key``.

    Initialisation: ``weight`` of shape ``(*kernel_size, in_channels // groups, out_channels)``
    is by default LeCun-normal (truncated normal, variance ``1 / fan_in`` with
    ``fan_in = prod(kernel_size) * in_channels // groups``), ``bias`` zeros ``(out_channels,)``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> conv = stoax.nn.Conv(3, 8, (3, 3), stride=2, key=jax.random.key(0))
        >>> conv(jnp.ones((4, 32, 32, 3))).shape
        (4, 16, 16, 8)
        >>> stoax.nn.Conv(2, 5, 3, padding="VALID", key=jax.random.key(1))(jnp.ones((10, 2))).shape
        (8, 5)
    """

    weight: jax.Array
    bias: jax.Array | None
    # A container runs a Dropout before this layer as one dropout_then (nn/_fused_dropout.py).
    fuse_preceding_dropout: ClassVar[bool] = True
    stride: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]
    dilation: tuple[int, ...]
    groups: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: Padding = "SAME",
        dilation: int | Sequence[int] = 1,
        use_bias: bool = True,
        groups: int = 1,
        *,
        key: jax.Array,
        dtype: jnp.dtype = jnp.float32,
        kernel_init: Initializer = CONV_LECUN_NORMAL,
        bias_init: Initializer = ZEROS,
    ):
        n = 1 if isinstance(kernel_size, int | np.integer) else _num_spatial(kernel_size)
        kernel = positive_ints(kernel_size, n, "Conv", "kernel_size")
        in_channels = positive_int(in_channels, "Conv", "in_channels")
        out_channels = positive_int(out_channels, "Conv", "out_channels")
        groups = positive_int(groups, "Conv", "groups")
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv: in_channels ({in_channels}) and out_channels ({out_channels}) must both "
                f"be divisible by groups ({groups})."
            )
        self.stride = positive_ints(stride, n, "Conv", "stride")
        self.padding = _padding(padding, n)
        self.dilation = positive_ints(dilation, n, "Conv", "dilation")
        self.groups = groups
        self.weight, self.bias = weight_and_bias(
            key,
            (*kernel, in_channels // groups, out_channels),
            (out_channels,) if use_bias else None,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=dtype,
            layer="Conv",
        )

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[:-2])

    @property
    def in_channels(self) -> int:
        return self.weight.shape[-2] * self.groups

    @property
    def out_channels(self) -> int:
        return self.weight.shape[-1]

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The convolution of ``x``: shape ``(..., *out_spatial, out_channels)``.

        Args:
            x: ``(..., *spatial, in_channels)``, channels last, as many spatial axes as
                ``kernel_size`` has entries.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        return channels_last(
            self,
            x,
            lambda h, w, dims: jax.lax.conv_general_dilated(
                h,
                w,
                window_strides=self.stride,
                padding=self.padding,
                rhs_dilation=self.dilation,
                dimension_numbers=dims,
                feature_group_count=self.groups,
            ),
            f" ({self.out_channels} output channels, kernel {self.kernel_size})",
        )


def _num_spatial(kernel_size: object, layer: str = "Conv", name: str = "kernel_size") -> int:
    if isinstance(kernel_size, Sequence) and 1 <= len(kernel_size) <= len(_SPATIAL):
        return len(kernel_size)
    raise ValueError(
        f"{layer}: {name} must be an int (1-D) or a tuple of 1 to {len(_SPATIAL)} ints (one per "
        f"spatial dimension), got {kernel_size!r}."
    )


def _padding(padding: Padding, n: int, layer: str = "Conv") -> str | tuple[tuple[int, int], ...]:
    if isinstance(padding, str):
        if padding.upper() not in _PADDING_MODES:
            raise ValueError(f"{layer}: padding must be one of {_PADDING_MODES}, got {padding!r}.")
        return padding.upper()
    if isinstance(padding, int | np.integer) and not isinstance(padding, bool):
        padding = (padding,) * n
    pairs = []
    if isinstance(padding, Sequence) and len(padding) == n:
        for p in padding:
            if isinstance(p, int | np.integer) and not isinstance(p, bool):
                pairs.append((int(p), int(p)))
            elif (
                isinstance(p, Sequence)
                and len(p) == 2
                and all(isinstance(q, int | np.integer) and not isinstance(q, bool) for q in p)
            ):
                pairs.append((int(p[0]), int(p[1])))
    if len(pairs) != n:
        raise ValueError(
            f"{layer}: padding must be 'SAME', 'SAME_LOWER', 'VALID', an int, or {n} entries (one "
            f"per spatial dimension) each an int or a (low, high) pair; got {padding!r}."
        )
    return tuple(pairs)


def channels_last(
    layer: Conv | ConvTranspose,
    x: jax.Array,
    conv: Callable[[jax.Array, jax.Array, tuple[str, str, str]], jax.Array],
    detail: str = "",
) -> jax.Array:
    """``conv(h, weight, dimension_numbers)`` of a (transposed) convolution ``layer`` on a
    channels-last ``x``, whatever its leading batch axes: checks ``x``, folds the batch axes into
    one, computes in the promoted dtype, adds the bias and unfolds. ``detail`` goes into the
    error message after the expected channel count."""
    require_float(x, layer)
    n = len(layer.stride)
    if x.ndim < n + 1 or x.shape[-1] != layer.in_channels:
        layout = ", ".join(("length",) if n == 1 else _SPATIAL[-n:]) + ", C"
        raise LayerValueError(
            layer,
            f": expected a channels-last input (..., {layout}) with C = {layer.in_channels}"
            f"{detail}, got shape {tuple(x.shape)}.",
        )
    batch = x.shape[: x.ndim - n - 1]
    h = x.reshape((math.prod(batch), *x.shape[x.ndim - n - 1 :]))
    dtype = jnp.promote_types(x.dtype, layer.weight.dtype)
    spatial = _SPATIAL[-n:]
    dims = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    y = conv(h.astype(dtype), layer.weight.astype(dtype), dims)
    if layer.bias is not None:
        y = y + layer.bias.astype(dtype)
    return y.reshape((*batch, *y.shape[1:]))
