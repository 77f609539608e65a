"""Random primitives used by every stochastic layer."""

from stoax.random._dropout import dropout, keep_mask

__all__ = ["dropout", "keep_mask"]
