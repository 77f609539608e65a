"""Readable ``repr`` for modules: arrays as ``f32[3,4]``, nested modules indented."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

_WIDTH = 88


def _array_summary(x: Any) -> str:
    dtype = x.dtype
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        name = "key" if isinstance(x, jax.core.Tracer) else f"key<{jax.random.key_impl(x)}>"
    else:  # float32 -> f32, bfloat16 -> bf16, uint8 -> u8, bool -> bool
        name = np.dtype(dtype).name
        for long, short in (("float", "f"), ("uint", "u"), ("int", "i"), ("complex", "c")):
            name = name.replace(long, short)
    shape = ",".join(str(d) for d in x.shape)
    prefix = "traced " if isinstance(x, jax.core.Tracer) else ""
    return f"{prefix}{name}[{shape}]"


def _format(value: Any, indent: int) -> str:
    from stoax._module import is_array, is_module

    if is_array(value) and hasattr(value, "shape"):
        if not hasattr(value, "dtype"):
            return repr(value)
        return _array_summary(value)
    if is_module(value):
        return pformat(value, indent)
    if isinstance(value, list | tuple) and any(is_module(v) or is_array(v) for v in value):
        inner = [_format(v, indent + 4) for v in value]
        open_, close = ("[", "]") if isinstance(value, list) else ("(", ")")
        one_line = open_ + ", ".join(inner) + ("," if len(inner) == 1 and close == ")" else "")
        if len(one_line) + indent < _WIDTH and "\n" not in one_line:
            return one_line + close
        pad = " " * (indent + 4)
        return open_ + "\n" + "".join(f"{pad}{s},\n" for s in inner) + " " * indent + close
    if callable(value) and hasattr(value, "__name__"):
        return getattr(value, "__qualname__", value.__name__)
    return repr(value)


def pformat(module: Any, indent: int = 0) -> str:
    """Format a module as ``Name(field=value, ...)``, one field per line when it is long."""
    name = type(module).__name__
    parts = []
    for f in dataclasses.fields(module):
        if not f.repr:
            continue
        parts.append(f"{f.name}={_format(module.__dict__.get(f.name), indent + 4)}")
    one_line = f"{name}({', '.join(parts)})"
    if len(one_line) + indent < _WIDTH and "\n" not in one_line:
        return one_line
    pad = " " * (indent + 4)
    return f"{name}(\n" + "".join(f"{pad}{p},\n" for p in parts) + " " * indent + ")"
