"""Flax linen lm1b: temperature sampling with a decoding cache.

Source: google/flax, examples/lm1b/train.py (``predict_step``) and
examples/lm1b/temperature_sampler.py (``temperature_sample``).

Randomness as in the example: ``predict_step`` calls ``Model.init(jax.random.PRNGKey(0), ...)``
only to get the shapes of the attention cache (the parameters it draws are thrown away), then
samples in a ``lax.while_loop`` whose state carries the key: every iteration does
``rng1, rng2 = random.split(rng)``, draws the next token with ``random.categorical(rng1, ...)``
and carries ``rng2``. Tiny sizes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax, random

VOCAB, WIDTH, LENGTH, EOS = 7, 8, 5, 2


class DecoderLM(nn.Module):
    decode: bool = False

    @nn.compact
    def __call__(self, tokens):
        x = nn.Embed(VOCAB, WIDTH)(tokens)
        x = x + nn.SelfAttention(num_heads=2, decode=self.decode, deterministic=True)(x)
        return nn.Dense(VOCAB)(x)


def temperature_sample(prompt, init_cache, tokens_to_logits, prng_key, temperature, topk):
    batch, max_len = prompt.shape
    state0 = (
        jnp.array(-1),
        prompt,
        init_cache,
        jnp.zeros((batch, 1), jnp.int32),
        jnp.zeros((batch, 1), jnp.bool_),
        prng_key,
    )

    def cond(state):
        i, _, _, _, ended, _ = state
        return (i < max_len - 1) & ~jnp.all(ended)

    def body(state):
        i, sequences, cache, token, ended, rng = state
        rng1, rng2 = random.split(rng)
        logits, new_cache = tokens_to_logits(token, cache)
        top_logits, top_idx = lax.top_k(logits, topk)
        choice = random.categorical(rng1, top_logits / temperature).astype(jnp.int32)
        next_token = jnp.take_along_axis(top_idx, choice[:, None], axis=-1)[:, 0]
        in_prompt = sequences[:, i + 1] != 0
        next_token = jnp.where(in_prompt, sequences[:, i + 1], next_token)
        next_token = next_token[:, None] * ~ended
        ended = ended | (next_token == EOS)
        sequences = lax.dynamic_update_slice(sequences, next_token, (0, i + 1))
        return i + 1, sequences, new_cache, next_token, ended, rng2

    return lax.while_loop(cond, body, state0)[1]


def predict_step(inputs, params, rngkey, temperature, top_k):
    initial_variables = DecoderLM(decode=True).init(
        jax.random.PRNGKey(0), jnp.ones(inputs.shape, jnp.int32)
    )
    cache = initial_variables["cache"]

    def tokens_ids_to_logits(flat_ids, flat_cache):
        logits, new_vars = DecoderLM(decode=True).apply(
            {"params": params, "cache": flat_cache}, flat_ids, mutable=["cache"]
        )
        return logits[:, 0], new_vars["cache"]

    return temperature_sample(inputs, cache, tokens_ids_to_logits, rngkey, temperature, top_k)


def setup():
    rng = jax.random.key(1)
    init_rng, inference_rng = jax.random.split(rng)
    inputs = jnp.zeros((2, LENGTH), jnp.int32).at[:, 0].set(3)
    params = DecoderLM().init(init_rng, inputs)["params"]
    return inputs, params, inference_rng


def audit_target():
    inputs, params, inference_rng = jax.eval_shape(setup)  # shapes only: the audit traces
    step = jax.jit(predict_step, static_argnames="top_k")
    return step, (inputs, params, inference_rng, 0.7), {"top_k": 3}
