"""State as values: layers whose forward pass updates arrays of their own.

A *stateful* layer (:class:`~stoax.nn.BatchNorm` with its running statistics; later counters,
EMA weights, spectral-norm power iterations) declares its state arrays with
:func:`state_field`. State arrays are ordinary, non-trainable leaves of the module: they travel
with the model through ``jax.jit``, ``jax.vmap``, ``lax.scan`` and checkpoints, and
:func:`stoax.partition` puts them on the ``rest`` side, so an optimiser never sees them.

Nothing is mutated. The forward pass that updates state is a function that returns the updated
layer next to the output::

    y, model = stoax.apply(model, x, key=key)

``model(x, key=key)`` computes the same ``y`` and drops the update (use it when only the output
matters). :func:`apply` works on any model: a module that defines ``apply(self, x, *, key, ...)
-> (y, new_self)`` is asked to thread its state (BatchNorm, and the containers ``Sequential``,
``Stack`` and ``Ensemble``, do); any other module or function holding no state returns itself.
A module holding stateful layers that does *not* define ``apply`` is refused with a message
saying how to write one -- an update is never dropped silently.

The mode decides what an update costs: a stateful layer in evaluation mode
(``training=False``, a Python bool) returns itself, so an evaluation program holds no update at
all; a traced flag selects between the updated and the old arrays with ``jnp.where``, in one
program (inside ``lax.scan`` too).

Example:
    >>> import jax, jax.numpy as jnp, stoax
    >>> bn = stoax.nn.BatchNorm(3)
    >>> x = jnp.arange(12.0).reshape(4, 3)
    >>> y, bn2 = stoax.apply(bn, x)
    >>> [round(v, 3) for v in bn2.running_mean.tolist()]  # 1% towards the batch mean 4.5, 5.5, 6.5
    [0.045, 0.055, 0.065]
    >>> stoax.has_state(bn), stoax.has_state(stoax.nn.Linear(3, 3, key=jax.random.key(0)))
    (True, False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import jax

from stoax._module import Module, field_is_state, is_module, same_structure, state_field

__all__ = ["StateError", "apply", "has_state", "state_field", "updates_state"]

M = TypeVar("M")
C = TypeVar("C", bound=Callable[..., Any])


class StateError(TypeError):
    """A model holding stateful layers cannot thread their updated state (a module without an
    ``apply`` method, or an ``apply`` that returns something else than ``(y, new_module)``)."""


def _declares_state(module: Module) -> bool:
    return any(field_is_state(f) for f in dataclasses.fields(module))


def _stateful_modules(tree: Any) -> list[Module]:
    found: list[Module] = []

    def visit(x: Any) -> Any:
        if is_module(x):
            if _declares_state(x):
                found.append(x)
            for f in dataclasses.fields(x):
                jax.tree.map(visit, x.__dict__[f.name], is_leaf=is_module)
        return x

    jax.tree.map(visit, tree, is_leaf=is_module)
    return found


def has_state(tree: Any) -> bool:
    """True when ``tree`` holds a stateful layer (one with :func:`state_field` fields) anywhere.

    A property of the structure alone (static under ``jax.jit``)."""
    return bool(_stateful_modules(tree))


def updates_state(tree: Any) -> bool:
    """True when a forward pass of ``tree`` may update state: it holds a stateful layer whose
    ``training`` is not the static ``False`` (evaluation mode updates nothing)."""
    return any(getattr(m, "training", True) is not False for m in _stateful_modules(tree))


def apply(model: C, x: Any, *args: Any, key: Any = None, **kwargs: Any) -> tuple[Any, C]:
    """``(y, new_model)``: the forward pass that also returns the model with its state updated.

    * A module with an ``apply`` method (BatchNorm; ``Sequential``, ``Stack``, ``Ensemble``):
      ``model.apply(x, *args, key=key, **kwargs)``.
    * A module without ``apply`` whose state does not change (none, or evaluation mode):
      ``(model(x, *args, key=key, ...), model)``. A module without ``apply`` holding state that
      would change raises :class:`StateError`.
    * A plain function (``jax.nn.relu``): ``(model(x, *args, **kwargs), model)`` (no key).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> model = stoax.nn.Sequential([stoax.nn.Linear(2, 4, key=jax.random.key(0)),
        ...                              stoax.nn.BatchNorm(4), jax.nn.relu])
        >>> y, model = stoax.apply(model, jnp.ones((8, 2)))
        >>> y.shape, model.layers[1].running_var.shape
        ((8, 4), (4,))
    """
    if not is_module(model):
        if not callable(model):
            raise TypeError(f"stoax.apply: model must be callable, got {type(model).__name__}.")
        return model(x, *args, **kwargs), model
    method = getattr(type(model), "apply", None)
    if method is None:
        if updates_state(model):
            raise StateError(_no_apply_message(model))
        return model(x, *args, key=key, **kwargs), model
    out = method(model, x, *args, key=key, **kwargs)
    if not (isinstance(out, tuple) and len(out) == 2 and type(out[1]) is type(model)):
        raise StateError(
            f"{type(model).__name__}.apply must return (output, updated {type(model).__name__}), "
            f"got {type(out).__name__}{'' if not isinstance(out, tuple) else f' of {len(out)}'}."
        )
    if not same_structure(jax.tree.structure(out[1]), jax.tree.structure(model)):
        raise StateError(
            f"{type(model).__name__}.apply returned a model of another structure than its own: "
            "an update may change array values only (not shapes, dtypes, static fields or the "
            "mode)."
        )
    return out


def _no_apply_message(model: Any) -> str:
    name = type(model).__name__
    inner = sorted({type(m).__name__ for m in _stateful_modules(model)})
    return (
        f"{name} holds stateful layers ({', '.join(inner)}) but defines no apply method, so "
        f"their updated state (running statistics) cannot be returned. Give {name} a method "
        f"apply(self, x, *, key=None) -> (y, new_self) that calls each stateful child with "
        f"`h, child = stoax.apply(self.child, h, key=k)` and returns "
        f"`(y, self.replace(child=child))`; or build the model from stoax containers "
        f"(Sequential, Stack, Ensemble), which do this for you. To compute outputs only, call "
        f"the model itself: model(x, key=key)."
    )
