"""Key identities: interning derivation expressions, and substituting a summary's inputs.

:class:`Identities` hash-conses :class:`~stoax.audit._records.Expr` s into ints, so two keys
derived the same way from the same parent are the same int. Where the PRNG makes two derivations
equal -- with the partitionable threefry (JAX's default), ``split(k, shape)`` element ``i`` (flat)
*is* ``fold_in(k, i)`` -- both are interned as the same ``fold`` expression, so the audit sees the
collision. :class:`Substitution` rewrites a summary's identities (expressed in terms of its jaxpr's
inputs) into a call site's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import jax
import numpy as np

from stoax.audit import _compat
from stoax.audit._records import PARAM_KINDS, Expr, Site

__all__ = ["Identities", "Substitution", "is_key_dtype", "is_u32", "set_bits"]

_MAX_ARRAY = 1 << 16  # key arrays larger than this are not tracked element by element


def is_key_dtype(dtype: Any) -> bool:
    try:
        return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return False


def is_u32(dtype: Any) -> bool:
    try:
        return np.dtype(dtype) == np.uint32
    except TypeError:
        return False


def set_bits(m: int) -> list[int]:
    """The indices of the set bits of ``m`` (a non-negative int of any size)."""
    s = bin(m)[:1:-1]  # least significant first, without "0b"
    out = []
    i = s.find("1")
    while i >= 0:
        out.append(i)
        i = s.find("1", i + 1)
    return out


class Identities:
    """The interner of one audit, plus where each constant key was made."""

    def __init__(self) -> None:
        self._table: dict[Expr, int] = {}
        self.exprs: list[Expr] = []
        self._glob: list[bool] = []  # depends on no jaxpr input: never substituted
        self._next_local = 0
        self.origin: dict[int, Site] = {}  # where a constant key was made (seed / wrap)

    def intern(self, expr: Expr) -> int:
        i = self._table.get(expr)
        if i is None:
            glob = expr.kind not in PARAM_KINDS and all(
                c >= 0 and self._glob[c] for c in expr.children
            )
            i = len(self.exprs)
            self._table[expr] = i
            self.exprs.append(expr)
            self._glob.append(glob)
        return i

    def is_global(self, i: int) -> bool:
        return i >= 0 and self._glob[i]

    def fresh(self) -> int:
        self._next_local += 1
        return -self._next_local

    def fresh_arr(self, shape: tuple) -> np.ndarray:
        n = int(np.prod(shape, dtype=np.int64))
        start = self._next_local + 1
        self._next_local += n
        return -np.arange(start, start + n, dtype=np.int64).reshape(shape)

    # -- data and constants ------------------------------------------------------------------
    def value_id(self, val: Any) -> int:
        """The identity of a constant value (a literal, a folded constant, a captured array)."""
        size = getattr(val, "size", None)
        if size is not None and size > 64:  # not copied to the host: named by the object
            return self.intern(Expr("object", id(val)))
        if is_key_dtype(getattr(val, "dtype", None)):
            val = jax.random.key_data(val)
        arr = np.asarray(val)
        if arr.size > 64:
            return self.intern(Expr("object", id(val)))
        return self.intern(Expr("value", (arr.dtype.str, arr.shape, arr.tobytes())))

    def const_key_ids(self, val: Any) -> np.ndarray:
        data = np.asarray(jax.random.key_data(val))
        shape = tuple(np.shape(val))
        n = int(np.prod(shape, dtype=np.int64))
        rows = data.reshape(n, -1)
        flat = [
            self.intern(Expr("const_key", (str(val.dtype), rows[j].tobytes()))) for j in range(n)
        ]
        return np.array(flat, dtype=np.int64).reshape(shape)

    def param_ids(self, i: int, aval: Any) -> np.ndarray:
        """The identities of input ``i``'s key elements (a legacy ``uint32`` key: one per row)."""
        shape = tuple(aval.shape)
        if is_key_dtype(aval.dtype):
            n = int(np.prod(shape, dtype=np.int64))
            elems = [self.intern(Expr("param", (i, j, False))) for j in range(n)]
            return np.array(elems, dtype=np.int64).reshape(shape)
        lead = shape[:-1] if shape else ()
        n = int(np.prod(lead, dtype=np.int64))
        flat = np.array([self.intern(Expr("param", (i, j, True))) for j in range(n)], np.int64)
        if not shape:
            return flat.reshape(())
        return np.broadcast_to(flat.reshape(lead)[..., None], shape)

    def param_data(self, i: int) -> int:
        return self.intern(Expr("param_data", i))

    # -- derivations ---------------------------------------------------------------------------
    def fold(self, parent: int, data: int, element: int | None = None) -> int:
        return self.intern(Expr("fold", element, (parent, data)))

    def split_children(self, parents: np.ndarray, shape: tuple, dtype: Any) -> np.ndarray:
        """Identities of ``random_split(parents, shape)``: with the partitionable threefry,
        child ``i`` (flat) of a key is ``fold_in(key, i)``, and is interned as that."""
        m = int(np.prod(shape, dtype=np.int64))
        as_fold = _compat.splits_are_fold_ins(dtype)
        if as_fold:
            data = [self.value_id(np.uint32(j)) for j in range(m)]
            out = [self.fold(int(k), data[j]) for k in parents.reshape(-1) for j in range(m)]
        else:
            out = [
                self.intern(Expr("split", (shape, j), (int(k),)))
                for k in parents.reshape(-1)
                for j in range(m)
            ]
        return np.array(out, np.int64).reshape(tuple(parents.shape) + tuple(shape))

    def indexed(self, ids: np.ndarray, out_shape: tuple, index_data: list[int]) -> np.ndarray:
        """Elements of the key array ``ids`` picked by traced indices (``ks[i]``): the same
        array and the same index data give the same keys."""
        if ids.size > _MAX_ARRAY:
            return self.fresh_arr(out_shape)
        arr = self.intern(Expr("array", ids.shape, tuple(int(x) for x in ids.reshape(-1))))
        n = int(np.prod(out_shape, dtype=np.int64))
        flat = [self.intern(Expr("index", (out_shape, j), (arr, *index_data))) for j in range(n)]
        return np.array(flat, np.int64).reshape(out_shape)

    # -- where constant keys come from -------------------------------------------------------
    def note_origin(self, ids: np.ndarray, site: Callable[[], Site]) -> None:
        for i in np.asarray(ids).reshape(-1).tolist():
            if self.is_global(i) and i not in self.origin:
                s = site()
                if s.loc is not None:
                    self.origin[i] = s

    def root_origin(self, ident: int) -> Site | None:
        """Where the constant key ``ident`` was made, following split / fold_in to the root."""
        for _ in range(10000):
            if ident < 0:
                return None
            site = self.origin.get(ident)
            if site is not None:
                return site
            e = self.exprs[ident]
            if e.kind not in ("split", "fold", "index") or not e.children:
                return None
            ident = e.children[0]
            if self.exprs[ident].kind == "array":
                kids = self.exprs[ident].children
                if not kids:
                    return None
                ident = kids[0]
        return None


