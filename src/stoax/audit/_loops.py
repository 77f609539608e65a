"""Control flow: ``cond`` branches, and the loop analysis of ``scan`` / ``while``.

A loop body is analysed once. Then, per loop:

* **which body inputs change** from one iteration to the next: scanned inputs (unless every slice
  holds the same keys -- a key broadcast into ``xs``), and carries whose new value depends on
  something that changes (a fixpoint);
* **loop-invariant draws**: a draw whose key depends on inputs, none of which change;
* **reuse across iterations**: the body's consumed keys are rewritten for the *next* iteration
  (each carry replaced by what the body returns for it); a key consumed in one iteration and
  consumed again in the next (a key drawn from and also carried on, then split again) is found;
* **reach**: what a body draw reaches through the carries, over all iterations.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from stoax.audit import _compat, _reach
from stoax.audit._analysis import Analyzer, open_jaxpr, site_of
from stoax.audit._frame import Frame
from stoax.audit._identities import Substitution, is_key_dtype
from stoax.audit._records import DRAWS, Draw, Site, Summary

__all__ = ["CONTROL"]


def _cond(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    index, *ops = eqn.invars
    branches = _compat.cond_branches(eqn.params)
    p_ids = [fr.key_ids(a) for a in ops]
    p_deps = [fr.dep(a) for a in ops]
    has = tuple(x is not None for x in p_ids)
    token = an.ids.fresh()
    summs = [an.analyze(br, has) for br in branches]
    everything = _reach.all_outputs(len(eqn.outvars), False)
    in_masks = [everything]
    for k in range(len(ops)):
        m = 0
        for s in summs:
            m |= s.param_reach[k]
        in_masks.append(m)
    link = fr.links[i] = _reach.CallLink(eqn, in_masks)
    results = []
    for b, summ in enumerate(summs):
        sub = Substitution(an.ids, p_deps, p_ids, lambda k: fr.data_id(ops[k]))
        an.instantiate(fr, summ, eqn, sub, link, excl=((token, b),))
        results.append((summ, sub))
    idx_deps = fr.dep(index)
    for j, v in enumerate(eqn.outvars):
        deps = idx_deps
        outs = []
        for summ, sub in results:
            deps |= sub.mask(summ.out_deps[j])
            sub_ids = summ.out_ids[j]
            outs.append(None if sub_ids is None else sub.sub_arr(sub_ids))
        ids: np.ndarray | None = None
        present = [o for o in outs if o is not None]
        if len(present) == len(outs) and all(np.array_equal(present[0], o) for o in present):
            ids = present[0]
        elif is_key_dtype(getattr(v.aval, "dtype", None)) or any(o is not None for o in outs):
            ids = an.ids.fresh_arr(tuple(v.aval.shape))
        fr.set(v, deps, ids)


class _LoopLink(_reach.Link):
    """Reach through a loop: a body output that is a carry also reaches, in the next iteration,
    whatever that carry input reaches. Sub-output ``nk + ny`` is the ``while`` condition, which
    decides every output."""

    __slots__ = ("nk", "carry_reach", "virtual")

    def __init__(
        self, eqn: Any, in_masks: list[int], nk: int, carry_reach: list[int], virtual: bool
    ):
        super().__init__(eqn, in_masks)
        self.nk = nk
        self.carry_reach = carry_reach
        self.virtual = virtual

    def resolve(self, reach: dict) -> None:
        outr = [reach.get(v, 0) for v in self.eqn.outvars]
        if self.virtual:
            outr.append(_reach._reach_of(reach, self.eqn.outvars))
        base = list(outr)
        changed = True
        while changed:
            changed = False
            for j in range(self.nk):
                new = base[j] | _reach.map_mask(self.carry_reach[j], outr)
                if new != outr[j]:
                    outr[j] = new
                    changed = True
        self.outr = outr
        self._memo.clear()


def _varying(summ: Summary, nc: int, nk: int, n_in: int, fixed_xs: set, passthrough: list) -> int:
    """The mask of body inputs that change from one iteration to the next."""
    varying = 0
    for k in range(nc + nk, n_in):
        if k not in fixed_xs:
            varying |= 1 << k
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
    return varying


class _Loop(NamedTuple):
    """A loop equation seen as ``body(consts, carry, xs) -> (carry, ys)`` (``eqn.outvars``: the
    final carry, then the stacked ys); a ``while`` also has its ``cond(cond_consts, carry)``."""

    eqn: Any
    body: Any
    consts: list
    carry: list
    xs: list
    length: int | None  # None: unknown (a while loop)
    reverse: bool = False
    cond: Any = None
    cond_consts: tuple = ()

    @property
    def atoms(self) -> list:
        return [*self.consts, *self.carry, *self.xs]


def _slices(loop: _Loop, o_ids: list) -> tuple[list, set[int]]:
    """The body's view of its inputs' keys -- a scanned input is one slice -- and the scanned
    inputs whose slices are all the same keys (a key broadcast into xs: it does not change)."""
    first = len(loop.consts) + len(loop.carry)
    p_ids = list(o_ids)
    fixed: set[int] = set()
    for k in range(first, len(p_ids)):
        ids = p_ids[k]
        if ids is not None and ids.ndim >= 1 and ids.shape[0] > 0:
            p_ids[k] = ids[-1 if loop.reverse else 0]
            if ids.shape[0] > 1 and (ids == ids[:1]).all():
                fixed.add(k)
        else:
            p_ids[k] = None
    return p_ids, fixed


def _passthrough(an: Analyzer, loop: _Loop, summ: Summary, has: tuple) -> list[bool]:
    """Carries returned unchanged: the very variable, or the very keys that went in."""
    nc = len(loop.consts)
    inner = open_jaxpr(loop.body)
    out = []
    for j, c in enumerate(loop.carry):
        same = inner.outvars[j] is inner.invars[nc + j]
        out_ids = summ.out_ids[j]
        if not same and has[nc + j] and out_ids is not None:
            same = bool(np.array_equal(out_ids, an.ids.param_ids(nc + j, c.aval)))
        out.append(same)
    return out


def _carry_deps(an: Analyzer, fr: Frame, loop: _Loop, summ: Summary, p_ids: list) -> list[int]:
    """Outer input masks of the body's inputs; a carry's grows over the iterations (fixpoint)."""
    nc, nk = len(loop.consts), len(loop.carry)
    p_deps = [fr.dep(a) for a in loop.atoms]
    probe = Substitution(an.ids, p_deps, p_ids, lambda k: an.ids.fresh())
    changed = True
    while changed:
        changed = False
        probe.mask_memo.clear()
        for j in range(nk):
            new = p_deps[nc + j] | probe.mask(summ.out_deps[j])
            if new != p_deps[nc + j]:
                p_deps[nc + j] = new
                changed = True
    return p_deps


def _link(loop: _Loop, summ: Summary, c_summ: Summary | None) -> tuple[_LoopLink, Any]:
    """How reach flows through the loop; and the map of the condition's masks (a ``while``'s
    condition is a virtual sub-output after the body's, deciding every output)."""
    nc, nk, ncc = len(loop.consts), len(loop.carry), len(loop.cond_consts)
    cond_bit = 1 << (len(loop.eqn.outvars) + 1)

    def via_cond(m: int) -> int:
        return (m & 1) | (cond_bit if m & ~1 else 0)

    carry_reach = [summ.param_reach[nc + j] for j in range(nk)]
    in_masks = [0] * ncc + list(summ.param_reach)
    if c_summ is not None:
        for k in range(ncc):
            in_masks[k] = via_cond(c_summ.param_reach[k])
        for j in range(nk):
            extra = via_cond(c_summ.param_reach[ncc + j])
            in_masks[ncc + nc + j] |= extra
            carry_reach[j] |= extra
    return _LoopLink(loop.eqn, in_masks, nk, carry_reach, c_summ is not None), via_cond


