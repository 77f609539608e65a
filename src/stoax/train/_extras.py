"""Imports of the ``train`` extra (tqdm, safetensors, scikit-learn, matplotlib), with a message
that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require"]


def require(module: str, needed_for: str) -> ModuleType:
    """Import ``module``; if it is missing, raise an ``ImportError`` naming the extra to install.

    Example:
        >>> require("json", "the example").__name__
        'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0].replace("sklearn", "scikit-learn")
        raise ImportError(
            f"{needed_for} needs {package}, which is not installed. Install stoax's training "
            f"extra: pip install 'stoax[train]' (or pip install {package})."
        ) from err
