"""``TrainState``: everything a training run changes, as one pytree."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from stoax._module import Module
from stoax._partition import combine, partition

__all__ = ["TrainState"]


class TrainState(Module):
    """Parameters, the other arrays of the model, the optimiser state and the step counter.

    A :class:`stoax.Module`, hence a pytree: ``jax.jit`` takes it as an argument, and
    :func:`stoax.train.save_checkpoint` writes it whole. ``params`` and ``rest`` are the two
    halves of :func:`stoax.partition`; the optimiser sees ``params`` only. ``rest`` also holds
    the model's state (BatchNorm's running statistics), which the train step replaces with the
    updated state its loss function returns. ``step`` is an
    ``int32`` array (not a Python int, which would recompile every step) and counts the
    optimiser updates made so far; the step's key is ``stoax.step_key(seed, step)``.

    Example:
        >>> import jax, optax, stoax
        >>> from stoax.train import TrainState
        >>> model = stoax.nn.Linear(3, 2, key=jax.random.key(0))
        >>> state = TrainState.create(model, optax.adam(1e-3))
        >>> int(state.step)
        0
        >>> state.model == model
        True
    """

    params: Any
    rest: Any
    opt_state: Any
    step: jax.Array

    @classmethod
    def create(cls, model: Any, tx: optax.GradientTransformation) -> TrainState:
        """The state at step 0: ``model`` partitioned, ``tx`` initialised on its parameters."""
        params, rest = partition(model)
        return cls(params, rest, tx.init(params), jnp.zeros((), jnp.int32))

    @property
    def model(self) -> Any:
        """The model, put back together from ``params`` and ``rest``."""
        return combine(self.params, self.rest)
