"""The check of a stochastic layer's strength -- a dropout rate, a noise's standard deviation --
shared by :func:`stoax.random.dropout` and the layers of :mod:`stoax.nn`.

A strength is a Python number (static: returned as a float, so an evaluation program compiles
the layer away at 0) or a floating JAX/NumPy array (a leaf: a sweep can be vmapped). A concrete
array is checked value by value; a traced one cannot be, and is checked where it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_strength"]


def check_strength(
    value: Any,
    where: str,
    name: str,
    *,
    valid: Callable[[Any], Any],
    one: str,
    each: str,
    meaning: str,
) -> float | jax.Array:
    """``value`` as a float (a Python number) or as it is (a floating array), once ``valid``
    holds for it (for every element of an array); a ``TypeError`` or ``ValueError`` otherwise.

    Args:
        value: the strength given to the layer or function.
        where: who asks, for the message (``"Dropout"``, ``"stoax.random.dropout"``).
        name: the argument's name (``"rate"``).
        valid: the rule, elementwise on floats and NumPy arrays; False for NaN.
        one: the rule in words for one number (``"in [0, 1]"``).
        each: the rule in words for every element of an array.
        meaning: what the number is, for the message (``"the probability of dropping"``).

    Example:
        >>> check_strength(0.5, "Dropout", "rate", valid=lambda r: (r >= 0) & (r <= 1),
        ...                one="in [0, 1]", each="in [0, 1]", meaning="a probability")
        0.5
    """
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{where}: {name} must be a number {one}, got the bool {value}.")
    if isinstance(value, int | float | np.integer | np.floating):
        value = float(value)
        if not valid(value):
            raise ValueError(f"{where}: {name} must be {one} ({meaning}), got {value}.")
        return value
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        if not jnp.issubdtype(value.dtype, jnp.floating):
            raise TypeError(f"{where}: {name} must be a floating array, got dtype {value.dtype}.")
        if not isinstance(value, jax.core.Tracer):
            values = np.asarray(value)
            if values.size and not valid(values).all():
                nan = np.isnan(values)
                low, high = ("nan", "nan") if nan.all() else (np.nanmin(values), np.nanmax(values))
                raise ValueError(
                    f"{where}: every {name} must be {each} ({meaning}), got {low} .. {high}"
                    f"{' and NaN' if nan.any() else ''}."
                )
        return value
    raise TypeError(f"{where}: {name} must be a float or a JAX array, got {type(value).__name__}.")
