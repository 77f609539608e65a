"""The jitted train and evaluation steps, and a classification loss to plug into them.

A *loss function* has the signature ``loss_fn(model, batch, *, key) -> (loss, metrics)``: a
scalar loss to minimise and a dict of scalar metrics (e.g. accuracy). A model with state
(BatchNorm) is run with ``y, new_model = stoax.apply(model, x, key=key)`` and the loss function
returns ``(loss, metrics, new_model)``: the train step keeps ``new_model``'s state.

The train step calls it with the model in whatever mode it is in (training, normally) and
``key=stoax.step_key(seed, step)``; evaluation calls it on ``stoax.eval_mode(model)`` with
``key=None``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stoax._mode import eval_mode
from stoax._partition import combine, partition
from stoax._state import StateError, apply, has_state, updates_state
from stoax.keys import step_key
from stoax.train._state import TrainState

__all__ = ["LossFn", "check_seed", "classification_loss", "make_eval_step", "make_train_step"]

MAX_SEED = 2**32 - 1

Metrics = dict[str, jax.Array]
# (loss, metrics), or (loss, metrics, updated model) for a model with state
LossFn = Callable[
    ...,
    tuple[jax.Array, Mapping[str, jax.Array]] | tuple[jax.Array, Mapping[str, jax.Array], Any],
]


def classification_loss(
    model: Callable[..., Any], batch: Mapping[str, jax.Array], *, key: jax.Array | None
) -> tuple[jax.Array, Metrics] | tuple[jax.Array, Metrics, Any]:
    """Softmax cross-entropy of ``model(batch["x"], key=key)`` (logits) against integer labels
    ``batch["y"]``, and the accuracy. For a model with state (:func:`stoax.has_state`) the
    logits come from :func:`stoax.apply` and the updated model is returned third.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> from stoax.train import classification_loss
        >>> model = stoax.nn.Linear(4, 3, key=jax.random.key(0))
        >>> batch = {"x": jnp.ones((2, 4)), "y": jnp.array([0, 2])}
        >>> loss, metrics = classification_loss(model, batch, key=None)
        >>> loss.shape, sorted(metrics)
        ((), ['accuracy'])
    """
    stateful = has_state(model)
    if stateful:
        logits, model = apply(model, batch["x"], key=key)
    else:
        logits = model(batch["x"], key=key)
    labels = batch["y"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    accuracy = (jnp.argmax(logits, axis=-1) == labels).mean()
    if stateful:
        return loss, {"accuracy": accuracy}, model
    return loss, {"accuracy": accuracy}


def make_train_step(
    loss_fn: LossFn, tx: optax.GradientTransformation, *, seed: int
) -> Callable[[TrainState, Any], tuple[TrainState, Metrics]]:
    """A jitted ``train_step(state, batch) -> (state, metrics)``: one optimiser update.

    The step's key is ``stoax.step_key(seed, state.step)``, a function of ``(seed, step)`` alone,
    so a run restarted from a checkpoint at step ``n`` draws the same dropout masks from there on
    as the uninterrupted run. Gradients are taken with respect to ``state.params`` only; when
    ``loss_fn`` returns the updated model third, its state (running statistics) becomes
    ``state.rest``.
    ``metrics`` holds ``"loss"`` and whatever ``loss_fn`` reports. The compiled program is shared
    by every step function made with the same ``loss_fn`` and ``tx`` objects (the seed is an
    argument of it, not a constant), so a second :func:`~stoax.train.fit` does not recompile.

    Example:
        >>> import jax, jax.numpy as jnp, optax, stoax
        >>> from stoax.train import TrainState, classification_loss, make_train_step
        >>> model = stoax.nn.Sequential(
        ...     [stoax.nn.Linear(4, 3, key=jax.random.key(0)), stoax.nn.Dropout(0.1)]
        ... )
        >>> tx = optax.sgd(0.1)
        >>> step = make_train_step(classification_loss, tx, seed=0)
        >>> batch = {"x": jnp.ones((2, 4)), "y": jnp.array([0, 2])}
        >>> state, metrics = step(TrainState.create(model, tx), batch)
        >>> int(state.step), sorted(metrics)
        (1, ['accuracy', 'loss'])
    """
    seed_array = jnp.asarray(check_seed(seed, "make_train_step"), jnp.uint32)
    # a uint32 array gives the same key(seed) as the Python int, over the whole seed range
    return lambda state, batch: _train_step(state, batch, seed_array, loss_fn=loss_fn, tx=tx)


@functools.partial(jax.jit, static_argnames=("loss_fn", "tx"))
def _train_step(
    state: TrainState, batch: Any, seed: jax.Array, *, loss_fn: LossFn, tx: Any
) -> tuple[TrainState, Metrics]:
    key = step_key(seed, state.step)

    def objective(params: Any) -> tuple[jax.Array, tuple[Mapping[str, jax.Array], Any]]:
        updated: list[Any]
        loss, metrics, *updated = loss_fn(combine(params, state.rest), batch, key=key)
        return loss, (metrics, updated[0] if updated else None)

    (loss, (metrics, updated)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    rest = state.rest if updated is None else partition(updated)[1]
    if updated is None and updates_state(state.model):
        raise StateError(
            "make_train_step: the model holds stateful layers in training mode (BatchNorm), but "
            "loss_fn returned (loss, metrics) only, so their state would never be updated. Run "
            "the model with `y, model = stoax.apply(model, x, key=key)` and return (loss, "
            "metrics, model) -- stoax.train.classification_loss does."
        )
    new_state = state.replace(params=params, rest=rest, opt_state=opt_state, step=state.step + 1)
    return new_state, {"loss": loss, **metrics}


def check_seed(seed: Any, caller: str) -> int:
    """``seed`` as an int, if it is a whole number in ``[0, 2**32 - 1]`` (the range of a uint32,
    the seeds JAX's keys and NumPy's generators both take without wrapping around); otherwise a
    ``TypeError`` or ``ValueError`` naming ``caller``'s ``seed`` argument.

    Example:
        >>> from stoax.train._step import check_seed
        >>> check_seed(7, "fit")
        7
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(
            f"{caller}: seed must be a whole number in [0, {MAX_SEED}], got the "
            f"{type(seed).__name__} {seed!r}."
        )
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(
            f"{caller}: seed must be in [0, {MAX_SEED}] (2**32 - 1), got {int(seed)}; a seed "
            "outside that range would wrap around onto another seed. Pick a seed in the range."
        )
    return int(seed)


def make_eval_step(loss_fn: LossFn) -> Callable[[Any, Any], Metrics]:
    """A jitted ``eval_step(model, batch) -> metrics`` (``"loss"`` and ``loss_fn``'s metrics).

    The model is switched to evaluation mode (:func:`stoax.eval_mode`) first, so dropout is
    compiled away and no key is needed.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> from stoax.train import classification_loss, make_eval_step
        >>> model = stoax.nn.Sequential(
        ...     [stoax.nn.Linear(4, 3, key=jax.random.key(0)), stoax.nn.Dropout(0.5)]
        ... )
        >>> batch = {"x": jnp.ones((2, 4)), "y": jnp.array([0, 2])}
        >>> sorted(make_eval_step(classification_loss)(model, batch))
        ['accuracy', 'loss']
    """
    return lambda model, batch: _eval_step(eval_mode(model), batch, loss_fn=loss_fn)


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _eval_step(model: Any, batch: Any, *, loss_fn: LossFn) -> Metrics:
    loss, metrics = loss_fn(model, batch, key=None)[:2]  # an updated model (third) is dropped
    return {"loss": loss, **metrics}
