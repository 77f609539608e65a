"""``stoax audit FILE.py:FUNCTION``: the report; exit 1 on a finding, 0 clean, 2 bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from stoax.cli import main

TARGETS = textwrap.dedent(
    """\
    import jax
    import jax.numpy as jnp

    def step_bad(x):
        return x * jax.random.bernoulli(jax.random.key(0), 0.5, x.shape)

    def step_ok(x, key):
        return x * jax.random.bernoulli(key, 0.5, x.shape)

    def bad():
        return step_bad, (jnp.ones(4),)

    def good():
        return step_ok, (jnp.ones(4),), {"key": jax.random.key(1)}

    def wrong():
        return 42

    def boom():
        raise RuntimeError("no data")

    NOT_A_FUNCTION = 3
    """
)


@pytest.fixture
def target(tmp_path):
    path = tmp_path / "targets.py"
    path.write_text(TARGETS)
    return str(path)


def test_finding_exits_1_and_prints_the_line(target, capsys):
    assert main(["audit", f"{target}:bad"]) == 1
    out = capsys.readouterr().out
    assert "constant_key" in out and f"{target}:5" in out and "fix:" in out


def test_clean_exits_0(target, capsys):
    assert main(["audit", f"{target}:good"]) == 0
    assert "no randomness problems found" in capsys.readouterr().out


@pytest.mark.parametrize(
    "suffix, message",
    [
        (":missing", "has no function 'missing'"),
        (":wrong", "must return (callable, args)"),
        (":boom", "calling boom() failed: RuntimeError: no data"),
        (":NOT_A_FUNCTION", "is not a function"),
        ("", "expected FILE.py:FUNCTION"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(target, capsys, suffix, message):
    assert main(["audit", target + suffix]) == 2
    assert message in capsys.readouterr().err


def test_missing_file_exits_2(tmp_path, capsys):
    assert main(["audit", f"{tmp_path}/nope.py:f"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_help_reads_well(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "FILE.py:FUNCTION" in out and "exit status" in out and "(callable, args)" in out


def test_subprocess_run(target):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "stoax", "audit", f"{target}:bad"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert "constant_key" in proc.stdout
