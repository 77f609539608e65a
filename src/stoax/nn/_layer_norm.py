"""``LayerNorm``: normalise the last axis to zero mean and unit variance, then scale and shift."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stoax._errors import LayerValueError
from stoax._module import Module
from stoax.nn._checks import require_float
from stoax.nn._sizes import positive_int

__all__ = ["LayerNorm"]


def check_features(x: jax.Array, layer: Module, features: int) -> None:
    """The input's last axis must have size ``features``."""
    if x.ndim < 1 or x.shape[-1] != features:
        raise LayerValueError(
            layer,
            f": normalises the last axis, which must have size features = {features}; got input "
            f"shape {tuple(x.shape)}.",
        )


def stats_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float32, or wider when the input is wider: bf16/f16 statistics are computed in float32."""
    return jnp.promote_types(dtype, jnp.float32)


class LayerNorm(Module):
    """``(x - mean) / sqrt(var + eps) * scale + bias`` over the last axis of ``x``.

    Mean and variance are computed in float32 (or float64 for float64 inputs) and the result is
    returned in the input's dtype, so bf16 and f16 inputs are safe. Initialisation: ``scale``
    ones, ``bias`` zeros, both of shape ``(features,)``; ``use_scale=False`` /
    ``use_bias=False`` leave them out (``None``).

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> norm = stoax.nn.LayerNorm(3)
        >>> [round(v, 3) for v in norm(jnp.array([1.0, 2.0, 3.0])).tolist()]
        [-1.225, 0.0, 1.225]
        >>> norm(jnp.ones((2, 3), jnp.bfloat16)).dtype
        dtype(bfloat16)
    """

    features: int
    eps: float
    scale: jax.Array | None
    bias: jax.Array | None

    def __init__(
        self,
        features: int,
        eps: float = 1e-6,
        use_scale: bool = True,
        use_bias: bool = True,
        *,
        dtype: jnp.dtype = jnp.float32,
        key: jax.Array | None = None,  # accepted for uniformity: the initialisation is fixed
    ):
        self.features = positive_int(features, "LayerNorm", "features")
        self.eps = float(eps)
        self.scale = jnp.ones((self.features,), dtype) if use_scale else None
        self.bias = jnp.zeros((self.features,), dtype) if use_bias else None

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``x`` normalised over its last axis, same shape.

        Args:
            x: ``(..., features)``.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        require_float(x, self)
        check_features(x, self, self.features)
        h = x.astype(stats_dtype(x.dtype))
        mean = jnp.mean(h, axis=-1, keepdims=True)
        centred = h - mean
        var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
        y = centred * jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            y = y * self.scale.astype(y.dtype)
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return y.astype(x.dtype)
