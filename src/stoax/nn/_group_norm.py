"""``GroupNorm`` and ``InstanceNorm``: per-example normalisation over groups of channels."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stoax._errors import LayerValueError
from stoax._module import Module
from stoax.nn._checks import require_float
from stoax.nn._layer_norm import stats_dtype
from stoax.nn._sizes import positive_int

__all__ = ["GroupNorm", "InstanceNorm"]


class GroupNorm(Module):
    """Group normalisation (Wu & He, 2018) of a channels-last input ``(N, ..., C)``.

    The ``C = features`` channels are split into ``num_groups`` groups of consecutive channels;
    each example is normalised with the mean and variance over its spatial axes and the
    channels of a group, then scaled and shifted per channel. As in Flax, the first axis is the
    batch and every other axis is reduced (``jax.vmap`` the layer for other layouts). No batch
    statistics, so training and evaluation compute the same thing. ``num_groups=1`` is a
    LayerNorm over all non-batch axes; ``num_groups=features`` is :class:`InstanceNorm`.
    Statistics in float32 (wider for float64); the output has the input's dtype.

    Args:
        num_groups: number of groups; must divide ``features``.
        features: number of channels (last axis).
        eps: added to the variance (Flax's default, 1e-6).
        use_scale, use_bias: learn a per-channel ``scale`` (ones) / ``bias`` (zeros).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> norm = stoax.nn.GroupNorm(2, 4)
        >>> y = norm(jax.random.normal(jax.random.key(0), (3, 5, 5, 4)))
        >>> bool(jnp.allclose(y[..., :2].mean(axis=(1, 2, 3)), 0.0, atol=1e-5))
        True
    """

    num_groups: int
    features: int
    eps: float
    scale: jax.Array | None
    bias: jax.Array | None

    def __init__(
        self,
        num_groups: int,
        features: int,
        eps: float = 1e-6,
        use_scale: bool = True,
        use_bias: bool = True,
        *,
        key: jax.Array | None = None,  # accepted for uniformity: the initialisation is fixed
        dtype: jnp.dtype = jnp.float32,
    ):
        name = type(self).__name__
        features = positive_int(features, name, "features")
        num_groups = positive_int(num_groups, name, "num_groups")
        if features % num_groups:
            raise ValueError(
                f"{name}: num_groups ({num_groups}) must divide features ({features})."
            )
        if not float(eps) > 0.0:
            raise ValueError(f"{name}: eps must be > 0, got {eps}.")
        self.num_groups = num_groups
        self.features = features
        self.eps = float(eps)
        self.scale = jnp.ones((features,), dtype) if use_scale else None
        self.bias = jnp.zeros((features,), dtype) if use_bias else None

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The normalised ``x``, same shape.

        Args:
            x: ``(N, ..., features)``, channels last; the first axis is the batch.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        require_float(x, self)
        c = self.features
        if x.ndim < 2 or x.shape[-1] != c:
            raise LayerValueError(
                self,
                f": expected an input (N, ..., C) with a batch axis first and C = {c} channels "
                f"last, got shape {tuple(x.shape)}.",
            )
        h = x.astype(stats_dtype(x.dtype))
        grouped = h.reshape((*x.shape[:-1], self.num_groups, c // self.num_groups))
        reduce = (*range(1, x.ndim - 1), x.ndim)  # spatial axes and the channels of a group
        mean = jnp.mean(grouped, axis=reduce, keepdims=True)
        var = jnp.mean(jnp.square(grouped - mean), axis=reduce, keepdims=True)
        y = ((grouped - mean) * jax.lax.rsqrt(var + self.eps)).reshape(h.shape)
        if self.scale is not None:
            y = y * self.scale.astype(y.dtype)
        if self.bias is not None:
            y = y + self.bias.astype(y.dtype)
        return y.astype(x.dtype)


class InstanceNorm(GroupNorm):
    """Instance normalisation: each channel of each example normalised over its spatial axes
    (:class:`GroupNorm` with one channel per group; Flax's ``InstanceNorm``).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> y = stoax.nn.InstanceNorm(3)(jax.random.normal(jax.random.key(0), (2, 6, 6, 3)))
        >>> bool(jnp.allclose(y.std(axis=(1, 2)), 1.0, atol=1e-3))
        True
    """

    def __init__(
        self,
        features: int,
        eps: float = 1e-6,
        use_scale: bool = True,
        use_bias: bool = True,
        *,
        key: jax.Array | None = None,
        dtype: jnp.dtype = jnp.float32,
    ):
        super().__init__(features, features, eps, use_scale, use_bias, key=key, dtype=dtype)
