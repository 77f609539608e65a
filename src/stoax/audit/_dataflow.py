"""Key provenance: follow every random draw of a jaxpr back to its key.

Every variable gets two abstract values:

* ``deps`` -- an int bitmask of the jaxpr's inputs (parameters) it depends on. A draw whose key
  depends on no input of the audited function is a *constant key*; inside a loop body, a draw whose
  key depends on no parameter that changes per iteration is a *loop-invariant key*.
* ``ids`` (key-carrying values only: typed keys, and ``uint32`` key data of legacy keys) -- a numpy
  array, one interned *key identity* per key element. Identities are symbolic expressions:
  ``split(parent, j)``, ``fold_in(parent, data)``, ``seed(data)``, an input element, a constant.
  Two consumptions (``random_bits``, ``random_split``, ``threefry2x32``) of one identity are a
  *reused key*; ``fold_in`` does not consume, so ``fold_in(k, 1)`` and ``fold_in(k, 2)`` are
  distinct and ``fold_in(k, 1)`` twice is the same key.

Each sub-jaxpr (``jit``, ``scan`` / ``while`` bodies, ``cond`` branches, ``custom_vjp`` /
``custom_jvp``, ``remat``, ``shard_map``, and any other primitive whose params hold jaxprs) is
analysed once per signature into a :class:`Summary` expressed in terms of its own parameters, then
instantiated at each call site by substitution -- so the analysis is linear in the size of the
program, not in the size of the inlined program.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import jax
import numpy as np

from stoax.audit._findings import Location
from stoax.audit._trace import location_of

__all__ = ["Analyzer", "Draw", "LoopFinding", "Summary"]

try:  # jax >= 0.4.30
    from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
except ImportError:  # pragma: no cover
    from jax.core import ClosedJaxpr, Jaxpr, Literal

DRAWS = {"random_bits", "threefry2x32", "key_data"}
CONSUMERS = DRAWS | {"random_split"}
SHARED_SCOPE = "stoax_shared_randomness"

# first-order primitives that move key elements around without changing them
_PASS_1TO1 = {
    "copy",
    "copy_p",
    "device_put",
    "optimization_barrier",
    "sharding_constraint",
    "pvary",
    "reduce_precision",
    "mesh_cast",
    "reshard",
}
_SCOPES_RECOMPUTE = ("rematted_computation",)


def _is_key_dtype(dtype: Any) -> bool:
    try:
        return jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)
    except TypeError:
        return False


def _is_u32(dtype: Any) -> bool:
    try:
        return np.dtype(dtype) == np.uint32
    except TypeError:
        return False


def _recompute(eqn: Any) -> bool:
    """An equation of the backward pass (transpose) or a rematerialised forward."""
    for item in eqn.source_info.name_stack.stack:
        name = item.name
        if name == "transpose" and type(item).__name__ == "Transform":
            return True
        if name in _SCOPES_RECOMPUTE:
            return True
    return False


@dataclasses.dataclass
class Site:
    """A source position: the user's location and the traceback it was read from."""

    loc: Location | None
    tb: Any


@dataclasses.dataclass
class Draw:
    prim: str
    sig: tuple
    ids: np.ndarray  # flat array of consumed key identities
    deps: int
    site: Site
    recompute: bool
    excl: tuple  # ((cond token, branch index), ...): draws in different branches exclude
    in_loop: bool = False


@dataclasses.dataclass
class LoopFinding:
    site: Site
    loop_site: Site
    prim: str


@dataclasses.dataclass
class Summary:
    out_deps: list[int]
    out_ids: list[np.ndarray | None]
    out_did: list[int | None]
    draws: list[Draw]
    loop_findings: list[LoopFinding]
    num_eqns: int


class _Frame:
    __slots__ = ("deps", "ids", "did", "draws", "loop_findings", "nparams", "raw")

    def __init__(self, nparams: int):
        self.deps: dict = {}
        self.ids: dict = {}
        self.did: dict = {}
        self.draws: list[Draw] = []
        self.loop_findings: list[LoopFinding] = []
        self.nparams = nparams
        self.raw: set = set()  # key identities whose raw data this jaxpr already hashed


