"""Flax NNX MiniGPT example: every generated token is sampled with ``jax.random.PRNGKey(0)``.

Source: https://github.com/google/flax/blob/main/docs_nnx/examples/minigpt.md
(``MiniGPT.sample_from``, ``MiniGPT.generate_step``) -- found by the audit corpus, not reported
upstream (no thread yet).

``sample_from`` draws the next token with ``jax.random.choice(jax.random.PRNGKey(0), indices,
p=logits)`` inside the ``nnx.jit``-ed ``generate_step``: the key is a constant, so every step of
every generation uses the same uniform number -- the samples vary only because the logits do.
Sharding annotations left out; tiny sizes.
"""

import jax
import jax.numpy as jnp
from flax import nnx

SOURCE = "https://github.com/google/flax/blob/main/docs_nnx/examples/minigpt.md"
KIND = "constant_key"
MAXLEN, VOCAB, EMBED, TOP_K = 4, 11, 8, 3


class MiniGPT(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.token_emb = nnx.Embed(num_embeddings=VOCAB, features=EMBED, rngs=rngs)
        self.pos_emb = nnx.Embed(num_embeddings=MAXLEN, features=EMBED, rngs=rngs)
        self.output_layer = nnx.Linear(EMBED, VOCAB, rngs=rngs)

    def __call__(self, inputs):
        positions = jnp.arange(0, inputs.shape[1])[None, :]
        return self.output_layer(self.token_emb(inputs) + self.pos_emb(positions))

    def sample_from(self, logits):
        logits, indices = jax.lax.top_k(logits, k=TOP_K)
        logits = nnx.softmax(logits)
        return jax.random.choice(jax.random.PRNGKey(0), indices, p=logits)  # BUG

    @nnx.jit
    def generate_step(self, padded_tokens, sample_index):
        logits = self(padded_tokens)
        return self.sample_from(logits[0][sample_index])


def generate_step(model, padded_tokens, sample_index):
    return model.generate_step(padded_tokens, sample_index)


def audit_target():
    model = nnx.eval_shape(lambda: MiniGPT(rngs=nnx.Rngs(0)))
    return generate_step, (model, jnp.ones((1, MAXLEN), jnp.int32), jnp.asarray(1))
