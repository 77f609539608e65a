"""Typed uses of stoax's public API, checked by mypy (``tests/test_typecheck.py``).

``assert_type`` fails the type check when what a checker infers differs from what the API
promises, so a public function that loses its annotations, or a result whose type changes, fails
the suite. ``tests/test_typecheck.py`` also runs :func:`main`: each use below runs as written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import assert_type

import jax
import jax.numpy as jnp

import stoax
from stoax.audit import AuditReport, Finding, Location


def audit_api() -> None:
    """``stoax.audit(fn, *args)`` is a typed call returning an ``AuditReport``; the namespace
    (``shared()``, the report types) is typed too."""

    def step(x: jax.Array, key: jax.Array) -> jax.Array:
        return x * jax.random.bernoulli(key, 0.5, x.shape)

    report = stoax.audit(step, jnp.ones(4), jax.random.key(0))
    assert_type(report, AuditReport)
    assert_type(report.ok, bool)
    assert_type(report.findings, list[Finding])
    assert_type(report.raise_if_findings(), AuditReport)
    assert report.ok

    def constant(x: jax.Array) -> jax.Array:
        with stoax.audit.shared():
            return x * jax.random.bernoulli(jax.random.key(0), 0.5, x.shape)

    assert_type(stoax.audit.shared(), contextlib.AbstractContextManager[None])
    found = stoax.audit(constant, jnp.ones(4)).of_kind("constant_key")
    assert_type(found, list[Finding])
    assert_type(found[0].location, Location | None)
    assert [f.kind for f in found] == ["constant_key"]
    assert_type(stoax.audit.AuditReport, type[AuditReport])
    # a typed function to checkers: (fn, *args, **kwargs) -> AuditReport
    audit: Callable[..., AuditReport] = stoax.audit
    assert audit(step, jnp.ones(4), jax.random.key(1)).ok


def module_api() -> None:
    """Layers and the functions over modules keep the type of what they are given."""
    key = jax.random.key(0)
    linear = stoax.nn.Linear(3, 2, key=key)
    assert_type(linear, stoax.nn.Linear)
    assert_type(linear.replace(bias=jnp.ones(2)), stoax.nn.Linear)
    assert_type(stoax.train_mode(linear), stoax.nn.Linear)
    assert_type(stoax.cast(linear, jnp.bfloat16), stoax.nn.Linear)
    params, rest = stoax.partition(linear)
    assert_type(stoax.combine(params, rest), stoax.nn.Linear)
    assert_type(stoax.count_params(linear), int)
    assert_type(stoax.keys.child(key, "encoder"), jax.Array)
    assert_type(stoax.keys.child(None, "encoder"), None)
    assert_type(stoax.step_key(0, 3), jax.Array)
    assert_type(stoax.random.dropout(jnp.ones(4), 0.5, key), jax.Array)
    norm = stoax.nn.BatchNorm(2)
    y, norm = stoax.apply(norm, jnp.ones((4, 2)))
    assert_type(norm, stoax.nn.BatchNorm)


def main() -> None:
    audit_api()
    module_api()
