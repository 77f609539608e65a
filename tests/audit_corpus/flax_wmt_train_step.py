"""Flax linen wmt: the translation model's data-parallel training step.

Source: google/flax, examples/wmt/train.py (``train_step``, ``p_train_step``) and
examples/wmt/models.py.

Randomness as in the example: ``dropout_rngs = jax.random.split(rng, jax.local_device_count())``
gives every device its own key; the step is ``jax.pmap``-ed over ``axis_name="batch"``, folds
``state.step`` into its device's key and applies the encoder-decoder with
``rngs={"dropout": dropout_rng}``; gradients are ``lax.pmean``-ed. Tiny sizes, one device.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

VOCAB, WIDTH, LENGTH = 9, 8, 4


class Transformer(nn.Module):
    rate: float = 0.1
    deterministic: bool = False

    @nn.compact
    def __call__(self, inputs, targets):
        embed = nn.Embed(VOCAB, WIDTH, name="shared_embedding")
        enc = nn.Dropout(self.rate)(embed(inputs), deterministic=self.deterministic)
        enc = enc + nn.SelfAttention(
            num_heads=2, dropout_rate=self.rate, deterministic=self.deterministic
        )(enc)
        dec = nn.Dropout(self.rate)(embed(targets), deterministic=self.deterministic)
        dec = dec + nn.MultiHeadDotProductAttention(
            num_heads=2, dropout_rate=self.rate, deterministic=self.deterministic
        )(dec, enc)
        dec = nn.Dropout(self.rate)(nn.relu(nn.Dense(WIDTH)(dec)), deterministic=self.deterministic)
        return embed.attend(dec)


def train_step(state, batch, dropout_rng=None):
    inputs, targets = batch["inputs"], batch["targets"]
    weights = jnp.where(targets > 0, 1.0, 0.0)
    dropout_rng = jax.random.fold_in(dropout_rng, state.step)

    def loss_fn(params):
        logits = Transformer().apply(
            {"params": params}, inputs, targets, rngs={"dropout": dropout_rng}
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets) * weights
        return loss.sum() / weights.sum(), logits

    (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.lax.pmean(grads, axis_name="batch")
    new_state = state.apply_gradients(grads=grads)
    return new_state, {"accuracy": ((jnp.argmax(logits, -1) == targets) * weights).sum()}


def setup():
    rng = jax.random.key(0)
    rng, init_rng = jax.random.split(rng)
    inputs = jnp.ones((2, LENGTH), jnp.int32)
    params = Transformer(deterministic=True).init(init_rng, inputs, inputs)["params"]
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))
    # jax_utils.replicate: a leading device axis
    n = jax.local_device_count()
    state = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *jnp.shape(x))), state)
    dropout_rngs = jax.random.split(rng, jax.local_device_count())
    batch = {"inputs": inputs[None], "targets": inputs[None]}
    return state, batch, dropout_rngs


def audit_target():
    state, batch, dropout_rngs = jax.eval_shape(setup)  # shapes only: the audit traces
    p_train_step = jax.pmap(train_step, axis_name="batch", donate_argnums=(0,))
    return p_train_step, (state, batch), {"dropout_rng": dropout_rngs}
