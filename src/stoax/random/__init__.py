"""Random primitives used by every stochastic layer."""

from stoax.random._dropout import (
    dropout,
    dropout_then,
    get_regenerate_mask,
    keep_mask,
    random_bits,
    set_regenerate_mask,
)

__all__ = [
    "dropout",
    "dropout_then",
    "get_regenerate_mask",
    "keep_mask",
    "random_bits",
    "set_regenerate_mask",
]
