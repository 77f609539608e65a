"""The abstract values of one jaxpr's variables while it is analysed, and constant folding.

Every variable has an input mask (``deps``: which of the jaxpr's inputs it depends on) and, when
it carries keys (typed keys, or ``uint32`` data of legacy keys), an array of key identities
(``ids``). Data identities (``did``) name *values* for ``fold_in`` / ``seed`` messages: a
literal, a folded small integer constant, or -- by value numbering -- the same arithmetic applied to
the same values (``convert(s)`` computed twice is one value).

Small integer constants are folded on demand (:meth:`Frame.value`), so ``fold_in(k, carry * 0)``
is ``fold_in(k, 0)`` and ``split(k, 3)[jnp.array([0, 0])]`` picks the first child twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from stoax.audit import _compat
from stoax.audit._compat import Literal
from stoax.audit._identities import Identities
from stoax.audit._records import Draw, Expr

__all__ = ["Frame", "VALUE_OPS"]

_MAX_FOLD = 4096  # constants larger than this are not folded
_MAX_DEPTH = 64


def _np_select(pred: np.ndarray, *cases: np.ndarray) -> np.ndarray:
    return np.choose(pred.astype(np.int64), np.broadcast_arrays(*cases))


def _np_broadcast(x: np.ndarray, *, shape: tuple, broadcast_dimensions: tuple, **_: Any):
    expanded = [1] * len(shape)
    for src, dst in enumerate(broadcast_dimensions):
        expanded[dst] = x.shape[src]
    return np.broadcast_to(x.reshape(expanded), shape)


def _np_iota(*, dtype: Any, shape: tuple, dimension: int, **_: Any) -> np.ndarray:
    ar = np.arange(shape[dimension], dtype=np.dtype(dtype))
    view = [1] * len(shape)
    view[dimension] = shape[dimension]
    return np.broadcast_to(ar.reshape(view), shape)


def _np_slice(x, *, start_indices, limit_indices, strides=None, **_):
    strides = strides or (1,) * len(start_indices)
    return x[
        tuple(
            slice(s, e, st) for s, e, st in zip(start_indices, limit_indices, strides, strict=True)
        )
    ]


# primitive -> numpy evaluation of known small integer / boolean values
_FOLD: dict[str, Any] = {
    "add": lambda a, b, **_: a + b,
    "sub": lambda a, b, **_: a - b,
    "mul": lambda a, b, **_: a * b,
    "neg": lambda a, **_: -a,
    "max": lambda a, b, **_: np.maximum(a, b),
    "min": lambda a, b, **_: np.minimum(a, b),
    "rem": lambda a, b, **_: np.fmod(a, b),
    "and": lambda a, b, **_: a & b,
    "or": lambda a, b, **_: a | b,
    "xor": lambda a, b, **_: a ^ b,
    "not": lambda a, **_: ~a,
    "eq": lambda a, b, **_: a == b,
    "ne": lambda a, b, **_: a != b,
    "lt": lambda a, b, **_: a < b,
    "le": lambda a, b, **_: a <= b,
    "gt": lambda a, b, **_: a > b,
    "ge": lambda a, b, **_: a >= b,
    "select_n": _np_select,
    "convert_element_type": lambda a, **_: a,
    "broadcast_in_dim": _np_broadcast,
    "reshape": lambda a, **_: a,  # reshaped to the output shape below
    "squeeze": lambda a, **_: a,
    "slice": _np_slice,
    "concatenate": lambda *xs, dimension, **_: np.concatenate(xs, axis=dimension),
    "stack": lambda *xs, axis, **_: np.stack(xs, axis=axis),
    "transpose": lambda a, *, permutation, **_: np.transpose(a, permutation),
    "iota": _np_iota,
    "copy": lambda a, **_: a,
    "copy_p": lambda a, **_: a,
}
_ZERO_ABSORBING = frozenset({"mul", "and"})  # x * 0 == 0 whatever x is

# primitives whose result is a function of their operands' values only: value-numbered
VALUE_OPS = frozenset(_FOLD) | {"shift_right_logical", "shift_left", "shift_right_arithmetic"}


def _is_int_like(dtype: Any) -> bool:
    try:
        return np.dtype(dtype).kind in "biu"
    except TypeError:
        return False


class Frame:
    """The analysis state of one jaxpr."""

    __slots__ = ("an", "deps", "ids", "did", "defs", "vals", "draws", "pending", "links", "raw")

    def __init__(self, identities: Identities) -> None:
        self.an = identities
        self.deps: dict = {}
        self.ids: dict = {}
        self.did: dict = {}
        self.defs: dict = {}  # var -> the equation of a value op defining it
        self.vals: dict = {}  # var -> a known constant value, or None
        self.draws: list[Draw] = []
        # draws whose reach is resolved after the backward pass: (draw, link or None, mask/vars)
        self.pending: list[tuple[Draw, Any, Any]] = []
        self.links: dict[int, Any] = {}  # equation index -> how reach flows through it
        self.raw: set[int] = set()  # keys whose raw data this jaxpr already hashed by hand

    # -- reading atoms ------------------------------------------------------------------------
    def dep(self, a: Any) -> int:
        if isinstance(a, Literal):
            return 0
        return self.deps.get(a, 0)

    def dep_all(self, atoms: Any) -> int:
        d = 0
        for a in atoms:
            if not isinstance(a, Literal):
                d |= self.deps.get(a, 0)
        return d

    def key_ids(self, a: Any) -> np.ndarray | None:
        if isinstance(a, Literal):
            return None
        return self.ids.get(a)

    def set(self, v: Any, deps: int, ids: np.ndarray | None = None) -> None:
        self.deps[v] = deps
        if ids is not None:
            self.ids[v] = ids

    # -- constants -------------------------------------------------------------------------------
    def set_const(self, v: Any, val: Any) -> None:
        small = getattr(val, "size", _MAX_FOLD + 1) <= _MAX_FOLD
        if small and _is_int_like(getattr(val, "dtype", None)):
            self.vals[v] = np.asarray(val)
        else:
            self.vals[v] = None

    def value(self, a: Any, depth: int = 0) -> np.ndarray | None:
        """The value of ``a`` when it is a small integer / boolean constant, else None."""
        if isinstance(a, Literal):
            val = np.asarray(a.val)
            return val if _is_int_like(val.dtype) else None
        if a in self.vals:
            return self.vals[a]
        eqn = self.defs.get(a)
        out = None
        if eqn is not None and depth < _MAX_DEPTH and _is_int_like(a.aval.dtype):
            out = self._fold(eqn, a, depth)
        self.vals[a] = out
        return out

    def _fold(self, eqn: Any, v: Any, depth: int) -> np.ndarray | None:
        name = eqn.primitive.name
        fn = _FOLD.get(name)
        if fn is None or len(eqn.outvars) != 1 or len(eqn.invars) > 33:  # np.choose: <= 32
            return None
        if name == "reshape" and eqn.params.get("dimensions") not in (None, ()):
            return None
        shape = tuple(v.aval.shape)
        if int(np.prod(shape, dtype=np.int64)) > _MAX_FOLD:
            return None
        vals = [self.value(x, depth + 1) for x in eqn.invars]
        if name in _ZERO_ABSORBING and any(x is not None and not x.any() for x in vals):
            return np.zeros(shape, np.dtype(v.aval.dtype))
        if any(x is None for x in vals):
            return None
        try:
            with np.errstate(all="ignore"):
                out = np.asarray(fn(*vals, **eqn.params))
        except TypeError as err:
            if "keyword" not in str(err):
                raise
            # a parameter the rule reads was renamed
            raise _compat.unsupported(f"cannot fold the {name} primitive ({err})") from err
        return np.asarray(out, dtype=np.dtype(v.aval.dtype)).reshape(shape)

    # -- data identities -------------------------------------------------------------------------
    def data_id(self, a: Any, depth: int = 0) -> int:
        """The identity of ``a``'s value: equal ints for values known to be equal."""
        if isinstance(a, Literal):
            return self.an.value_id(np.asarray(a.val))
        d = self.did.get(a)
        if d is not None:
            return d
        val = self.value(a)
        if val is not None:
            d = self.an.value_id(val)
        else:
            eqn = self.defs.get(a)
            if eqn is not None and depth < _MAX_DEPTH:
                d = self._numbered(eqn, a, depth)
            else:
                d = self.an.fresh()
        self.did[a] = d
        return d

    def _numbered(self, eqn: Any, v: Any, depth: int) -> int:
        try:
            params = tuple(sorted(eqn.params.items()))
            hash(params)
        except TypeError:
            return self.an.fresh()
        kids = tuple(self.data_id(x, depth + 1) for x in eqn.invars)
        out = eqn.outvars.index(v)
        return self.an.intern(Expr("op", (eqn.primitive.name, params, out), kids))
