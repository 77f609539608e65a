"""``Linear``: an affine map ``x @ weight + bias``."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stoax._errors import LayerValueError
from stoax._module import Module

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
        if x.shape[-1] != self.weight.shape[-2]:
            raise LayerValueError(
                self,
                f": input's last axis has size {x.shape[-1]}, expected in_features = "
                f"{self.weight.shape[-2]} (input shape {x.shape}).",
            )
        y = x @ self.weight
        return y if self.bias is None else y + self.bias
