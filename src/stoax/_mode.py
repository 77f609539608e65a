"""Train / evaluation mode: a ``training`` field on every stochastic layer, set for a whole model.

A Python bool is static: an evaluation model compiles its dropout away. A JAX bool is traced: one
compiled function serves both modes, inside ``lax.scan`` or ``lax.cond``, with no Python branch.

Example:
    >>> import jax, jax.numpy as jnp, stoax
    >>> model = stoax.nn.Sequential([stoax.nn.Dropout(0.5)])
    >>> stoax.eval_mode(model).layers[0].training
    False
    >>> traced = stoax.set_mode(model, jnp.asarray(True))
    >>> traced.layers[0].training
    Array(True, dtype=bool)
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from stoax._edit import map_layers
from stoax._module import Module
from stoax._peer_layers import is_peer_layer, set_peer_mode

__all__ = ["set_mode", "train_mode", "eval_mode", "check_training_flag", "has_training_field"]

M = TypeVar("M")


def check_training_flag(training: Any, where: str) -> bool | jax.Array:
    """Validate a train/eval flag: a Python bool, or a scalar boolean JAX array."""
    if isinstance(training, bool | np.bool_):
        return bool(training)
    if hasattr(training, "dtype") and jnp.shape(training) == () and training.dtype == jnp.bool_:
        return training
    raise TypeError(
        f"{where}: training must be a Python bool (static: evaluation compiles dropout away) or a "
        f"scalar bool JAX array (traced: one program for both modes); got {training!r}."
    )


def has_training_field(module: Module) -> bool:
    """True for a stochastic layer: a module with a ``training`` field, which :func:`set_mode`
    sets (``stoax.scan(training=...)`` uses it to check that a step holds one)."""
    return any(f.name == "training" for f in dataclasses.fields(module))


def set_mode(model: M, training: bool | jax.Array) -> M:
    """A copy of ``model`` with every stochastic layer's ``training`` field set to ``training``.

    Equinox layers (in a stoax container, or a whole Equinox model) get their ``inference``
    field set to ``not training``."""
    flag = check_training_flag(training, "stoax.set_mode")
    return map_layers(
        lambda m: m.replace(training=flag) if has_training_field(m) else m,
        model,
        peer_fn=lambda layer: set_peer_mode(layer, flag),
        is_peer=is_peer_layer,
    )


def train_mode(model: M) -> M:
    """A copy of ``model`` in training mode (dropout active; a key is needed)."""
    return set_mode(model, True)


def eval_mode(model: M) -> M:
    """A copy of ``model`` in evaluation mode (every stochastic layer is the identity)."""
    return set_mode(model, False)
