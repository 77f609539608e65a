"""``stoax audit path/to/file.py:function``: audit a JAX function for randomness bugs.

The named function takes no arguments and returns ``(callable, args)`` or
``(callable, args, kwargs)``; ``stoax.audit(callable, *args, **kwargs)`` is printed. Exit status:
0 no finding, 1 a finding, 2 bad input.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import textwrap
import uuid

EPILOG = textwrap.dedent(
    """\
    example -- my_step.py:
        import jax, jax.numpy as jnp

        def step(x, key):
            return x * jax.random.bernoulli(key, 0.5, x.shape)

        def audit_target():
            return step, (jnp.ones(4), jax.random.key(0))

    $ stoax audit my_step.py:audit_target

    exit status: 0 no finding, 1 at least one finding (or only errors with --errors-only),
    2 bad input (missing file or function, wrong return value, the function failed to trace).
    """
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Trace a JAX function and report randomness bugs: constant keys, keys that do not change "
        "across scan/while iterations, reused keys, and randomness shared across a vmap axis."
    )
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "target",
        metavar="FILE.py:FUNCTION",
        help="a Python file and a function in it that takes no arguments and returns "
        "(callable, args) or (callable, args, kwargs)",
    )
    parser.add_argument(
        "--errors-only",
        action="store_true",
        help="exit 1 only for errors, not for warnings (vmap_shared_key)",
    )


def _fail(message: str) -> int:
    print(f"stoax audit: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    target = args.target
    path, sep, func_name = target.rpartition(":")
    if not sep or not path or not func_name:
        return _fail(f"expected FILE.py:FUNCTION, got {target!r}")
    if not os.path.isfile(path):
        return _fail(f"no such file: {path}")
    module_name = f"_stoax_audit_target_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        return _fail(f"cannot load {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - report any import failure as bad input
        return _fail(f"importing {path} failed: {type(e).__name__}: {e}")
    finally:
        sys.path.pop(0)
    func = getattr(module, func_name, None)
    if func is None:
        return _fail(f"{path} has no function {func_name!r}")
    if not callable(func):
        return _fail(f"{path}:{func_name} is not a function")
    try:
        got = func()
    except Exception as e:  # noqa: BLE001
        return _fail(f"calling {func_name}() failed: {type(e).__name__}: {e}")
    if not isinstance(got, tuple) or len(got) not in (2, 3):
        return _fail(
            f"{func_name}() must return (callable, args) or (callable, args, kwargs), "
            f"got {type(got).__name__}"
        )
    fn, fargs, fkwargs = (*got, {}) if len(got) == 2 else got
    if not callable(fn):
        return _fail(f"{func_name}() returned {type(fn).__name__} where a callable is expected")
    if not isinstance(fargs, tuple | list) or not isinstance(fkwargs, dict):
        return _fail(f"{func_name}() must return args as a tuple and kwargs as a dict")

    from stoax.audit import audit

    try:
        report = audit(fn, *fargs, **fkwargs)
    except Exception as e:  # noqa: BLE001
        return _fail(f"tracing {func_name}()'s function failed: {type(e).__name__}: {e}")
    print(report)
    failing = report.errors if args.errors_only else report.findings
    return 1 if failing else 0