def _loop(an: Analyzer, fr: Frame, i: int, loop: _Loop) -> None:
    eqn, atoms = loop.eqn, loop.atoms
    nc, nk = len(loop.consts), len(loop.carry)
    o_ids = [fr.key_ids(a) for a in atoms]
    p_ids, fixed_xs = _slices(loop, o_ids)
    has = tuple(x is not None for x in p_ids)
    summ = an.analyze(loop.body, has)
    passthrough = _passthrough(an, loop, summ, has)
    varying = _varying(summ, nc, nk, len(atoms), fixed_xs, passthrough)
    loop_site = site_of(eqn)
    carried = {}
    if loop.length is None or loop.length > 1:
        carried = _carried_reuse(an, summ, nc, nk, atoms, p_ids, varying)

    def mark(n: int, d: Draw) -> dict:
        if d.prim in DRAWS and d.deps and not (d.deps & varying):
            # declared (stoax.audit.shared()): the same randomness every iteration on purpose
            return {} if d.shared else {"loop_invariant": loop_site}
        if n in carried:  # reuse, declared or not
            return {"carried": (carried[n], loop_site)}
        return {}

    p_deps = _carry_deps(an, fr, loop, summ, p_ids)
    c_summ = None
    if loop.cond is not None:
        c_ids = [fr.key_ids(a) for a in (*loop.cond_consts, *loop.carry)]
        c_summ = an.analyze(loop.cond, tuple(x is not None for x in c_ids))
    link, via_cond = _link(loop, summ, c_summ)
    fr.links[i] = link

    def p_did(k: int) -> int:  # consts are the same value on every iteration
        return fr.data_id(atoms[k]) if k < nc else an.ids.fresh()

    sub = Substitution(an.ids, p_deps, p_ids, p_did)
    an.instantiate(fr, summ, eqn, sub, link, in_loop=True, mark=mark)
    if c_summ is not None:
        c_deps = [fr.dep(a) for a in loop.cond_consts] + p_deps[nc : nc + nk]
        c_sub = Substitution(an.ids, c_deps, c_ids, lambda k: an.ids.fresh())
        an.instantiate(fr, c_summ, eqn, c_sub, link, in_loop=True, mask_of=via_cond)
    for j, v in enumerate(eqn.outvars[:nk]):
        ids = None
        if summ.out_ids[j] is not None or o_ids[nc + j] is not None:
            ids = o_ids[nc + j] if passthrough[j] else an.ids.fresh_arr(tuple(v.aval.shape))
        fr.set(v, p_deps[nc + j] | sub.mask(summ.out_deps[j]), ids)
    for j, v in enumerate(eqn.outvars[nk:]):
        ids = None
        if summ.out_ids[nk + j] is not None:
            ids = an.ids.fresh_arr(tuple(v.aval.shape))
        fr.set(v, sub.mask(summ.out_deps[nk + j]), ids)


