"""Randomness at inference: sampling from a language model with a key/value cache
(:func:`generate`, :class:`Sampler`), and Monte-Carlo dropout uncertainty (:func:`mc_samples`,
:func:`mc_predict`).

Every random draw here has its own key, derived by structure from the one key you pass: per
example and per position for generation (batch-invariant, resumable), per pass for MC dropout.

Example:
    >>> import jax, jax.numpy as jnp, stoax
    >>> model = stoax.nn.MLP(4, 3, hidden=(16,), dropout=0.2, key=jax.random.key(0))
    >>> pred = stoax.inference.mc_predict(model, jnp.ones((5, 4)), key=jax.random.key(1), n=8)
    >>> pred.probs.shape, pred.predictive_entropy.shape
    ((5, 3), (5,))
"""

from stoax.inference._generate import DecodeState, Generation, example_keys, generate
from stoax.inference._mc_dropout import STOCHASTIC_LAYERS, MCPrediction, mc_predict, mc_samples
from stoax.inference._sampling import (
    Sampler,
    apply_temperature,
    categorical,
    top_k_filter,
    top_p_filter,
)

__all__ = [
    "DecodeState",
    "Generation",
    "MCPrediction",
    "STOCHASTIC_LAYERS",
    "Sampler",
    "apply_temperature",
    "categorical",
    "example_keys",
    "generate",
    "mc_predict",
    "mc_samples",
    "top_k_filter",
    "top_p_filter",
]
