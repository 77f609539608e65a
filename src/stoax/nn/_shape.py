"""Layers that only route their input: ``Identity`` and ``Flatten``."""

from __future__ import annotations

import math

import jax

from stoax._errors import LayerValueError
from stoax._module import Module

__all__ = ["Flatten", "Identity"]


class Identity(Module):
    """Returns its input: a placeholder where a layer is optional (a shortcut without a
    projection, a layer switched off).

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> stoax.nn.Identity()(jnp.ones(2)).tolist()
        [1.0, 1.0]
    """

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``x`` itself.

        Args:
            x: anything.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        return x


class Flatten(Module):
    """Merge the axes ``start_dim .. end_dim`` (inclusive) into one, as PyTorch's ``Flatten``.

    The defaults keep the first (batch) axis and flatten the rest. A negative ``start_dim``
    counts from the end, which works for any number of leading batch axes: ``Flatten(-3)`` turns
    ``(..., H, W, C)`` into ``(..., H * W * C)``.

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> stoax.nn.Flatten()(jnp.ones((2, 3, 4, 5))).shape
        (2, 60)
        >>> stoax.nn.Flatten(-3)(jnp.ones((7, 2, 3, 4, 5))).shape
        (7, 2, 60)
    """

    start_dim: int = 1
    end_dim: int = -1

    def __post_init__(self) -> None:
        for name in ("start_dim", "end_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Flatten: {name} must be an int, got {value!r}.")

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``x`` with the axes ``start_dim .. end_dim`` merged into one.

        Args:
            x: an array with the axes ``start_dim`` and ``end_dim``.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        start, end = self.start_dim, self.end_dim
        if not (-x.ndim <= start < x.ndim and -x.ndim <= end < x.ndim) or (
            start % x.ndim > end % x.ndim
        ):
            raise LayerValueError(
                self,
                f": axes {start} .. {end} do not form a range of an input of shape "
                f"{tuple(x.shape)}.",
            )
        start, end = start % x.ndim, end % x.ndim
        merged = math.prod(x.shape[start : end + 1])
        return x.reshape((*x.shape[:start], merged, *x.shape[end + 1 :]))
