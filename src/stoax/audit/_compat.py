"""Every JAX-internal touch point of ``stoax.audit``, in one place.

The auditor reads jaxprs and patches JAX's batching interpreter; none of that is public API. Each
helper here wraps one internal and, when the running JAX no longer has it, raises
:class:`~stoax.audit.AuditError` naming the JAX version -- the audit never returns a report it
did not earn. ``tests/test_audit_compat.py`` pins each helper on the installed JAX.

Tested with JAX 0.6.2 (the oldest supported) to 0.10.2.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import jax

from stoax.audit._findings import AuditError

__all__ = [
    "ClosedJaxpr",
    "Jaxpr",
    "Literal",
    "OLDEST_TESTED",
    "NEWEST_TESTED",
    "batch_trace_class",
    "current_name_stack",
    "current_traceback",
    "eqn_name_stack",
    "eqn_traceback",
    "jit_static_args",
    "key_impl_name",
    "key_reuse_checks_off",
    "name_stack_scopes",
    "retrace_inner_jits",
    "scan_layout",
    "splits_are_fold_ins",
    "traceback_lines",
    "unsupported",
    "while_layout",
]

OLDEST_TESTED = "0.6.2"
NEWEST_TESTED = "0.10.2"


def unsupported(what: str) -> AuditError:
    """The error raised when a JAX internal the auditor relies on is missing or changed."""
    return AuditError(
        f"stoax.audit cannot audit under jax {jax.__version__}: {what}. The auditor is tested "
        f"with jax {OLDEST_TESTED} to {NEWEST_TESTED}; please report this with your JAX version "
        "(no report is returned rather than one that could miss bugs)."
    )


try:
    from jax.extend.core import ClosedJaxpr, Jaxpr, Literal
except ImportError as _err:  # pragma: no cover - jax < 0.4.30
    raise ImportError(f"stoax.audit needs jax >= {OLDEST_TESTED} (jax.extend.core)") from _err


# -- tracing -------------------------------------------------------------------------------------

# A trace-context setting with no effect on the jaxpr: a value never used before makes jit's trace
# cache miss, so inner functions traced before this audit (by the user or by an earlier audit) are
# traced again -- under the audit's vmap hook, and with source lines of this trace.
_audits = itertools.count()


@contextlib.contextmanager
def retrace_inner_jits() -> Iterator[None]:
    """Make ``jax.jit`` re-trace functions it has cached (a private config option)."""
    try:
        from jax._src import config as jax_config

        option = jax_config.hlo_source_file_canonicalization_regex
    except (ImportError, AttributeError) as err:
        raise unsupported("jax._src.config.hlo_source_file_canonicalization_regex is gone") from err
    with option(f"stoax-audit-{next(_audits)}-(?!)"):
        yield


def key_reuse_checks_off() -> contextlib.AbstractContextManager:
    """JAX's own key-reuse checker off while tracing (the audit reports reuse instead)."""
    ctx = getattr(jax, "debug_key_reuse", None)
    if ctx is None:
        raise unsupported("jax.debug_key_reuse is gone")
    return ctx(False)


class StaticArgs(NamedTuple):
    argnums: tuple[int, ...]
    argnames: tuple[str, ...]


def jit_static_args(fn: Any) -> StaticArgs | None:
    """``static_argnums`` / ``static_argnames`` of a ``jax.jit`` function; None for another
    callable."""
    if type(fn).__name__ != "PjitFunction":
        return None
    info = getattr(fn, "_jit_info", None)
    argnums = getattr(info, "static_argnums", None)
    argnames = getattr(info, "static_argnames", None)
    if argnums is None or argnames is None:
        raise unsupported("a jax.jit function has no _jit_info.static_argnums/static_argnames")
    return StaticArgs(tuple(argnums), tuple(argnames))


# -- source locations ----------------------------------------------------------------------------


@functools.cache
def _addr2line() -> Callable[[Any, int], int]:
    try:
        from jax._src.lib import xla_client
    except ImportError as err:  # pragma: no cover
        raise unsupported("jax._src.lib.xla_client is gone") from err
    fn = getattr(xla_client.Traceback, "code_addr2line", None)
    if fn is None:
        raise unsupported("xla_client.Traceback.code_addr2line is gone")
    return fn


# Where ``jax.jit`` traces a function body. Older JAX (0.6) keeps the frames outside the jitted
# function in the tracebacks of its equations -- those of the call that first traced it, which a
# cached trace shares with later calls -- so a traceback is cut there. Newer JAX cuts it itself.
_JIT_TRACE_FRAMES = frozenset({"_create_pjit_jaxpr"})


def traceback_lines(traceback: Any) -> list[tuple[Any, int]]:
    """``(code object, line)`` of the frames of an equation's traceback, innermost first, up to
    the ``jax.jit`` that traced it."""
    if traceback is None:
        return []
    raw = getattr(traceback, "raw_frames", None)
    if raw is None:
        raise unsupported("a jaxpr equation's traceback has no raw_frames()")
    codes, lastis = raw()
    addr2line = _addr2line()
    out = []
    for code, lasti in zip(codes, lastis, strict=True):
        if code.co_name in _JIT_TRACE_FRAMES and code.co_filename.endswith("pjit.py"):
            break
        out.append((code, int(addr2line(code, lasti))))
    return out


