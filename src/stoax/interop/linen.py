"""``Dropout`` for Flax linen: a drop-in for ``flax.linen.Dropout`` with stoax's lean backward pass.

A subclass of ``flax.linen.Dropout`` with its attributes (``rate``, ``broadcast_dims``,
``deterministic``, ``rng_collection``), its call (``inputs, deterministic=None, rng=None``), its
key (``make_rng(rng_collection)``, i.e. ``rngs={'dropout': key}`` at ``apply``) and its
statistics: each element zeroed with probability ``rate``, the others scaled by
``1/(1-rate)``; ``broadcast_dims`` share one mask value along those axes. What changes: the
backward pass regenerates the mask from the key (:func:`stoax.random.dropout`) instead of
storing it, and ``deterministic`` may be a JAX bool (traced: one program for both modes).

The masks differ from linen's for the same key (stoax compares random bits with an integer
threshold, exact to ``2**-32``; linen draws ``jax.random.bernoulli``); their distribution is
the same.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from stoax.interop.linen import Dropout
    >>> layer = Dropout(0.5)
    >>> y = layer.apply({}, jnp.ones(8), deterministic=False, rngs={"dropout": jax.random.key(0)})
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
"""

from __future__ import annotations

from typing import cast

import flax.linen as linen
import jax
from flax.linen.module import merge_param

from stoax.interop._lean import is_static_true, lean_dropout

__all__ = ["Dropout"]


class Dropout(linen.Dropout):
    """``flax.linen.Dropout`` with stoax's lean backward pass (same attributes and call)."""

    def __call__(
        self,
        inputs: jax.Array,
        deterministic: bool | jax.Array | None = None,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Drop the elements of ``inputs`` unless ``deterministic``.

        ``rng``: the key; by default ``self.make_rng(self.rng_collection)`` (pass
        ``rngs={'dropout': key}`` to ``apply``).
        """
        # (typed object by flax: the argument is a bool or a JAX bool, the attribute a bool)
        skip = cast(
            bool | jax.Array, merge_param("deterministic", self.deterministic, deterministic)
        )
        skip_now = is_static_true(skip) or (isinstance(self.rate, float | int) and self.rate == 0.0)
        if rng is None and not skip_now:
            rng = self.make_rng(self.rng_collection)
        return lean_dropout(
            inputs,
            self.rate,
            rng,
            skip=skip,
            broadcast_dims=self.broadcast_dims,
            where=f"stoax.interop.linen.Dropout ({self.name or 'unnamed'})",
            how_to_key=f"pass rngs={{{self.rng_collection!r}: key}} to apply.",
        )
