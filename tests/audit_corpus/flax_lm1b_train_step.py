"""Flax linen lm1b: the language model's training step.

Source: google/flax, examples/lm1b/train.py (``train_step``) and examples/lm1b/models.py.

Randomness as in the example: the dropout key is an argument of the jitted step, folded with
``state.step`` (``jax.random.fold_in(dropout_rng, state.step)``) and handed to
``apply(..., rngs={"dropout": ...})``; the decoder's embedding dropout, attention dropout and
MLP dropout all draw from that stream through ``make_rng``. Tiny sizes.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

VOCAB, WIDTH, HEADS, LENGTH = 11, 8, 2, 6


class DecoderBlock(nn.Module):
    rate: float = 0.1

    @nn.compact
    def __call__(self, x, mask, deterministic):
        y = nn.LayerNorm()(x)
        y = nn.SelfAttention(num_heads=HEADS, dropout_rate=self.rate, deterministic=deterministic)(
            y, mask=mask
        )
        x = x + nn.Dropout(self.rate)(y, deterministic=deterministic)
        y = nn.Dense(2 * WIDTH)(nn.LayerNorm()(x))
        y = nn.Dropout(self.rate)(nn.relu(y), deterministic=deterministic)
        return x + nn.Dropout(self.rate)(nn.Dense(WIDTH)(y), deterministic=deterministic)


class TransformerLM(nn.Module):
    deterministic: bool = False

    @nn.compact
    def __call__(self, inputs):
        x = nn.Embed(VOCAB, WIDTH)(inputs)
        x = nn.Dropout(0.1)(x, deterministic=self.deterministic)
        mask = nn.combine_masks(
            nn.make_attention_mask(inputs > 0, inputs > 0), nn.make_causal_mask(inputs)
        )
        x = DecoderBlock()(x, mask, self.deterministic)
        return nn.Dense(VOCAB)(nn.LayerNorm()(x))


def train_step(state, batch, learning_rate_fn, dropout_rng):
    inputs = batch["inputs"]
    weights = jnp.where(inputs > 0, 1.0, 0.0)
    dropout_rng = jax.random.fold_in(dropout_rng, state.step)

    def loss_fn(params):
        logits = TransformerLM().apply({"params": params}, inputs, rngs={"dropout": dropout_rng})
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, inputs) * weights
        return loss.sum() / weights.sum(), logits

    (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads)
    accuracy = (jnp.argmax(logits, -1) == inputs) * weights
    return new_state, {"accuracy": accuracy.sum(), "learning_rate": learning_rate_fn(state.step)}


LEARNING_RATE_FN = optax.linear_schedule(0.0, 1e-3, 10)


def setup():
    rng = jax.random.key(0)
    rng, init_rng = jax.random.split(rng)
    inputs = jnp.ones((2, LENGTH), jnp.int32)
    params = TransformerLM(deterministic=True).init(init_rng, inputs)["params"]
    state = train_state.TrainState.create(
        apply_fn=None, params=params, tx=optax.adamw(LEARNING_RATE_FN)
    )
    return state, {"inputs": inputs}, rng


def audit_target():
    state, batch, rng = jax.eval_shape(setup)  # shapes only: the audit traces, it never runs
    step = jax.jit(functools.partial(train_step, learning_rate_fn=LEARNING_RATE_FN))
    return step, (state, batch), {"dropout_rng": rng}
