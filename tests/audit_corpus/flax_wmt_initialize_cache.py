"""Flax linen wmt: the decoding cache and one step of fast decoding.

Source: google/flax, examples/wmt/train.py (``initialize_cache``, ``predict_step``).

Randomness as in the example: ``initialize_cache`` calls
``Transformer(config).init(jax.random.key(0), ...)`` only for the shapes of the ``"cache"``
collection (the parameters drawn from that constant key are discarded); decoding itself is
deterministic (``deterministic=True``, beam search). Here the cache is built and one decoder step
runs with it. Tiny sizes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

VOCAB, WIDTH, LENGTH = 9, 8, 4


class Decoder(nn.Module):
    decode: bool = False

    @nn.compact
    def __call__(self, targets):
        x = nn.Embed(VOCAB, WIDTH)(targets)
        x = x + nn.SelfAttention(num_heads=2, decode=self.decode, deterministic=True)(x)
        return nn.Dense(VOCAB)(x)


def initialize_cache(inputs, max_decode_len):
    target_shape = (inputs.shape[0], max_decode_len)
    initial_variables = Decoder(decode=True).init(
        jax.random.key(0), jnp.ones(target_shape, jnp.int32)
    )
    return initial_variables["cache"]


def predict_step(inputs, params, max_decode_len):
    cache = initialize_cache(inputs, max_decode_len)
    logits, new_vars = Decoder(decode=True).apply(
        {"params": params, "cache": cache}, inputs[:, :1], mutable=["cache"]
    )
    return jnp.argmax(logits, -1), new_vars["cache"]


def audit_target():
    inputs = jnp.ones((2, LENGTH), jnp.int32)
    params = jax.eval_shape(Decoder().init, jax.random.key(3), inputs)["params"]
    step = jax.jit(predict_step, static_argnums=2)
    return step, (inputs, params, LENGTH)
