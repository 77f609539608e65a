"""``Linear``: an affine map ``x @ weight + bias``."""

from __future__ import annotations

from typing import ClassVar

import jax
import jax.numpy as jnp

from stoax._errors import LayerTypeError, LayerValueError
from stoax._module import Module
from stoax.nn._init import LECUN_NORMAL, ZEROS, Initializer, weight_and_bias
from stoax.nn._sizes import positive_int

__all__ = ["Linear"]


class Linear(Module):
    """``y = x @ weight + bias`` over the last axis of ``x``.

    Initialisation follows Flax: ``kernel_init`` (default LeCun-normal: truncated normal,
    variance ``1/in``) draws ``weight`` of shape ``(in_features, out_features)`` and ``bias_init``
    (default zeros) ``bias``; any ``jax.nn.initializers`` function fits, each drawn from its own
    init key of ``key`` (``stoax.keys.init_child(key, "weight")`` / ``"bias"``).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> layer = stoax.nn.Linear(3, 2, key=jax.random.key(0))
        >>> layer(jnp.ones((5, 3))).shape
        (5, 2)
        >>> ortho = stoax.nn.Linear(3, 3, kernel_init=jax.nn.initializers.orthogonal(),
        ...                         key=jax.random.key(0))
        >>> bool(jnp.allclose(ortho.weight @ ortho.weight.T, jnp.eye(3), atol=1e-5))
        True
    """

    weight: jax.Array
    bias: jax.Array | None
    # A container runs a Dropout before this layer as one dropout_then (nn/_fused_dropout.py).
    fuse_preceding_dropout: ClassVar[bool] = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        use_bias: bool = True,
        *,
        key: jax.Array,
        dtype: jnp.dtype = jnp.float32,
        kernel_init: Initializer = LECUN_NORMAL,
        bias_init: Initializer = ZEROS,
    ):
        in_features = positive_int(in_features, "Linear", "in_features")
        out_features = positive_int(out_features, "Linear", "out_features")
        self.weight, self.bias = weight_and_bias(
            key,
            (in_features, out_features),
            (out_features,) if use_bias else None,
            kernel_init=kernel_init,
            bias_init=bias_init,
            dtype=dtype,
            layer="Linear",
        )

    @property
    def in_features(self) -> int:
        return self.weight.shape[-2]

    @property
    def out_features(self) -> int:
        return self.weight.shape[-1]

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``x @ weight + bias``: shape ``(..., out_features)``.

        Args:
            x: ``(..., in_features)``.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
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
