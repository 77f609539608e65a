"""``stoax train digits``: a short real run, resume, and every kind of bad input."""

import contextlib
import io
import json
import os

import jax
import pytest

import stoax.cli
from stoax import train as st
from stoax.cli import train as cli_train


def _main(*argv):
    """Run the CLI in-process; return (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = stoax.cli.main(["train", "digits", *argv])
        except SystemExit as exit_:  # argparse errors
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "digits"
    with jax.debug_key_reuse(True):  # module-scoped: outside conftest's per-test setting
        code, stdout, stderr = _main("--epochs", "2", "--out", str(out), "--no-progress")
    return out, code, stdout, stderr


def test_short_run_writes_plot_checkpoints_and_table(short_run):
    out, code, stdout, stderr = short_run
    assert code == 0, stderr
    assert stderr == ""  # --no-progress: nothing on stderr
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stem in ("dropout", "no_dropout"):
        meta = st.read_checkpoint_metadata(out / f"{stem}.safetensors")
        assert meta["step"] == 2 * (1437 // 64) and len(meta["history"]) == 2
    lines = stdout.splitlines()
    assert lines[0].split()[:4] == ["run", "epochs", "train", "acc"]
    assert lines[1].startswith("dropout 0.2") and lines[2].startswith("no dropout")
    results = json.loads((out / "results.json").read_text())
    assert [r["run"] for r in results["runs"]] == ["dropout 0.2", "no dropout"]
    assert all(r["test_accuracy"] > 80 for r in results["runs"])


def test_transformer_option_trains(tmp_path):
    # The --model transformer option is a working model, not a placeholder: with the fixed seed,
    # 8 epochs take both runs from chance (10%) to above 85% test accuracy.
    out = tmp_path / "digits"
    code, _, stderr = _main(
        "--model", "transformer", "--epochs", "8", "--out", str(out), "--no-progress"
    )
    assert code == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"] == "transformer"
    assert all(r["test_accuracy"] > 85 for r in results["runs"]), results["runs"]


def test_existing_run_is_not_overwritten_silently(short_run):
    out = short_run[0]
    before = (out / "dropout.safetensors").read_bytes()
    code, _, stderr = _main("--epochs", "2", "--out", str(out))
    assert code == 2
    assert "already holds a run" in stderr and "--resume" in stderr and "--overwrite" in stderr
    assert (out / "dropout.safetensors").read_bytes() == before


def test_resume_of_a_finished_run_reports_the_same_table(short_run):
    out, _, stdout, _ = short_run
    code, again, stderr = _main("--epochs", "2", "--out", str(out), "--resume", "--no-progress")
    assert code == 0, stderr
    assert again.splitlines()[:3] == stdout.splitlines()[:3]


def test_resume_with_other_settings_is_refused(short_run):
    code, _, stderr = _main("--out", str(short_run[0]), "--resume", "--rate", "0.5")
    assert code == 1
    assert "other settings" in stderr and "rate=0.2 (now 0.5)" in stderr


def test_corrupt_checkpoint_is_refused(tmp_path):
    (tmp_path / "dropout.safetensors").write_bytes(b"\x00" * 10)
    code, _, stderr = _main("--out", str(tmp_path), "--resume", "--no-progress")
    assert code == 1 and "corrupt or truncated" in stderr


def test_overwrite_removes_the_previous_outputs(tmp_path):
    for name in cli_train.OUTPUTS:
        (tmp_path / name).write_text("old")
    cli_train._prepare_out(tmp_path, resume=False, overwrite=True)
    assert os.listdir(tmp_path) == []


def test_missing_out_folder_is_created_but_not_its_parents(tmp_path):
    assert cli_train._prepare_out(tmp_path / "new", resume=False, overwrite=False).is_dir()
    code, _, stderr = _main("--out", str(tmp_path / "no" / "such" / "dir"))
    assert code == 2 and "its parent" in stderr and "does not exist" in stderr
    assert not (tmp_path / "no").exists()


def test_default_out_folder_is_created_with_its_parent(tmp_path, monkeypatch):
    # The README's main job runs `stoax train digits` in a fresh clone, where runs/ does not
    # exist yet: the default folder must be made, parent and all.
    monkeypatch.chdir(tmp_path)
    code, _, stderr = _main("--epochs", "1", "--no-progress")
    assert code == 0, stderr
    assert (tmp_path / cli_train.DEFAULT_OUT / "results.json").is_file()


def test_out_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    code, _, stderr = _main("--out", str(tmp_path / "f"))
    assert code == 2 and "is a file, not a folder" in stderr


def test_unwritable_out_folder(tmp_path, monkeypatch):
    if os.geteuid() == 0:  # root writes anywhere: simulate the refusal

        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(cli_train.tempfile, "mkstemp", refuse)
    else:
        tmp_path.chmod(0o500)
    try:
        code, _, stderr = _main("--out", str(tmp_path))
    finally:
        tmp_path.chmod(0o700)
    assert code == 2 and "not writable" in stderr and "Permission denied" in stderr


def test_resume_without_a_run(tmp_path):
    code, _, stderr = _main("--out", str(tmp_path), "--resume")
    assert code == 2 and "nothing to resume" in stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--rate", "1.5"], "the dropout rate is a probability in [0, 1)"),
        (["--epochs", "0"], "must be at least 1"),
        (["--model", "resnet"], "invalid choice: 'resnet'"),
        (["--resume", "--overwrite"], "not allowed with argument"),
    ],
)
def test_bad_options_exit_with_usage_errors(argv, message):
    code, _, stderr = _main(*argv)
    assert code == 2 and message in stderr and "usage: stoax train" in stderr


def test_help_reads_well():
    code, stdout, _ = _main("--help")
    assert code == 0
    for text in (
        "--seed",
        "--epochs",
        "--rate",
        "--model",
        "--out",
        "--resume",
        "--overwrite",
        "--no-progress",
        "examples:",
    ):
        assert text in stdout
