"""``Dropout``: zero elements with probability ``rate`` in training mode, identity in evaluation."""

from __future__ import annotations

from collections.abc import Callable

import jax

from stoax._errors import LayerValueError
from stoax._mode import check_training_flag
from stoax._module import Module, field
from stoax.nn._checks import by_mode, check_rate, draw_key, is_identity
from stoax.random import dropout, dropout_then
from stoax.random._dropout import broadcast_dims_problem, check_broadcast_dims

__all__ = ["Dropout"]


class Dropout(Module):
    """Inverted dropout: each element is zeroed with probability ``rate`` and the others are
    scaled by ``1/(1-rate)``, so the expected output equals the input.

    Args:
        rate: probability of zeroing an element, in [0, 1]. A Python float is static; a JAX
            array is a (non-trainable) leaf, so a sweep over rates can be vmapped.
        broadcast_dims: axes along which one mask value is shared (linen's ``broadcast_dims``),
            e.g. ``(-2,)`` to drop whole feature channels of a sequence. A tuple of distinct
            ints (a single int is one axis); checked against the input's rank at the call.
        training: ``True``/``False`` (static), or a scalar bool JAX array (traced).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> drop = stoax.nn.Dropout(0.5)
        >>> y = drop(jnp.ones(6), key=jax.random.key(0))
        >>> stoax.eval_mode(drop)(jnp.ones(3)).tolist()
        [1.0, 1.0, 1.0]
    """

    rate: float | jax.Array = field(trainable=False, default=0.5)
    broadcast_dims: tuple[int, ...] = ()
    training: bool | jax.Array = field(default=True, kw_only=True)

    def __check_init__(self) -> None:
        self.rate = check_rate(self.rate, "Dropout")
        self.broadcast_dims = check_broadcast_dims(self.broadcast_dims, "Dropout")
        self.training = check_training_flag(self.training, "Dropout")

    def _check_input(self, x: jax.Array) -> None:
        problem = broadcast_dims_problem(self.broadcast_dims, x.ndim)
        if problem:
            raise LayerValueError(self, f": {problem}; got an input of shape {tuple(x.shape)}.")

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """``x`` with each element zeroed with probability ``rate`` and the others scaled by
        ``1/(1-rate)`` in training mode; ``x`` unchanged in evaluation mode.

        Args:
            x: an array of any shape; ``broadcast_dims`` must be axes of it.
            key: the key of the mask; needed in training mode unless the rate is 0 (a
                :class:`~stoax.nn.MissingKeyError` names the layer otherwise), unused in evaluation
                mode."""
        if is_identity(self, x, self.rate):
            return x
        self._check_input(x)
        key = draw_key(self, key)
        return by_mode(self, dropout(x, self.rate, key, broadcast_dims=self.broadcast_dims), x)

    def then(
        self,
        fn: Callable[..., jax.Array],
        x: jax.Array,
        *operands: jax.Array,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """``fn(self(x, key=key), *operands)`` as one differentiated unit
        (:func:`stoax.random.dropout_then`): the backward pass keeps ``x`` and the key, not the
        dropped ``x``. Use it when the next op is a matmul (attention ``probs @ v``).

        Example:
            >>> import jax, jax.numpy as jnp, stoax
            >>> drop = stoax.nn.Dropout(0.1)
            >>> drop.then(jnp.matmul, jnp.ones((3, 4)), jnp.ones((4, 2)),
            ...           key=jax.random.key(0)).shape
            (3, 2)
        """
        if is_identity(self, x, self.rate):
            return fn(x, *operands)
        self._check_input(x)
        key = draw_key(self, key)
        if self.training is True:
            return dropout_then(
                fn, x, *operands, rate=self.rate, key=key, broadcast_dims=self.broadcast_dims
            )
        y = dropout(x, self.rate, key, broadcast_dims=self.broadcast_dims)
        return fn(by_mode(self, y, x), *operands)
