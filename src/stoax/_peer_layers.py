"""Layers from other libraries inside stoax containers: keys and train/eval mode by convention.

stoax containers give a layer that is not a stoax module (an Equinox layer, any callable pytree,
a plain function) what its call signature asks for: a key when its call takes a keyword ``key``
(``eqx.nn.Dropout``, ``eqx.nn.Linear``), none otherwise (``jax.nn.relu``). :func:`stoax.set_mode`
sets the Equinox mode flag of such layers: a field ``inference`` (``eqx.nn.Dropout``,
``eqx.nn.BatchNorm``) becomes ``not training``, as does a dataclass field ``deterministic``.
Nothing here imports a peer library: the conventions are read from the objects themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["takes_key", "is_peer_layer", "set_peer_mode"]

_MODE_FIELDS = ("inference", "deterministic")  # both mean "not training"


@functools.lru_cache(maxsize=512)
def _signature_takes_key(fn: Any) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = parameters.get("key")
    return p is not None and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)


def takes_key(layer: Any) -> bool:
    """True when ``layer(x, key=...)`` is how ``layer`` is called: its call has a ``key``
    parameter that can be passed by keyword."""
    target: Callable[..., Any]
    if inspect.isfunction(layer) or inspect.ismethod(layer) or isinstance(layer, functools.partial):
        target = layer
    else:
        if not callable(layer):
            return False
        target = type(layer).__call__  # callable objects: cached per type
    try:
        return _signature_takes_key(target)
    except TypeError:  # an unhashable callable
        return _signature_takes_key.__wrapped__(target)


def _mode_field(x: Any) -> str | None:
    if isinstance(x, type) or not dataclasses.is_dataclass(x):
        return None
    names = {f.name for f in dataclasses.fields(x)}
    return next((n for n in _MODE_FIELDS if n in names), None)


def is_peer_layer(x: Any) -> bool:
    """A dataclass layer (an Equinox module) with a mode field ``inference``/``deterministic``."""
    return _mode_field(x) is not None


def set_peer_mode(layer: Any, training: bool | jax.Array) -> Any:
    """A copy of ``layer`` with its mode field set to ``not training``."""
    name = _mode_field(layer)
    if name is None:
        return layer
    value = (not training) if isinstance(training, bool) else jnp.logical_not(training)
    children, treedef = jax.tree_util.tree_flatten_with_path(
        layer, is_leaf=lambda x: x is not layer
    )
    names = [getattr(path[0], "name", None) for path, _ in children]
    if name in names:  # the flag is a pytree child (Equinox: a non-static field)
        values = [
            value if n == name else child for n, (_, child) in zip(names, children, strict=True)
        ]
        return jax.tree.unflatten(treedef, values)
    new = copy.copy(layer)  # a static field: set it on a copy, bypassing a frozen dataclass
    object.__setattr__(new, name, value)
    return new
