"""Equinox vision transformer: the training step (returns the updated model).

Source: patrick-kidger/equinox, docs/examples/vision_transformer.ipynb (``PatchEmbedding``,
``AttentionBlock``, ``VisionTransformer``, ``compute_grads``, ``step_model``, ``train``).

Randomness as in the example: the training loop does ``key, *subkeys = jr.split(key,
num=batch_size + 1)`` and passes ``jnp.array(subkeys)`` -- one key per image -- to the
``eqx.filter_jit`` step; ``compute_grads`` ``jax.vmap``s the model over images and keys; the model
splits its key into ``dropout_key, *attention_keys`` (one per block) and every block splits its
key again for its two dropouts. The step returns ``(model, new_state, loss)``; the model's leaves
include non-arrays (``patch_size``, activation functions). ``einops.rearrange`` written as a
reshape; tiny sizes.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

CHANNELS, SIZE, PATCH, EMBED, HIDDEN, HEADS, LAYERS, CLASSES = 1, 4, 2, 8, 8, 2, 2, 3


class PatchEmbedding(eqx.Module):
    linear: eqx.nn.Linear
    patch_size: int

    def __init__(self, key):
        self.patch_size = PATCH
        self.linear = eqx.nn.Linear(PATCH * PATCH * CHANNELS, EMBED, key=key)

    def __call__(self, x):
        c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(c, h // p, p, w // p, p).transpose(1, 3, 0, 2, 4)
        return jax.vmap(self.linear)(x.reshape((h // p) * (w // p), c * p * p))


class AttentionBlock(eqx.Module):
    layer_norm1: eqx.nn.LayerNorm
    layer_norm2: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    linear1: eqx.nn.Linear
    linear2: eqx.nn.Linear
    dropout1: eqx.nn.Dropout
    dropout2: eqx.nn.Dropout

    def __init__(self, key):
        key1, key2, key3 = jr.split(key, 3)
        self.layer_norm1 = eqx.nn.LayerNorm(EMBED)
        self.layer_norm2 = eqx.nn.LayerNorm(EMBED)
        self.attention = eqx.nn.MultiheadAttention(HEADS, EMBED, key=key1)
        self.linear1 = eqx.nn.Linear(EMBED, HIDDEN, key=key2)
        self.linear2 = eqx.nn.Linear(HIDDEN, EMBED, key=key3)
        self.dropout1 = eqx.nn.Dropout(0.1)
        self.dropout2 = eqx.nn.Dropout(0.1)

    def __call__(self, x, enable_dropout, key):
        input_x = jax.vmap(self.layer_norm1)(x)
        x = x + self.attention(input_x, input_x, input_x)
        input_x = jax.nn.gelu(jax.vmap(self.linear1)(jax.vmap(self.layer_norm2)(x)))
        key1, key2 = jr.split(key, num=2)
        input_x = self.dropout1(input_x, inference=not enable_dropout, key=key1)
        input_x = jax.vmap(self.linear2)(input_x)
        input_x = self.dropout2(input_x, inference=not enable_dropout, key=key2)
        return x + input_x


class VisionTransformer(eqx.Module):
    patch_embedding: PatchEmbedding
    positional_embedding: jax.Array
    cls_token: jax.Array
    attention_blocks: list
    dropout: eqx.nn.Dropout
    mlp: eqx.nn.Sequential
    num_layers: int

    def __init__(self, key):
        key1, key2, key3, key4, key5 = jr.split(key, 5)
        self.patch_embedding = PatchEmbedding(key1)
        num_patches = (SIZE // PATCH) ** 2
        self.positional_embedding = jr.normal(key2, (num_patches + 1, EMBED))
        self.cls_token = jr.normal(key3, (1, EMBED))
        self.num_layers = LAYERS
        self.attention_blocks = [AttentionBlock(k) for k in jr.split(key4, LAYERS)]
        self.dropout = eqx.nn.Dropout(0.1)
        self.mlp = eqx.nn.Sequential(
            [eqx.nn.LayerNorm(EMBED), eqx.nn.Linear(EMBED, CLASSES, key=key5)]
        )

    def __call__(self, x, enable_dropout, key):
        x = self.patch_embedding(x)
        x = jnp.concatenate((self.cls_token, x), axis=0)
        x += self.positional_embedding[: x.shape[0]]
        dropout_key, *attention_keys = jr.split(key, num=self.num_layers + 1)
        x = self.dropout(x, inference=not enable_dropout, key=dropout_key)
        for block, attention_key in zip(self.attention_blocks, attention_keys, strict=True):
            x = block(x, enable_dropout, key=attention_key)
        return self.mlp(x[0])


@eqx.filter_value_and_grad
def compute_grads(model, images, labels, key):
    logits = jax.vmap(model, in_axes=(0, None, 0))(images, True, key)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


@eqx.filter_jit
def step_model(model, optimizer, state, images, labels, key):
    loss, grads = compute_grads(model, images, labels, key)
    updates, new_state = optimizer.update(grads, state, model)
    model = eqx.apply_updates(model, updates)
    return model, new_state, loss


OPTIMIZER = optax.adamw(1e-3)


def setup():
    key = jr.PRNGKey(2003)
    key, model_key = jr.split(key)
    model = VisionTransformer(model_key)
    state = OPTIMIZER.init(eqx.filter(model, eqx.is_inexact_array))
    key, *subkeys = jr.split(key, num=2 + 1)
    return model, state, jnp.array(subkeys)


def audit_target():
    model, state, subkeys = eqx.filter_eval_shape(setup)  # shapes only: the audit traces
    images = jnp.ones((2, CHANNELS, SIZE, SIZE))
    labels = jnp.zeros((2,), jnp.int32)
    return step_model, (model, OPTIMIZER, state, images, labels, subkeys)
