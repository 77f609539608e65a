"""Layers: ``stoax.nn``."""

from stoax.nn._checks import MissingKeyError
from stoax.nn._dropout import Dropout
from stoax.nn._linear import Linear
from stoax.nn._sequential import Sequential

__all__ = ["Dropout", "Linear", "MissingKeyError", "Sequential"]
