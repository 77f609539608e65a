"""``stoax.audit`` on real, correct programs: no false alarm.

Each file of ``tests/audit_corpus/`` is a small, faithful reproduction of the training, evaluation
or sampling step of a public example (Flax linen and NNX, Equinox, Haiku, JAX), with exactly the
example's randomness handling (how keys are made, split, folded, carried and handed to the model),
at tiny sizes. Its docstring names the source (repository and path); its ``audit_target()``
returns ``(step, args[, kwargs])`` -- the form ``stoax audit FILE.py:audit_target`` takes, so each
file is also a command-line target. The audit of every one must find nothing.

The programs in ``XFAIL`` are correct code on which the analyser still raises a false alarm
(issue 12); each names its false alarm, and ``strict=True`` makes the test fail as soon as the
alarm is gone, so the entry is removed then.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import pytest

import stoax
from stoax.cli.audit import load_target

CORPUS = Path(__file__).parent / "audit_corpus"
PROGRAMS = sorted(CORPUS.glob("*.py"))

# program (file stem) -> the false alarm the analyser still raises on it
XFAIL: dict[str, str] = {}

FAMILIES = ("flax_", "nnx_", "eqx_", "haiku_", "jax_")


def _param(path: Path):
    marks = ()
    if path.stem in XFAIL:
        marks = (pytest.mark.xfail(strict=True, reason=XFAIL[path.stem]),)
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in PROGRAMS])
def test_correct_program_gives_no_finding(path):
    fn, args, kwargs = load_target(f"{path}:audit_target")
    start = time.perf_counter()
    report = stoax.audit(fn, *args, **kwargs)
    assert report.ok, str(report)
    assert report.num_draws > 0 or path.stem.endswith("_no_draws"), (
        "the program draws randomness; the audit saw none"
    )
    assert time.perf_counter() - start < 5.0


def test_the_corpus_is_broad_and_every_program_names_its_source():
    assert len(PROGRAMS) >= 30
    for family in FAMILIES:
        assert sum(p.stem.startswith(family) for p in PROGRAMS) >= 3, family
    for path in PROGRAMS:
        assert path.stem.startswith(FAMILIES), path.name
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and "Source: " in doc, f"{path.name}: the docstring must name its source"
        source = doc.split("Source: ", 1)[1]
        repo = source.split(",", 1)[0].strip()
        assert repo in {
            "google/flax",
            "patrick-kidger/equinox",
            "google-deepmind/dm-haiku",
            "jax-ml/jax",
        }, (path.name, repo)
    assert set(XFAIL) <= {p.stem for p in PROGRAMS}