class Analyzer:
    """One audit's analysis state: the identity interner and the memo of sub-jaxpr summaries."""

    def __init__(self):
        self._table: dict[tuple, int] = {}
        self._exprs: list[tuple] = []
        self._glob: list[bool] = []
        self._next_local = 0
        self._memo: dict[tuple, tuple[Any, Summary]] = {}
        self.num_eqns = 0
        self.origin: dict[int, Site] = {}  # where a constant key was made (seed / wrap)

    # -- identities -------------------------------------------------------------------------
    def intern(self, expr: tuple) -> int:
        i = self._table.get(expr)
        if i is None:
            kind = expr[0]
            glob = kind not in ("p", "pd") and all(c >= 0 and self._glob[c] for c in expr[2:])
            i = len(self._exprs)
            self._table[expr] = i
            self._exprs.append(expr)
            self._glob.append(glob)
        return i

    def fresh(self, shape: tuple = ()) -> Any:
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        start = self._next_local + 1
        self._next_local += n
        if shape == ():
            return -start
        return -np.arange(start, start + n, dtype=np.int64).reshape(shape)

    def fresh_arr(self, shape: tuple) -> np.ndarray:
        return np.asarray(self.fresh(shape) if shape else self.fresh(), dtype=np.int64)

    def lit_id(self, val: Any) -> int:
        if _is_key_dtype(getattr(val, "dtype", None)):
            arr = np.asarray(jax.random.key_data(val))
        else:
            arr = np.asarray(val)
        if arr.size > 64:
            return self.intern(("const", ("obj", id(val))))
        return self.intern(("lit", (str(arr.dtype), arr.shape, arr.tobytes())))

    def _note_origin(self, ids: np.ndarray, eqn: Any) -> None:
        for i in np.asarray(ids).reshape(-1).tolist():
            if i >= 0 and self._glob[i] and i not in self.origin:
                loc = location_of(eqn)
                if loc is not None:
                    self.origin[i] = Site(loc, eqn.source_info.traceback)

    def root_origin(self, ident: int) -> Site | None:
        """Where the constant key ``ident`` was made, following split / fold_in to the root."""
        seen = 0
        while ident >= 0 and seen < 10000:
            site = self.origin.get(ident)
            if site is not None:
                return site
            e = self._exprs[ident]
            if e[0] not in ("split", "fold"):
                return None
            ident = e[2]
            seen += 1
        return None

    # -- reading atoms ----------------------------------------------------------------------
    @staticmethod
    def deps(fr: _Frame, a: Any) -> int:
        if isinstance(a, Literal):
            return 0
        return fr.deps.get(a, 0)

    @staticmethod
    def ids(fr: _Frame, a: Any) -> np.ndarray | None:
        if isinstance(a, Literal):
            return None
        return fr.ids.get(a)

    def did(self, fr: _Frame, a: Any) -> int:
        if isinstance(a, Literal):
            return self.lit_id(a.val)
        d = fr.did.get(a)
        if d is None:
            d = self.fresh()
            fr.did[a] = d
        return d

    # -- analysis of one jaxpr ----------------------------------------------------------------
    def analyze(self, jaxpr: Any, consts: Any, has_ids: tuple[bool, ...]) -> Summary:
        obj = jaxpr
        key = (id(obj), has_ids)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is obj:
            return hit[1]
        if isinstance(jaxpr, ClosedJaxpr):
            consts, jaxpr = jaxpr.consts, jaxpr.jaxpr
        fr = _Frame(len(jaxpr.invars))
        for i, v in enumerate(jaxpr.invars):
            fr.deps[v] = 1 << i
            fr.did[v] = self.intern(("pd", i))
            if has_ids[i]:
                fr.ids[v] = self._param_ids(i, v.aval)
        consts = list(consts) if consts is not None else [None] * len(jaxpr.constvars)
        for v, val in zip(jaxpr.constvars, consts, strict=False):
            fr.deps[v] = 0
            if val is None:
                continue
            dtype = getattr(v.aval, "dtype", None)
            if _is_key_dtype(dtype):
                fr.ids[v] = self._const_key_ids(val)
            fr.did[v] = self.lit_id(val)
        for eqn in jaxpr.eqns:
            self._eqn(fr, eqn)
        n = len(jaxpr.eqns)
        out_deps, out_ids, out_did = [], [], []
        for a in jaxpr.outvars:
            out_deps.append(self.deps(fr, a))
            out_ids.append(self.ids(fr, a))
            out_did.append(self.lit_id(a.val) if isinstance(a, Literal) else fr.did.get(a))
        summ = Summary(out_deps, out_ids, out_did, fr.draws, fr.loop_findings, n)
        self.num_eqns += n
        self._memo[key] = (obj, summ)
        return summ

    def _param_ids(self, i: int, aval: Any) -> np.ndarray:
        shape = tuple(aval.shape)
        if _is_key_dtype(aval.dtype):
            n = int(np.prod(shape, dtype=np.int64))
            flat = [self.intern(("p", (i, j, False))) for j in range(n)]
            return np.array(flat, dtype=np.int64).reshape(shape)
        lead = shape[:-1] if shape else ()
        n = int(np.prod(lead, dtype=np.int64))
        flat = np.array([self.intern(("p", (i, j, True))) for j in range(n)], dtype=np.int64)
        if not shape:
            return flat.reshape(())
        return np.broadcast_to(flat.reshape(lead)[..., None], shape)

    def _const_key_ids(self, val: Any) -> np.ndarray:
        data = np.asarray(jax.random.key_data(val))
        shape = tuple(np.shape(val))
        n = int(np.prod(shape, dtype=np.int64))
        rows = data.reshape(n, -1)
        flat = [self.intern(("const", (str(val.dtype), rows[j].tobytes()))) for j in range(n)]
        return np.array(flat, dtype=np.int64).reshape(shape)

    # -- equations --------------------------------------------------------------------------
    def _set(self, fr: _Frame, v: Any, deps: int, ids: Any = None) -> None:
        fr.deps[v] = deps
        if ids is not None:
            fr.ids[v] = ids

    def _default(self, fr: _Frame, eqn: Any, deps: int | None = None) -> None:
        if deps is None:
            deps = 0
            for a in eqn.invars:
                deps |= self.deps(fr, a)
        for v in eqn.outvars:
            aval = getattr(v, "aval", None)
            ids = None
            if aval is not None and _is_key_dtype(getattr(aval, "dtype", None)):
                ids = self.fresh_arr(tuple(aval.shape))
            self._set(fr, v, deps, ids)

    def _eqn(self, fr: _Frame, eqn: Any) -> None:
        name = eqn.primitive.name
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, fr, eqn)
            return
        subs = _sub_jaxprs(eqn.params)
        if subs:
            self._call_generic(fr, eqn, subs)
            return
        in_ids = [self.ids(fr, a) for a in eqn.invars]
        if any(x is not None for x in in_ids):
            rule = _STRUCTURAL.get(name)
            if rule is not None:
                try:
                    outs = rule(self, fr, eqn, in_ids)
                except Exception:  # noqa: BLE001 - an unexpected param layout: be conservative
                    outs = None
                if outs is not None:
                    deps = 0
                    for a in eqn.invars:
                        deps |= self.deps(fr, a)
                    for v, ids in zip(eqn.outvars, outs, strict=False):
                        self._set(fr, v, deps, ids)
                    return
        if any(x is not None for x in in_ids):
            self._raw_use(fr, eqn, in_ids)
        self._default(fr, eqn)
        if name == "convert_element_type" and isinstance(eqn.invars[0], Literal):
            fr.did[eqn.outvars[0]] = self.lit_id(eqn.invars[0].val)

    def _raw_use(self, fr: _Frame, eqn: Any, in_ids: list) -> None:
        """Arithmetic on a key's raw data (``random_unwrap``): a hand-written PRNG consumes the
        key. All such uses of one key within one jaxpr count as one draw."""
        new, deps = set(), 0
        for a, ids in zip(eqn.invars, in_ids, strict=False):
            if ids is None:
                continue
            fresh = set(ids.reshape(-1).tolist()) - fr.raw
            if fresh:
                new |= fresh
                deps |= self.deps(fr, a)
        if new:
            fr.raw |= new
            self._record(fr, eqn, np.array(sorted(new), np.int64), deps, ("key_data",))

    def _record(self, fr: _Frame, eqn: Any, key_ids: np.ndarray, deps: int, sig: tuple) -> None:
        tb = eqn.source_info.traceback
        fr.draws.append(
            Draw(
                prim="key_data" if sig == ("key_data",) else eqn.primitive.name,
                sig=sig,
                ids=np.asarray(key_ids, dtype=np.int64).reshape(-1),
                deps=deps,
                site=Site(location_of(eqn), tb),
                recompute=_recompute(eqn),
                excl=(),
            )
        )

    # -- calls: substitution of a summary at a call site -------------------------------------
    def _instantiate(
        self,
        fr: _Frame,
        summ: Summary,
        eqn: Any,
        p_deps: list[int],
        p_ids: list[Any],
        p_did: Any,
        excl: tuple = (),
        in_loop: bool = False,
    ) -> _Inst:
        inst = _Inst(self, p_deps, p_ids, p_did)
        if summ.draws or summ.loop_findings:
            # a location inside library code (no user frame) falls back to the call site; JAX's
            # tracebacks stop at a jit boundary, so the call site is the user's line into it
            recompute = _recompute(eqn)
            call_site = None
            for d in summ.draws:
                site = d.site
                if site.loc is None:
                    call_site = call_site or Site(location_of(eqn), eqn.source_info.traceback)
                    site = call_site
                fr.draws.append(
                    Draw(
                        prim=d.prim,
                        sig=d.sig,
                        ids=inst.sub_arr(d.ids),
                        deps=inst.mask(d.deps),
                        site=site,
                        recompute=d.recompute or recompute,
                        excl=tuple((inst.sub(t), b) for t, b in d.excl) + excl,
                        in_loop=d.in_loop or in_loop,
                    )
                )
            for lf in summ.loop_findings:
                site, loop_site = lf.site, lf.loop_site
                if site.loc is None or loop_site.loc is None:
                    call_site = call_site or Site(location_of(eqn), eqn.source_info.traceback)
                    site = site if site.loc is not None else call_site
                    loop_site = loop_site if loop_site.loc is not None else call_site
                fr.loop_findings.append(LoopFinding(site, loop_site, lf.prim))
        return inst

    def _call(self, fr: _Frame, eqn: Any, jaxpr: Any, atoms: list, outvars: list) -> Summary:
        p_ids = [self.ids(fr, a) for a in atoms]
        summ = self.analyze(jaxpr, None, tuple(x is not None for x in p_ids))
        p_deps = [self.deps(fr, a) for a in atoms]
        inst = self._instantiate(fr, summ, eqn, p_deps, p_ids, lambda i: self.did(fr, atoms[i]))
        for v, d, ids, did in zip(outvars, summ.out_deps, summ.out_ids, summ.out_did, strict=False):
            self._set(fr, v, inst.mask(d), None if ids is None else inst.sub_arr(ids))
            if did is not None:
                fr.did[v] = inst.sub(did)
        return summ

    def _call_generic(self, fr: _Frame, eqn: Any, subs: list) -> None:
        if len(subs) == 1:
            jaxpr = subs[0]
            inner = jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr
            if len(inner.invars) == len(eqn.invars) and len(inner.outvars) == len(eqn.outvars):
                self._call(fr, eqn, jaxpr, list(eqn.invars), list(eqn.outvars))
                return
        # Unknown layout: every parameter stands for all inputs together (no identities).
        deps = 0
        for a in eqn.invars:
            deps |= self.deps(fr, a)
        for jaxpr in subs:
            inner = jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr
            n = len(inner.invars)
            summ = self.analyze(jaxpr, None, (False,) * n)
            self._instantiate(fr, summ, eqn, [deps] * n, [None] * n, lambda i: self.fresh())
        self._default(fr, eqn, deps)


