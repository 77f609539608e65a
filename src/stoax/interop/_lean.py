"""The one dropout call behind the peers' drop-in ``Dropout`` classes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from stoax.keys import as_key
from stoax.nn._checks import check_rate
from stoax.random import dropout


def is_static_true(flag: Any) -> bool:
    return isinstance(flag, bool) and flag


def lean_dropout(
    x: Any,
    rate: float | jax.Array,
    key: Any,
    *,
    skip: bool | jax.Array,
    broadcast_dims: Sequence[int] = (),
    where: str,
    how_to_key: str,
) -> jax.Array:
    """Dropout of ``x`` unless ``skip`` (the peer's ``deterministic``/``inference`` flag).

    A Python ``skip`` is a branch (``True``: ``x`` itself, no key needed); a JAX bool selects
    between ``x`` and the dropped ``x`` with no Python branch, so the layer runs inside
    ``lax.scan``/``lax.cond`` with a traced mode. ``where`` names the layer in errors,
    ``how_to_key`` says how the peer passes a key.
    """
    if not (isinstance(skip, bool) or (hasattr(skip, "dtype") and jnp.shape(skip) == ())):
        raise TypeError(f"{where}: the mode flag must be a Python bool or a scalar bool array.")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{where}: input must be a floating-point array, got dtype {x.dtype}. "
            "Cast it with .astype(jnp.float32) first."
        )
    rate = check_rate(rate, where)
    if is_static_true(skip) or (isinstance(rate, float) and rate == 0.0):
        return x
    if key is None:
        raise ValueError(f"{where} is in training mode and has no key: {how_to_key}")
    y = dropout(x, rate, as_key(key, where), broadcast_dims=tuple(broadcast_dims))
    return y if skip is False else jnp.where(skip, x, y)
