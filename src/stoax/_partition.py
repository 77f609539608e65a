"""Telling trainable parameters apart from every other array in a model.

A trainable parameter is a floating-point array held by a field not marked
``stoax.field(trainable=False)``. Everything else -- integer arrays, keys, booleans, a dropout rate
given as an array, buffers -- is kept out of the optimiser's way by :func:`partition`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from stoax._module import Module, field_is_trainable, is_array, is_module, same_structure

__all__ = ["trainable", "partition", "combine"]

T = TypeVar("T")


def _is_trainable_array(x: Any) -> bool:
    return is_array(x) and jnp.issubdtype(x.dtype, jnp.inexact)


def trainable(tree: T) -> T:
    """A pytree of bools, shaped like ``tree``: True where a leaf is a trainable parameter.

    To train only these leaves, prefer :func:`partition` (differentiate and update the
    trainable half alone). With the whole model as optax's parameters, label the leaves for
    ``optax.multi_transform`` -- ``jax.tree.map(lambda t: "train" if t else "freeze",
    stoax.trainable(model))`` with ``optax.set_to_zero()`` for ``"freeze"``. Not
    ``optax.masked``: it passes the *unmasked* leaves' updates through unchanged rather than
    zeroing them.

    Example:
        >>> import jax, stoax
        >>> drop = stoax.nn.Dropout(rate=jax.numpy.asarray(0.1))
        >>> jax.tree.leaves(stoax.trainable(drop))
        [False]
    """
    return _mask(tree, allowed=True)


def _mask(value: Any, allowed: bool) -> Any:
    if is_module(value):
        return _module_mask(value, allowed)
    return jax.tree.map(
        lambda x: _module_mask(x, allowed) if is_module(x) else allowed and _is_trainable_array(x),
        value,
        is_leaf=is_module,
    )


def _module_mask(module: Module, allowed: bool) -> Module:
    flags = {f.name: allowed and field_is_trainable(f) for f in dataclasses.fields(module)}
    children, treedef = jax.tree_util.tree_flatten_with_path(
        module, is_leaf=lambda x: x is not module
    )
    masks = [_mask(child, flags[path[0].name]) for path, child in children]
    return jax.tree.unflatten(treedef, masks)


def partition(tree: T) -> tuple[T, T]:
    """Split a model into ``(params, rest)``: two pytrees shaped like it, with ``None`` holes.

    ``params`` holds the trainable parameters, ``rest`` every other array. Differentiate and
    optimise ``params``; :func:`combine` puts the model back together.

    Example:
        >>> import jax, optax, stoax
        >>> model = stoax.nn.Linear(3, 2, key=jax.random.key(0))
        >>> params, rest = stoax.partition(model)
        >>> opt_state = optax.adam(1e-3).init(params)
        >>> stoax.combine(params, rest) == model
        True
    """
    mask = trainable(tree)
    params = jax.tree.map(lambda x, m: x if m else None, tree, mask)
    rest = jax.tree.map(lambda x, m: None if m else x, tree, mask)
    return params, rest


def combine(*trees: T) -> T:
    """Merge pytrees with ``None`` holes (from :func:`partition`) into one: the first non-``None``
    leaf wins at each position.

    The trees must have one structure (the halves of one model); a module that ends up with a
    hole at an array field -- ``combine(rest)`` without the params -- is refused, naming the
    field.
    """
    if not trees:
        raise TypeError("combine needs the trees to merge: combine(params, rest).")
    is_hole = lambda x: x is None
    first_def = jax.tree.structure(trees[0], is_leaf=is_hole)
    for i, tree in enumerate(trees[1:], start=1):
        other = jax.tree.structure(tree, is_leaf=is_hole)
        if not same_structure(other, first_def):
            raise ValueError(
                f"combine: tree {i} does not have the structure of tree 0 -- they are not two "
                f"halves of one model (from stoax.partition(model)).\n  tree 0: {first_def}\n"
                f"  tree {i}: {other}"
            )

    def first(*xs: Any) -> Any:
        return next((x for x in xs if x is not None), None)

    merged = jax.tree.map(first, *trees, is_leaf=is_hole)
    holes = [
        jax.tree_util.keystr(path)
        for path, x in jax.tree_util.tree_flatten_with_path(merged, is_leaf=is_hole)[0]
        if x is None
    ]
    if holes and _has_module(merged):
        raise ValueError(
            f"combine: after merging, {len(holes)} array field(s) are still holes (None): "
            f"{', '.join(holes[:5])}{' ...' if len(holes) > 5 else ''}. Pass both halves: "
            "stoax.combine(params, rest)."
        )
    return merged


def _has_module(tree: Any) -> bool:
    return any(is_module(x) for x in jax.tree.leaves(tree, is_leaf=is_module))
