"""Checks of layer sizes given to constructors, with messages that name the layer and field."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def positive_int(value: object, layer: str, name: str) -> int:
    """``value`` as an ``int`` >= 1, or a ``ValueError`` naming ``layer`` and ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive int, got {value!r}.")
    return int(value)


def positive_ints(value: int | Sequence[int], n: int, layer: str, name: str) -> tuple[int, ...]:
    """An int (repeated ``n`` times) or a sequence of ``n`` ints, each >= 1, as a tuple."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        value = (value,) * n
    if not isinstance(value, Sequence) or len(value) != n:
        raise ValueError(
            f"{layer}: {name} must be an int or a sequence of {n} ints (one per spatial "
            f"dimension), got {value!r}."
        )
    return tuple(positive_int(v, layer, name) for v in value)
