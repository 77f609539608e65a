"""The few test-side JAX spellings that differ between the oldest supported JAX and the newest.

CI runs the core and auditor tests on both (see ``.ci/run``); keep every such difference here.
"""

from __future__ import annotations

import jax
from jax.extend import core as jex_core


def enable_x64():
    """``jax.enable_x64(True)`` where it exists (JAX >= 0.8), else the older experimental one."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64 as _enable_x64

    return _enable_x64()


def sub_jaxprs(params: dict):
    """The jaxprs held in an equation's params (scan/cond/pjit bodies), on any JAX version."""
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jex_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex_core.Jaxpr):
                yield item


def count_eqns(jaxpr) -> int:
    """Equations in a jaxpr, the sub-jaxprs of scan/cond/jit bodies included."""
    return sum(1 + sum(count_eqns(sub) for sub in sub_jaxprs(e.params)) for e in jaxpr.eqns)


__all__ = ["count_eqns", "enable_x64", "sub_jaxprs"]
