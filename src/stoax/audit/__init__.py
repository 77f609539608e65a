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

Arguments are seen as ``jax.jit`` sees them: array leaves and Python numbers (at the top level
or in lists, tuples and dicts) are traced, except the ``static_argnums`` / ``static_argnames`` of
a ``jax.jit`` function; every other leaf (modules' fields that are not arrays, functions) is
closed over as a static value, as ``equinox.filter_jit`` does. Only array leaves of the result
are outputs, and a draw whose result reaches no output (nor a side effect) is dead code: it does
not count.

``stoax.audit`` is an :class:`Audit` object (a module cannot be called): calling it audits, and
its attributes are this package's public names (``stoax.audit.shared()``,
``stoax.audit.AuditReport``, ...); ``from stoax.audit import AuditReport, Finding`` imports from
the package as usual. Both are typed: a checker sees ``stoax.audit(...)`` return an
:class:`AuditReport` (``tests/typecheck/public_api.py``). One spelling confuses checkers: after
``import stoax.audit`` pyright takes ``stoax.audit`` for the package, not the object; write
``import stoax`` (or ``from stoax.audit import ...``) instead.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import jax

from stoax.audit import _findings
from stoax.audit._analysis import SHARED_SCOPE, Analyzer
from stoax.audit._findings import (
    KINDS,
    AuditError,
    AuditReport,
    Finding,
    Kind,
    Location,
)
from stoax.audit._identities import is_key_dtype, is_u32
from stoax.audit._records import DRAWS
from stoax.audit._report import findings
from stoax.audit._trace import trace
from stoax.audit._vmap import VmapHook

__all__ = [  # and ``Audit``, the type of ``stoax.audit``
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


def shared() -> contextlib.AbstractContextManager[None]:
    """Declare randomness drawn inside this block as *shared on purpose*.

    It is ``jax.named_scope("stoax_shared_randomness")``: it changes nothing in the computation,
    and ``stoax.audit`` reports neither ``vmap_shared_key`` (one mask for a whole ensemble) nor
    ``loop_invariant_key`` (one mask for every time step: variational dropout) for draws made
    inside it. Undeclared sharing is still reported; reusing one key for two draws still is.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> key = jax.random.key(0)
        >>> def member(x):
        ...     with stoax.audit.shared():    # one mask for the whole ensemble, on purpose
        ...         mask = jax.random.bernoulli(key, 0.5, x.shape)
        ...     return x * mask
        >>> stoax.audit(jax.vmap(member), jnp.ones((3, 4))).of_kind("vmap_shared_key")
        []
        >>> def rnn(h, xs, key):                  # variational dropout: one mask per sequence
        ...     def step(h, x):
        ...         with stoax.audit.shared():
        ...             mask = jax.random.bernoulli(key, 0.5, h.shape)
        ...         return jnp.tanh(x + h * mask), None
        ...     return jax.lax.scan(step, h, xs)[0]
        >>> stoax.audit(rnn, jnp.ones(4), jnp.ones((5, 4)), key).ok
        True
    """
    return jax.named_scope(SHARED_SCOPE)


def _run(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> AuditReport:
    t0 = time.perf_counter()
    hook = VmapHook()
    closed, _ = trace(fn, args, kwargs, hooks=hook)
    analyzer = Analyzer()
    has_ids = tuple(_input_has_ids(v.aval) for v in closed.jaxpr.invars)
    summ = analyzer.analyze(closed, has_ids)
    return AuditReport(
        function=_name(fn),
        findings=findings(summ.draws, hook.findings, analyzer.ids),
        num_draws=sum(1 for d in summ.draws if d.prim in DRAWS and d.reach),
        num_equations=analyzer.num_eqns,
        seconds=time.perf_counter() - t0,
    )


def _input_has_ids(aval: Any) -> bool:
    """A typed key array, or what looks like legacy key data: ``uint32[..., 2]`` (threefry,
    ``jax.random.PRNGKey``) or ``uint32[..., 4]`` (rbg). Other ``uint32`` arrays (step counters)
    are data."""
    dtype = getattr(aval, "dtype", None)
    shape = tuple(getattr(aval, "shape", ()))
    return is_key_dtype(dtype) or (is_u32(dtype) and len(shape) >= 1 and shape[-1] in (2, 4))


def _name(fn: Any) -> str:
    for attr in ("__qualname__", "__name__"):
        n = getattr(fn, attr, None)
        if isinstance(n, str):
            return n
    return type(fn).__name__


class Audit:
    """The type of ``stoax.audit``: call it to audit a function; its attributes are the
    ``stoax.audit`` namespace.

    ``stoax.audit(fn, *args, **kwargs)`` traces ``fn(*args, **kwargs)`` (nothing is compiled or
    run) and returns an :class:`AuditReport` of its randomness bugs.

    Example:
        >>> import jax, stoax
        >>> from stoax.audit import Audit
        >>> isinstance(stoax.audit, Audit)
        True
        >>> stoax.audit(lambda k: jax.random.normal(k, (2,)), jax.random.key(0)).ok
        True
    """

    AuditError = AuditError
    AuditReport = AuditReport
    Finding = Finding
    KINDS = KINDS
    Kind = Kind
    Location = Location
    SHARED_SCOPE = SHARED_SCOPE
    shared = staticmethod(shared)

    def __init__(self) -> None:
        # the name of the package it stands for: ``import stoax.audit._report as r`` resolves
        # the submodule through it
        self.__name__ = __name__

    # (``_findings.AuditReport``: in this class body, ``AuditReport`` names the attribute above)
    def __call__(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> _findings.AuditReport:
        """Audit ``fn(*args, **kwargs)`` (traced, not run): an :class:`AuditReport` of its
        randomness bugs."""
        return _run(fn, args, kwargs)

    def __repr__(self) -> str:
        return "<stoax.audit: call stoax.audit(fn, *args, **kwargs) to audit fn>"


audit: Audit = Audit()
"""``stoax.audit(fn, *args, **kwargs)``: find the randomness bugs of ``fn``; see :class:`Audit`."""
