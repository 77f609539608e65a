"""Tracing a function to a jaxpr for the audit, and mapping equations back to the user's lines.

``trace`` runs ``jax.make_jaxpr`` and sees the arguments the way ``jax.jit`` does:

* array leaves (``jax.Array``, numpy arrays, ``jax.ShapeDtypeStruct``) are traced inputs;
* Python ``bool`` / ``int`` / ``float`` / ``complex`` arguments -- at the top level or inside
  lists, tuples and dicts -- are traced too (``jax.jit`` traces them: a step counter ``t`` passed
  as an int is not a constant), except those a ``jax.jit`` function declares static
  (``static_argnums`` / ``static_argnames``). When the function branches on such a number in
  Python (it would need ``static_argnames`` under ``jax.jit``), it is traced again with the
  numbers static;
* every other leaf -- modules' static fields, numbers inside modules, activation functions -- is
  closed over as a static value, as ``equinox.filter_jit`` does.

Outputs are filtered the same way: only array leaves are outputs (an Equinox step returning the
updated model has functions and strings among its leaves). The arguments' arrays after the call
are outputs too (a Flax NNX step updates its model in place).
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

from stoax.audit import _compat
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
    prefixes: list[str] = []
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
    frames = []
    for code, line in _compat.traceback_lines(traceback):
        if is_library_file(code.co_filename):
            continue
        name = getattr(code, "co_qualname", code.co_name)
        frames.append(Location(code.co_filename, line, name))
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
    return user_location(_compat.eqn_traceback(eqn))


_SCALARS = (bool, int, float, complex)


def _is_array(x: Any) -> bool:
    return isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


def _in_plain_containers(path: tuple) -> bool:
    """The leaf sits in lists, tuples and dicts only (not in a module or another pytree node)."""
    return all(isinstance(p, jax.tree_util.SequenceKey | jax.tree_util.DictKey) for p in path[1:])


def _static_position(path: tuple, static: _compat.StaticArgs | None) -> bool:
    if static is None or len(path) < 2:
        return False
    where, which = path[0], path[1]
    if getattr(where, "idx", None) == 0:  # positional
        return getattr(which, "idx", None) in static.argnums
    return getattr(which, "key", None) in static.argnames


# what tracing raises when Python code needs a concrete number (``if t > 0``, ``range(n)``, a shape)
_NEEDS_STATIC = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerIntegerConversionError,
    TypeError,
)


def trace(fn: Callable, args: tuple, kwargs: dict, hooks: Any = None) -> tuple[Any, list[str]]:
    """``(closed_jaxpr, input_names)`` of ``fn(*args, **kwargs)``, arguments seen as ``jax.jit``
    sees them (see the module docstring)."""
    static = _compat.jit_static_args(fn)
    leaves, treedef = jax.tree_util.tree_flatten_with_path((args, kwargs))
    # numbers: first traced as jax.jit does; then bools static; then every number static
    for numbers in ("traced", "bools static", "static"):
        dyn_index = []
        for i, (path, leaf) in enumerate(leaves):
            if _static_position(path, static):
                continue
            if _is_array(leaf) or (
                isinstance(leaf, _SCALARS)
                and (static is not None or _in_plain_containers(path))
                and (numbers == "traced" or (numbers == "bools static" and type(leaf) is not bool))
            ):
                dyn_index.append(i)
        try:
            closed = _trace_once(fn, leaves, treedef, dyn_index, hooks)
        except _NEEDS_STATIC:
            scalar = any(not _is_array(leaves[i][1]) for i in dyn_index)
            if not scalar or numbers == "static":
                raise
            continue
        return closed, [_path_name(leaves[i][0]) for i in dyn_index]
    raise AssertionError("unreachable")  # pragma: no cover


def _trace_once(fn: Callable, leaves: list, treedef: Any, dyn_index: list[int], hooks: Any) -> Any:
    values = [leaf for _, leaf in leaves]

    def flat_fn(*dyn):
        full = list(values)
        for i, v in zip(dyn_index, dyn, strict=True):
            full[i] = v
        a, k = jax.tree_util.tree_unflatten(treedef, full)
        out = fn(*a, **k)
        # the arguments' arrays after the call are outputs too: a Flax NNX step updates its
        # model and optimiser in place rather than returning them
        after = jax.tree_util.tree_leaves((out, a, k))
        return [x for x in after if isinstance(x, jax.core.Tracer)]

    dyn_args = [values[i] for i in dyn_index]
    with _compat.key_reuse_checks_off(), _compat.retrace_inner_jits():
        if hooks is None:
            return jax.make_jaxpr(flat_fn)(*dyn_args)
        hooks.reset()
        with hooks:
            return jax.make_jaxpr(flat_fn)(*dyn_args)


def _path_name(path: tuple) -> str:
    # path[0] is 0 (args) or 1 (kwargs)
    if not path:
        return "input"
    head, rest = path[0], path[1:]
    base = "args" if getattr(head, "idx", 0) == 0 else "kwargs"
    return base + "".join(str(p) for p in rest)
