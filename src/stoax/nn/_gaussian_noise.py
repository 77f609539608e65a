"""``GaussianNoise``: additive zero-mean Gaussian noise in training mode, identity in evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stoax._mode import check_training_flag
from stoax._module import Module, field
from stoax.nn._checks import by_mode, check_stddev, draw_key, is_identity

__all__ = ["GaussianNoise"]


class GaussianNoise(Module):
    """Add ``stddev * N(0, 1)`` noise to every element in training mode; identity in evaluation.

    The noise is drawn in the input's dtype (f32, bf16, f16 kept). ``stddev`` is a Python float
    (static) or a JAX array (a non-trainable leaf, so a sweep can be vmapped); ``training`` a
    Python bool (static) or a scalar bool JAX array (traced). A key is needed in training mode
    unless ``stddev == 0``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> noise = stoax.nn.GaussianNoise(0.1)
        >>> noise(jnp.zeros(3), key=jax.random.key(0)).shape
        (3,)
        >>> stoax.eval_mode(noise)(jnp.zeros(3)).tolist()
        [0.0, 0.0, 0.0]
    """

    stddev: float | jax.Array = field(trainable=False)
    training: bool | jax.Array = field(default=True, kw_only=True)

    def __check_init__(self) -> None:
        self.stddev = check_stddev(self.stddev, "GaussianNoise")
        self.training = check_training_flag(self.training, "GaussianNoise")

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``x + stddev * N(0, 1)`` in training mode; ``x`` unchanged in evaluation mode.

        Args:
            x: a floating-point array of any shape.
            key: the key of the noise; needed in training mode unless ``stddev`` is 0 (a
                :class:`~stoax.nn.MissingKeyError` names the layer otherwise), unused in evaluation
                mode."""
        if is_identity(self, x, self.stddev):
            return x
        noise = jax.random.normal(draw_key(self, key), jnp.shape(x), x.dtype)
        return by_mode(self, x + jnp.asarray(self.stddev, x.dtype) * noise, x)
