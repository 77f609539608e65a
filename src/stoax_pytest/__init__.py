"""The pytest plugin of stoax: the ``stoax_audit`` fixture audits a function in your own tests.

Installing stoax registers this plugin (entry point ``pytest11``), so in any test::

    def test_train_step_randomness(stoax_audit):
        stoax_audit(train_step, state, batch, key)

``stoax_audit(fn, *args, **kwargs)`` runs ``stoax.audit(fn, *args, **kwargs)`` -- it traces
``fn``, nothing is compiled or run -- and fails the test with the readable report (each finding's
kind, your ``file:line``, the explanation and the fix) when there is a finding; otherwise it
returns the ``AuditReport``. ``stoax_audit.report(fn, *args, **kwargs)`` returns the report
without failing (to assert on it yourself), and ``stoax_audit.errors(fn, *args, **kwargs)`` fails
only for errors, letting warnings (``vmap_shared_key``) pass.

The plugin lives outside the ``stoax`` package and imports nothing heavy: JAX and the auditor are
imported when the fixture is first called, so projects that never use it pay nothing at pytest
start-up. Without the entry point (e.g. a source checkout), enable it with ``-p stoax_pytest`` or
``pytest_plugins = ["stoax_pytest"]`` in a ``conftest.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

__all__ = ["StoaxAudit", "stoax_audit"]


class StoaxAudit:
    """The object the ``stoax_audit`` fixture gives: call it to audit and fail on findings."""

    def report(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """``stoax.audit(fn, *args, **kwargs)``: the report, whatever it finds."""
        from stoax.audit import audit

        return audit(fn, *args, **kwargs)

    def __call__(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Audit ``fn(*args, **kwargs)``; fail the test with the report on any finding."""
        report = self.report(fn, *args, **kwargs)
        if report.findings:
            pytest.fail(str(report), pytrace=False)
        return report

    def errors(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """Like calling the fixture, but only errors fail the test (warnings are allowed)."""
        report = self.report(fn, *args, **kwargs)
        if report.errors:
            pytest.fail(str(report), pytrace=False)
        return report


@pytest.fixture
def stoax_audit() -> StoaxAudit:
    """Audit a JAX function for randomness bugs; fails the test with the report on a finding."""
    return StoaxAudit()