def _carried_reuse(
    an: Analyzer, summ: Summary, nc: int, nk: int, atoms: list, p_ids: list, varying: int
) -> dict[int, Site]:
    """Body draws whose key, in the next iteration, is a key this iteration already consumed:
    ``{draw index: site of the earlier consumption}``."""
    if not summ.draws or nk == 0:
        return {}
    consumed: dict[int, Draw] = {}
    for d in summ.draws:
        if not d.recompute and d.reach:
            for x in d.ids.tolist():
                consumed.setdefault(x, d)
    if not consumed:
        return {}
    # the next iteration: consts are the same, carries are what the body returns, xs are new
    nxt_ids: list = []
    for k, a in enumerate(atoms):
        if k < nc:
            nxt_ids.append(an.ids.param_ids(k, a.aval) if p_ids[k] is not None else None)
        elif k < nc + nk:
            nxt_ids.append(summ.out_ids[k - nc])
        else:
            nxt_ids.append(None)

    def nxt_did(k: int) -> int:
        if k < nc:
            return an.ids.param_data(k)
        if k < nc + nk:
            did = summ.out_did[k - nc]
            return did if did is not None else an.ids.fresh()
        return an.ids.fresh()

    nxt = Substitution(an.ids, [0] * len(atoms), nxt_ids, nxt_did)
    out: dict[int, Site] = {}
    for n, d in enumerate(summ.draws):
        if d.recompute or not d.reach or not (d.deps & varying):
            continue
        for x in nxt.sub_arr(d.ids).tolist():
            earlier = consumed.get(x)
            if earlier is not None:
                out[n] = earlier.site
                break
    return out


def _scan(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    lay = _compat.scan_layout(eqn.params)
    ins = list(eqn.invars)
    nc, nk = lay.num_consts, lay.num_carry
    loop = _Loop(
        eqn, lay.body, ins[:nc], ins[nc : nc + nk], ins[nc + nk :], lay.length, lay.reverse
    )
    _loop(an, fr, i, loop)


def _while(an: Analyzer, fr: Frame, i: int, eqn: Any) -> None:
    lay = _compat.while_layout(eqn.params)
    cn, bn = lay.cond_nconsts, lay.body_nconsts
    ins = list(eqn.invars)
    loop = _Loop(
        eqn,
        lay.body,
        ins[cn : cn + bn],
        ins[cn + bn :],
        [],
        None,
        cond=lay.cond,
        cond_consts=tuple(ins[:cn]),
    )
    _loop(an, fr, i, loop)


CONTROL = {"cond": _cond, "scan": _scan, "while": _while}
