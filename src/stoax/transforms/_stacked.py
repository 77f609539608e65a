"""Bookkeeping shared by :class:`~stoax.nn.Stack` and :class:`~stoax.nn.Ensemble`: one module
whose arrays carry a leading axis of copies.

Which leaves carry that axis is recorded *by path* when the container is built. A leaf that
appears later -- the scalar ``training`` flag written by ``stoax.set_mode(model, jnp.asarray(b))``,
a rate replaced by an array -- is not on the record and is shared by every copy: it is closed
over by ``lax.scan`` / given ``in_axes=None`` by ``jax.vmap``, never sliced as if it had the axis.
Recording paths rather than guessing from shapes is what makes a length-``n`` vector that all
copies share and a per-copy scalar unambiguous.

:class:`Copies` is the container both classes derive from; :func:`check_remat` and
:func:`check_unroll` are the option checks of every scan of the package (``stoax.scan`` too).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np

from stoax import keys
from stoax._module import Module, is_module, same_structure

__all__ = [
    "Copies",
    "leaf_paths",
    "Split",
    "split",
    "build_copies",
    "stack_copies",
    "copy_repr",
    "check_remat",
    "check_unroll",
]


def leaf_paths(block: Any) -> frozenset[str]:
    """The paths (``jax.tree_util.keystr``) of every array leaf of ``block``."""
    flat, _ = jax.tree_util.tree_flatten_with_path(block)
    return frozenset(jax.tree_util.keystr(path) for path, _ in flat)


class Split:
    """A block taken apart into the leaves with the copy axis and the shared leaves."""

    def __init__(self, block: Any, stacked: frozenset[str], length: int, where: str):
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(block)
        self.is_stacked = [jax.tree_util.keystr(p) in stacked for p, _ in flat]
        self.stacked = [x for (_, x), s in zip(flat, self.is_stacked, strict=True) if s]
        self.shared = [x for (_, x), s in zip(flat, self.is_stacked, strict=True) if not s]
        for (path, x), s in zip(flat, self.is_stacked, strict=True):
            if s and (np.ndim(x) == 0 or np.shape(x)[0] != length):
                raise ValueError(
                    f"{where}: the array at {jax.tree_util.keystr(path)} has shape "
                    f"{tuple(np.shape(x))}, but it holds one value per copy and there are "
                    f"{length} copies, so its leading axis must have size {length}. If you "
                    f"replaced it with a value all copies share, give it that axis: "
                    f"jnp.broadcast_to(value, ({length}, *value.shape))."
                )

    def rebuild(self, stacked: Sequence[Any]) -> Any:
        """The block with ``stacked`` in place of the stacked leaves (the shared ones kept)."""
        it_s, it_r = iter(stacked), iter(self.shared)
        leaves = [next(it_s) if s else next(it_r) for s in self.is_stacked]
        return jax.tree.unflatten(self.treedef, leaves)

    def stacked_of(self, block: Any, where: str) -> list[Any]:
        """The leaves of ``block`` (one copy, updated by :func:`stoax.apply`) that carry the copy
        axis; its shared leaves must be the ones :meth:`rebuild` put in."""
        leaves, treedef = jax.tree.flatten(block)
        if not same_structure(treedef, self.treedef):
            raise ValueError(f"{where}: apply changed the structure of a copy ({treedef}).")
        shared = [x for x, s in zip(leaves, self.is_stacked, strict=True) if not s]
        if any(a is not b for a, b in zip(shared, self.shared, strict=True)):
            raise ValueError(
                f"{where}: apply updated an array that all copies share (it was given no copy "
                "axis when the container was built); state must be per copy."
            )
        return [x for x, s in zip(leaves, self.is_stacked, strict=True) if s]

    def index(self, i: int | jax.Array) -> Any:
        """Copy ``i`` as a plain block."""
        return self.rebuild([x[i] for x in self.stacked])


def check_remat(remat: Any, where: str) -> bool | Callable[..., bool]:
    """``remat`` is ``False``, ``True`` or a ``jax.checkpoint`` policy (a callable)."""
    if isinstance(remat, bool | np.bool_):
        return bool(remat)
    if callable(remat):
        return remat
    raise TypeError(
        f"{where}: remat must be True, False or a jax.checkpoint policy such as "
        f"jax.checkpoint_policies.dots_with_no_batch_dims_saveable, got {remat!r}."
    )


def check_unroll(unroll: Any, where: str) -> int | bool:
    """``unroll`` as ``lax.scan`` takes it: a bool, or an int >= 1."""
    if isinstance(unroll, bool | np.bool_):
        return bool(unroll)
    if isinstance(unroll, int | np.integer) and unroll >= 1:
        return int(unroll)
    raise TypeError(
        f"{where}: unroll must be a bool or an int >= 1 (as in lax.scan), got {unroll!r}."
    )


def split(block: Any, stacked: frozenset[str], length: int, where: str) -> Split:
    return Split(block, stacked, length, where)


def build_copies(
    make: Callable[[jax.Array], Any], n: int, key: jax.Array, where: str
) -> tuple[Any, frozenset[str]]:
    """``n`` copies made by ``make`` under ``jax.vmap``; copy ``i`` gets
    ``keys.init_child(key, i)``, so copy ``i`` is bitwise the block
    ``make(keys.init_child(key, i))`` a Python loop would build."""
    if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
        raise ValueError(f"{where}: the number of copies must be a positive int, got {n!r}.")
    key = keys.as_key(key, where)

    def make_one(i: jax.Array) -> Any:
        block = make(keys.init_child(key, i))
        if not is_module(block):
            raise TypeError(
                f"{where}: make(key) must return a stoax.Module, got {type(block).__name__}."
            )
        return block

    # Under jit: one compiled program instead of one dispatch per batched op (many times
    # faster); the parameters are bitwise those of the eager loop (pinned by the tests).
    block = jax.jit(jax.vmap(make_one))(jnp.arange(int(n)))
    return block, leaf_paths(block)


def stack_copies(blocks: Sequence[Any], where: str) -> tuple[Any, frozenset[str]]:
    """Stack existing blocks of one structure (same static fields, same shapes) into one."""
    blocks = list(blocks)
    if not blocks:
        raise ValueError(f"{where}: needs at least one block.")
    first = jax.tree.structure(blocks[0])
    for i, b in enumerate(blocks[1:], start=1):
        if not same_structure(jax.tree.structure(b), first):
            raise ValueError(
                f"{where}: block {i} differs from block 0 in structure or static fields "
                f"(sizes, rates given as Python floats, activation): every copy must share "
                f"them.\n  block 0: {first}\n  block {i}: {jax.tree.structure(b)}"
            )
    block = jax.tree.map(lambda *xs: jnp.stack(xs), *blocks)
    return block, leaf_paths(block)


def infer_length(block: Any, stacked: frozenset[str], where: str) -> int:
    flat, _ = jax.tree_util.tree_flatten_with_path(block)
    sizes = {
        jax.tree_util.keystr(p): np.shape(x)[0]
        for p, x in flat
        if jax.tree_util.keystr(p) in stacked and np.ndim(x) > 0
    }
    if not sizes or len(set(sizes.values())) != 1:
        raise ValueError(
            f"{where}: cannot tell the number of copies from the block's leading axes "
            f"{sizes or '(it has no arrays)'}; pass length=..."
        )
    return int(next(iter(sizes.values())))


def copy_repr(block: Any, stacked: frozenset[str]) -> str:
    """The repr of one copy: stacked arrays shown with their per-copy shape."""
    from stoax._pretty import pformat

    flat, treedef = jax.tree_util.tree_flatten_with_path(block)
    leaves = [
        jax.ShapeDtypeStruct(np.shape(x)[1:], x.dtype)
        if jax.tree_util.keystr(p) in stacked and np.ndim(x) > 0
        else x
        for p, x in flat
    ]
    one = jax.tree.unflatten(treedef, leaves)
    return pformat(one) if isinstance(one, Module) else repr(one)


class Copies(Module):
    """The container part that :class:`~stoax.nn.Stack` and :class:`~stoax.nn.Ensemble` share:
    one block whose recorded arrays carry a leading axis of copies, built with
    :func:`build_copies` or :func:`stack_copies`, indexed, iterated and shown copy by copy.

    A subclass declares its fields -- the block, the number of copies, ``stacked`` (the recorded
    paths) and its own options -- and names them in three class attributes, so that each keeps
    the words of its domain (a stack's *layers*, an ensemble's *members*) in its fields and its
    messages while the rules live here once. Its ``__init__`` calls :meth:`_init_copies`.
    """

    # Not annotated: class attributes, not dataclass fields.
    _block_field = ""  # the field that holds the block ("layers", "members")
    _count_field = ""  # the field that holds the number of copies ("length", "size")
    _noun = ""  # one copy, in messages ("layer", "member")
    _from_name = ""  # the classmethod that stacks existing blocks ("from_layers")

    def _init_copies(self, block: Any, count: int | None, stacked: frozenset[str] | None) -> None:
        """Set the block, the recorded paths (all of the block's leaves unless given) and the
        number of copies (read off the leading axes unless given)."""
        name = type(self).__name__
        setattr(self, self._block_field, block)
        self.stacked = leaf_paths(block) if stacked is None else frozenset(stacked)
        count = int(count) if count is not None else infer_length(block, self.stacked, name)
        setattr(self, self._count_field, count)

    def __check_init__(self) -> None:
        name, block = type(self).__name__, self._block
        if not isinstance(block, Module):
            raise TypeError(
                f"{name}: {self._block_field} must be a stoax.Module (one block whose arrays "
                f"have the leading {self._noun} axis), got {type(block).__name__}. Use "
                f"{name}.build or {name}.{self._from_name}."
            )
        self._parts()  # check every leading axis now, not at the first call

    @property
    def _block(self) -> Any:
        return getattr(self, self._block_field)

    @property
    def _count(self) -> int:
        return getattr(self, self._count_field)

    def _parts(self) -> Split:
        return split(self._block, self.stacked, self._count, type(self).__name__)

    @classmethod
    def _built(
        cls, make: Callable[[jax.Array], Any], n: int, key: jax.Array, **options: Any
    ) -> Any:
        """``cls.build``: ``n`` copies made by ``make`` (see :func:`build_copies`)."""
        block, stacked = build_copies(make, n, key, f"{cls.__name__}.build")
        return cast(Any, cls)(block, stacked=stacked, **{cls._count_field: n}, **options)

    @classmethod
    def _from_blocks(cls, blocks: Sequence[Any], **options: Any) -> Any:
        """``cls.from_layers`` / ``from_members``: existing blocks of one structure, stacked."""
        blocks = list(blocks)
        block, stacked = stack_copies(blocks, f"{cls.__name__}.{cls._from_name}")
        return cast(Any, cls)(block, stacked=stacked, **{cls._count_field: len(blocks)}, **options)

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: int | slice) -> Any:
        """Copy ``i`` as a plain block; a slice gives a shorter container of the same kind."""
        name, n, noun = type(self).__name__, self._count, self._noun
        parts = self._parts()
        if isinstance(i, slice):
            picked = range(n)[i]
            if not picked:
                raise IndexError(f"{name} of {n} {noun}s: the slice {i} selects none.")
            block = parts.rebuild([x[i] for x in parts.stacked])
            return self.replace(**{self._block_field: block, self._count_field: len(picked)})
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"{name} indices are ints or slices, got {type(i).__name__}.")
        if not -n <= i < n:
            raise IndexError(f"{name} of {n} {noun}s: no {noun} {i}.")
        return parts.index(int(i) % n)

    def __iter__(self) -> Iterator[Any]:
        return (self[i] for i in range(self._count))

    def _repr_options(self) -> list[tuple[str, Any]]:
        """``(name, value)`` of the options that differ from their defaults, for the repr."""
        return []

    def __repr__(self) -> str:
        extra = "".join(f", {name}={value!r}" for name, value in self._repr_options())
        one = copy_repr(self._block, self.stacked)
        return f"{type(self).__name__}({self._count} x {one}{extra})"