class _Inst:
    """Substitution of a summary's parameters by a call site's values."""

    __slots__ = ("an", "p_deps", "p_ids", "p_did", "memo", "mask_memo")

    def __init__(self, an: Analyzer, p_deps: list[int], p_ids: list, p_did: Any):
        self.an = an
        self.p_deps = p_deps
        self.p_ids = p_ids
        self.p_did = p_did
        self.memo: dict[int, int] = {}
        self.mask_memo: dict[int, int] = {}

    def mask(self, m: int) -> int:
        if m == 0:
            return 0
        r = self.mask_memo.get(m)
        if r is None:
            r, rest, p_deps = 0, m, self.p_deps
            while rest:
                low = rest & -rest
                r |= p_deps[low.bit_length() - 1]
                rest ^= low
            self.mask_memo[m] = r
        return r

    def sub(self, i: int) -> int:
        i = int(i)
        an = self.an
        if i >= 0 and an._glob[i]:
            return i
        r = self.memo.get(i)
        if r is not None:
            return r
        if i < 0:
            r = an.fresh()
        else:
            e = an._exprs[i]
            kind = e[0]
            if kind == "p":
                r = self._param_elem(*e[1])
            elif kind == "pd":
                r = self.p_did(e[1])
            else:
                r = an.intern((kind, e[1], *(self.sub(c) for c in e[2:])))
        self.memo[i] = r
        return r

    def sub_arr(self, arr: np.ndarray) -> np.ndarray:
        flat = [self.sub(x) for x in np.asarray(arr).reshape(-1)]
        return np.array(flat, dtype=np.int64).reshape(np.shape(arr))

    def _param_elem(self, i: int, j: int, legacy: bool) -> int:
        ids = self.p_ids[i] if i < len(self.p_ids) else None
        if ids is None:
            return self.an.fresh()
        if not legacy:
            return int(ids.reshape(-1)[j])
        if ids.ndim == 0:
            return int(ids)
        rows = ids.reshape(-1, ids.shape[-1])
        row = rows[j]
        return int(row[0]) if (row == row[0]).all() else self.an.fresh()


