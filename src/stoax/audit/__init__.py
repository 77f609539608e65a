"""``stoax.audit``: find randomness bugs in any JAX function -- Flax, Equinox, Haiku, plain JAX.

``stoax.audit(fn, *args, **kwargs)`` traces ``fn`` to a jaxpr (``jax.make_jaxpr``; nothing is
compiled or run) and follows every random draw back to its key, through ``jit``, ``scan``,
``fori_loop`` / ``while_loop``, ``cond``, ``custom_vjp`` / ``custom_jvp``, ``remat``,
``shard_map`` and any other primitive holding a jaxpr. It reports, each with the user's
``file:line``, a plain-language explanation and the fix:

* ``constant_key`` -- a key that depends on no input: the same randomness on every call;
* ``loop_invariant_key`` -- a key that does not change across loop iterations;
* ``reused_key`` -- one key consumed by two draws (or a draw and a split);
* ``vmap_shared_key`` (a warning) -- a draw under ``jax.vmap`` with an unbatched key, combined
  with batched values: the same randomness for every member.

Example:
    >>> import jax, stoax
    >>> def step(x):
    ...     return x * jax.random.bernoulli(jax.random.key(0), 0.5, x.shape)
    >>> report = stoax.audit(step, jax.numpy.ones(4))
    >>> [f.kind for f in report.findings]
    ['constant_key']
    >>> stoax.audit(lambda x, k: x * jax.random.bernoulli(k, 0.5, x.shape),
    ...             jax.numpy.ones(4), jax.random.key(0)).ok
    True

Array leaves of the arguments (``jax.Array``, ``numpy`` arrays, ``jax.ShapeDtypeStruct``) are the
traced inputs; every other leaf (modules' static fields, Python numbers, functions) is closed over
as a static value, as ``equinox.filter_jit`` does.
"""

from __future__ import annotations

import contextlib
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import jax

from stoax.audit._dataflow import DRAWS, SHARED_SCOPE, Analyzer, Draw
from stoax.audit._findings import (
    CONSTANT_KEY,
    KINDS,
    LOOP_INVARIANT_KEY,
    REUSED_KEY,
    VMAP_SHARED_KEY,
    AuditError,
    AuditReport,
    Finding,
    Kind,
    Location,
)
from stoax.audit._trace import distinguishing_frames, trace
from stoax.audit._vmap import VmapHook

__all__ = [
    "AuditError",
    "AuditReport",
    "Finding",
    "KINDS",
    "Kind",
    "Location",
    "SHARED_SCOPE",
    "audit",
    "shared",
]


def shared() -> contextlib.AbstractContextManager:
    """Declare randomness drawn inside this block as *shared on purpose* across ``vmap``.

    It is ``jax.named_scope("stoax_shared_randomness")``: it changes nothing in the computation,
    and ``stoax.audit`` does not report ``vmap_shared_key`` for draws made inside it.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> key = jax.random.key(0)
        >>> def member(x):
        ...     with stoax.audit.shared():    # one mask for the whole ensemble, on purpose
        ...         mask = jax.random.bernoulli(key, 0.5, x.shape)
        ...     return x * mask
        >>> stoax.audit(jax.vmap(member), jnp.ones((3, 4))).of_kind("vmap_shared_key")
        []
    """
    return jax.named_scope(SHARED_SCOPE)


def audit(fn: Callable, *args: Any, **kwargs: Any) -> AuditReport:
    """Trace ``fn(*args, **kwargs)`` and report its randomness bugs; see the module docstring."""
    t0 = time.perf_counter()
    hook = VmapHook()
    closed, names = trace(fn, args, kwargs, hooks=hook)
    analyzer = Analyzer()
    has_ids = tuple(_input_has_ids(v.aval) for v in closed.jaxpr.invars)
    summ = analyzer.analyze(closed, None, has_ids)
    findings = _findings(summ, hook.findings, analyzer)
    return AuditReport(
        function=_name(fn),
        findings=findings,
        num_draws=sum(1 for d in summ.draws if d.prim in DRAWS),
        num_equations=analyzer.num_eqns,
        seconds=time.perf_counter() - t0,
    )


def _input_has_ids(aval: Any) -> bool:
    from stoax.audit._dataflow import _is_key_dtype, _is_u32

    dtype = getattr(aval, "dtype", None)
    return _is_key_dtype(dtype) or (_is_u32(dtype) and len(getattr(aval, "shape", ())) >= 1)


