"""``stoax audit path/to/file.py:function``: audit a JAX function for randomness bugs.

The command **imports the file** (its top-level code runs, as with ``python file.py`` minus the
``if __name__ == "__main__":`` block), **calls the named function** with no arguments, and audits
what it returns: ``(callable, args)`` or ``(callable, args, kwargs)``, traced as
``stoax.audit(callable, *args, **kwargs)`` (the callable is traced, never compiled or run).

Exit status: 0 no finding, 1 a finding, 2 could not audit (missing file or function, a wrong
return value, an exception -- or a ``sys.exit`` -- while importing, calling or tracing).

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "step.py"
    >>> _ = path.write_text(
    ...     "import jax, jax.numpy as jnp\\n"
    ...     "def step(x, key):\\n"
    ...     "    return x * jax.random.bernoulli(key, 0.5, x.shape)\\n"
    ...     "def target():\\n"
    ...     "    return step, (jnp.ones(4), jax.random.key(0))\\n"
    ... )
    >>> fn, args, kwargs = load_target(f"{path}:target")
    >>> fn.__name__, len(args), kwargs
    ('step', 2, {})
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
import textwrap
import types
from collections.abc import Callable
from typing import Any

__all__ = ["CannotAudit", "github_annotations", "load_file", "load_target", "report_json"]

EPILOG = textwrap.dedent(
    """\
    example -- my_step.py:
        import jax, jax.numpy as jnp

        def step(x, key):
            return x * jax.random.bernoulli(key, 0.5, x.shape)

        def audit_target():
            return step, (jnp.ones(4), jax.random.key(0))

    $ stoax audit my_step.py:audit_target
    $ stoax audit --format github my_step.py:audit_target   # annotations in GitHub Actions

    The file is imported: its top-level code runs (keep training scripts under
    `if __name__ == "__main__":`). Then the named function is called and the callable it
    returns is traced with jax.make_jaxpr -- not compiled, not run.

    exit status: 0 no finding, 1 at least one finding (only errors with --errors-only),
    2 could not audit (missing file or function, wrong return value, an exception or a
    sys.exit() while importing the file, calling the function or tracing).
    """
)

FORMATS = ("text", "json", "github")


class CannotAudit(Exception):
    """The target could not be audited (exit status 2); the message says why."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Import a Python file, call the named function and trace the JAX function it returns; "
        "report randomness bugs: constant keys, keys that do not change across scan/while "
        "iterations, reused keys, and randomness shared across a vmap axis."
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
        "--format",
        choices=FORMATS,
        default="text",
        help="text: the readable report (default); json: one JSON object; github: GitHub "
        "Actions annotations (::error file=...,line=...::) followed by the readable report",
    )
    parser.add_argument(
        "--errors-only",
        action="store_true",
        help="exit 1 only for errors, not for warnings (vmap_shared_key)",
    )


# ---------------------------------------------------------------------------------------------
# loading the target


def _exit_message(exc: SystemExit, what: str) -> str:
    return (
        f"{what} called sys.exit({exc.code!r}), so nothing was audited. stoax audit imports the "
        "file (running its top-level code) and calls the named function: keep scripts' "
        'entry points under `if __name__ == "__main__":`'
    )


