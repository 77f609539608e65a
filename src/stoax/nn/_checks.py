"""Input checks shared by the stochastic layers, with messages that say what to do."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stoax import keys
from stoax._errors import LayerError, LayerTypeError
from stoax._strength import check_strength
from stoax.random._dropout import check_rate

__all__ = [
    "MissingKeyError",
    "check_rate",
    "check_stddev",
    "require_float",
    "need_key",
    "is_identity",
    "draw_key",
    "by_mode",
]


class MissingKeyError(LayerError, ValueError):
    """A stochastic layer in training mode was called without a key.

    The message names the layer by its place in the model (``TransformerEncoder.embed_dropout``)
    and says what to pass."""


def check_stddev(stddev: Any, where: str) -> float | jax.Array:
    """A noise's standard deviation: a finite Python number >= 0 (returned as a float), or a
    floating array whose concrete values are finite and >= 0 -- the rule of :func:`check_rate`
    with another range."""
    return check_strength(
        stddev,
        where,
        "stddev",
        valid=lambda s: (s >= 0) & np.isfinite(s),  # False for NaN and inf
        one="a finite number >= 0",
        each="finite and >= 0",
        meaning="the noise's standard deviation",
    )


def require_float(x: Any, layer: Any) -> None:
    dtype = getattr(x, "dtype", None)
    if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise LayerTypeError(
            layer,
            ": input must be a floating-point array (f32, bf16, f16, f64), got "
            f"{dtype if dtype is not None else type(x).__name__}. Cast integer inputs with "
            ".astype(jnp.float32) first.",
        )


def need_key(layer: Any) -> MissingKeyError:
    name = type(layer).__name__
    return MissingKeyError(
        layer,
        " is in training mode and was called without a key. Pass key=... to the "
        f"model's forward pass (e.g. model(x, key=stoax.step_key(seed, step))); containers derive "
        f"each layer's key from it. For evaluation use stoax.eval_mode(model), which needs no "
        f"key. ({name} with a traced training flag always needs a key.)",
    )


# -- the call rules every stochastic layer (Dropout, DropPath, GaussianNoise) follows ------------


def is_identity(layer: Any, x: Any, strength: Any) -> bool:
    """Refuse non-float input; True when the call is the identity: evaluation mode
    (``training=False``) or a static ``strength`` (rate, stddev) of 0 -- no key needed."""
    require_float(x, layer)
    return layer.training is False or (isinstance(strength, float) and strength == 0.0)


def draw_key(layer: Any, key: Any) -> jax.Array:
    """The typed key a layer in training mode draws with; a clear error when there is none."""
    if key is None:
        raise need_key(layer)
    return keys.as_key(key, type(layer).__name__)


def by_mode(layer: Any, y: jax.Array, x: jax.Array) -> jax.Array:
    """``y`` in training mode, ``x`` in evaluation; a traced flag selects without a branch."""
    return y if layer.training is True else jnp.where(layer.training, y, x)