class Substitution:
    """A summary's identities and input masks rewritten in terms of a call site's values.

    ``p_deps[i]``: the call site's input mask of the summary's input ``i``; ``p_ids[i]`` its key
    identities (or None); ``p_did(i)`` its data identity.
    """

    __slots__ = ("ids", "p_deps", "p_ids", "p_did", "memo", "mask_memo", "_identity")

    def __init__(
        self, ids: Identities, p_deps: list[int], p_ids: list, p_did: Callable[[int], int]
    ) -> None:
        self.ids = ids
        self.p_deps = p_deps
        self.p_ids = p_ids
        self.p_did = p_did
        self.memo: dict[int, int] = {}
        self.mask_memo: dict[int, int] = {}
        # input k of the summary is input k of the caller (a jitted step called with its inputs)
        self._identity = all(d == 1 << k for k, d in enumerate(p_deps))

    def mask(self, m: int) -> int:
        if m == 0 or self._identity:
            return m
        r = self.mask_memo.get(m)
        if r is None:
            r, p_deps = 0, self.p_deps
            for k in set_bits(m):
                r |= p_deps[k]
            self.mask_memo[m] = r
        return r

    def sub(self, i: int) -> int:
        i = int(i)
        ids = self.ids
        if ids.is_global(i):
            return i
        r = self.memo.get(i)
        if r is not None:
            return r
        if i < 0:
            r = ids.fresh()
        else:
            e = ids.exprs[i]
            if e.kind == "param":
                r = self._param_elem(*cast(tuple[int, int, bool], e.payload))
            elif e.kind == "param_data":
                r = self.p_did(cast(int, e.payload))
            else:
                r = ids.intern(Expr(e.kind, e.payload, tuple(self.sub(c) for c in e.children)))
        self.memo[i] = r
        return r

    def sub_arr(self, arr: np.ndarray) -> np.ndarray:
        flat = [self.sub(x) for x in np.asarray(arr).reshape(-1)]
        return np.array(flat, dtype=np.int64).reshape(np.shape(arr))

    def _param_elem(self, i: int, j: int, legacy: bool) -> int:
        ids = self.p_ids[i] if i < len(self.p_ids) else None
        if ids is None:
            return self.ids.fresh()
        if not legacy:
            return int(ids.reshape(-1)[j])
        if ids.ndim == 0:
            return int(ids)
        rows = ids.reshape(-1, ids.shape[-1])
        row = rows[j]
        return int(row[0]) if (row == row[0]).all() else self.ids.fresh()
