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


# ---------------------------------------------------------------------------------------------
# output formats, targets that exit, files registered in sys.modules

EXITS = textwrap.dedent(
    """\
    import sys
    import jax
    import jax.numpy as jnp

    def exits_when_called():
        sys.exit(0)

    def step_that_exits(x):
        sys.exit(0)

    def exits_while_tracing():
        return step_that_exits, (jnp.ones(2),)
    """
)

# Bare annotations (``linear: Linear``) under ``from __future__ import annotations``: the
# dataclass machinery looks the names up in ``sys.modules[cls.__module__]``, so a file imported
# without being registered there fails to define the module at all.
EQUINOX_FUTURE = textwrap.dedent(
    """\
    from __future__ import annotations

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    from equinox.nn import Dropout, Linear


    class Net(eqx.Module):
        linear: Linear
        dropout: Dropout

        def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
            return self.dropout(self.linear(x), key=key)


    @eqx.filter_jit
    def step(net: Net, x: jax.Array, key: jax.Array) -> jax.Array:
        return net(x, key)


    def target():
        net = Net(Linear(3, 3, key=jax.random.key(0)), Dropout(0.5))
        return step, (net, jnp.ones(3), jax.random.key(1))
    """
)


def _run(*argv, cwd=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(os.path.dirname(__file__), "..", "src"), env.get("PYTHONPATH", "")]
    )
    return subprocess.run(
        [sys.executable, "-m", "stoax", "audit", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=180,
    )


def test_json_format(target, capsys):
    import json

    assert main(["audit", "--format", "json", f"{target}:bad"]) == 1
    got = json.loads(capsys.readouterr().out)
    assert got["ok"] is False and got["errors"] == 1 and got["warnings"] == 0
    (finding,) = got["findings"]
    assert finding["kind"] == "constant_key" and finding["severity"] == "error"
    assert finding["location"] == {"file": target, "line": 5, "function": "step_bad"}
    assert finding["fix"] and finding["message"] and finding["related"] == []
    assert main(["audit", "--format", "json", f"{target}:good"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert clean["ok"] is True and clean["findings"] == [] and clean["num_draws"] == 1
    assert clean["function"] == "step_ok" and clean["num_equations"] > 0


def test_github_format_annotates_the_line(target, capsys, monkeypatch):
    monkeypatch.setenv("GITHUB_WORKSPACE", os.path.dirname(target))
    assert main(["audit", "--format", "github", f"{target}:bad"]) == 1
    out = capsys.readouterr().out.splitlines()
    # a workflow command GitHub turns into an annotation on targets.py, line 5; the workspace
    # relative path, and the message on one line (newlines and % escaped)
    assert out[0].startswith(
        "::error file=targets.py,line=5,title=stoax audit%3A constant_key::This random draw"
    )
    assert "Fix: pass the key in" in out[0]
    assert "stoax audit of step_bad" in "\n".join(out[1:])  # then the readable report
    assert main(["audit", "--format", "github", f"{target}:good"]) == 0
    assert not capsys.readouterr().out.startswith("::")


def test_github_annotation_escapes_and_warnings():
    from stoax.audit import AuditReport, Finding, Location
    from stoax.cli.audit import github_annotations

    loc = Location("/elsewhere/a,b:c.py", 7, "f")
    report = AuditReport("f", [Finding("vmap_shared_key", "warning", "50%\nshared", "fix", loc)])
    (line,) = github_annotations(report).splitlines()
    assert line == (
        "::warning file=/elsewhere/a%2Cb%3Ac.py,line=7,title=stoax audit%3A vmap_shared_key"
        "::50%25%0Ashared Fix: fix"
    )


def test_bad_input_in_github_format_is_an_error_annotation(tmp_path, capsys):
    assert main(["audit", "--format", "github", f"{tmp_path}/nope.py:f"]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith("::error title=stoax audit::no such file")
    assert "no such file" in captured.err


@pytest.mark.parametrize(
    "func, message",
    [
        ("exits_when_called", "exits_when_called() called sys.exit(0)"),
        ("exits_while_tracing", "tracing exits_while_tracing()'s function called sys.exit(0)"),
    ],
)
def test_a_target_that_exits_cannot_be_audited(tmp_path, capsys, func, message):
    path = tmp_path / "exits.py"
    path.write_text(EXITS)
    assert main(["audit", f"{path}:{func}"]) == 2
    err = capsys.readouterr().err
    assert message in err and "nothing was audited" in err


def test_file_registered_in_sys_modules_while_it_imports(tmp_path):
    from stoax.cli.audit import load_file

    path = tmp_path / "registered.py"
    path.write_text("import sys\nSELF = sys.modules[__name__]\n")
    module = load_file(str(path))
    assert module.SELF is module and sys.modules[module.__name__] is module


def test_subprocess_github_format_finding_exits_1(target):
    proc = _run("--format", "github", f"{target}:bad", cwd=os.path.dirname(target))
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.startswith("::error file=targets.py,line=5,")


def test_subprocess_top_level_sys_exit_is_exit_2_with_a_message(tmp_path):
    path = tmp_path / "script.py"
    path.write_text("import sys\nprint('training...')\nsys.exit(0)\n\ndef target():\n    pass\n")
    proc = _run(f"{path}:target")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "called sys.exit(0), so nothing was audited" in proc.stderr
    assert 'if __name__ == "__main__":' in proc.stderr


def test_subprocess_equinox_module_under_future_annotations_audits_clean(tmp_path):
    path = tmp_path / "eqx_future.py"
    path.write_text(EQUINOX_FUTURE)
    proc = _run("--format", "json", f"{path}:target")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert '"ok": true' in proc.stdout
