"""The public API is typed: mypy finds no error in ``src/stoax`` nor in ``tests/typecheck/``.

mypy is pinned in the ``test`` extra and configured in ``pyproject.toml`` (``[tool.mypy]``: every
module checked, the public ones strictly). ``tests/typecheck/public_api.py`` holds typed uses of
the public API with ``assert_type``: a public function that loses its types, or a result whose
type changes, is a type error there. A test in the suite, so the README's test command (and CI)
type-checks too.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_finds_no_error(tmp_path):
    proc = subprocess.run(
        # the files and settings are pyproject.toml's; a fresh cache: the result of this tree only
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy_cache")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    # (mypy is in the test extra: pip install -e ".[test]")
    assert proc.returncode == 0, f"mypy found errors:\n{proc.stdout}{proc.stderr}"
    assert "Success: no issues found" in proc.stdout


def test_typed_uses_of_the_public_api_run():
    """What mypy checks in tests/typecheck/public_api.py also runs, as written."""
    spec = importlib.util.spec_from_file_location(
        "stoax_typecheck_public_api", ROOT / "tests" / "typecheck" / "public_api.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main()
