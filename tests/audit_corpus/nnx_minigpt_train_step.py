"""Flax NNX MiniGPT: the training step, dropout streams held by the model, updated in place.

Source: google/flax, docs_nnx/examples/minigpt.md (``TransformerBlock``,
``TokenAndPositionEmbedding``, ``MiniGPT``, ``loss_fn``, ``train_step``).

Randomness as in the example: ``create_model(rngs=nnx.Rngs(0))`` -- every ``nnx.Dropout(rate,
rngs=rngs)`` (after the attention and at the end of the MLP, in each block) keeps the model's
stream and takes a new key from it on every call; the ``nnx.jit`` training step returns nothing:
the model, the optimiser and the metrics -- the streams' counters included -- are updated in
place. Sharding annotations left out; tiny sizes.
"""

import jax.numpy as jnp
import optax
from flax import nnx

MAXLEN, VOCAB, EMBED, HEADS, FF, BLOCKS = 4, 11, 8, 2, 16, 2


class TransformerBlock(nnx.Module):
    def __init__(self, embed_dim, num_heads, ff_dim, *, rngs: nnx.Rngs, rate: float = 0.1):
        self.mha = nnx.MultiHeadAttention(num_heads=num_heads, in_features=embed_dim, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=rate, rngs=rngs)
        self.layer_norm1 = nnx.LayerNorm(epsilon=1e-6, num_features=embed_dim, rngs=rngs)
        self.mlp = nnx.Sequential(
            nnx.Linear(embed_dim, ff_dim, rngs=rngs),
            nnx.relu,
            nnx.Linear(ff_dim, embed_dim, rngs=rngs),
            nnx.Dropout(rate=rate, rngs=rngs),
        )
        self.layer_norm2 = nnx.LayerNorm(epsilon=1e-6, num_features=embed_dim, rngs=rngs)

    def __call__(self, inputs):
        attention_output = self.mha(inputs_q=inputs, decode=False)
        attention_output = self.dropout1(attention_output)
        out1 = self.layer_norm1(inputs + attention_output)
        return self.layer_norm2(out1 + self.mlp(out1))


class MiniGPT(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.token_emb = nnx.Embed(num_embeddings=VOCAB, features=EMBED, rngs=rngs)
        self.pos_emb = nnx.Embed(num_embeddings=MAXLEN, features=EMBED, rngs=rngs)
        self.transformer_blocks = nnx.Sequential(
            *[TransformerBlock(EMBED, HEADS, FF, rngs=rngs) for _ in range(BLOCKS)]
        )
        self.output_layer = nnx.Linear(EMBED, VOCAB, rngs=rngs)

    def __call__(self, inputs):
        positions = jnp.arange(0, inputs.shape[1])[None, :]
        x = self.token_emb(inputs) + self.pos_emb(positions)
        return self.output_layer(self.transformer_blocks(x))


def loss_fn(model, batch):
    logits = model(batch[0])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits=logits, labels=batch[1]).mean()
    return loss, logits


@nnx.jit(donate_argnums=(0, 1, 3))
def train_step(model, optimizer, metrics, batch):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, batch)
    metrics.update(loss=loss, logits=logits, labels=batch[1])
    optimizer.update(model, grads)


def setup():
    model = MiniGPT(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    metrics = nnx.MultiMetric(loss=nnx.metrics.Average("loss"))
    return model, optimizer, metrics


def audit_target():
    model, optimizer, metrics = nnx.eval_shape(setup)  # shapes only: the audit traces
    batch = (jnp.ones((2, MAXLEN), jnp.int32), jnp.ones((2, MAXLEN), jnp.int32))
    return train_step, (model, optimizer, metrics, batch)
