"""Randomness shared across a ``vmap`` axis, seen while ``jax.vmap`` batches the function.

``jax.make_jaxpr`` of a function that calls ``jax.vmap`` shows only the batched program: which
values were batched is gone. So, while the audit traces, :class:`VmapHook` wraps
``BatchTrace.process_primitive`` (JAX's batching interpreter) and watches every primitive that
``vmap`` processes:

* a ``random_bits`` whose key is *not batched* gives one result for the whole axis: its value is
  *tainted* (remembered with the draw's location);
* an operation applied to tainted values stays tainted while all its inputs are unbatched;
* an operation combining a tainted value with a batched one is the finding: every member of the
  axis gets the same random numbers.

Primitives holding jaxprs (``jit``, ``scan``, ``cond``, ...) are followed with the same rules on
their jaxpr. A draw or combination inside ``jax.named_scope("stoax_shared_randomness")`` (what
``stoax.audit.shared()`` opens) is intended sharing and is not reported.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from stoax.audit import _compat
from stoax.audit._analysis import SHARED_SCOPE, sub_jaxprs
from stoax.audit._compat import ClosedJaxpr, Literal
from stoax.audit._findings import Location
from stoax.audit._identities import is_key_dtype, is_u32
from stoax.audit._trace import location_of, user_location

__all__ = ["VmapFinding", "VmapHook"]


@dataclasses.dataclass(frozen=True)
class VmapFinding:
    draw: Location | None
    combine: Location | None


def _shared_name_stack(name_stack: Any) -> bool:
    return any(s.name == SHARED_SCOPE for s in _compat.name_stack_scopes(name_stack))


# a flag is (batched, taint): taint is the Location of the unbatched draw (or True when unknown)
_CLEAN = (False, None)


@dataclasses.dataclass(frozen=True)
class _KeyData:
    """Raw data of an unbatched key (``random_unwrap``): hashing it by hand is a draw."""

    loc: Any


_KEY_MOVES = {
    "slice",
    "squeeze",
    "reshape",
    "broadcast_in_dim",
    "concatenate",
    "stack",
    "gather",
    "select_n",
    "transpose",
    "convert_element_type",
    "copy",
    "copy_p",
    "dynamic_slice",
    "random_unwrap",
}


def _join(a: tuple, b: tuple) -> tuple:
    return (a[0] or b[0], a[1] if a[1] is not None else b[1])


class VmapHook:
    """Context manager: while active, records :class:`VmapFinding` s in ``findings``."""

    def __init__(self) -> None:
        self.findings: list[VmapFinding] = []
        self._taint: dict[int, tuple[Any, Any]] = {}
        self._memo: dict[tuple, tuple] = {}
        self._orig = None
        self.error: Exception | None = None
        self.active = False

    # -- patching ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget what an earlier (abandoned) trace recorded."""
        self.findings.clear()
        self._taint.clear()
        self._memo.clear()
        self.error = None

    def __enter__(self) -> VmapHook:
        cls = _compat.batch_trace_class()
        orig = cls.process_primitive
        hook = self

        def process_primitive(trace, p, tracers, params, /):
            n = len(hook.findings)
            out = orig(trace, p, tracers, params)
            if hook.error is None:
                try:
                    hook._after(trace, p, tracers, params, out)
                    hook._locate(n)
                except Exception as err:  # never break the user's trace: re-raised
                    hook.error = err  # by __exit__ as an AuditError naming the JAX version
            return out

        self._cls, self._orig = cls, orig
        cls.process_primitive = process_primitive
        self._orig_custom = {}
        for name in _compat.CUSTOM_CALLS:
            meth = getattr(cls, name, None)
            if meth is None:
                raise _compat.unsupported(f"BatchTrace.{name} is gone")
            self._orig_custom[name] = meth
            setattr(cls, name, self._wrap_custom(meth))
        self.active = True
        return self

    def _wrap_custom(self, meth: Any) -> Any:
        hook = self

        def wrapped(trace, prim, *rest, **kw):
            n = len(hook.findings)
            out = meth(trace, prim, *rest, **kw)
            if hook.error is None:
                try:
                    hook._after_custom(trace, rest[-1], out)
                    hook._locate(n)
                except Exception as err:  # re-raised by __exit__
                    hook.error = err
            return out

        return wrapped

    def _locate(self, start: int) -> None:
        """Findings made inside library code (JAX's tracebacks stop at jit boundaries) get the
        user's line of the call that contains them."""
        if len(self.findings) > start and _shared_name_stack(_compat.current_name_stack()):
            del self.findings[start:]  # inside stoax.audit.shared(): declared sharing
            return
        if all(f.draw is not None and f.combine is not None for f in self.findings[start:]):
            return
        loc = user_location(_compat.current_traceback())
        if loc is None:
            return
        for i in range(start, len(self.findings)):
            f = self.findings[i]
            self.findings[i] = VmapFinding(f.draw or loc, f.combine or loc)

    def _after_custom(self, trace: Any, tracers: Any, outs: Any) -> None:
        """``custom_jvp`` / ``custom_vjp`` calls: their functions are traced out of sight of
        ``process_primitive``; an unbatched key going in makes unbatched outputs suspect."""
        if _shared_name_stack(_compat.current_name_stack()):
            return
        infos = [trace.to_batch_info(t) for t in tracers]
        if any(d is not None for _, d in infos):
            return
        key_in = any(is_key_dtype(getattr(v, "dtype", None)) for v, _ in infos)
        taint = None
        for v, _ in infos:
            hit = self._taint.get(id(v))
            if hit is not None and hit[0] is v:
                taint = hit[1]
                break
        if not key_in and taint is None:
            return
        loc = user_location(_compat.current_traceback()) or True
        for o in outs:
            v = _unbatched(trace, o)
            if v is None:
                continue
            if key_in and is_u32(getattr(v, "dtype", None)):
                self._taint[id(v)] = (v, _KeyData(loc))
            elif taint is not None:
                self._taint[id(v)] = (v, taint)

    def __exit__(self, *exc: Any) -> None:
        if self._orig is not None:
            self._cls.process_primitive = self._orig
            for name, meth in self._orig_custom.items():
                setattr(self._cls, name, meth)
            self._orig = None
        self._taint.clear()
        self._memo.clear()
        if self.error is not None and exc[0] is None:
            err, self.error = self.error, None
            raise _compat.unsupported(
                f"the vmap check failed inside JAX's batching interpreter "
                f"({type(err).__name__}: {err})"
            ) from err

    # -- the rules at trace time ----------------------------------------------------------------
    def _after(self, trace: Any, p: Any, tracers: Any, params: dict, out: Any) -> None:
        infos = [trace.to_batch_info(t) for t in tracers]
        flags = []
        for v, d in infos:
            if d is not None:
                flags.append((True, None))
            else:
                hit = self._taint.get(id(v))
                flags.append((False, hit[1] if hit is not None and hit[0] is v else None))
        outs = list(out) if p.multiple_results else [out]
        shared = _shared_name_stack(_compat.current_name_stack())
        here = None

        def current_loc():
            nonlocal here
            if here is None:
                here = user_location(_compat.current_traceback())
            return here

        if any(f[1] is True for f in flags) and current_loc() is not None:
            flags = [(b, here if t is True else t) for b, t in flags]
        if (
            any(isinstance(f[1], _KeyData) and f[1].loc is True for f in flags)
            and current_loc() is not None
        ):
            flags = [
                (b, _KeyData(here) if isinstance(t, _KeyData) and t.loc is True else t)
                for b, t in flags
            ]
        if p.name in ("random_bits", "random_unwrap"):
            if not flags[0][0] and not shared:
                loc = current_loc() or True
                out_flags = [(False, loc if p.name == "random_bits" else _KeyData(loc))] * len(outs)
            else:
                return
        else:
            subs = sub_jaxprs(params)
            if subs:
                if not any(f[1] is not None for f in flags) and not _has_draw(subs):
                    return
                out_flags = self._call(p.name, params, subs, flags, shared, outs, current_loc())
            else:
                if not any(f[1] is not None for f in flags):
                    return
                out_flags = self._first_order(flags, len(outs), shared, current_loc, p.name)
        for o, (b, t) in zip(outs, out_flags, strict=False):
            v = _unbatched(trace, o) if t is not None and not b else None
            if v is not None:
                self._taint[id(v)] = (v, t)

    def _first_order(
        self, flags: list, n_out: int, shared: bool, loc_fn: Any, name: str = ""
    ) -> list:
        batched = any(f[0] for f in flags)
        taint = next((f[1] for f in flags if f[1] is not None), None)
        if taint is None:
            return [(batched, None)] * n_out
        if isinstance(taint, _KeyData):
            real = next((f[1] for f in flags if f[1] is not None and f[1] is not taint), None)
            if real is not None and not isinstance(real, _KeyData):
                taint = real
            elif batched or name == "random_wrap":
                return [(batched, None)] * n_out
            elif name in _KEY_MOVES:
                return [(False, taint)] * n_out
            else:  # arithmetic on the key's raw words: a hand-written draw
                return [(False, taint.loc)] * n_out
        if batched:
            if not shared:
                loc = loc_fn() if callable(loc_fn) else loc_fn
                self.findings.append(VmapFinding(taint if taint is not True else None, loc))
            return [(True, None)] * n_out
        return [(False, taint)] * n_out

    # -- the same rules on a jaxpr ------------------------------------------------------------
    def _call(
        self, name: str, params: dict, subs: list, flags: list, shared: bool, outs: list, loc: Any
    ) -> list:
        n_out = len(outs)
        if name == "scan":
            return self._scan(params, flags, shared, loc)
        if name == "while":
            return self._while(params, flags, shared, loc)
        if name == "cond":
            res = [(flags[0][0], None)] * n_out
            for br in _compat.cond_branches(params):
                res = [
                    _join(a, b)
                    for a, b in zip(res, self._jaxpr(br, flags[1:], shared, loc), strict=False)
                ]
            return res
        if len(subs) == 1:
            inner = subs[0].jaxpr if isinstance(subs[0], ClosedJaxpr) else subs[0]
            if len(inner.invars) == len(flags) and len(inner.outvars) == n_out:
                return self._jaxpr(subs[0], flags, shared, loc)
        return self._first_order(flags, n_out, shared, loc)

    def _scan(self, params: dict, flags: list, shared: bool, loc: Any) -> list:
        lay = _compat.scan_layout(params)
        nc, nk = lay.num_consts, lay.num_carry
        carry = list(flags[nc : nc + nk])
        for _ in range(4):
            out = self._jaxpr(lay.body, flags[:nc] + carry + flags[nc + nk :], shared, loc)
            new = [_join(c, o) for c, o in zip(carry, out[:nk], strict=False)]
            if new == carry:
                break
            carry = new
        return carry + out[nk:]

    def _while(self, params: dict, flags: list, shared: bool, loc: Any) -> list:
        lay = _compat.while_layout(params)
        cn, bn = lay.cond_nconsts, lay.body_nconsts
        consts, carry = flags[cn : cn + bn], list(flags[cn + bn :])
        for _ in range(4):
            out = self._jaxpr(lay.body, consts + carry, shared, loc)
            new = [_join(c, o) for c, o in zip(carry, out, strict=False)]
            if new == carry:
                break
            carry = new
        return carry

    def _jaxpr(self, closed: Any, flags: list, shared: bool, outer: Location | None) -> list:
        key = (id(closed), tuple(flags), shared, outer)
        hit = self._memo.get(key)
        if hit is not None and hit[0] is closed:
            return list(hit[1])
        jaxpr = closed.jaxpr if isinstance(closed, ClosedJaxpr) else closed
        env: dict = {}
        for v, f in zip(jaxpr.invars, flags, strict=False):
            env[v] = f

        def read(a):
            return _CLEAN if isinstance(a, Literal) else env.get(a, _CLEAN)

        for eqn in jaxpr.eqns:
            in_flags = [read(a) for a in eqn.invars]
            sh = shared or _shared_name_stack(_compat.eqn_name_stack(eqn))
            name = eqn.primitive.name
            res: list[tuple[bool, Any]]
            if name in ("random_bits", "random_unwrap"):
                if in_flags[0][0]:
                    res = [(True, None)]
                elif sh:
                    res = [_CLEAN]
                else:
                    loc = location_of(eqn) or outer or True
                    res = [(False, loc if name == "random_bits" else _KeyData(loc))]
            else:
                subs = sub_jaxprs(eqn.params)
                if subs:
                    where = location_of(eqn) or outer
                    res = self._call(name, eqn.params, subs, in_flags, sh, eqn.outvars, where)
                else:
                    res = self._first_order(in_flags, len(eqn.outvars), sh, _Lazy(eqn, outer), name)
            for v, f in zip(eqn.outvars, res, strict=False):
                env[v] = f
        out = [read(a) for a in jaxpr.outvars]
        self._memo[key] = (closed, tuple(out))
        return out


class _Lazy:
    __slots__ = ("eqn", "outer")

    def __init__(self, eqn: Any, outer: Location | None):
        self.eqn, self.outer = eqn, outer

    def __call__(self) -> Location | None:
        return location_of(self.eqn) or self.outer


def _unbatched(trace: Any, o: Any) -> Any:
    """The value ``trace.to_batch_info`` will see for ``o`` when it is unbatched, else None."""
    val, dim = trace.to_batch_info(o)
    return val if dim is None else None


_draw_memo: dict[int, tuple[Any, bool]] = {}


def _has_draw(subs: list) -> bool:
    for s in subs:
        hit = _draw_memo.get(id(s))
        if hit is None or hit[0] is not s:
            jaxpr = s.jaxpr if isinstance(s, ClosedJaxpr) else s
            found = any(
                e.primitive.name in ("random_bits", "random_unwrap")
                or _has_draw(sub_jaxprs(e.params))
                for e in jaxpr.eqns
            )
            if len(_draw_memo) > 10000:
                _draw_memo.clear()
            hit = (s, found)
            _draw_memo[id(s)] = hit
        if hit[1]:
            return True
    return False
