"""Key provenance: follow every random draw of a jaxpr back to its key.

Each sub-jaxpr (``jit``, ``scan`` / ``while`` bodies, ``cond`` branches, ``custom_vjp`` /
``custom_jvp``, ``remat``, ``shard_map``, and any other primitive whose params hold jaxprs) is
analysed once per signature into a :class:`~stoax.audit._records.Summary` expressed in terms of
its own inputs, then instantiated at each call site by substitution -- so the analysis is linear
in the size of the program, not in the size of the inlined program.

The rules per primitive live in :mod:`stoax.audit._primitives` (random primitives and moves of
key arrays) and :mod:`stoax.audit._loops` (``cond``, ``scan``, ``while``); a new primitive is one
entry in their tables.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from stoax.audit import _compat, _reach
from stoax.audit._compat import ClosedJaxpr, Jaxpr, Literal
from stoax.audit._frame import VALUE_OPS, Frame
from stoax.audit._identities import Identities, Substitution, is_key_dtype
from stoax.audit._records import Draw, Site, Summary
from stoax.audit._trace import location_of

__all__ = ["Analyzer", "SHARED_SCOPE", "sub_jaxprs"]

SHARED_SCOPE = "stoax_shared_randomness"
_SCOPES_RECOMPUTE = ("rematted_computation",)


def is_recompute(eqn: Any) -> bool:
    """An equation of the backward pass (transpose) or a rematerialised forward."""
    for scope in _compat.name_stack_scopes(_compat.eqn_name_stack(eqn)):
        if scope.is_transform and scope.name == "transpose":
            return True
        if scope.name in _SCOPES_RECOMPUTE:
            return True
    return False


def is_shared(eqn: Any) -> bool:
    """Inside ``stoax.audit.shared()``: randomness shared on purpose."""
    return any(
        s.name == SHARED_SCOPE for s in _compat.name_stack_scopes(_compat.eqn_name_stack(eqn))
    )


def site_of(eqn: Any) -> Site:
    return Site(location_of(eqn), _compat.eqn_traceback(eqn))


def sub_jaxprs(params: dict) -> list:
    out = []
    for v in params.values():
        if isinstance(v, ClosedJaxpr | Jaxpr):
            out.append(v)
        elif (
            isinstance(v, tuple | list) and v and all(isinstance(x, ClosedJaxpr | Jaxpr) for x in v)
        ):
            out.extend(v)
    return out


def open_jaxpr(j: Any) -> Any:
    return j.jaxpr if isinstance(j, ClosedJaxpr) else j


@functools.cache
def _rules() -> tuple[dict, frozenset, dict]:
    """The tables of rules per primitive (their modules import this one)."""
    from stoax.audit._loops import CONTROL
    from stoax.audit._primitives import HANDLERS, HASHING, STRUCTURAL

    return {**HANDLERS, **CONTROL}, HASHING, STRUCTURAL


class Analyzer:
    """One audit's analysis state: the identities and the memo of sub-jaxpr summaries."""

    def __init__(self) -> None:
        self.ids = Identities()
        self._memo: dict[tuple, tuple[Any, Summary]] = {}
        self.num_eqns = 0

    # -- one jaxpr -------------------------------------------------------------------------------
    def analyze(self, jaxpr: Any, has_ids: tuple[bool, ...]) -> Summary:
        obj = jaxpr
        key = (id(obj), has_ids)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is obj:
            return hit[1]
        consts: list = []
        if isinstance(jaxpr, ClosedJaxpr):
            consts, jaxpr = list(jaxpr.consts), jaxpr.jaxpr
        fr = Frame(self.ids)
        for i, v in enumerate(jaxpr.invars):
            fr.deps[v] = 1 << i
            fr.did[v] = self.ids.param_data(i)
            if has_ids[i]:
                fr.ids[v] = self.ids.param_ids(i, v.aval)
        for v, val in zip(jaxpr.constvars, consts or [None] * len(jaxpr.constvars), strict=True):
            fr.deps[v] = 0
            if val is None:
                continue
            if is_key_dtype(getattr(v.aval, "dtype", None)):
                fr.ids[v] = self.ids.const_key_ids(val)
            fr.did[v] = self.ids.value_id(val)
            fr.set_const(v, val)
        for i, eqn in enumerate(jaxpr.eqns):
            self._eqn(fr, i, eqn)
        n = len(jaxpr.eqns)
        out_deps, out_ids, out_did = [], [], []
        for a in jaxpr.outvars:
            out_deps.append(fr.dep(a))
            out_ids.append(fr.key_ids(a))
            out_did.append(fr.data_id(a) if isinstance(a, Literal) else fr.did.get(a))
        if fr.draws:
            param_reach = _reach.backward(jaxpr.eqns, jaxpr.outvars, jaxpr.invars, fr.links)
            for draw, link, mask in fr.pending:
                draw.reach = link.map(mask)
        else:
            everything = _reach.all_outputs(len(jaxpr.outvars), bool(jaxpr.effects))
            param_reach = [everything] * len(jaxpr.invars)
        summ = Summary(out_deps, out_ids, out_did, fr.draws, param_reach, n)
        self.num_eqns += n
        self._memo[key] = (obj, summ)
        return summ

    def _eqn(self, fr: Frame, i: int, eqn: Any) -> None:
        HANDLERS, HASHING, STRUCTURAL = _rules()
        name = eqn.primitive.name
        if name in VALUE_OPS:
            for v in eqn.outvars:
                fr.defs[v] = eqn
        handler = HANDLERS.get(name)
        if handler is not None:
            try:
                handler(self, fr, i, eqn)
            except KeyError as err:  # a parameter the rule reads was renamed
                raise _compat.unsupported(f"the {name} primitive has no parameter {err}") from err
            return
        subs = sub_jaxprs(eqn.params)
        if subs:
            self.call_generic(fr, i, eqn, subs)
            return
        rule = STRUCTURAL.get(name)
        if rule is not None or name in HASHING:
            in_ids = [fr.key_ids(a) for a in eqn.invars]
            if rule is not None and any(x is not None for x in in_ids):
                try:
                    outs = rule(self, fr, eqn, in_ids)
                except KeyError as err:  # a parameter the rule reads was renamed
                    msg = f"the {name} primitive has no parameter {err}"
                    raise _compat.unsupported(msg) from err
                if outs is not None:
                    deps = fr.dep_all(eqn.invars)
                    for v, ids in zip(eqn.outvars, outs, strict=True):
                        fr.set(v, deps, ids)
                    return
            if name in HASHING and any(x is not None for x in in_ids):
                self._hashed(fr, i, eqn, in_ids)
        self.default(fr, eqn)

    def _hashed(self, fr: Frame, i: int, eqn: Any, in_ids: list) -> None:
        """Bit-mixing arithmetic on a key's raw words (a hand-written PRNG, as stoax's dropout
        regenerating its mask) consumes the key; all such uses of one key in one jaxpr are one
        draw. Reading the words (comparing, printing, converting) consumes nothing."""
        new, deps = set(), 0
        for a, ids in zip(eqn.invars, in_ids, strict=True):
            if ids is None:
                continue
            fresh = set(ids.reshape(-1).tolist()) - fr.raw
            if fresh:
                new |= fresh
                deps |= fr.dep(a)
        if new:
            fr.raw |= new
            self.record(fr, i, eqn, np.array(sorted(new), np.int64), deps, ("key_data",))

    def default(self, fr: Frame, eqn: Any, deps: int | None = None) -> None:
        """An operation the analysis does not model: outputs depend on every input, and keys it
        makes are new keys."""
        if deps is None:
            deps = fr.dep_all(eqn.invars)
        for v in eqn.outvars:
            aval = getattr(v, "aval", None)
            ids = None
            if aval is not None and is_key_dtype(getattr(aval, "dtype", None)):
                ids = self.ids.fresh_arr(tuple(aval.shape))
            fr.set(v, deps, ids)

    def record(
        self, fr: Frame, i: int, eqn: Any, key_ids: np.ndarray, deps: int, sig: tuple
    ) -> None:
        """A consumption of ``key_ids`` by equation ``i``."""
        draw = Draw(
            prim="key_data" if sig == ("key_data",) else eqn.primitive.name,
            sig=sig,
            ids=np.asarray(key_ids, dtype=np.int64).reshape(-1),
            deps=deps,
            site=site_of(eqn),
            recompute=is_recompute(eqn),
            shared=is_shared(eqn),
        )
        fr.draws.append(draw)
        # the draw's reach is its outputs' reach: a one-equation link
        everything = _reach.all_outputs(len(eqn.outvars), False)
        link = fr.links.get(i)
        if link is None:
            link = fr.links[i] = _reach.CallLink(eqn, [everything] * len(eqn.invars))
        fr.pending.append((draw, link, everything))

    # -- calls: a summary instantiated at a call site ---------------------------------------
    def instantiate(
        self,
        fr: Frame,
        summ: Summary,
        eqn: Any,
        sub: Substitution,
        link: _reach.Link,
        excl: tuple = (),
        in_loop: bool = False,
        mark: Callable[[int, Draw], dict] | None = None,
        mask_of: Callable[[int], int] | None = None,
    ) -> None:
        """Copy the summary's draws into ``fr``, rewritten for this call site."""
        if not summ.draws:
            return
        # a location inside library code (no user frame) falls back to the call site; JAX's
        # tracebacks stop at a jit boundary, so the call site is the user's line into it
        recompute, shared = is_recompute(eqn), is_shared(eqn)
        call_site: Site | None = None
        for n, d in enumerate(summ.draws):
            site = d.site
            if site.loc is None:
                call_site = call_site or site_of(eqn)
                site = call_site
            changes = {} if mark is None else mark(n, d)
            loop_site = changes.pop("loop_invariant", None)
            li = d.loop_invariant
            if li is not None and li.loc is None:
                call_site = call_site or site_of(eqn)
                li = call_site
            carried = changes.pop("carried", None) or d.carried
            new = d.moved(
                ids=sub.sub_arr(d.ids),
                deps=sub.mask(d.deps),
                site=site,
                recompute=d.recompute or recompute,
                excl=tuple((sub.sub(t), b) for t, b in d.excl) + excl,
                in_loop=d.in_loop or in_loop,
                shared=d.shared or shared,
                loop_invariant=li or loop_site,
                carried=carried,
                reach=0,
            )
            fr.draws.append(new)
            fr.pending.append((new, link, d.reach if mask_of is None else mask_of(d.reach)))

    def call(self, fr: Frame, i: int, eqn: Any, jaxpr: Any, atoms: list, outvars: list) -> Summary:
        """A sub-jaxpr whose inputs are ``atoms`` and outputs ``outvars``."""
        p_ids = [fr.key_ids(a) for a in atoms]
        summ = self.analyze(jaxpr, tuple(x is not None for x in p_ids))
        p_deps = [fr.dep(a) for a in atoms]
        sub = Substitution(self.ids, p_deps, p_ids, lambda k: fr.data_id(atoms[k]))
        link = fr.links[i] = _reach.CallLink(eqn, list(summ.param_reach))
        self.instantiate(fr, summ, eqn, sub, link)
        for v, d, ids, did in zip(outvars, summ.out_deps, summ.out_ids, summ.out_did, strict=True):
            fr.set(v, sub.mask(d), None if ids is None else sub.sub_arr(ids))
            if did is not None:
                fr.did[v] = sub.sub(did)
        return summ

    def call_generic(self, fr: Frame, i: int, eqn: Any, subs: list) -> None:
        if len(subs) == 1:
            inner = open_jaxpr(subs[0])
            if len(inner.invars) == len(eqn.invars) and len(inner.outvars) == len(eqn.outvars):
                self.call(fr, i, eqn, subs[0], list(eqn.invars), list(eqn.outvars))
                return
        # An unknown layout: every input stands for all inputs together (no identities), and
        # everything inside reaches every output.
        deps = fr.dep_all(eqn.invars)
        link = fr.links[i] = _reach.AllLink(eqn, [2] * len(eqn.invars))
        for jaxpr in subs:
            n = len(open_jaxpr(jaxpr).invars)
            summ = self.analyze(jaxpr, (False,) * n)
            sub = Substitution(self.ids, [deps] * n, [None] * n, lambda k: self.ids.fresh())
            self.instantiate(fr, summ, eqn, sub, link)
        self.default(fr, eqn, deps)
