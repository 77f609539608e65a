"""Which draws matter: a backward pass marks what reaches the outputs or a side effect.

A draw whose result reaches no output of the audited function and no side effect is dead code
(``Model.init(jax.random.key(0), ...)`` called only for the shapes, ``_ = normal(key(0), ...)``,
a split whose children are never drawn from): it does not count. Reach is a bitmask: bit 0 is a
side effect (``jax.debug.print``, callbacks), bit ``j + 1`` the jaxpr's output ``j``. Each
call-like equation has a :class:`Link` that maps its sub-jaxpr's masks to the caller's.
"""

from __future__ import annotations

from typing import Any

from stoax.audit._compat import Literal
from stoax.audit._identities import set_bits

__all__ = ["AllLink", "CallLink", "Link", "all_outputs", "backward", "map_mask"]


def all_outputs(n_out: int, effects: bool) -> int:
    """The mask of every output (and the side-effect bit when the jaxpr has effects)."""
    return ((1 << (n_out + 1)) - 2) | int(bool(effects))


def map_mask(m: int, outr: list[int]) -> int:
    """Rewrite a sub-jaxpr mask ``m`` with ``outr[j]``, the caller's reach of sub-output ``j``."""
    r = m & 1
    for j in set_bits(m >> 1):
        r |= outr[j]
    return r


def _reach_of(reach: dict, atoms: Any) -> int:
    r = 0
    for v in atoms:
        if not isinstance(v, Literal):
            r |= reach.get(v, 0)
    return r


class Link:
    """How reach flows through one call-like equation; ``in_masks[i]``: the sub-jaxpr outputs
    (its numbering) that the equation's input ``i`` reaches."""

    __slots__ = ("eqn", "in_masks", "outr", "_memo")

    def __init__(self, eqn: Any, in_masks: list[int]) -> None:
        self.eqn = eqn
        self.in_masks = in_masks
        self.outr: list[int] = []
        self._memo: dict[int, int] = {}

    def resolve(self, reach: dict) -> None:
        """Compute ``outr`` from the reach of the equation's outputs."""
        self.outr = [reach.get(v, 0) for v in self.eqn.outvars]

    def map(self, m: int) -> int:
        r = self._memo.get(m)
        if r is None:
            r = self._memo[m] = map_mask(m, self.outr)
        return r


class CallLink(Link):
    """A sub-jaxpr whose outputs are the equation's outputs (jit, custom_vjp, remat, cond)."""


class AllLink(Link):
    """An unknown layout: everything inside reaches every output of the equation."""

    def resolve(self, reach: dict) -> None:
        self.outr = [_reach_of(reach, self.eqn.outvars) | int(bool(self.eqn.effects))]

    def map(self, m: int) -> int:
        return self.outr[0] if m else 0


def backward(eqns: list, outvars: list, invars: list, links: dict[int, Link]) -> list[int]:
    """Reach of every variable; returns the inputs' reach. Resolves every link."""
    reach: dict = {}
    for j, v in enumerate(outvars):
        if not isinstance(v, Literal):
            reach[v] = reach.get(v, 0) | (1 << (j + 1))
    for e in range(len(eqns) - 1, -1, -1):
        eqn = eqns[e]
        link = links.get(e)
        if link is not None:
            link.resolve(reach)
            for a, m in zip(eqn.invars, link.in_masks, strict=True):
                if m and not isinstance(a, Literal):
                    reach[a] = reach.get(a, 0) | link.map(m)
            continue
        r = _reach_of(reach, eqn.outvars)
        if eqn.effects:
            r |= 1
        if r:
            for a in eqn.invars:
                if not isinstance(a, Literal):
                    reach[a] = reach.get(a, 0) | r
    return [reach.get(v, 0) for v in invars]
