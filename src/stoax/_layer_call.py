"""What every layer call does around the layer's own ``__call__``: a ``jax.named_scope`` with the
layer's class name (so jaxprs, HLO dumps and profiler traces show ``Sequential/Linear/...``), and
the hooks :func:`stoax.tabulate` uses to record each layer's output shape."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["CALL_HOOKS", "named_scope"]

CALL_HOOKS: list[Callable[[Any, Any], None]] = []  # (module, output) after each layer call


def named_scope(call: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``call`` run inside ``jax.named_scope(name)``, then the :data:`CALL_HOOKS`."""

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        with jax.named_scope(name):
            out = call(self, *args, **kwargs)
        for hook in CALL_HOOKS:
            hook(self, out)
        return out

    return __call__
