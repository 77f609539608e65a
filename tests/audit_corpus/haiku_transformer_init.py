"""Haiku transformer language model: the jitted initialisation of the training state.

Source: google-deepmind/dm-haiku, examples/transformer/train.py (``init``, ``main``).

Randomness as in the example: ``main`` makes ``rng = jax.random.PRNGKey(SEED)`` and calls the
jitted ``init(rng, data)``, which does ``rng, init_rng = jax.random.split(rng)``, initialises the
parameters from ``init_rng`` (one key per parameter, split by Haiku) and keeps ``rng`` in the
returned state for the training updates. Tiny sizes.
"""

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax

VOCAB, MODEL, LENGTH = 11, 8, 4


class TrainingState(NamedTuple):
    params: hk.Params
    opt_state: optax.OptState
    rng_key: jax.Array
    step: jax.Array


@hk.transform
def loss_fn(tokens):
    h = hk.Embed(VOCAB, MODEL)(tokens)
    h = h + hk.dropout(hk.next_rng_key(), 0.1, hk.Linear(MODEL)(jax.nn.gelu(h)))
    log_probs = jax.nn.log_softmax(hk.Linear(VOCAB)(h))
    return -jnp.mean(jnp.sum(jax.nn.one_hot(tokens, VOCAB) * log_probs, axis=-1))


@jax.jit
def init(rng, data):
    rng, init_rng = jax.random.split(rng)
    initial_params = loss_fn.init(init_rng, data)
    initial_opt_state = optax.adam(3e-4).init(initial_params)
    return TrainingState(initial_params, initial_opt_state, rng, jnp.array(0))


def audit_target():
    return init, (jax.random.PRNGKey(0), jnp.ones((2, LENGTH), jnp.int32))
