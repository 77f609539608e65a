"""Monte-Carlo dropout: ``n`` stochastic passes of a model, each with its own key, and the
predictive mean and uncertainty they give."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from stoax import keys
from stoax._edit import map_modules
from stoax._module import Module
from stoax.nn._drop_path import DropPath
from stoax.nn._dropout import Dropout
from stoax.nn._gaussian_noise import GaussianNoise

__all__ = ["MCPrediction", "mc_samples", "mc_predict", "STOCHASTIC_LAYERS"]

STOCHASTIC_LAYERS: tuple[type, ...] = (Dropout, DropPath, GaussianNoise)
"""The layers MC dropout switches to training mode (the default of ``layers=``); every other
layer (a ``BatchNorm``, ...) keeps the mode the model has."""


def _stochastic(model: Any, layers: tuple[type, ...]) -> Any:
    found: list[Any] = []

    def on(m: Any) -> Any:
        if isinstance(m, layers):
            found.append(m)
            layer: Any = m  # a stochastic layer: it has a training field
            return layer.replace(training=True)
        return m

    model = map_modules(on, model)
    if not found:
        raise ValueError(
            "stoax.inference: MC dropout needs stochastic layers, but the model holds none of "
            f"{', '.join(t.__name__ for t in layers)}: every pass would be the same."
        )
    return model


def mc_samples(
    model: Any,
    x: Any,
    *,
    key: jax.Array,
    n: int,
    chunk_size: int | None = None,
    layers: tuple[type, ...] = STOCHASTIC_LAYERS,
    **kwargs: Any,
) -> Any:
    """The outputs of ``n`` stochastic passes, stacked on a new leading axis.

    The model's :data:`stochastic layers <STOCHASTIC_LAYERS>` (``Dropout``, ``DropPath``,
    ``GaussianNoise``) are put in training mode -- other layers keep their mode, so a
    ``BatchNorm`` keeps using its running statistics -- and pass ``i`` runs
    ``model(x, key=stoax.keys.child(key, i), **kwargs)``: ``n`` independent masks, bitwise those
    of the Python loop over ``i``. The passes are vmapped; ``chunk_size`` runs them
    ``chunk_size`` at a time (``lax.map``) to bound memory, with the same result.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> model = stoax.eval_mode(stoax.nn.MLP(4, 2, hidden=(8,), dropout=0.5,
        ...                                      key=jax.random.key(0)))
        >>> ys = stoax.inference.mc_samples(model, jnp.ones((3, 4)), key=jax.random.key(1), n=5)
        >>> ys.shape
        (5, 3, 2)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"mc_samples: n (the number of passes) must be an int >= 1, got {n!r}.")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"mc_samples: chunk_size must be an int >= 1 or None, got {chunk_size!r}.")
    key = keys.as_key(key, "mc_samples")
    model = _stochastic(model, tuple(layers))
    pass_keys = jax.vmap(lambda i: keys.child(key, i))(jnp.arange(n, dtype=jnp.uint32))

    def one_pass(k: jax.Array) -> Any:
        return model(x, key=k, **kwargs)

    if chunk_size is None or chunk_size >= n:
        return jax.vmap(one_pass)(pass_keys)
    return jax.lax.map(one_pass, pass_keys, batch_size=chunk_size)


class MCPrediction(Module):
    """The MC-dropout prediction of a classifier (entropies in nats).

    Fields:
        probs: ``(..., classes)``, the predictive distribution: the mean of the passes'
            softmax probabilities.
        predictive_entropy: ``(...)``, ``H[probs]``: total uncertainty.
        expected_entropy: ``(...)``, the mean of the passes' entropies: the noise in the data
            the model expects (aleatoric).
        mutual_information: ``(...)``, ``predictive_entropy - expected_entropy``: how much the
            passes disagree (epistemic, BALD); >= 0.
        variance: ``(..., classes)``, the variance of the passes' probabilities.
    """

    probs: jax.Array
    predictive_entropy: jax.Array
    expected_entropy: jax.Array
    mutual_information: jax.Array
    variance: jax.Array


def _entropy(log_p: jax.Array) -> jax.Array:
    p = jnp.exp(log_p)
    return -jnp.sum(jnp.where(p > 0, p * log_p, 0.0), axis=-1)


def mc_predict(
    model: Any,
    x: Any,
    *,
    key: jax.Array,
    n: int,
    chunk_size: int | None = None,
    layers: tuple[type, ...] = STOCHASTIC_LAYERS,
    **kwargs: Any,
) -> MCPrediction:
    """:func:`mc_samples` of a classifier returning logits ``(..., classes)``, summarised as an
    :class:`MCPrediction`: the predictive probabilities and their uncertainty.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> model = stoax.nn.MLP(4, 3, hidden=(16,), dropout=0.3, key=jax.random.key(0))
        >>> pred = stoax.inference.mc_predict(model, jnp.ones((2, 4)), key=jax.random.key(1), n=16)
        >>> bool((pred.mutual_information >= -1e-6).all()), pred.probs.sum(-1).round(4).tolist()
        (True, [1.0, 1.0])
    """
    logits = mc_samples(model, x, key=key, n=n, chunk_size=chunk_size, layers=layers, **kwargs)
    log_p = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
    p = jnp.exp(log_p)
    probs = p.mean(axis=0)
    log_mean = jnp.log(probs)
    predictive = _entropy(log_mean)
    expected = _entropy(log_p).mean(axis=0)
    return MCPrediction(
        probs=probs,
        predictive_entropy=predictive,
        expected_entropy=expected,
        mutual_information=jnp.maximum(predictive - expected, 0.0),
        variance=p.var(axis=0),
    )
