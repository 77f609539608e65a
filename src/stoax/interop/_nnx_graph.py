"""stoax module types registered with Flax NNX: data attributes, updated in place by NNX.

NNX 0.12 treats an attribute of an ``nnx.Module`` as static unless its value is an array, a
``Variable``, an NNX graph node or a type in NNX's data registry -- and refuses a static
attribute that holds arrays (``nnx.data(...)`` was the workaround). stoax registers each of its
module types (NNX's registry matches exact types, so every subclass) as data, and as an NNX
pytree node whose ``set_key`` writes a new array into the module: NNX's ``update`` (an optimiser
step, the end of ``nnx.jit``) changes models in place, and a stoax module inside one follows.

A field holding a container of arrays and static values (``Sequential.layers``) is shown to NNX
as a :class:`Frozen` node: NNX reaches the modules inside it (and updates them in place) but
cannot write into the container itself, which stoax's own flattening rebuilds.
"""

from __future__ import annotations

from typing import Any

import jax
from flax.nnx import graphlib, pytreelib

from stoax._module import _FLAT, Module, is_module

__all__ = ["Frozen", "register", "register_all"]

_REGISTERED: set[type] = set()


class Frozen:
    """An immutable NNX view of a field that mixes arrays/modules and static values."""

    __slots__ = ("leaves", "treedef")

    def __init__(self, leaves: tuple[Any, ...], treedef: Any):
        self.leaves = leaves
        self.treedef = treedef


jax.tree_util.register_pytree_with_keys(
    Frozen,
    lambda f: (
        [(jax.tree_util.SequenceKey(i), leaf) for i, leaf in enumerate(f.leaves)],
        f.treedef,
    ),
    lambda treedef, leaves: Frozen(tuple(leaves), treedef),
    flatten_func=lambda f: (f.leaves, f.treedef),
)


def _flatten(module: Module) -> tuple[list[tuple[str, Any]], tuple[tuple[str, ...], Any]]:
    children, treedef = jax.tree_util.tree_flatten_with_path(
        module, is_leaf=lambda x: x is not module
    )
    nodes = []
    for path, child in children:
        name = path[0].name
        if not (is_module(child) or hasattr(child, "dtype")):  # a mixed container
            leaves, inner = jax.tree.flatten(child, is_leaf=is_module)
            child = Frozen(tuple(leaves), inner)
        nodes.append((name, child))
    order = tuple(name for name, _ in nodes)
    return sorted(nodes), (order, treedef)


def _unflatten(nodes: Any, aux: tuple[tuple[str, ...], Any]) -> Any:
    order, treedef = aux
    by_name = dict(nodes)
    children = []
    for name in order:
        child = by_name[name]
        if isinstance(child, Frozen):
            child = jax.tree.unflatten(child.treedef, child.leaves)
        children.append(child)
    return jax.tree.unflatten(treedef, children)


def _set_key(module: Module, name: Any, value: Any) -> None:
    current = module.__dict__.get(name) if isinstance(name, str) else None
    if current is None or not hasattr(current, "dtype") or not hasattr(value, "shape"):
        raise ValueError(
            f"NNX tried to set {name!r} of the stoax module {type(module).__name__} to a "
            f"{type(value).__name__}: only the arrays of a stoax module can be updated in place."
        )
    object.__setattr__(module, name, value)
    module.__dict__.pop(_FLAT, None)  # the cached flattening held the old array


def register(cls: type) -> None:
    """Register one stoax module type with NNX (once)."""
    if cls in _REGISTERED:
        return
    _REGISTERED.add(cls)
    pytreelib.register_data_type(cls)
    graphlib.register_pytree_node_type(cls, _flatten, _unflatten, set_key=_set_key)


def register_all() -> None:
    """Register every stoax module type defined so far."""
    pending = [Module]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls is not Module:
            register(cls)
