"""Hooks that make stoax modules known to peer libraries that are loaded (Flax NNX).

Nothing here imports a peer: when ``flax.nnx`` is already loaded, the first construction of a
stoax module type registers that type (and every type defined before it) with NNX, so a stoax
module can be an attribute of an ``nnx.Module`` with no ``nnx.data(...)``. See
:mod:`stoax.interop.nnx`.
"""

from __future__ import annotations

import sys

_NOTED: set[type] = set()


def note_module_type(cls: type) -> None:
    """Called at each construction of a stoax module: cheap once ``cls`` has been seen."""
    if cls in _NOTED or "flax.nnx" not in sys.modules:
        return
    try:
        from stoax.interop._nnx_graph import register_all
    except ImportError:  # an NNX before 0.12 has no data registry, and needs no registration
        _NOTED.add(cls)
        return
    register_all()
    _NOTED.add(cls)