def _source_info_util() -> Any:
    try:
        from jax._src import source_info_util
    except ImportError as err:  # pragma: no cover
        raise unsupported("jax._src.source_info_util is gone") from err
    return source_info_util


def current_traceback() -> Any:
    """The traceback of the equation JAX is tracing now."""
    return _source_info_util().current().traceback


def current_name_stack() -> Any:
    """The ``jax.named_scope`` stack JAX is tracing under now."""
    return _source_info_util().current_name_stack()


def eqn_traceback(eqn: Any) -> Any:
    """The traceback recorded with a jaxpr equation."""
    info = getattr(eqn, "source_info", None)
    if info is None or not hasattr(info, "traceback"):
        raise unsupported("a jaxpr equation has no source_info.traceback")
    return info.traceback


def eqn_name_stack(eqn: Any) -> Any:
    """The ``jax.named_scope`` stack recorded with a jaxpr equation."""
    info = getattr(eqn, "source_info", None)
    if info is None or not hasattr(info, "name_stack"):
        raise unsupported("a jaxpr equation has no source_info.name_stack")
    return info.name_stack


class Scope(NamedTuple):
    name: str
    is_transform: bool  # a transformation (``transpose``, ``jvp``) rather than a named scope


def name_stack_scopes(name_stack: Any) -> tuple[Scope, ...]:
    """The scopes of an equation's name stack, outermost first."""
    stack = getattr(name_stack, "stack", None)
    if stack is None:
        raise unsupported("a name stack has no .stack")
    return tuple(Scope(item.name, type(item).__name__ == "Transform") for item in stack)


# -- jaxpr layouts -------------------------------------------------------------------------------


def _param(params: dict, name: str, prim: str) -> Any:
    try:
        return params[name]
    except KeyError:
        raise unsupported(f"the {prim} primitive has no parameter {name!r}") from None


class ScanLayout(NamedTuple):
    body: Any
    num_consts: int
    num_carry: int
    reverse: bool
    length: int


def scan_layout(params: dict) -> ScanLayout:
    return ScanLayout(
        _param(params, "jaxpr", "scan"),
        int(_param(params, "num_consts", "scan")),
        int(_param(params, "num_carry", "scan")),
        bool(params.get("reverse", False)),
        int(_param(params, "length", "scan")),
    )


class WhileLayout(NamedTuple):
    cond: Any
    body: Any
    cond_nconsts: int
    body_nconsts: int


def while_layout(params: dict) -> WhileLayout:
    return WhileLayout(
        _param(params, "cond_jaxpr", "while"),
        _param(params, "body_jaxpr", "while"),
        int(_param(params, "cond_nconsts", "while")),
        int(_param(params, "body_nconsts", "while")),
    )


def cond_branches(params: dict) -> tuple:
    return tuple(_param(params, "branches", "cond"))


def random_shape(params: dict, prim: str) -> tuple[int, ...]:
    """The ``shape`` parameter of ``random_split`` / ``random_bits``."""
    return tuple(_param(params, "shape", prim))


# -- PRNG implementations -----------------------------------------------------------------------


def key_impl_name(dtype: Any) -> str | None:
    """The PRNG implementation of a key dtype (``"threefry2x32"``), None when not a key dtype."""
    impl = getattr(dtype, "_impl", None)
    if impl is None:
        return None
    name = getattr(impl, "name", None)
    if not isinstance(name, str):
        raise unsupported("a key dtype's PRNG implementation has no name")
    return name


def splits_are_fold_ins(dtype: Any) -> bool:
    """True when ``split(k, n)[i]`` equals ``fold_in(k, i)`` (flat ``i``) for keys of ``dtype``:
    the threefry and rbg implementations in the partitionable mode (JAX's default since 0.5);
    checked numerically by ``tests/test_audit_analysis.py``. Not ``unsafe_rbg``."""
    if key_impl_name(dtype) not in ("threefry2x32", "rbg"):
        return False
    try:
        flags: Any = jax.config  # its options are dynamic attributes, unknown to type checkers
        return bool(flags.jax_threefry_partitionable)
    except AttributeError as err:
        raise unsupported("jax.config.jax_threefry_partitionable is gone") from err


# -- the batching interpreter -------------------------------------------------------------------


def batch_trace_class() -> Any:
    """``BatchTrace``, the class the vmap hook patches, checked for the methods it wraps."""
    try:
        from jax._src.interpreters import batching
    except ImportError as err:  # pragma: no cover
        raise unsupported("jax._src.interpreters.batching is gone") from err
    cls = getattr(batching, "BatchTrace", None)
    for name in ("process_primitive", "to_batch_info"):
        if cls is None or not callable(getattr(cls, name, None)):
            raise unsupported(f"BatchTrace.{name} is gone")
    return cls


CUSTOM_CALLS = ("process_custom_jvp_call", "process_custom_vjp_call")
