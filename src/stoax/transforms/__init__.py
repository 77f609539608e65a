"""Transforms that give every copy and every step its own key: layer stacks run with
``lax.scan``, vmapped ensembles, and scans over time steps."""

from stoax.transforms._ensemble import Ensemble
from stoax.transforms._remat import RECOMPUTED_PRIMITIVES, recompute_elementwise
from stoax.transforms._scan import scan
from stoax.transforms._stack import Stack

__all__ = ["RECOMPUTED_PRIMITIVES", "Ensemble", "Stack", "recompute_elementwise", "scan"]