def load_file(path: str) -> types.ModuleType:
    """Import ``path`` as a fresh module registered in ``sys.modules`` (so dataclasses, Equinox
    modules and ``from __future__ import annotations`` resolve their types); its directory is on
    ``sys.path`` while it imports. Raises :class:`CannotAudit`."""
    if not os.path.isfile(path):
        raise CannotAudit(f"no such file: {path}")
    stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
    name = f"_stoax_audit_{stem}_{abs(hash(os.path.abspath(path))):x}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CannotAudit(f"cannot load {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SystemExit as e:
        sys.modules.pop(name, None)
        raise CannotAudit(_exit_message(e, f"importing {path}")) from None
    except Exception as e:
        sys.modules.pop(name, None)
        raise CannotAudit(f"importing {path} failed: {type(e).__name__}: {e}") from e
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    return module


def load_target(target: str) -> tuple[Callable, tuple, dict]:
    """``FILE.py:FUNCTION`` -> the ``(callable, args, kwargs)`` that FUNCTION returns.

    Raises :class:`CannotAudit` with a message for the user when anything is wrong."""
    path, sep, func_name = target.rpartition(":")
    if not sep or not path or not func_name:
        raise CannotAudit(f"expected FILE.py:FUNCTION, got {target!r}")
    module = load_file(path)
    func = getattr(module, func_name, None)
    if func is None:
        raise CannotAudit(f"{path} has no function {func_name!r}")
    if not callable(func):
        raise CannotAudit(f"{path}:{func_name} is not a function")
    try:
        got = func()
    except SystemExit as e:
        raise CannotAudit(_exit_message(e, f"{func_name}()")) from None
    except Exception as e:
        raise CannotAudit(f"calling {func_name}() failed: {type(e).__name__}: {e}") from e
    if not isinstance(got, tuple) or len(got) not in (2, 3):
        raise CannotAudit(
            f"{func_name}() must return (callable, args) or (callable, args, kwargs), "
            f"got {type(got).__name__}"
        )
    fn, fargs, fkwargs = (*got, {}) if len(got) == 2 else got
    if not callable(fn):
        raise CannotAudit(
            f"{func_name}() returned {type(fn).__name__} where a callable is expected"
        )
    if not isinstance(fargs, tuple | list) or not isinstance(fkwargs, dict):
        raise CannotAudit(f"{func_name}() must return args as a tuple and kwargs as a dict")
    return fn, tuple(fargs), fkwargs


def _audit(fn: Callable, args: tuple, kwargs: dict, func_name: str) -> Any:
    from stoax.audit import audit

    try:
        return audit(fn, *args, **kwargs)
    except SystemExit as e:
        raise CannotAudit(_exit_message(e, f"tracing {func_name}()'s function")) from None
    except Exception as e:
        raise CannotAudit(
            f"tracing {func_name}()'s function failed: {type(e).__name__}: {e}"
        ) from e


# ---------------------------------------------------------------------------------------------
# output formats


def _location_dict(loc: Any) -> dict | None:
    if loc is None:
        return None
    return {"file": loc.file, "line": loc.line, "function": loc.function}


def report_json(report: Any) -> str:
    """The report as one JSON object: function, ok, counts and the findings with locations."""
    findings = [
        {
            "kind": f.kind,
            "severity": f.severity,
            "message": f.message,
            "fix": f.fix,
            "location": _location_dict(f.location),
            "related": [_location_dict(r) for r in f.related],
        }
        for f in report.findings
    ]
    return json.dumps(
        {
            "function": report.function,
            "ok": report.ok,
            "errors": len(report.errors),
            "warnings": len(report.warnings),
            "num_draws": report.num_draws,
            "num_equations": report.num_equations,
            "findings": findings,
        },
        indent=2,
    )


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _workspace_path(path: str) -> str:
    """``path`` relative to the GitHub workspace (or the working directory) when inside it."""
    root = os.path.abspath(os.environ.get("GITHUB_WORKSPACE") or os.getcwd())
    full = os.path.abspath(path)
    return os.path.relpath(full, root) if os.path.commonpath([root, full]) == root else full


def github_annotations(report: Any) -> str:
    """One GitHub Actions workflow command per finding: ``::error file=F,line=L,title=T::msg``
    (``::warning`` for warnings), so the finding shows on the line in the pull request."""
    out = []
    for f in report.findings:
        level = "error" if f.severity == "error" else "warning"
        props = []
        if f.location is not None:
            props.append(f"file={_escape_property(_workspace_path(f.location.file))}")
            props.append(f"line={f.location.line}")
        props.append(f"title={_escape_property(f'stoax audit: {f.kind}')}")
        message = f"{f.message} Fix: {f.fix}"
        out.append(f"::{level} {','.join(props)}::{_escape_data(message)}")
    return "\n".join(out)


def _fail(message: str, fmt: str) -> int:
    if fmt == "github":
        print(f"::error title=stoax audit::{_escape_data(message)}")
    print(f"stoax audit: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    fmt = getattr(args, "format", "text")
    try:
        fn, fargs, fkwargs = load_target(args.target)
        report = _audit(fn, fargs, fkwargs, args.target.rpartition(":")[2])
    except CannotAudit as e:
        return _fail(str(e), fmt)
    if fmt == "json":
        print(report_json(report))
    elif fmt == "github":
        annotations = github_annotations(report)
        if annotations:
            print(annotations)
        print(report)
    else:
        print(report)
    failing = report.errors if args.errors_only else report.findings
    return 1 if failing else 0
