"""The dropout primitive: masks from raw random bits compared with an integer threshold.

A mask element is kept when a uniform ``uint32`` draw is at least ``round(rate * 2**32)``, so the
drop probability is exact to ``2**-32`` (no float conversion, no float rounding at 0 or 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["dropout", "keep_mask"]

_SCALE = 2**32


def _mask_shape(shape: tuple[int, ...], broadcast_dims: Sequence[int]) -> tuple[int, ...]:
    ndim = len(shape)
    dims = {d % ndim for d in broadcast_dims} if ndim else set()
    return tuple(1 if i in dims else n for i, n in enumerate(shape))


def keep_mask(
    key: jax.Array, shape: Sequence[int], rate: float | jax.Array
) -> jax.Array:
    """A boolean mask of ``shape``: each element True (kept) with probability ``1 - rate``.

    Example:
        >>> import jax, stoax
        >>> stoax.random.keep_mask(jax.random.key(0), (4,), 0.0).tolist()
        [True, True, True, True]
    """
    shape = tuple(shape)
    bits = jax.random.bits(key, shape, dtype=jnp.uint32)
    if isinstance(rate, int | float):
        threshold = round(rate * _SCALE)
        if threshold >= _SCALE:
            return jnp.zeros(shape, jnp.bool_)
        return bits >= jnp.uint32(threshold)
    rate = jnp.asarray(rate, jnp.float32)
    # float32 cannot hold 2**32 - 1; clip below it and treat rate >= 1 apart.
    threshold = jnp.clip(rate * np.float32(_SCALE), 0, np.float32(_SCALE - 256)).astype(jnp.uint32)
    return (bits >= threshold) & (rate < 1)


def dropout(
    x: jax.Array,
    rate: float | jax.Array,
    key: jax.Array,
    *,
    broadcast_dims: Sequence[int] = (),
) -> jax.Array:
    """Zero each element of ``x`` with probability ``rate`` and scale the rest by ``1/(1-rate)``.

    ``broadcast_dims`` share one mask value along those axes (linen's ``broadcast_dims``). The
    dtype of ``x`` is kept; ``rate == 1`` gives zeros (no NaN).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> y = stoax.random.dropout(jnp.ones(8), 0.5, jax.random.key(0))
        >>> sorted(set(y.tolist()))
        [0.0, 2.0]
    """
    mask = keep_mask(key, _mask_shape(x.shape, broadcast_dims), rate)
    if isinstance(rate, int | float):
        scale = 0.0 if rate >= 1 else 1.0 / (1.0 - rate)
    else:
        rate = jnp.asarray(rate, jnp.float32)
        scale = jnp.where(rate < 1, 1.0 / jnp.maximum(1.0 - rate, np.finfo(np.float32).tiny), 0.0)
    scaled = x * jnp.asarray(scale, x.dtype)
    return jnp.where(mask, scaled, jnp.zeros((), x.dtype))
