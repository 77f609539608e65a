"""``stoax.audit`` on real, correct programs: no false alarm.

Each file of ``tests/audit_corpus/`` is a small, faithful reproduction of the training, evaluation
or sampling step of a public example (Flax linen and NNX, Equinox, Haiku, JAX), with exactly the
example's randomness handling (how keys are made, split, folded, carried and handed to the model),
at tiny sizes. Its docstring names the source (repository and path); its ``audit_target()``
returns ``(step, args[, kwargs])`` -- the form ``stoax audit FILE.py:audit_target`` takes, so each
file is also a command-line target. The audit of every one must find nothing.

A program written against a newer Flax API than the oldest Flax CI runs (``NEEDS_FLAX``) is
skipped there, with the reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import stoax
from stoax.cli.audit import load_file, load_target

CORPUS = Path(__file__).parent / "audit_corpus"
PROGRAMS = sorted(CORPUS.glob("*.py"))

# Programs written against an API newer than the oldest Flax that CI runs the corpus with
# (.ci/floor-constraints.txt): there the program itself does not run, so there is nothing to audit.
NEEDS_FLAX = {"nnx_randomness_vmap_split": (0, 12)}

# Programs whose step draws nothing, or only draws whose results it discards (Flax's
# init-for-shapes, the samples a teacher-forced decoder returns and the step ignores): an
# analyser that leaves dead draws out may count none. Every other program must show its draws --
# including NNX steps that update the model in place and return nothing, whose draws reach the
# outputs only through that state.
NO_LIVE_DRAWS = {"eqx_mnist_make_step", "flax_wmt_initialize_cache", "flax_seq2seq_train_step"}

FAMILIES = ("flax_", "nnx_", "eqx_", "haiku_", "jax_")


def _flax_version() -> tuple[int, ...]:
    try:
        from importlib.metadata import version

        return tuple(int(p) for p in version("flax").split(".")[:2])
    except Exception:  # not installed, or an unusual version string: run everything
        return (999,)


def _param(path: Path):
    marks = ()
    needed = NEEDS_FLAX.get(path.stem)
    if needed and _flax_version() < needed:
        reason = f"written for flax>={'.'.join(map(str, needed))} (the NNX randomness API it uses)"
        marks = (pytest.mark.skip(reason=reason),)
    return pytest.param(path, id=path.stem, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in PROGRAMS])
def test_correct_program_gives_no_finding(path):
    fn, args, kwargs = load_target(f"{path}:audit_target")
    report = stoax.audit(fn, *args, **kwargs)
    assert report.ok, str(report)
    if path.stem not in NO_LIVE_DRAWS:
        assert report.num_draws > 0, "the program draws randomness; the audit saw none"


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
    assert set(NEEDS_FLAX) | NO_LIVE_DRAWS <= {p.stem for p in PROGRAMS}


def test_a_constant_key_in_an_nnx_step_that_updates_in_place_is_found():
    # The NNX way: the step returns nothing, the model and optimiser are updated in place. A bug
    # in such a step must be reported even though the traced function has no outputs of its own.
    from flax import nnx

    program = load_file(str(CORPUS / "nnx_mnist_train_step.py"))

    @nnx.jit
    def train_step(model, optimizer, metrics, batch):
        rngs = nnx.Rngs(0)  # BUG: the same dropout masks at every step
        grad_fn = nnx.value_and_grad(program.loss_fn, has_aux=True)
        (loss, logits), grads = grad_fn(model, batch, rngs)
        metrics.update(loss=loss, logits=logits, labels=batch["label"])
        optimizer.update(model, grads)

    model, optimizer, metrics, _ = nnx.eval_shape(program.setup)
    _, (_, _, _, batch, _) = program.audit_target()
    report = stoax.audit(train_step, model, optimizer, metrics, batch)
    assert {f.kind for f in report.findings} == {"constant_key"}, str(report)
    bug_line = next(
        i
        for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
        if text.rstrip().endswith("# BUG: the same dropout masks at every step")
    )
    assert report.findings[0].location.line == bug_line, str(report)


def test_corpus_and_bug_files_are_command_line_targets(capsys):
    from stoax.cli import main

    assert main(["audit", f"{CORPUS / 'haiku_vae_update.py'}:audit_target"]) == 0
    assert "no randomness problems found" in capsys.readouterr().out
    bug = CORPUS.parent / "audit_bugs" / "jax_2009_uniform_twice.py"
    assert main(["audit", "--format", "github", f"{bug}:audit_target"]) == 1
    assert capsys.readouterr().out.startswith("::error file=")
