"""Haiku transformer language model: the training update.

Source: google-deepmind/dm-haiku, examples/transformer/train.py (``TrainingState``, ``loss_fn``,
``update``) and examples/transformer/model.py (``Transformer``).

Randomness as in the example: the training state carries ``rng_key``; the jitted ``update`` does
``rng, net_rng = jax.random.split(state.rng_key)``, takes gradients of ``loss_fn.apply(params,
net_rng, data)`` and stores ``rng`` as the new state's key; inside, every attention and dense
block applies ``hk.dropout(hk.next_rng_key(), rate, h)``. Tiny sizes.
"""

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

VOCAB, MODEL, HEADS, LAYERS, RATE, LENGTH = 11, 8, 2, 2, 0.1, 4


class TrainingState(NamedTuple):
    params: hk.Params
    opt_state: optax.OptState
    rng_key: jax.Array
    step: jax.Array


class Batch(NamedTuple):
    inputs: jax.Array
    targets: jax.Array


def forward_pass(tokens):
    seq_len = tokens.shape[1]
    h = hk.Embed(VOCAB, MODEL)(tokens)
    h = h + hk.get_parameter("positions", [seq_len, MODEL], init=jnp.zeros)
    mask = (tokens != 0)[:, None, None, :] * np.tril(np.ones((1, 1, seq_len, seq_len)))
    for _ in range(LAYERS):
        norm = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True)
        attn = hk.MultiHeadAttention(
            num_heads=HEADS,
            key_size=4,
            model_size=MODEL,
            w_init=hk.initializers.VarianceScaling(2 / LAYERS),
        )
        h_norm = norm(h)
        h = h + hk.dropout(hk.next_rng_key(), RATE, attn(h_norm, h_norm, h_norm, mask=mask))
        dense = hk.Sequential([hk.Linear(2 * MODEL), jax.nn.gelu, hk.Linear(MODEL)])
        h_norm = hk.LayerNorm(axis=-1, create_scale=True, create_offset=True)(h)
        h = h + hk.dropout(hk.next_rng_key(), RATE, dense(h_norm))
    return hk.Linear(VOCAB)(h)


@hk.transform
def loss_fn(data):
    log_probs = jax.nn.log_softmax(forward_pass(data.inputs))
    log_likelihood = jnp.sum(jax.nn.one_hot(data.targets, VOCAB) * log_probs, axis=-1)
    mask = jnp.not_equal(data.inputs, 0)
    return -jnp.sum(log_likelihood * mask) / jnp.sum(mask)


def optimiser():
    return optax.chain(optax.clip_by_global_norm(0.25), optax.adam(3e-4, b1=0.9, b2=0.99))


@jax.jit
def update(state, data):
    rng, net_rng = jax.random.split(state.rng_key)
    loss, gradients = jax.value_and_grad(loss_fn.apply)(state.params, net_rng, data)
    updates, new_opt_state = optimiser().update(gradients, state.opt_state)
    new_params = optax.apply_updates(state.params, updates)
    new_state = TrainingState(new_params, new_opt_state, rng, state.step + 1)
    return new_state, {"step": state.step, "loss": loss}


def init(rng, data):
    rng, init_rng = jax.random.split(rng)
    initial_params = loss_fn.init(init_rng, data)
    return TrainingState(initial_params, optimiser().init(initial_params), rng, jnp.array(0))


def audit_target():
    data = Batch(jnp.ones((2, LENGTH), jnp.int32), jnp.ones((2, LENGTH), jnp.int32))
    state = jax.eval_shape(init, jax.random.PRNGKey(0), data)  # shapes only: the audit traces
    return update, (state, data)
