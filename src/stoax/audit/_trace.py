"""Tracing a function to a jaxpr for the audit, and mapping equations back to the user's lines.

``trace`` runs ``jax.make_jaxpr`` with array leaves of the arguments as inputs (everything else --
modules' static fields, activation functions -- is closed over, as ``equinox.filter_jit`` does),
with JAX's own key-reuse checker off (the audit reports reuse instead of failing on it), and with
a trace-context setting that makes JAX re-trace inner ``jit`` functions instead of reusing traces
cached before the audit (so every equation is seen by the ``vmap`` hook).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sysconfig
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax._src import config as _jax_config
from jax._src.lib import xla_client as _xla_client

from stoax.audit._findings import Location

__all__ = ["LIBRARY_PACKAGES", "is_library_file", "location_of", "trace", "user_location"]

# Frames inside these packages are library code: a finding points at the user's line that called
# into them.
LIBRARY_PACKAGES = (
    "jax",
    "jaxlib",
    "stoax",
    "flax",
    "equinox",
    "haiku",
    "optax",
    "chex",
    "jaxtyping",
    "treescope",
    "orbax",
    "typeguard",
    "wadler_lindig",
)


@functools.cache
def _library_prefixes() -> tuple[str, ...]:
    prefixes = []
    for name in LIBRARY_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is not None and spec.submodule_search_locations:
            prefixes.extend(os.path.realpath(p) + os.sep for p in spec.submodule_search_locations)
    for key in ("stdlib", "platstdlib"):
        path = sysconfig.get_path(key)
        if path:
            prefixes.append(os.path.realpath(path) + os.sep)
    return tuple(prefixes)


@functools.cache
def is_library_file(filename: str) -> bool:
    """True for a file of JAX, stoax, Flax, Equinox, Haiku, optax ... or the standard library."""
    if filename.startswith("<frozen") or filename.startswith("<string>"):
        return True
    real = os.path.realpath(filename) if os.path.isabs(filename) else filename
    return real.startswith(_library_prefixes())


@functools.lru_cache(maxsize=4096)
def user_frames(traceback: Any) -> tuple[Location, ...]:
    """Every frame of ``traceback`` that is not library code, innermost first."""
    if traceback is None:
        return ()
    try:
        codes, lastis = traceback.raw_frames()
    except Exception:  # pragma: no cover - a traceback of another JAX version
        return ()
    frames = []
    for code, lasti in zip(codes, lastis, strict=False):
        if is_library_file(code.co_filename):
            continue
        try:
            line = _xla_client.Traceback.code_addr2line(code, lasti)
        except Exception:  # pragma: no cover
            line = code.co_firstlineno
        name = getattr(code, "co_qualname", code.co_name)
        frames.append(Location(code.co_filename, int(line), name))
    return tuple(frames)


def user_location(traceback: Any) -> Location | None:
    """The innermost frame of ``traceback`` (an XLA traceback) that is not library code."""
    frames = user_frames(traceback)
    return frames[0] if frames else None


def distinguishing_frames(tb_a: Any, tb_b: Any) -> tuple[Location, Location] | None:
    """The outermost user frames where two call stacks part: for two draws made by the same
    line of a model (a library's ``next_rng_key`` inside ``apply``), the two lines that called
    the model. None when the stacks do not part."""
    a, b = user_frames(tb_a)[::-1], user_frames(tb_b)[::-1]
    for frame_a, frame_b in zip(a, b, strict=False):
        if frame_a != frame_b:
            return frame_a, frame_b
    return None


def location_of(eqn: Any) -> Location | None:
    return user_location(eqn.source_info.traceback)


def _is_traced_leaf(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


# A trace-context setting with no effect on the jaxpr: changing it makes jit's trace cache miss, so
# inner functions traced before the audit are traced again under the audit's hooks.
_CACHE_BUSTER = "stoax-audit-(?!)"


def trace(fn: Callable, args: tuple, kwargs: dict, hooks: Any = None) -> tuple[Any, list[str]]:
    """``(closed_jaxpr, input_names)`` of ``fn(*args, **kwargs)``; array leaves are the inputs."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path((args, kwargs))
    dyn_index = [i for i, (_, leaf) in enumerate(leaves) if _is_traced_leaf(leaf)]
    names = [_path_name(leaves[i][0]) for i in dyn_index]
    static = [leaf for _, leaf in leaves]

    def flat_fn(*dyn):
        full = list(static)
        for i, v in zip(dyn_index, dyn, strict=False):
            full[i] = v
        a, k = jax.tree_util.tree_unflatten(treedef, full)
        return fn(*a, **k)

    dyn_args = [static[i] for i in dyn_index]
    with (
        jax.debug_key_reuse(False),
        _jax_config.hlo_source_file_canonicalization_regex(_CACHE_BUSTER),
    ):
        if hooks is not None:
            with hooks:
                closed = jax.make_jaxpr(flat_fn)(*dyn_args)
        else:
            closed = jax.make_jaxpr(flat_fn)(*dyn_args)
    return closed, names


def _path_name(path: tuple) -> str:
    # path[0] is 0 (args) or 1 (kwargs)
    if not path:
        return "input"
    head, rest = path[0], path[1:]
    base = "args" if getattr(head, "idx", 0) == 0 else "kwargs"
    return base + "".join(str(p) for p in rest)
