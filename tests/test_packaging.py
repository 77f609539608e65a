"""What the distribution ships besides code: the licence it declares and the PEP 561 marker."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_declared_licence_is_the_one_shipped():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a pointer to it


def test_py_typed_ships_with_the_package():
    # Without the marker type checkers ignore stoax's annotations (PEP 561); without the
    # package-data entry setuptools leaves the empty file out of the wheel.
    assert (ROOT / "src" / "stoax" / "py.typed").is_file()
    assert "py.typed" in PYPROJECT["tool"]["setuptools"]["package-data"]["stoax"]
