"""Flax linen sst2: the sentiment classifier's training step.

Source: google/flax, examples/sst2/train.py (``train_step``, ``train_epoch``) and
examples/sst2/models.py (``WordDropout``, ``Embedder``, ``SimpleLSTM.initialize_carry``,
``SimpleBiLSTM``, ``AttentionClassifier``).

Randomness as in the example: the step receives a dict of keys and folds the step number into
each (``{name: jax.random.fold_in(rng, step) ...}``); word dropout draws a Bernoulli mask with
``make_rng("dropout")``, the embedder and the classifier apply ``nn.Dropout``; each LSTM direction
gets its zero initial carry from ``OptimizedLSTMCell.initialize_carry(jax.random.key(0), ...)`` --
a constant key that is split, but nothing is ever drawn from its halves. The attention
classifier is condensed (the same dropouts, fewer layers); tiny sizes.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

VOCAB, EMBED, HIDDEN, LENGTH, UNK = 13, 6, 5, 4, 1


class WordDropout(nn.Module):
    rate: float

    @nn.compact
    def __call__(self, inputs, deterministic):
        if deterministic:
            return inputs
        mask = jax.random.bernoulli(self.make_rng("dropout"), p=self.rate, shape=inputs.shape)
        return jnp.where(mask, jnp.array([UNK]), inputs)


class SimpleLSTM(nn.Module):
    @functools.partial(
        nn.transforms.scan,
        variable_broadcast="params",
        in_axes=1,
        out_axes=1,
        split_rngs={"params": False},
    )
    @nn.compact
    def __call__(self, carry, x):
        return nn.OptimizedLSTMCell(HIDDEN)(carry, x)

    def initialize_carry(self, input_shape):
        cell = nn.OptimizedLSTMCell(HIDDEN, parent=None)
        return cell.initialize_carry(jax.random.key(0), input_shape)


class Classifier(nn.Module):
    @nn.compact
    def __call__(self, token_ids, deterministic):
        token_ids = WordDropout(0.1)(token_ids, deterministic)
        x = nn.Embed(VOCAB, EMBED)(token_ids)
        x = nn.Dropout(0.2)(x, deterministic=deterministic)
        forward, backward = SimpleLSTM(), SimpleLSTM()
        _, fwd = forward(forward.initialize_carry(x[:, 0].shape), x)
        _, bwd = backward(backward.initialize_carry(x[:, 0].shape), x[:, ::-1])
        h = jnp.concatenate([fwd, bwd[:, ::-1]], -1)
        scores = nn.softmax(nn.Dense(1, use_bias=False)(jnp.tanh(nn.Dense(HIDDEN)(h)))[..., 0])
        summary = jnp.einsum("bt,bth->bh", scores, h)
        summary = nn.Dropout(0.2)(summary, deterministic=deterministic)
        hidden = nn.Dropout(0.2)(jnp.tanh(nn.Dense(HIDDEN)(summary)), deterministic=deterministic)
        return nn.Dense(1, use_bias=False)(hidden)[:, 0]


def train_step(state, batch, rngs):
    step = state.step
    rngs = {name: jax.random.fold_in(rng, step) for name, rng in rngs.items()}

    def loss_fn(params):
        logits = Classifier().apply(
            {"params": params}, batch["token_ids"], deterministic=False, rngs=rngs
        )
        return optax.sigmoid_binary_cross_entropy(logits, batch["label"]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), {"loss": loss}


def setup():
    rng = jax.random.key(0)
    rng, init_rng = jax.random.split(rng)
    tokens = jnp.ones((2, LENGTH), jnp.int32)
    params = Classifier().init(init_rng, tokens, deterministic=True)["params"]
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1))
    rng, epoch_rng = jax.random.split(rng)
    batch = {"token_ids": tokens, "label": jnp.ones((2,))}
    return state, batch, {"dropout": epoch_rng}


def audit_target():
    return jax.jit(train_step), jax.eval_shape(setup)  # shapes only: the audit traces
