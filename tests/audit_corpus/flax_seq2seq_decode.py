"""Flax linen seq2seq: decoding with sampled (not teacher-forced) decoder inputs.

Source: google/flax, examples/seq2seq/train.py (``decode``, ``decode_batch``) and
examples/seq2seq/models.py (``DecoderLSTM``).

Randomness as in the example: ``decode_batch`` folds ``state.step`` into its ``decode_rng``;
``decode`` (``jax.jit`` with the character table static) applies the model with
``rngs={"lstm": decode_rng}``; inside the ``nn.scan`` over output positions (with
``split_rngs={"lstm": True}``) each step feeds back the token it sampled with
``jax.random.categorical(self.make_rng("lstm"), logits)``. Tiny sizes.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

VOCAB, HIDDEN, IN_LEN, OUT_LEN = 6, 8, 5, 4


class DecoderLSTM(nn.Module):
    @functools.partial(
        nn.scan, variable_broadcast="params", split_rngs={"params": False, "lstm": True}
    )
    @nn.compact
    def __call__(self, carry, x):
        lstm_state, last_prediction = carry
        lstm_state, y = nn.LSTMCell(HIDDEN)(lstm_state, last_prediction)
        logits = nn.Dense(VOCAB)(y)
        predicted = jax.random.categorical(self.make_rng("lstm"), logits)
        prediction = jax.nn.one_hot(predicted, VOCAB, dtype=jnp.float32)
        return (lstm_state, prediction), prediction


class Seq2seq(nn.Module):
    @nn.compact
    def __call__(self, encoder_inputs, decoder_inputs):
        encoder_state, _ = nn.RNN(nn.LSTMCell(HIDDEN), return_carry=True)(encoder_inputs)
        xs = jnp.swapaxes(decoder_inputs[:, :-1], 0, 1)
        _, predictions = DecoderLSTM()((encoder_state, decoder_inputs[:, 0]), xs)
        return jnp.swapaxes(predictions, 0, 1)


class CTable:
    """The character table: static (hashable), as in the example."""

    max_output_len = OUT_LEN

    def one_hot(self, ids):
        return jax.nn.one_hot(ids, VOCAB)


@functools.partial(jax.jit, static_argnums=3)
def decode(params, inputs, decode_rng, ctable):
    init_decoder_input = ctable.one_hot(jnp.array([4]))
    init_decoder_inputs = jnp.tile(init_decoder_input, (inputs.shape[0], ctable.max_output_len, 1))
    return Seq2seq().apply(
        {"params": params}, inputs, init_decoder_inputs, rngs={"lstm": decode_rng}
    )


def decode_batch(params, step, inputs, decode_rng, ctable):
    decode_rng = jax.random.fold_in(decode_rng, step)
    return decode(params, inputs, decode_rng, ctable)


def audit_target():
    rng1, rng2 = jax.random.split(jax.random.key(0))
    ctable = CTable()
    inputs = jax.nn.one_hot(jnp.zeros((2, IN_LEN), jnp.int32), VOCAB)
    outputs = jax.nn.one_hot(jnp.zeros((2, OUT_LEN), jnp.int32), VOCAB)
    init = Seq2seq().init
    params = jax.eval_shape(init, {"params": rng1, "lstm": rng2}, inputs, outputs)["params"]
    step = functools.partial(decode_batch, ctable=ctable)
    return step, (params, jnp.asarray(7), inputs, jax.random.key(5))
