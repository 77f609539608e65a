"""``DropPath``: stochastic depth -- drop whole examples of a residual branch in training mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stoax._errors import LayerValueError
from stoax._mode import check_training_flag
from stoax._module import Module, field
from stoax.nn._checks import by_mode, check_rate, draw_key, is_identity
from stoax.random import dropout

__all__ = ["DropPath"]


class DropPath(Module):
    """Stochastic depth: each example (a slice along the leading axis) is zeroed with probability
    ``rate`` and the kept ones are scaled by ``1/(1-rate)``; the mask has shape
    ``(batch, 1, ..., 1)``. Applied to a residual branch, ``x + DropPath(rate)(branch(x))`` skips
    the branch for a random subset of examples.

    Same rules as :class:`stoax.nn.Dropout`: ``rate`` in [0, 1] (a Python float is static, a JAX
    array is a non-trainable leaf), ``training`` a Python bool (static) or a scalar bool JAX
    array (traced), a key needed in training mode unless ``rate == 0``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> drop = stoax.nn.DropPath(0.5)
        >>> y = drop(jnp.ones((4, 3)), key=jax.random.key(0))
        >>> all(set(row) <= {0.0} or set(row) == {2.0} for row in y.tolist())  # whole examples
        True
        >>> stoax.eval_mode(drop)(jnp.ones((2, 3))).tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """

    rate: float | jax.Array = field(trainable=False)
    training: bool | jax.Array = field(default=True, kw_only=True)

    def __check_init__(self) -> None:
        self.rate = check_rate(self.rate, "DropPath")
        self.training = check_training_flag(self.training, "DropPath")

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``x`` with whole examples (slices along the leading axis) zeroed in training mode; ``x``
        unchanged in evaluation mode.

        Args:
            x: an array whose leading axis is the batch.
            key: the key of the mask; needed in training mode unless the rate is 0 (a
                :class:`~stoax.nn.MissingKeyError` names the layer otherwise), unused in evaluation
                mode."""
        if is_identity(self, x, self.rate):
            return x
        if jnp.ndim(x) == 0:
            raise LayerValueError(
                self,
                ": input must have a leading batch axis (one mask value per example), got a "
                "scalar. Under jax.vmap over examples use stoax.nn.Dropout(rate, "
                "broadcast_dims=...) on the per-example shape instead.",
            )
        key = draw_key(self, key)
        y = dropout(x, self.rate, key, broadcast_dims=tuple(range(1, jnp.ndim(x))))
        return by_mode(self, y, x)
