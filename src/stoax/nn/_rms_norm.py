"""``RMSNorm``: divide the last axis by its root mean square, then scale."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stoax._module import Module
from stoax.nn._checks import require_float
from stoax.nn._layer_norm import check_features, stats_dtype
from stoax.nn._sizes import positive_int

__all__ = ["RMSNorm"]


class RMSNorm(Module):
    """``x / sqrt(mean(x**2) + eps) * scale`` over the last axis of ``x`` (no centring, no bias).

    The mean square is computed in float32 (or float64 for float64 inputs) and the result is
    returned in the input's dtype, so bf16 and f16 inputs are safe. Initialisation: ``scale``
    ones, shape ``(features,)``.

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> norm = stoax.nn.RMSNorm(2)
        >>> [round(v, 3) for v in norm(jnp.array([3.0, 4.0])).tolist()]
        [0.849, 1.131]
    """

    features: int
    eps: float
    scale: jax.Array

    def __init__(
        self,
        features: int,
        eps: float = 1e-6,
        *,
        dtype: jnp.dtype = jnp.float32,
        key: jax.Array | None = None,  # accepted for uniformity: the initialisation is fixed
    ):
        self.features = positive_int(features, "RMSNorm", "features")
        self.eps = float(eps)
        self.scale = jnp.ones((self.features,), dtype)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``x`` divided by the root mean square of its last axis, then scaled; same shape.

        Args:
            x: ``(..., features)``.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        require_float(x, self)
        check_features(x, self, self.features)
        h = x.astype(stats_dtype(x.dtype))
        mean_square = jnp.mean(jnp.square(h), axis=-1, keepdims=True)
        y = h * jax.lax.rsqrt(mean_square + self.eps) * self.scale.astype(h.dtype)
        return y.astype(x.dtype)
