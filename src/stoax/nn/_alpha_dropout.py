"""``AlphaDropout``: dropout that keeps the mean and variance of SELU activations."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stoax._mode import check_training_flag
from stoax._module import Module, field
from stoax.nn._checks import by_mode, check_rate, draw_key, is_identity
from stoax.random import keep_mask

__all__ = ["AlphaDropout"]

# SELU's negative saturation value, -scale * alpha (Klambauer et al., 2017).
_ALPHA_PRIME = -1.7580993408473766


class AlphaDropout(Module):
    """Alpha dropout for self-normalising (SELU) networks, as PyTorch and Keras define it.

    Each element is set with probability ``rate`` to SELU's saturation value
    ``alpha' = -1.7581``, then the whole is mapped by ``a * x + b`` with
    ``a = ((1 - rate) * (1 + rate * alpha'**2)) ** -0.5`` and ``b = -a * alpha' * rate``, so an
    input with zero mean and unit variance keeps them. Identity in evaluation mode.

    Args:
        rate: probability of dropping an element, in [0, 1) (a Python float, static, or a JAX
            array, a non-trainable leaf).
        training: ``True``/``False`` (static) or a scalar bool JAX array (traced).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> drop = stoax.nn.AlphaDropout(0.1)
        >>> y = drop(jax.random.normal(jax.random.key(0), (100_000,)), key=jax.random.key(1))
        >>> abs(float(y.mean())) < 0.02, abs(float(y.std()) - 1.0) < 0.02
        (True, True)
    """

    rate: float | jax.Array = field(trainable=False, default=0.1)
    training: bool | jax.Array = field(default=True, kw_only=True)

    def __check_init__(self) -> None:  # on construction, replace, replace_at and set_mode
        self.rate = check_rate(self.rate, "AlphaDropout")
        if isinstance(self.rate, float) and self.rate == 1.0:
            raise ValueError(
                "AlphaDropout: rate must be below 1 (at 1 the output has no variance to "
                "rescale), got 1.0."
            )
        self.training = check_training_flag(self.training, "AlphaDropout")

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``x`` with alpha dropout in training mode; ``x`` unchanged in evaluation mode.

        Args:
            x: an array of any shape (typically SELU activations).
            key: the key of the mask; needed in training mode unless the rate is 0 (a
                :class:`~stoax.nn.MissingKeyError` names the layer otherwise), unused in evaluation
                mode."""
        if is_identity(self, x, self.rate):
            return x
        keep = keep_mask(draw_key(self, key), jnp.shape(x), self.rate)
        p = self.rate if isinstance(self.rate, float) else jnp.asarray(self.rate, jnp.float32)
        a = ((1.0 - p) * (1.0 + p * _ALPHA_PRIME**2)) ** -0.5
        b = -a * _ALPHA_PRIME * p
        dropped = jnp.where(keep, x, jnp.asarray(_ALPHA_PRIME, x.dtype))
        y = dropped * jnp.asarray(a, x.dtype) + jnp.asarray(b, x.dtype)
        return by_mode(self, y, x)
