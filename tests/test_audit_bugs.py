"""``stoax.audit`` on reproductions of public bug reports: each found, with the right kind, on
the right line.

Each file of ``tests/audit_bugs/`` reproduces one reported randomness bug in a few lines, names
its thread (``THREAD``, an issue, pull request or discussion) and the finding kind it must give
(``KIND``). A few are bugs the audit corpus found in public example code that nobody has
reported yet: they name that code (``SOURCE``) instead of a thread. The line the finding must
point at ends with ``# BUG``; a line that the finding must name as related (the first use of a
reused key) ends with ``# BUG-RELATED``. Each file's ``audit_target()`` is also a command-line
target (``stoax audit FILE.py:audit_target``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stoax
from stoax.cli.audit import load_target

BUGS = Path(__file__).parent / "audit_bugs"
REPRODUCTIONS = sorted(BUGS.glob("*.py"))


def _lines(path: Path, marker: str) -> list[int]:
    return [
        i
        for i, text in enumerate(path.read_text().splitlines(), 1)
        if text.rstrip().endswith(marker)
    ]


def _param(path: Path):
    return pytest.param(path, id=path.stem, marks=[pytest.mark.allow_key_reuse])


@pytest.mark.parametrize("path", [_param(p) for p in REPRODUCTIONS])
def test_reported_bug_is_found_with_its_kind_on_its_line(path):
    fn, args, kwargs = load_target(f"{path}:audit_target")
    kind = _module_constant(path, "KIND")
    (bug_line,) = _lines(path, "# BUG")
    related = set(_lines(path, "# BUG-RELATED"))
    report = stoax.audit(fn, *args, **kwargs)
    here = str(path.resolve())

    def at_bug(finding):
        loc = finding.location
        return loc is not None and loc.file == here and loc.line == bug_line

    found = [f for f in report.of_kind(kind) if at_bug(f)]
    assert found, f"no {kind} at {path.name}:{bug_line}\n{report}"
    named = {r.line for r in found[0].related if r.file == here}
    assert related <= named, f"{path.name}: {sorted(related)} not named as related\n{report}"


def _module_constant(path: Path, name: str, default: object = AssertionError) -> object:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            return ast.literal_eval(node.value)
    if default is AssertionError:
        raise AssertionError(f"{path.name} defines no {name}")
    return default


def test_every_reproduction_names_its_thread_and_a_known_kind():
    threads = []
    for path in REPRODUCTIONS:
        thread = _module_constant(path, "THREAD", None)
        source = _module_constant(path, "SOURCE", None)
        assert (thread is None) != (source is None), f"{path.name}: THREAD or SOURCE, not both"
        if thread is not None:
            assert thread.startswith("https://github.com/"), path.name
            assert any(part in thread for part in ("/issues/", "/pull/", "/discussions/"))
            threads.append(thread)
        else:
            assert source.startswith("https://github.com/") and "/blob/" in source, path.name
        doc = ast.get_docstring(ast.parse(path.read_text()))
        cited = thread or source
        assert doc and cited in doc, f"{path.name}: the docstring must cite {cited}"
        assert _module_constant(path, "KIND") in stoax.audit.KINDS, path.name
        assert len(_lines(path, "# BUG")) == 1, f"{path.name}: exactly one '# BUG' line"
    assert len(threads) >= 15, "at least 15 reproductions of public bug reports"
    assert len(set(threads)) == len(threads), "one reproduction per thread"
