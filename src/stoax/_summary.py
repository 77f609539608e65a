"""A summary of a model: every layer's path, type, output shape, parameter count and bytes."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from stoax import _layer_call
from stoax._module import is_array, is_module
from stoax._partition import partition

__all__ = ["count_params", "tabulate"]


def count_params(model: Any) -> int:
    """The number of trainable parameters (elements of the arrays :func:`stoax.partition`
    puts on the parameter side).

    Example:
        >>> import jax, stoax
        >>> stoax.count_params(stoax.nn.Linear(3, 2, key=jax.random.key(0)))
        8
    """
    params, _ = partition(model)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))


def _bytes(model: Any) -> int:
    params, _ = partition(model)
    return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(params))


def _modules(node: Any, path: str, out: list[tuple[str, Any]]) -> None:
    if is_module(node):
        out.append((path, node))
        for f in dataclasses.fields(node):
            _modules(node.__dict__[f.name], f"{path}.{f.name}" if path else f.name, out)
    elif isinstance(node, list | tuple):
        for i, item in enumerate(node):
            _modules(item, f"{path}[{i}]", out)
    elif isinstance(node, dict):
        for k, item in node.items():
            _modules(item, f"{path}[{k!r}]", out)


def _shape(out: Any) -> str:
    leaves = jax.tree.leaves(out)
    return ", ".join(f"{np.dtype(x.dtype).name}{list(x.shape)}" for x in leaves if is_array(x))


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def tabulate(model: Any, *inputs: Any, **kwargs: Any) -> str:
    """A table of ``model``'s layers: path, type, output shape for ``model(*inputs, **kwargs)``,
    trainable parameter count and bytes (each row counts the layer and everything inside it).

    Output shapes come from ``jax.eval_shape`` (nothing is computed). Layers run inside a
    ``lax.scan`` (the blocks of a :class:`~stoax.nn.Stack`) show the stack's output only.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> model = stoax.nn.Sequential(
        ...     [stoax.nn.Linear(4, 8, key=jax.random.key(0)), jax.nn.relu, stoax.nn.Dropout(0.1)]
        ... )
        >>> print(stoax.tabulate(stoax.eval_mode(model), jnp.ones((2, 4))))
        path       type        output         params  bytes
        ---------  ----------  -------------  ------  -----
        (model)    Sequential  float32[2, 8]      40  160 B
        layers[0]  Linear      float32[2, 8]      40  160 B
        layers[2]  Dropout     float32[2, 8]       0    0 B
        total: 40 parameters, 160 B
    """
    rows: list[tuple[str, Any]] = []
    _modules(model, "", rows)
    shapes: dict[int, str] = {}

    def record(module: Any, out: Any) -> None:
        shapes.setdefault(id(module), _shape(out))

    _layer_call.CALL_HOOKS.append(record)
    try:
        jax.eval_shape(lambda: model(*inputs, **kwargs))
    finally:
        _layer_call.CALL_HOOKS.remove(record)
    table = [("path", "type", "output", "params", "bytes")]
    for path, m in rows:
        table.append(
            (
                path or "(model)",
                type(m).__name__,
                shapes.get(id(m), ""),
                str(count_params(m)),
                _human(_bytes(m)),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(5)]
    right = (False, False, False, True, True)

    def line(r: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if rj else c.ljust(w) for c, w, rj in zip(r, widths, right, strict=True)
        ]
        return "  ".join(cells).rstrip()

    out = [line(table[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in table[1:]]
    out.append(f"total: {count_params(model)} parameters, {_human(_bytes(model))}")
    return "\n".join(out)
