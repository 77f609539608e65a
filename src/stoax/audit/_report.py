"""From the analysed draws to :class:`~stoax.audit.Finding` s: one function per finding kind.

Only *live* draws count (their result reaches an output of the audited function or a side
effect); see :mod:`stoax.audit._reach`.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from stoax.audit._findings import (
    CONSTANT_KEY,
    LOOP_INVARIANT_KEY,
    REUSED_KEY,
    VMAP_SHARED_KEY,
    Finding,
    Kind,
    Location,
)
from stoax.audit._identities import Identities
from stoax.audit._records import DRAWS, Draw
from stoax.audit._trace import distinguishing_frames

__all__ = ["findings"]

_WHAT = {
    "random_bits": "random draw",
    "threefry2x32": "threefry2x32 draw",
    "random_split": "split",
    "key_data": "draw from the key's raw data",
}


def _make(kind: Kind, loc: Location | None, detail: str, related: Iterable = ()) -> Finding:
    msg = kind.explanation[0].upper() + kind.explanation[1:] + "."
    if detail:
        msg = f"{msg} {detail}"
    return Finding(kind.name, kind.severity, msg, kind.fix, loc, tuple(r for r in related if r))


def _exclusive(a: Draw, b: Draw) -> bool:
    branches = dict(a.excl)
    return any(t in branches and branches[t] != br for t, br in b.excl)


class _Findings:
    def __init__(self) -> None:
        self.out: list[Finding] = []
        self._seen: set = set()

    def add(self, f: Finding, key: tuple) -> None:
        if key not in self._seen:
            self._seen.add(key)
            self.out.append(f)


def _constant(draws: list[Draw], ids: Identities, out: _Findings) -> set:
    locs = set()
    for d in draws:
        if d.prim not in DRAWS or d.deps:
            continue
        locs.add(d.site.loc)
        origin = ids.root_origin(int(d.ids[0])) if d.ids.size else None
        loc = origin.loc if origin is not None else d.site.loc
        details = []
        if origin is not None and d.site.loc != loc:
            details.append(f"The key is made here and drawn from at {d.site.loc}.")
        if d.in_loop:
            details.append("The draw runs inside a loop: also the same on every iteration.")
        related = (d.site.loc,) if d.site.loc != loc else ()
        out.add(_make(CONSTANT_KEY, loc, " ".join(details), related), ("constant", loc))
    return locs


def _loop_invariant(draws: list[Draw], const_locs: set, out: _Findings) -> None:
    for d in draws:
        if d.loop_invariant is None or d.shared or d.site.loc in const_locs:
            continue
        loop = d.loop_invariant.loc
        detail = f"The loop is at {loop}." if loop else ""
        out.add(_make(LOOP_INVARIANT_KEY, d.site.loc, detail), ("loop", d.site.loc))


def _reuse_message(first: Draw, second: Draw, out: _Findings) -> None:
    loc, other = second.site.loc, first.site.loc
    if loc == other:  # one line draws twice: name the lines that called it, if they differ
        parted = distinguishing_frames(second.site.tb, first.site.tb)
        loc, other = parted if parted is not None else (loc, other)
    what1 = _WHAT.get(first.prim, first.prim)
    what2 = _WHAT.get(second.prim, second.prim)
    where = f"at {other}" if other and other != loc else "on the same line"
    detail = f"This {what2} uses the key already consumed by a {what1} {where}."
    out.add(_make(REUSED_KEY, loc, detail, (other,) if other != loc else ()), ("reuse", loc, other))


def _reused(draws: list[Draw], out: _Findings) -> None:
    # one draw over an array holding one key twice (a broadcast key, a repeating gather)
    for d in draws:
        if d.recompute or d.shared or d.ids.size < 2:
            continue
        uniq = np.unique(d.ids)
        if uniq.size < d.ids.size:
            what = _WHAT.get(d.prim, d.prim)
            detail = (
                f"This {what} runs over an array of keys that holds the same key more than once "
                "(a key broadcast, repeated by indexing, or vmapped over copies of one key), so "
                "those members get identical randomness."
            )
            out.add(_make(REUSED_KEY, d.site.loc, detail), ("reuse", d.site.loc, d.site.loc))
    # one identity consumed by two operations
    groups: dict[int, list[Draw]] = {}
    for d in draws:
        for ident in set(d.ids.tolist()):
            groups.setdefault(ident, []).append(d)
    for group in groups.values():
        if len(group) < 2:
            continue
        # the backward pass regenerating a forward draw (custom_vjp, remat) is not reuse
        primary = [d for d in group if not d.recompute]
        eff = primary or list({d.sig: d for d in group}.values())
        pair = next(
            (
                (eff[i], eff[j])
                for i in range(len(eff))
                for j in range(i + 1, len(eff))
                if not _exclusive(eff[i], eff[j])
            ),
            None,
        )
        if pair is not None:
            _reuse_message(*pair, out)
    # a key consumed in one loop iteration and again in the next
    for d in draws:
        if d.carried is None or d.recompute:
            continue
        earlier, loop = d.carried
        detail = (
            f"In the next iteration of the loop at {loop.loc}, this consumes the key that the "
            f"previous iteration already consumed at {earlier.loc} and carried on: split the "
            "carried key and consume only one half."
        )
        out.add(
            _make(
                REUSED_KEY, d.site.loc, detail, (earlier.loc,) if earlier.loc != d.site.loc else ()
            ),
            ("reuse", d.site.loc, earlier.loc),
        )


def _vmap_shared(vmap_findings: list, out: _Findings) -> None:
    for vf in vmap_findings:
        loc = vf.draw or vf.combine
        detail = ""
        if vf.combine and vf.combine != loc:
            detail = f"The shared random values meet batched values at {vf.combine}."
        out.add(_make(VMAP_SHARED_KEY, loc, detail), ("vmap", loc))


def findings(draws: list[Draw], vmap_findings: list, ids: Identities) -> list[Finding]:
    """The findings of the audited function's (top-level) draws, errors first."""
    live = [d for d in draws if d.reach]
    out = _Findings()
    const_locs = _constant(live, ids, out)
    _loop_invariant(live, const_locs, out)
    _reused(live, out)
    _vmap_shared(vmap_findings, out)
    order = {"error": 0, "warning": 1}
    out.out.sort(key=lambda f: order.get(f.severity, 2))
    return out.out
