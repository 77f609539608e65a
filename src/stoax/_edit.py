"""Editing nested modules: replace a field deep inside a model, or transform every submodule."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, TypeVar

import jax

from stoax._module import FrozenDict, Module, is_array, is_module

__all__ = ["replace_at", "map_modules"]

M = TypeVar("M")


# A quoted key in brackets (``['w']``, as ``jax.tree_util.keystr`` writes dict keys), or a run of
# characters between the separators ``.``, ``[`` and ``]``.
_STEP = re.compile(r"""\['([^']*)'\]|\["([^"]*)"\]|([^.\[\]]+)""")


def _parse(path: str) -> list[str | int]:
    steps: list[str | int] = []
    for single, double, part in _STEP.findall(path):
        if part:
            steps.append(int(part) if part.lstrip("-").isdigit() else part)
        else:  # a quoted dict key stays a string, even "0"
            steps.append(single or double)
    return steps


def replace_at(model: M, path: str, value: Any) -> M:
    """A copy of ``model`` with the value at ``path`` replaced.

    ``path`` names fields with dots and list or tuple positions with numbers:
    ``"layers.0.rate"`` or ``"layers[0].rate"``; dict entries by key, bare or quoted as
    ``jax.tree_util.keystr`` writes them: ``"table.w"`` or ``"table['w']"``.

    Example:
        >>> import jax, stoax
        >>> model = stoax.nn.Sequential([stoax.nn.Dropout(0.1), stoax.nn.Dropout(0.2)])
        >>> stoax.replace_at(model, "layers[1].rate", 0.5).layers[1].rate
        0.5
    """
    if not isinstance(path, str):
        raise TypeError(f"replace_at: path must be a str such as 'layers[0].rate', got {path!r}.")
    steps = _parse(path)
    if not steps:
        raise ValueError("replace_at needs a non-empty path such as 'layers[0].rate'.")
    return _replace(model, steps, value, path, [])


def _format(steps: list[str | int]) -> str:
    """``["layers", 1, "weight"]`` as ``"layers[1].weight"``."""
    return "".join(f"[{s}]" if isinstance(s, int) else f".{s}" for s in steps).lstrip(".")


def _replace(
    node: Any, steps: list[str | int], value: Any, path: str, done: list[str | int]
) -> Any:
    step, rest = steps[0], steps[1:]
    if is_array(node):
        where = _format(done)
        raise TypeError(
            f"replace_at: path {path!r} goes inside the array at {where!r} (shape "
            f"{tuple(node.shape)}); replace_at replaces whole fields. To change part of an "
            f"array, build the new array and replace the field: "
            f"replace_at(model, {where!r}, old.at[...].set(value))."
        )
    if not (is_module(node) or isinstance(node, list | tuple | dict | FrozenDict)):
        raise KeyError(
            f"replace_at: path {path!r} does not exist: {type(node).__name__} at "
            f"{_format(done) or 'the top'} has no {step!r}."
        )
    try:
        if is_module(node):
            if not isinstance(step, str):
                raise KeyError(step)
            child = getattr(node, step)
        else:
            child = node[step]
    except (KeyError, IndexError, AttributeError, TypeError):
        raise KeyError(
            f"replace_at: path {path!r} does not exist: {type(node).__name__} has no {step!r}."
        ) from None
    new_child = _replace(child, rest, value, path, [*done, step]) if rest else value
    if is_module(node):
        return node.replace(**{str(step): new_child})
    if isinstance(node, dict | FrozenDict):
        return type(node)({**node, step: new_child})
    items = list(node)
    items[int(step)] = new_child
    return type(node)(items) if not hasattr(node, "_fields") else type(node)(*items)


def map_modules(fn: Callable[[Module], Module], tree: M) -> M:
    """Apply ``fn`` to every module in ``tree``, innermost first, and rebuild the tree.

    Example:
        >>> import stoax
        >>> model = stoax.nn.Sequential([stoax.nn.Dropout(0.1)])
        >>> halve = lambda m: m.replace(rate=m.rate / 2) if isinstance(m, stoax.nn.Dropout) else m
        >>> stoax.map_modules(halve, model).layers[0].rate
        0.05
    """
    return map_layers(fn, tree)


def map_layers(
    fn: Callable[[Module], Module],
    tree: M,
    peer_fn: Callable[[Any], Any] | None = None,
    is_peer: Callable[[Any], bool] = lambda x: False,
) -> M:
    """:func:`map_modules`, and ``peer_fn`` applied to every non-stoax layer ``is_peer`` picks
    out (Equinox layers inside stoax containers, static fields included)."""

    def is_layer(x: Any) -> bool:
        return is_module(x) or (peer_fn is not None and is_peer(x))

    def visit(x: Any) -> Any:
        if not is_module(x):
            return peer_fn(x) if peer_fn is not None and is_peer(x) else x
        changes = {}
        for f in dataclasses.fields(x):
            value = x.__dict__[f.name]
            new = jax.tree.map(visit, value, is_leaf=is_layer)
            if new is not value:
                changes[f.name] = new
        return fn(x.replace(**changes) if changes else x)

    return jax.tree.map(visit, tree, is_leaf=is_layer)
