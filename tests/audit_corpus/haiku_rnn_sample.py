"""Haiku character RNN: sampling a continuation, the key carried through a ``fori_loop``.

Source: google-deepmind/dm-haiku, examples/rnn/train.py (``make_network``, ``sample``,
``main``).

Randomness as in the example: ``sample(rng_key, context, sample_length)`` (``hk.transform``-ed
without an apply rng, ``jax.jit`` with the length static) does ``key, subkey =
jax.random.split(rng_key)`` and draws the first token with ``jax.random.categorical(subkey,
...)``; the ``lax.fori_loop`` body does the same with the key it carries and returns ``key`` for
the next iteration. Tiny sizes.
"""

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

VOCAB, HIDDEN = 7, 8


class LoopValues(NamedTuple):
    tokens: jax.Array
    state: object
    rng_key: jax.Array


def make_network():
    return hk.DeepRNN(
        [lambda x: jax.nn.one_hot(x, VOCAB), hk.LSTM(HIDDEN), jax.nn.relu, hk.Linear(VOCAB)]
    )


def sample(rng_key, context, sample_length):
    core = make_network()

    def body_fn(t, v):
        token = v.tokens[t]
        next_logits, next_state = core(token, v.state)
        key, subkey = jax.random.split(v.rng_key)
        next_token = jax.random.categorical(subkey, next_logits, axis=-1)
        new_tokens = v.tokens.at[t + 1].set(next_token)
        return LoopValues(tokens=new_tokens, state=next_state, rng_key=key)

    logits, state = hk.dynamic_unroll(core, context, core.initial_state(None))
    key, subkey = jax.random.split(rng_key)
    first_token = jax.random.categorical(subkey, logits[-1])
    tokens = jnp.zeros(sample_length, dtype=np.int32).at[0].set(first_token)
    initial_values = LoopValues(tokens=tokens, state=state, rng_key=key)
    values = lax.fori_loop(0, sample_length - 1, body_fn, initial_values)
    return values.tokens


def audit_target():
    params_init, sample_fn = hk.without_apply_rng(hk.transform(sample))
    sample_fn = jax.jit(sample_fn, static_argnums=[3])
    context = jnp.ones((3,), jnp.int32)
    init = lambda rng, key, context: params_init(rng, key, context, 5)  # noqa: E731
    params = jax.eval_shape(init, jax.random.PRNGKey(0), jax.random.PRNGKey(1), context)
    return sample_fn, (params, jax.random.PRNGKey(2), context, 5)