# ---------------------------------------------------------------------------------------------
# handlers of the random primitives and of the control-flow primitives


def _h_random_seed(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    (a,) = eqn.invars
    impl = str(eqn.params.get("impl", ""))
    shape = tuple(eqn.outvars[0].aval.shape)
    did = an.did(fr, a)
    n = int(np.prod(shape, dtype=np.int64))
    ids = np.array([an.intern(("seed", (impl, j), did)) for j in range(n)], np.int64)
    an._set(fr, eqn.outvars[0], an.deps(fr, a), ids.reshape(shape))
    an._note_origin(ids, eqn)


def _h_random_wrap(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    (a,) = eqn.invars
    shape = tuple(eqn.outvars[0].aval.shape)
    ids = an.ids(fr, a)
    impl = str(eqn.params.get("impl", ""))
    n = int(np.prod(shape, dtype=np.int64))
    if ids is not None and ids.ndim >= 1:
        rows = ids.reshape(n, -1)
        out = np.empty(n, np.int64)
        for j in range(n):
            row = rows[j]
            out[j] = row[0] if (row == row[0]).all() else an.fresh()
        out = out.reshape(shape)
    else:
        did = an.did(fr, a)
        out = np.array([an.intern(("wrap", (impl, j), did)) for j in range(n)], np.int64)
        out = out.reshape(shape)
        an._note_origin(out, eqn)
    an._set(fr, eqn.outvars[0], an.deps(fr, a), out)


def _h_random_unwrap(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    (a,) = eqn.invars
    ids = an.ids(fr, a)
    shape = tuple(eqn.outvars[0].aval.shape)
    out = None if ids is None else np.broadcast_to(np.asarray(ids)[..., None], shape)
    an._set(fr, eqn.outvars[0], an.deps(fr, a), out)


def _h_random_split(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    (a,) = eqn.invars
    ids = an.ids(fr, a)
    deps = an.deps(fr, a)
    split_shape = tuple(eqn.params.get("shape", ()))
    if ids is None:
        ids = an.fresh_arr(tuple(a.aval.shape))
    an._record(fr, eqn, ids, deps, ("random_split", split_shape))
    m = int(np.prod(split_shape, dtype=np.int64))
    flat = ids.reshape(-1)
    out = np.array(
        [an.intern(("split", (split_shape, j), int(k))) for k in flat for j in range(m)], np.int64
    ).reshape(tuple(ids.shape) + split_shape)
    an._set(fr, eqn.outvars[0], deps, out)


def _h_random_fold_in(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    k, msg = eqn.invars
    ids = an.ids(fr, k)
    deps = an.deps(fr, k) | an.deps(fr, msg)
    shape = tuple(eqn.outvars[0].aval.shape)
    if ids is None:
        an._default(fr, eqn)
        return
    did = an.did(fr, msg)
    scalar_msg = not getattr(msg.aval, "shape", ())
    ids_b = np.broadcast_to(ids, shape).reshape(-1)
    out = np.array(
        [
            an.intern(("fold", None if scalar_msg else j, int(kk), did))
            for j, kk in enumerate(ids_b)
        ],
        np.int64,
    ).reshape(shape)
    an._set(fr, eqn.outvars[0], deps, out)


def _h_random_bits(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    (a,) = eqn.invars
    ids = an.ids(fr, a)
    deps = an.deps(fr, a)
    if ids is None:
        ids = an.fresh_arr(tuple(a.aval.shape))
    sig = ("random_bits", tuple(eqn.params.get("shape", ())), eqn.params.get("bit_width"))
    an._record(fr, eqn, ids, deps, sig)
    an._set(fr, eqn.outvars[0], deps)


def _h_threefry(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    parts = []
    deps = 0
    for a in eqn.invars:
        deps |= an.deps(fr, a)
        ids = an.ids(fr, a)
        if ids is not None and ids.size and (ids == ids.reshape(-1)[0]).all():
            parts.append(int(ids.reshape(-1)[0]))
        else:
            parts.append(an.did(fr, a))
    key_deps = an.deps(fr, eqn.invars[0]) | an.deps(fr, eqn.invars[1])
    ident = an.intern(("tf", None, *parts))
    an._record(fr, eqn, np.array([ident]), key_deps, ("threefry2x32",))
    for v in eqn.outvars:
        an._set(fr, v, deps)


def _h_random_clone(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    an._default(fr, eqn)  # a clone is a new identity: reuse through clone is declared intent


def _h_cond(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    index, *ops = eqn.invars
    branches = eqn.params["branches"]
    p_ids = [an.ids(fr, a) for a in ops]
    p_deps = [an.deps(fr, a) for a in ops]
    has = tuple(x is not None for x in p_ids)
    token = an.fresh()
    results = []
    for b, br in enumerate(branches):
        summ = an.analyze(br, None, has)
        inst = an._instantiate(
            fr, summ, eqn, p_deps, p_ids, lambda i: an.did(fr, ops[i]), excl=((token, b),)
        )
        results.append((summ, inst))
    idx_deps = an.deps(fr, index)
    for j, v in enumerate(eqn.outvars):
        deps = idx_deps
        outs = []
        for summ, inst in results:
            deps |= inst.mask(summ.out_deps[j])
            ids = summ.out_ids[j]
            outs.append(None if ids is None else inst.sub_arr(ids))
        ids = None
        if all(o is not None for o in outs) and all(np.array_equal(outs[0], o) for o in outs):
            ids = outs[0]
        elif _is_key_dtype(getattr(v.aval, "dtype", None)) or any(o is not None for o in outs):
            shape = tuple(v.aval.shape)
            ids = an.fresh_arr(shape)
        an._set(fr, v, deps, ids)


def _loop(
    an: Analyzer,
    fr: _Frame,
    eqn: Any,
    body: Any,
    consts: list,
    carry: list,
    xs: list,
    carry_out: list,
    ys_out: list,
    reverse: bool = False,
    cond: Any = None,
    cond_consts: list = (),
) -> None:
    """A loop: ``body(consts, carry, xs) -> (carry, ys)``."""
    nc, nk = len(consts), len(carry)
    atoms = [*consts, *carry, *xs]
    o_ids = [an.ids(fr, a) for a in atoms]
    # a scanned input seen from the body is one slice: its identities are those of iteration 0
    p_ids = list(o_ids)
    for i in range(nc + nk, len(atoms)):
        if p_ids[i] is not None and p_ids[i].ndim >= 1 and p_ids[i].shape[0] > 0:
            p_ids[i] = p_ids[i][-1 if reverse else 0]
        else:
            p_ids[i] = None
    has = tuple(x is not None for x in p_ids)
    summ = an.analyze(body, None, has)
    # which body parameters change from one iteration to the next
    varying = 0
    for i in range(nc + nk, len(atoms)):
        varying |= 1 << i
    passthrough = [False] * nk
    for j in range(nk):
        out = summ.out_ids[j]
        pid = an._param_ids(nc + j, carry[j].aval) if has[nc + j] else None
        if out is not None and pid is not None and np.array_equal(out, pid):
            passthrough[j] = True
        elif summ.out_deps[j] == 1 << (nc + j) and summ.out_ids[j] is None:
            # a data carry returned unchanged
            body_j = body.jaxpr if isinstance(body, ClosedJaxpr) else body
            if body_j.outvars[j] is body_j.invars[nc + j]:
                passthrough[j] = True
    changed = True
    while changed:
        changed = False
        for j in range(nk):
            bit = 1 << (nc + j)
            if passthrough[j] or varying & bit:
                continue
            if summ.out_deps[j] & (varying | bit):
                varying |= bit
                changed = True
    # loop-invariant draws
    for d in summ.draws:
        if d.prim in DRAWS and d.deps and not (d.deps & varying):
            fr.loop_findings.append(
                LoopFinding(d.site, Site(location_of(eqn), eqn.source_info.traceback), d.prim)
            )
    # outer dependencies of the body's parameters; carries: fixpoint over the iterations
    p_deps = [an.deps(fr, a) for a in atoms]
    inst0 = _Inst(an, p_deps, p_ids, lambda i: an.fresh())
    changed = True
    while changed:
        changed = False
        inst0.mask_memo.clear()
        for j in range(nk):
            new = p_deps[nc + j] | inst0.mask(summ.out_deps[j])
            if new != p_deps[nc + j]:
                p_deps[nc + j] = new
                changed = True

    def p_did(i: int) -> int:
        return an.did(fr, atoms[i]) if i < nc else an.fresh()

    inst = an._instantiate(fr, summ, eqn, p_deps, p_ids, p_did, in_loop=True)
    if cond is not None:
        c_atoms = [*cond_consts, *carry]
        c_ids = [an.ids(fr, a) for a in c_atoms]
        c_summ = an.analyze(cond, None, tuple(x is not None for x in c_ids))
        c_deps = [an.deps(fr, a) for a in cond_consts] + p_deps[nc : nc + nk]
        an._instantiate(fr, c_summ, eqn, c_deps, c_ids, lambda i: an.fresh(), in_loop=True)
    for j, v in enumerate(carry_out):
        ids = None
        if summ.out_ids[j] is not None or o_ids[nc + j] is not None:
            if passthrough[j]:
                ids = o_ids[nc + j]
            else:
                shape = tuple(v.aval.shape)
                ids = an.fresh_arr(shape)
        an._set(fr, v, p_deps[nc + j] | inst.mask(summ.out_deps[j]), ids)
    for j, v in enumerate(ys_out):
        ids = None
        if summ.out_ids[nk + j] is not None:
            shape = tuple(v.aval.shape)
            ids = an.fresh_arr(shape)
        an._set(fr, v, inst.mask(summ.out_deps[nk + j]), ids)


def _h_scan(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    p = eqn.params
    nc, nk = p["num_consts"], p["num_carry"]
    ins = list(eqn.invars)
    outs = list(eqn.outvars)
    _loop(
        an,
        fr,
        eqn,
        p["jaxpr"],
        ins[:nc],
        ins[nc : nc + nk],
        ins[nc + nk :],
        outs[:nk],
        outs[nk:],
        reverse=bool(p.get("reverse", False)),
    )


def _h_while(an: Analyzer, fr: _Frame, eqn: Any) -> None:
    p = eqn.params
    cn, bn = p["cond_nconsts"], p["body_nconsts"]
    ins = list(eqn.invars)
    _loop(
        an,
        fr,
        eqn,
        p["body_jaxpr"],
        ins[cn : cn + bn],
        ins[cn + bn :],
        [],
        list(eqn.outvars),
        [],
        cond=p["cond_jaxpr"],
        cond_consts=ins[:cn],
    )


_HANDLERS = {
    "random_seed": _h_random_seed,
    "random_wrap": _h_random_wrap,
    "random_unwrap": _h_random_unwrap,
    "random_split": _h_random_split,
    "random_fold_in": _h_random_fold_in,
    "random_bits": _h_random_bits,
    "threefry2x32": _h_threefry,
    "random_clone": _h_random_clone,
    "cond": _h_cond,
    "scan": _h_scan,
    "while": _h_while,
}


def _sub_jaxprs(params: dict) -> list:
    out = []
    for v in params.values():
        if isinstance(v, ClosedJaxpr | Jaxpr):
            out.append(v)
        elif (
            isinstance(v, tuple | list) and v and all(isinstance(x, ClosedJaxpr | Jaxpr) for x in v)
        ):
            out.extend(v)
    return out


# ---------------------------------------------------------------------------------------------
# structural primitives: the same operation applied to the array of identities


def _s_slice(an, fr, eqn, in_ids):
    p = eqn.params
    strides = p.get("strides") or (1,) * len(p["start_indices"])
    idx = tuple(
        slice(s, e, st)
        for s, e, st in zip(p["start_indices"], p["limit_indices"], strides, strict=False)
    )
    return [in_ids[0][idx]]


def _s_squeeze(an, fr, eqn, in_ids):
    return [np.squeeze(in_ids[0], axis=tuple(eqn.params["dimensions"]))]


def _s_reshape(an, fr, eqn, in_ids):
    if eqn.params.get("dimensions") not in (None, ()):
        return None
    return [np.reshape(in_ids[0], tuple(eqn.outvars[0].aval.shape))]


def _s_broadcast_in_dim(an, fr, eqn, in_ids):
    shape = tuple(eqn.params["shape"])
    dims = tuple(eqn.params["broadcast_dimensions"])
    x = in_ids[0]
    expanded = [1] * len(shape)
    for src, dst in enumerate(dims):
        expanded[dst] = x.shape[src]
    return [np.broadcast_to(x.reshape(expanded), shape)]


def _s_transpose(an, fr, eqn, in_ids):
    return [np.transpose(in_ids[0], tuple(eqn.params["permutation"]))]


def _s_rev(an, fr, eqn, in_ids):
    return [np.flip(in_ids[0], axis=tuple(eqn.params["dimensions"]))]


def _s_concatenate(an, fr, eqn, in_ids):
    parts = []
    for a, ids in zip(eqn.invars, in_ids, strict=False):
        if ids is None:
            shape = tuple(a.aval.shape)
            ids = an.fresh_arr(shape)
        parts.append(ids)
    return [np.concatenate(parts, axis=eqn.params["dimension"])]


def _s_dynamic_slice(an, fr, eqn, in_ids):
    x, *starts = eqn.invars
    if in_ids[0] is None or not all(isinstance(s, Literal) for s in starts[: in_ids[0].ndim]):
        return None
    sizes = eqn.params["slice_sizes"]
    idx = []
    for s, n, dim in zip(starts, sizes, in_ids[0].shape, strict=False):
        st = min(max(int(s.val), 0), dim - n)
        idx.append(slice(st, st + n))
    return [in_ids[0][tuple(idx)]]


def _s_pass(an, fr, eqn, in_ids):
    return list(in_ids[: len(eqn.outvars)])


def _s_convert(an, fr, eqn, in_ids):
    new = eqn.params.get("new_dtype")
    if new is not None and np.dtype(new) != np.dtype(eqn.invars[0].aval.dtype):
        return None
    return [in_ids[0]]


_STRUCTURAL = {
    "slice": _s_slice,
    "squeeze": _s_squeeze,
    "reshape": _s_reshape,
    "broadcast_in_dim": _s_broadcast_in_dim,
    "transpose": _s_transpose,
    "rev": _s_rev,
    "concatenate": _s_concatenate,
    "dynamic_slice": _s_dynamic_slice,
    "convert_element_type": _s_convert,
    **{name: _s_pass for name in _PASS_1TO1},
}


def iter_bits(m: int):
    """Indices of the set bits of ``m``."""
    for i in itertools.count():
        if not m:
            return
        if m & 1:
            yield i
        m >>= 1
