"""``Linear``: an affine map ``x @ weight + bias``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stoax import keys
from stoax._errors import LayerTypeError, LayerValueError
from stoax._module import Module
from stoax.nn._sizes import positive_int

__all__ = ["Linear"]


class Linear(Module):
    """``y = x @ weight + bias`` over the last axis of ``x``.

    Initialisation follows Flax: weight LeCun-normal (truncated normal, variance ``1/in``),
    bias zero. ``weight`` has shape ``(in_features, out_features)``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> layer = stoax.nn.Linear(3, 2, key=jax.random.key(0))
        >>> layer(jnp.ones((5, 3))).shape
        (5, 2)
    """

    weight: jax.Array
    bias: jax.Array | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        key: jax.Array,
        dtype: jnp.dtype = jnp.float32,
    ):
        in_features = positive_int(in_features, "Linear", "in_features")
        out_features = positive_int(out_features, "Linear", "out_features")
        key = keys.as_key(key, "Linear(key=...)")
        init = jax.nn.initializers.lecun_normal()
        self.weight = init(key, (in_features, out_features), dtype)
        self.bias = jnp.zeros((out_features,), dtype) if use_bias else None

    @property
    def in_features(self) -> int:
        return self.weight.shape[-2]

    @property
    def out_features(self) -> int:
        return self.weight.shape[-1]

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise LayerTypeError(
                self,
                f": input must be an array of shape (..., in_features = {self.in_features}), got "
                f"a {type(x).__name__}. Convert it with jnp.asarray(x, jnp.float32).",
            )
        if x.ndim < 1:
            raise LayerValueError(
                self,
                f": input must have shape (..., in_features = {self.weight.shape[-2]}), got a "
                "scalar. For one feature, pass x[None] (in_features = 1).",
            )
        if x.shape[-1] != self.weight.shape[-2]:
            raise LayerValueError(
                self,
                f": input's last axis has size {x.shape[-1]}, expected in_features = "
                f"{self.weight.shape[-2]} (input shape {x.shape}).",
            )
        y = x @ self.weight
        return y if self.bias is None else y + self.bias
