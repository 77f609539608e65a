"""Flax linen nlp_seq: the jitted initialisation of the tagger's variables.

Source: google/flax, examples/nlp_seq/train.py (``initialize_variables`` in ``main``) and
examples/nlp_seq/models.py (``Transformer``).

Randomness as in the example: ``rng = random.key(random_seed)``, ``rng, init_rng =
random.split(rng)``; the ``jax.jit``-ed ``initialize_variables(init_rng)`` calls
``model.init(init_rng, inputs=init_batch, train=False)``, from which Flax derives one key per
parameter (``make_rng("params")`` in every ``nn.Dense``/``nn.Embed``); ``rng`` itself is kept
for the dropout keys of training. Tiny sizes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import random

VOCAB, WIDTH, TAGS, MAX_LEN = 11, 8, 5, 4


class Transformer(nn.Module):
    @nn.compact
    def __call__(self, inputs, train):
        x = nn.Embed(VOCAB, WIDTH)(inputs.astype(jnp.int32))
        x = nn.Dropout(0.1)(x, deterministic=not train)
        x = x + nn.SelfAttention(num_heads=2, deterministic=not train)(x)
        x = nn.Dense(2 * WIDTH)(nn.LayerNorm()(x))
        x = nn.Dropout(0.1)(nn.relu(x), deterministic=not train)
        return nn.Dense(TAGS)(x)


MODEL = Transformer()


@jax.jit
def initialize_variables(init_rng):
    init_batch = jnp.ones((MAX_LEN, 1), jnp.float32)
    return MODEL.init(init_rng, inputs=init_batch, train=False)


def audit_target():
    rng = random.key(0)
    rng, init_rng = random.split(rng)
    return initialize_variables, (init_rng,)
