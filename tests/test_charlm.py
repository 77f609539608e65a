"""The char-LM example: its data pipeline, and ``stoax train charlm`` on a tiny configuration
(a real run: both runs train, write checkpoints, a plot and a table; resume; bad options)."""

from __future__ import annotations

import contextlib
import io
import json

import jax
import numpy as np
import pytest

import stoax.cli
from stoax import train as st
from stoax.examples import charlm

TINY = ["--epochs", "2", "--hidden", "16", "--train-chars", "16384", "--no-progress"]


def _main(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = stoax.cli.main(["train", "charlm", *argv])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def test_data_pipeline():
    config = charlm.Config(seq_len=16, train_chars=1000, val_chars=500)
    data = charlm.load_data(config)
    text = charlm.load_text()
    assert len(text) > 400_000 and data.vocab_size == len(set(text))
    x, y = data.train["x"], data.train["y"]
    assert x.shape == (62, 16) and x.dtype == np.int32  # (1000 - 1) // 16 windows
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is x shifted by one character
    np.testing.assert_array_equal(x[1:, 0], y[:-1, -1])  # windows are consecutive
    assert data.decode(x[0]) == text[:16]
    cut = int(len(text) * (1 - charlm.VAL_FRACTION))
    assert data.decode(data.val["x"][0]) == text[cut : cut + 16]  # validation: later text


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("charlm") / "run"
    with jax.debug_key_reuse(True):  # module-scoped: outside conftest's per-test setting
        code, stdout, stderr = _main(*TINY, "--out", str(out))
    return out, code, stdout, stderr


def test_tiny_run_trains_both_runs(tiny_run):
    out, code, stdout, stderr = tiny_run
    assert code == 0, stderr
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for stem in ("dropout", "no_dropout"):
        meta = st.read_checkpoint_metadata(out / f"{stem}.safetensors")
        assert meta["step"] == 2 * ((16383 // 64) // 32) and len(meta["history"]) == 2
    results = json.loads((out / "results.json").read_text())
    assert [r["run"] for r in results["runs"]] == ["variational dropout 0.25", "no dropout"]
    lines = stdout.splitlines()
    assert lines[0].split()[:4] == ["run", "epochs", "train", "loss"]
    for row in results["runs"]:
        # It learns, even in 14 steps of a 16-unit LSTM: below log(103) = 4.63 nats per
        # character (the uniform guess), and better in the second epoch than in the first.
        assert row["val_loss"] < np.log(103) - 0.1
        assert np.isclose(row["val_perplexity"], np.exp(row["val_loss"]))
    for stem in ("dropout", "no_dropout"):
        history = st.read_checkpoint_metadata(out / f"{stem}.safetensors")["history"]
        assert history[1]["val_loss"] < history[0]["val_loss"]


def test_the_run_prints_a_sample_and_sampling_is_reproducible(tiny_run):
    out, _, stdout, _ = tiny_run
    printed = stdout.split("Sampled from the dropout run (temperature 0.8):\n", 1)[1].rstrip("\n")
    config = charlm.Config(epochs=2, hidden=16, train_chars=16384)
    again = charlm.sample(config, out)  # the same run and key: the same text
    assert again == printed
    assert again.startswith("The ") and len(again) == len("The ") + 200
    assert set(again) <= set(charlm.load_text())
    other = charlm.sample(config, out, seed=1, prompt="def ", length=50)
    assert other.startswith("def ") and len(other) == 54 and other[4:] != again[4:54]
    with pytest.raises(ValueError, match="never occur"):
        charlm.sample(config, out, prompt="\x00")


def test_resume_reports_the_same_table_and_refuses_other_settings(tiny_run):
    out, _, stdout, _ = tiny_run
    code, again, stderr = _main(*TINY, "--out", str(out), "--resume")
    assert code == 0, stderr
    assert again.splitlines()[:3] == stdout.splitlines()[:3]
    code, _, stderr = _main(*TINY, "--out", str(out), "--resume", "--dropout-mode", "per-step")
    assert code == 1 and "dropout_mode='variational' (now 'per_step')" in stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dropout-mode", "gal"], "invalid choice: 'gal'"),
        (["--rate", "1.5"], "the dropout rate is a probability in [0, 1)"),
        (["--model", "gpt"], "invalid choice: 'gpt'"),
    ],
)
def test_bad_options(argv, message):
    code, _, stderr = _main(*argv)
    assert code == 2 and message in stderr and "usage: stoax train charlm" in stderr


def test_help_names_the_dropout_modes():
    code, stdout, _ = _main("--help")
    assert code == 0
    for text in ("--dropout-mode", "variational", "per-step", "--rate", "--model", "examples:"):
        assert text in stdout