def _name(fn: Any) -> str:
    for attr in ("__qualname__", "__name__"):
        n = getattr(fn, attr, None)
        if isinstance(n, str):
            return n
    return type(fn).__name__


def _make(kind: Kind, loc: Location | None, detail: str, related=()) -> Finding:
    msg = kind.explanation[0].upper() + kind.explanation[1:] + "."
    if detail:
        msg = f"{msg} {detail}"
    return Finding(kind.name, kind.severity, msg, kind.fix, loc, tuple(r for r in related if r))


_WHAT = {
    "random_bits": "random draw",
    "threefry2x32": "threefry2x32 draw",
    "key_data": "draw from the key's raw data",
}


def _exclusive(a: Draw, b: Draw) -> bool:
    branches = dict(a.excl)
    return any(t in branches and branches[t] != br for t, br in b.excl)


def _findings(summ: Any, vmap_findings: list, analyzer: Analyzer) -> list[Finding]:
    out: list[Finding] = []
    seen: set = set()

    def add(f: Finding, key: tuple) -> None:
        if key not in seen:
            seen.add(key)
            out.append(f)

    draws = summ.draws
    # 1. constant keys
    const_locs = set()
    for d in draws:
        if d.prim in DRAWS and d.deps == 0:
            const_locs.add(d.site.loc)
            origin = analyzer.root_origin(int(d.ids[0])) if d.ids.size else None
            loc = origin.loc if origin is not None else d.site.loc
            details = []
            if origin is not None and d.site.loc != loc:
                details.append(f"The key is made here and drawn from at {d.site.loc}.")
            if d.in_loop:
                details.append("The draw runs inside a loop: also the same on every iteration.")
            related = (d.site.loc,) if d.site.loc != loc else ()
            add(_make(CONSTANT_KEY, loc, " ".join(details), related), ("constant", loc))
    # 2. loop-invariant keys
    for lf in summ.loop_findings:
        loc = lf.site.loc
        if loc in const_locs:
            continue
        detail = f"The loop is at {lf.loop_site.loc}." if lf.loop_site.loc else ""
        add(_make(LOOP_INVARIANT_KEY, loc, detail), ("loop", loc))
    # 3. reused keys: one identity consumed by two operations
    groups: dict[int, list[Draw]] = {}
    for d in draws:
        for ident in set(d.ids.tolist()):
            groups.setdefault(ident, []).append(d)
    pairs = []
    for group in groups.values():
        if len(group) < 2:
            continue
        # the backward pass regenerating a forward draw (custom_vjp, remat) is not reuse
        primary = [d for d in group if not d.recompute]
        eff = primary or list({d.sig: d for d in group}.values())
        for i in range(len(eff)):
            for j in range(i + 1, len(eff)):
                if not _exclusive(eff[i], eff[j]):
                    pairs.append((eff[i], eff[j]))
                    break
            else:
                continue
            break
    for first, second in pairs:
        loc, other = second.site.loc, first.site.loc
        if loc == other:  # one line draws twice: name the lines that called it, if they differ
            parted = distinguishing_frames(second.site.tb, first.site.tb)
            loc, other = parted if parted is not None else (loc, other)
        what1 = "split" if first.prim == "random_split" else _WHAT.get(first.prim, first.prim)
        what2 = "split" if second.prim == "random_split" else _WHAT.get(second.prim, second.prim)
        where = f"at {other}" if other and other != loc else "on the same line"
        detail = f"This {what2} uses the key already consumed by a {what1} {where}."
        add(_make(REUSED_KEY, loc, detail, (other,) if other != loc else ()), ("reuse", loc, other))
    # 4. randomness shared across a vmap axis
    for vf in vmap_findings:
        loc = vf.draw or vf.combine
        detail = ""
        if vf.combine and vf.combine != loc:
            detail = f"The shared random values meet batched values at {vf.combine}."
        add(_make(VMAP_SHARED_KEY, loc, detail), ("vmap", loc))
    order = {"error": 0, "warning": 1}
    out.sort(key=lambda f: order.get(f.severity, 2))
    return out


class _AuditModule(types.ModuleType):
    """``stoax.audit`` is both this module and the function: ``stoax.audit(fn, *args)``."""

    def __call__(self, fn: Callable, *args: Any, **kwargs: Any) -> AuditReport:
        return audit(fn, *args, **kwargs)


sys.modules[__name__].__class__ = _AuditModule
