"""Rules of the random primitives, and of the primitives that move key arrays around.

``HANDLERS``: the random primitives (``random_seed``, ``random_split``, ``random_fold_in``,
``random_bits``, ...). ``random_split``, ``random_bits`` and ``threefry2x32`` consume their key
(:meth:`Analyzer.record`); ``fold_in`` derives without consuming; reading a key's raw data
(``random_unwrap``: ``key_data(k)[0] != 0``, ``jax.debug.print``) consumes nothing, but
``HASHING`` arithmetic on the raw words (a hand-written PRNG) does.

``STRUCTURAL``: first-order primitives that select, reshape or copy key elements without changing
them; the same operation is applied to the array of identities. Indices that are traced pick
``index`` identities (the same array indexed by the same value gives the same key); indices that
fold to constants pick exactly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stoax.audit import _compat
from stoax.audit._analysis import Analyzer, site_of
from stoax.audit._compat import Literal
from stoax.audit._frame import Frame
from stoax.audit._identities import is_key_dtype
from stoax.audit._records import Expr

__all__ = ["HANDLERS", "HASHING", "STRUCTURAL"]


def _impl(eqn: Any, a: Any) -> str:
    return _compat.key_impl_name(eqn.outvars[0].aval.dtype) or str(eqn.params.get("impl", ""))


def _random_seed(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    (a,) = eqn.invars
    shape = tuple(eqn.outvars[0].aval.shape)
    data = fr.data_id(a)
    impl = _impl(eqn, a)
    n = int(np.prod(shape, dtype=np.int64))
    ids = np.array([an.ids.intern(Expr("seed", (impl, j), (data,))) for j in range(n)], np.int64)
    fr.set(eqn.outvars[0], 0 if fr.value(a) is not None else fr.dep(a), ids.reshape(shape))
    an.ids.note_origin(ids, lambda: site_of(eqn))


def _random_wrap(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    (a,) = eqn.invars
    shape = tuple(eqn.outvars[0].aval.shape)
    ids = fr.key_ids(a)
    n = int(np.prod(shape, dtype=np.int64))
    if ids is not None and ids.ndim >= 1:
        rows = ids.reshape(n, -1)
        out = np.empty(n, np.int64)
        for j in range(n):
            row = rows[j]
            out[j] = row[0] if (row == row[0]).all() else an.ids.fresh()
        out = out.reshape(shape)
    else:
        data = fr.data_id(a)
        impl = _impl(eqn, a)
        out = np.array(
            [an.ids.intern(Expr("wrap", (impl, j), (data,))) for j in range(n)], np.int64
        ).reshape(shape)
        an.ids.note_origin(out, lambda: site_of(eqn))
    fr.set(eqn.outvars[0], fr.dep(a), out)


def _random_unwrap(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    (a,) = eqn.invars
    ids = fr.key_ids(a)
    shape = tuple(eqn.outvars[0].aval.shape)
    out = None if ids is None else np.broadcast_to(np.asarray(ids)[..., None], shape)
    fr.set(eqn.outvars[0], fr.dep(a), out)


def _random_split(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    (a,) = eqn.invars
    ids = fr.key_ids(a)
    deps = fr.dep(a)
    shape = _compat.random_shape(eqn.params, "random_split")
    if ids is None:
        ids = an.ids.fresh_arr(tuple(a.aval.shape))
    an.record(fr, i, eqn, ids, deps, ("random_split", shape))
    fr.set(eqn.outvars[0], deps, an.ids.split_children(ids, shape, a.aval.dtype))


def _random_fold_in(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    k, msg = eqn.invars
    ids = fr.key_ids(k)
    if ids is None:
        an.default(fr, eqn)
        return
    shape = tuple(eqn.outvars[0].aval.shape)
    val = fr.value(msg)
    deps = fr.dep(k) | (0 if val is not None else fr.dep(msg))
    keys = np.broadcast_to(ids, shape).reshape(-1)
    n = keys.size
    if val is not None:  # a known message: fold_in(k, 0) is split(k)[0]
        words = np.broadcast_to(np.asarray(val).astype(np.uint32), shape).reshape(-1)
        data = [an.ids.value_id(np.uint32(w)) for w in words]
        out = [an.ids.fold(int(keys[j]), data[j]) for j in range(n)]
    else:
        did = fr.data_id(msg)
        vector = bool(getattr(msg.aval, "shape", ()))
        out = [an.ids.fold(int(keys[j]), did, j if vector else None) for j in range(n)]
    fr.set(eqn.outvars[0], deps, np.array(out, np.int64).reshape(shape))


def _random_bits(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    (a,) = eqn.invars
    ids = fr.key_ids(a)
    deps = fr.dep(a)
    if ids is None:
        ids = an.ids.fresh_arr(tuple(a.aval.shape))
    shape = _compat.random_shape(eqn.params, "random_bits")
    an.record(fr, i, eqn, ids, deps, ("random_bits", shape, eqn.params.get("bit_width")))
    fr.set(eqn.outvars[0], deps)


def _threefry(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    parts = []
    for a in eqn.invars:
        ids = fr.key_ids(a)
        if ids is not None and ids.size and (ids == ids.reshape(-1)[0]).all():
            parts.append(int(ids.reshape(-1)[0]))
        else:
            parts.append(fr.data_id(a))
    key_deps = fr.dep(eqn.invars[0]) | fr.dep(eqn.invars[1])
    ident = an.ids.intern(Expr("threefry", None, tuple(parts)))
    an.record(fr, i, eqn, np.array([ident]), key_deps, ("threefry2x32",))
    deps = fr.dep_all(eqn.invars)
    for v in eqn.outvars:
        fr.set(v, deps)


def _random_clone(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    an.default(fr, eqn)  # a clone is a new identity: reuse through clone is declared intent


# bit-mixing arithmetic: applied to a key's raw words, a hand-written draw
HASHING = frozenset(
    {
        "add",
        "sub",
        "mul",
        "xor",
        "or",
        "and",
        "shift_left",
        "shift_right_logical",
        "shift_right_arithmetic",
        "rem",
        "population_count",
    }
)

HANDLERS = {
    "random_seed": _random_seed,
    "random_wrap": _random_wrap,
    "random_unwrap": _random_unwrap,
    "random_split": _random_split,
    "random_fold_in": _random_fold_in,
    "random_bits": _random_bits,
    "threefry2x32": _threefry,
    "random_clone": _random_clone,
}


# ---------------------------------------------------------------------------------------------
# structural primitives: rule(an, fr, eqn, in_ids) -> ids of each output, or None (not modelled)


def _slice(an, fr, eqn, in_ids):
    p = eqn.params
    strides = p.get("strides") or (1,) * len(p["start_indices"])
    idx = tuple(
        slice(s, e, st)
        for s, e, st in zip(p["start_indices"], p["limit_indices"], strides, strict=True)
    )
    return [in_ids[0][idx]]


def _squeeze(an, fr, eqn, in_ids):
    return [np.squeeze(in_ids[0], axis=tuple(eqn.params["dimensions"]))]


def _reshape(an, fr, eqn, in_ids):
    if eqn.params.get("dimensions") not in (None, ()):
        return None
    return [np.reshape(in_ids[0], tuple(eqn.outvars[0].aval.shape))]


def _broadcast_in_dim(an, fr, eqn, in_ids):
    shape = tuple(eqn.params["shape"])
    dims = tuple(eqn.params["broadcast_dimensions"])
    x = in_ids[0]
    expanded = [1] * len(shape)
    for src, dst in enumerate(dims):
        expanded[dst] = x.shape[src]
    return [np.broadcast_to(x.reshape(expanded), shape)]


def _transpose(an, fr, eqn, in_ids):
    return [np.transpose(in_ids[0], tuple(eqn.params["permutation"]))]


def _rev(an, fr, eqn, in_ids):
    return [np.flip(in_ids[0], axis=tuple(eqn.params["dimensions"]))]


def _concatenate(an, fr, eqn, in_ids):
    parts = []
    for a, ids in zip(eqn.invars, in_ids, strict=True):
        parts.append(an.ids.fresh_arr(tuple(a.aval.shape)) if ids is None else ids)
    return [np.concatenate(parts, axis=eqn.params["dimension"])]


def _stack(an, fr, eqn, in_ids):
    parts = []
    for a, ids in zip(eqn.invars, in_ids, strict=True):
        parts.append(an.ids.fresh_arr(tuple(a.aval.shape)) if ids is None else ids)
    return [np.stack(parts, axis=eqn.params["axis"])]


def _dynamic_slice(an, fr, eqn, in_ids):
    x, *starts = eqn.invars
    ids = in_ids[0]
    if ids is None:
        return None
    out_shape = tuple(eqn.outvars[0].aval.shape)
    vals = [fr.value(s) for s in starts[: ids.ndim]]
    if all(v is not None for v in vals):
        sizes = eqn.params["slice_sizes"]
        idx = []
        for v, n, dim in zip(vals, sizes, ids.shape, strict=False):
            st = min(max(int(v), 0), dim - n)
            idx.append(slice(st, st + n))
        return [ids[tuple(idx)]]
    return [an.ids.indexed(ids, out_shape, [fr.data_id(s) for s in starts])]


def _gather(an, fr, eqn, in_ids):
    x, indices = eqn.invars
    ids = in_ids[0]
    if ids is None:
        return None
    out_shape = tuple(eqn.outvars[0].aval.shape)
    val = fr.value(indices)
    if val is None:
        return [an.ids.indexed(ids, out_shape, [fr.data_id(indices)])]
    lo, hi = int(ids.min(initial=0)), int(ids.max(initial=0))
    if lo < np.iinfo(np.int32).min or hi > np.iinfo(np.int32).max:
        return None
    # the gather itself, applied to the identities (an int32 array of the key array's shape)
    with jax.ensure_compile_time_eval():
        picked = jax.lax.gather_p.bind(jnp.asarray(ids, jnp.int32), jnp.asarray(val), **eqn.params)
    return [np.asarray(picked, np.int64).reshape(out_shape)]


def _select_n(an, fr, eqn, in_ids):
    pred, *cases = eqn.invars
    case_ids = in_ids[1:]
    if any(c is None for c in case_ids) or len(case_ids) > 32:  # np.choose takes <= 32 cases
        return None
    out_shape = tuple(eqn.outvars[0].aval.shape)
    case_ids = [np.broadcast_to(c, out_shape) for c in case_ids]
    if all(np.array_equal(case_ids[0], c) for c in case_ids[1:]):
        return [case_ids[0]]
    val = fr.value(pred)
    if val is None:
        return None
    return [np.choose(np.broadcast_to(val, out_shape).astype(np.int64), case_ids)]


def _pass(an, fr, eqn, in_ids):
    return list(in_ids[: len(eqn.outvars)])


def _convert(an, fr, eqn, in_ids):
    new = eqn.params.get("new_dtype")
    if new is not None and np.dtype(new) != np.dtype(eqn.invars[0].aval.dtype):
        return None
    return [in_ids[0]]


# first-order primitives that move key elements around without changing them
_PASS_1TO1 = (
    "copy",
    "copy_p",
    "device_put",
    "optimization_barrier",
    "sharding_constraint",
    "pvary",
    "reduce_precision",
    "mesh_cast",
    "reshard",
)

STRUCTURAL = {
    "slice": _slice,
    "squeeze": _squeeze,
    "reshape": _reshape,
    "broadcast_in_dim": _broadcast_in_dim,
    "transpose": _transpose,
    "rev": _rev,
    "concatenate": _concatenate,
    "stack": _stack,
    "dynamic_slice": _dynamic_slice,
    "gather": _gather,
    "select_n": _select_n,
    "convert_element_type": _convert,
    **{name: _pass for name in _PASS_1TO1},
}

del Literal, is_key_dtype
