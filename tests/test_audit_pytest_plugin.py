"""The ``stoax_audit`` pytest fixture (plugin ``stoax_pytest``): a test auditing a buggy step
fails with the readable report, a correct step passes; the plugin is registered as a ``pytest11``
entry point and imports nothing heavy."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]

USER_TESTS = """
import jax
import jax.numpy as jnp


def step(x, key):
    return x * jax.random.bernoulli(key, 0.5, x.shape)


def buggy_step(x):
    return x * jax.random.bernoulli(jax.random.key(0), 0.5, x.shape)  # constant key


def shared(xs, key):
    return jax.vmap(lambda x: x * jax.random.bernoulli(key, 0.5, x.shape))(xs)


def test_clean_step(stoax_audit):
    report = stoax_audit(step, jnp.ones(4), jax.random.key(1))
    assert report.ok and report.num_draws == 1


def test_buggy_step(stoax_audit):
    stoax_audit(buggy_step, jnp.ones(4))


def test_report_without_failing(stoax_audit):
    report = stoax_audit.report(buggy_step, jnp.ones(4))
    assert [f.kind for f in report.findings] == ["constant_key"]


def test_warnings_allowed(stoax_audit):
    report = stoax_audit.errors(shared, jnp.ones((3, 4)), jax.random.key(1))
    assert [f.kind for f in report.findings] == ["vmap_shared_key"]


def test_warnings_fail_by_default(stoax_audit):
    stoax_audit(shared, jnp.ones((3, 4)), jax.random.key(1))
"""


def test_fixture_fails_a_buggy_step_with_the_report_and_passes_a_clean_one(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-p", "stoax_pytest", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3, failed=2)
    out = result.stdout.str()
    # the readable report, with the user's file and line, the explanation and the fix
    assert "constant_key" in out and "test_user.py:10" in out and "fix:" in out
    assert "vmap_shared_key" in out
    # pytrace=False: the report, not a traceback into the plugin
    assert "stoax_pytest/__init__.py" not in out


def test_plugin_is_a_pytest11_entry_point_and_imports_nothing_heavy():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {"stoax_pytest": "stoax_pytest"}
    code = (
        "import sys, stoax_pytest\n"
        "heavy = [m for m in ('jax', 'stoax', 'numpy', 'flax') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert callable(stoax_pytest.stoax_audit)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("spelling", ["-p", "conftest"])
def test_enabled_without_the_entry_point(pytester, spelling):
    pytester.makepyfile(
        test_one="def test_one(stoax_audit):\n    assert stoax_audit.report(abs, 1.0).ok\n"
    )
    if spelling == "conftest":
        pytester.makeconftest('pytest_plugins = ["stoax_pytest"]\n')
        result = pytester.runpytest("-p", "no:cacheprovider")
    else:
        result = pytester.runpytest("-p", "stoax_pytest", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def _fake_installation(root: Path) -> Path:
    """A ``.dist-info`` with the project's ``pytest11`` entry points, as pip writes it."""
    site = root / "site"
    info = site / "stoax_entry_points-0.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: stoax-entry-points\nVersion: 0.0\n"
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    lines = [f"{k} = {v}" for k, v in project["project"]["entry-points"]["pytest11"].items()]
    (info / "entry_points.txt").write_text("[pytest11]\n" + "\n".join(lines) + "\n")
    return site


@pytest.mark.parametrize("extra", [[], ["-p", "stoax_pytest"]])
def test_installed_entry_point_gives_the_fixture_once(tmp_path, extra):
    # Installed, the plugin loads by itself; enabling it again by name (-p) must not register it
    # a second time.
    site = _fake_installation(tmp_path)
    (tmp_path / "test_uses_fixture.py").write_text(
        "import sys\n\n"
        "def test_fixture(stoax_audit, pytestconfig):\n"
        "    assert type(stoax_audit).__name__ == 'StoaxAudit'\n"
        "    assert pytestconfig.pluginmanager.has_plugin('stoax_pytest')\n"
        "    assert 'jax' not in sys.modules  # nothing heavy until the fixture audits\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(site)]))
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
