"""Pooling over the spatial axes of channels-last inputs: ``MaxPool``, ``AvgPool``,
``GlobalAvgPool``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stoax._errors import LayerValueError
from stoax._module import Module
from stoax.nn._checks import require_float
from stoax.nn._conv import _SPATIAL, Padding, _num_spatial, _padding
from stoax.nn._sizes import positive_int, positive_ints

__all__ = ["AvgPool", "GlobalAvgPool", "MaxPool"]


class _Pool(Module):
    window: tuple[int, ...]
    stride: tuple[int, ...]
    padding: str | tuple[tuple[int, int], ...]

    def _setup(
        self, window: int | Sequence[int], stride: int | Sequence[int] | None, padding: Padding
    ) -> None:
        name = type(self).__name__
        n = 1 if isinstance(window, int | np.integer) else _num_spatial(window, name, "window")
        self.window = positive_ints(window, n, name, "window")
        self.stride = self.window if stride is None else positive_ints(stride, n, name, "stride")
        self.padding = _padding(padding, n, name)

    def _reduce(self, x: jax.Array, init: float, op: Callable[..., jax.Array]) -> jax.Array:
        require_float(x, self)
        n = len(self.window)
        if x.ndim < n + 1:
            layout = ", ".join(("length",) if n == 1 else _SPATIAL[-n:]) + ", C"
            raise LayerValueError(
                self,
                f": expected a channels-last input (..., {layout}) with {n} spatial axes, got "
                f"shape {tuple(x.shape)}.",
            )
        lead = x.ndim - n - 1
        dims = (1,) * lead + self.window + (1,)
        strides = (1,) * lead + self.stride + (1,)
        padding = (
            self.padding
            if isinstance(self.padding, str)
            else ((0, 0),) * lead + self.padding + ((0, 0),)
        )
        # A NumPy scalar init lets lax see the monoid (max, add) and differentiate the window op.
        return jax.lax.reduce_window(x, np.dtype(x.dtype).type(init), op, dims, strides, padding)


class MaxPool(_Pool):
    """The maximum over each window of the spatial axes of ``(..., *spatial, C)``.

    ``window`` decides the number of spatial axes, as ``kernel_size`` does for
    :class:`~stoax.nn.Conv`: an int pools a 1-D input ``(..., length, C)``, a tuple of two ints a
    2-D one ``(..., H, W, C)``. Any number of leading batch axes is accepted.

    Args:
        window: window size, an int (1-D) or one int per spatial axis.
        stride: step between windows; ``None`` (default) is the window itself -- non-overlapping
            windows, as PyTorch and Keras default to. (Flax's ``max_pool`` and Equinox default
            to a stride of 1: pass ``stride=1`` for that.)
        padding: ``"VALID"`` (default), ``"SAME"``, an int, or a ``(low, high)`` pair per
            spatial axis; padded positions never win (they are ``-inf``).

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
        >>> stoax.nn.MaxPool((2, 2))(x)[0, :, :, 0].tolist()
        [[5.0, 7.0], [13.0, 15.0]]
    """

    def __init__(
        self,
        window: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: Padding = "VALID",
    ):
        self._setup(window, stride, padding)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The maximum over each window: shape ``(..., *out_spatial, C)``.

        Args:
            x: ``(..., *spatial, C)``, channels last, as many spatial axes as ``window`` has
                entries.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        return self._reduce(x, -jnp.inf, jax.lax.max)


class AvgPool(_Pool):
    """The mean over each window of the spatial axes of ``(..., *spatial, C)``.

    Arguments as :class:`MaxPool`; padded positions are zeros. ``count_include_pad=True``
    (default, as Flax and PyTorch) divides every window by its full size, ``False`` by the number
    of input positions it covers.

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> x = jnp.arange(8.0).reshape(8, 1)
        >>> stoax.nn.AvgPool(2)(x)[:, 0].tolist()
        [0.5, 2.5, 4.5, 6.5]
        >>> pool = stoax.nn.AvgPool(3, stride=1, padding="SAME", count_include_pad=False)
        >>> pool(x)[:2, 0].tolist()
        [0.5, 1.0]
    """

    count_include_pad: bool

    def __init__(
        self,
        window: int | Sequence[int],
        stride: int | Sequence[int] | None = None,
        padding: Padding = "VALID",
        count_include_pad: bool = True,
    ):
        self._setup(window, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The mean over each window: shape ``(..., *out_spatial, C)``.

        Args:
            x: ``(..., *spatial, C)``, channels last, as many spatial axes as ``window`` has
                entries.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        total = self._reduce(x, 0.0, jax.lax.add)
        if self.count_include_pad or self.padding == "VALID":
            return total / jnp.asarray(math.prod(self.window), x.dtype)
        n = len(self.window)
        ones = jnp.ones(x.shape[x.ndim - n - 1 :], x.dtype)
        return total / self._reduce(ones, 0.0, jax.lax.add)


class GlobalAvgPool(Module):
    """The mean over all spatial axes: ``(..., *spatial, C) -> (..., C)``.

    Args:
        spatial_dims: how many axes before the channel axis are spatial (2 for images).
        keepdims: keep the spatial axes with size 1.

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> stoax.nn.GlobalAvgPool()(jnp.ones((5, 4, 4, 3))).shape
        (5, 3)
    """

    spatial_dims: int = 2
    keepdims: bool = False

    def __post_init__(self) -> None:
        self.spatial_dims = positive_int(self.spatial_dims, "GlobalAvgPool", "spatial_dims")
        self.keepdims = bool(self.keepdims)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The mean over the ``spatial_dims`` axes before the channels: ``(..., C)`` (``keepdims``:
        those axes kept with size 1).

        Args:
            x: ``(..., *spatial, C)`` with ``spatial_dims`` spatial axes.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        require_float(x, self)
        n = self.spatial_dims
        if x.ndim < n + 1:
            raise LayerValueError(
                self,
                f": expected (..., {n} spatial axes, C), got shape {tuple(x.shape)}.",
            )
        return jnp.mean(x, axis=tuple(range(-n - 1, -1)), keepdims=self.keepdims)
