"""Flax linen seq2seq: the addition model's training step (sampled decoder inputs).

Source: google/flax, examples/seq2seq/train.py (``train_step``) and examples/seq2seq/models.py
(``DecoderLSTM``, ``Seq2seq``).

Randomness as in the example: the jitted step folds ``state.step`` into its ``lstm_rng``
argument and applies the model with ``rngs={"lstm": lstm_key}``; the decoder is an ``nn.scan``
with ``split_rngs={"params": False, "lstm": True}``, and each step samples its prediction with
``jax.random.categorical(self.make_rng("lstm"), logits)``. ``eos_id`` is a Python int passed to
the jitted step (so traced). Tiny sizes.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

VOCAB, HIDDEN, IN_LEN, OUT_LEN = 6, 8, 5, 4


class DecoderLSTM(nn.Module):
    teacher_force: bool

    @functools.partial(
        nn.scan,
        variable_broadcast="params",
        split_rngs={"params": False, "lstm": True},
    )
    @nn.compact
    def __call__(self, carry, x):
        lstm_state, last_prediction = carry
        if not self.teacher_force:
            x = last_prediction
        lstm_state, y = nn.LSTMCell(HIDDEN)(lstm_state, x)
        logits = nn.Dense(VOCAB)(y)
        predicted = jax.random.categorical(self.make_rng("lstm"), logits)
        prediction = jax.nn.one_hot(predicted, VOCAB, dtype=jnp.float32)
        return (lstm_state, prediction), (logits, prediction)


class Seq2seq(nn.Module):
    teacher_force: bool = True

    @nn.compact
    def __call__(self, encoder_inputs, decoder_inputs):
        encoder = nn.RNN(nn.LSTMCell(HIDDEN), return_carry=True, name="encoder")
        encoder_state, _ = encoder(encoder_inputs)
        decoder = DecoderLSTM(self.teacher_force)
        xs = jnp.swapaxes(decoder_inputs[:, :-1], 0, 1)
        _, (logits, predictions) = decoder((encoder_state, decoder_inputs[:, 0]), xs)
        return jnp.swapaxes(logits, 0, 1), jnp.swapaxes(predictions, 0, 1)


def train_step(state, batch, lstm_rng, eos_id):
    labels = batch["answer"][:, 1:]
    lstm_key = jax.random.fold_in(lstm_rng, state.step)

    def loss_fn(params):
        logits, _ = state.apply_fn(
            {"params": params}, batch["query"], batch["answer"], rngs={"lstm": lstm_key}
        )
        mask = jnp.cumsum(jnp.argmax(labels, -1) == eos_id, -1) <= 1
        xe = jnp.sum(jax.nn.log_softmax(logits) * labels, -1) * mask
        return -xe.mean(), logits

    (_, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    return state, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))}


def setup():
    rng = jax.random.key(0)
    rng1, rng2 = jax.random.split(rng)
    query = jax.nn.one_hot(jnp.zeros((2, IN_LEN), jnp.int32), VOCAB)
    answer = jax.nn.one_hot(jnp.ones((2, OUT_LEN), jnp.int32), VOCAB)
    model = Seq2seq()
    params = model.init({"params": rng1, "lstm": rng2}, query, answer)["params"]
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=optax.adam(1e-3))
    return state, {"query": query, "answer": answer}


def audit_target():
    state, batch = jax.eval_shape(setup)  # shapes only: the audit traces
    return jax.jit(train_step), (state, batch, jax.random.key(1), 2)
