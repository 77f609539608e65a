"""An LSTM training step: stoax's ``RNN`` vs Flax NNX ``nnx.RNN(nnx.LSTMCell)`` and Equinox's
``eqx.nn.LSTMCell`` in ``lax.scan``, in ONE process.

    python benchmarks/rnn.py [--reps N] [--quick]

The model (the same in every library): token embedding (vocabulary 256, width 512) -> 2 LSTM
layers of 512 units -> linear head over the 256 tokens; next-token cross-entropy, adam; batch 32,
sequence 128. "Dropout on" is variational dropout at rate 0.25 (Gal & Ghahramani): one mask per
sequence, the same at every step, on each layer's input, its recurrent state and the last
layer's output -- in stoax ``RNN(dropout=, recurrent_dropout=, output_dropout=)`` ("stoax RNN
per-step dropout": ``dropout_mode="per_step"``, a fresh mask at every step); in the
anchors written by hand the way their users write it (input/output masks with
``broadcast_dims`` over time or ``jax.random.bernoulli`` before the scan, and the recurrent
mask multiplied into the state inside the step).

Reported per library: step time (median of ``--reps`` interleaved rounds, after a warm-up) with
dropout on and off, and XLA's compiled temporary memory
(``jit(step).lower(...).compile().memory_analysis().temp_size_in_bytes``) on and off. Goals:
stoax step time <= the fastest anchor, stoax temp memory on/off <= 1.05.
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import stoax

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--reps", type=int, default=5, help="timed rounds (median)")
PARSER.add_argument("--quick", action="store_true", help="hidden 64, seq 16, 2 reps (smoke)")
PARSER.add_argument("--only", default="", help="run only the programs whose name contains this")
ARGS = PARSER.parse_args()

VOCAB, HIDDEN, LAYERS, SEQ, BATCH, RATE = 256, 512, 2, 128, 32, 0.25
if ARGS.quick:
    HIDDEN, SEQ = 64, 16
REPS = 2 if ARGS.quick else ARGS.reps
TX = optax.adam(1e-3)


def _xent(logits, tokens):
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


# -- stoax -----------------------------------------------------------------------------------------


class StoaxLM(stoax.Module):
    embed: stoax.nn.Embedding
    rnn: stoax.nn.StackedRNN
    head: stoax.nn.Linear

    def __call__(self, tokens, *, key=None):
        return self.head(self.rnn(self.embed(tokens), key=key))


def stoax_step(rate, mode="variational"):
    ks = jax.random.split(jax.random.key(0), LAYERS + 2)
    layers = [
        stoax.nn.RNN(
            stoax.nn.LSTMCell(HIDDEN, HIDDEN, key=ks[i]),
            dropout=rate,
            recurrent_dropout=rate,
            output_dropout=rate if i == LAYERS - 1 else 0.0,
            dropout_mode=mode,
        )
        for i in range(LAYERS)
    ]
    model = StoaxLM(
        stoax.nn.Embedding(VOCAB, HIDDEN, key=ks[-2]),
        stoax.nn.StackedRNN(layers),
        stoax.nn.Linear(HIDDEN, VOCAB, key=ks[-1]),
    )
    params, rest = stoax.partition(model)

    def step(state, tokens, key):
        params, opt = state

        def loss(p):
            return _xent(stoax.combine(p, rest)(tokens, key=key), tokens)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = TX.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), value

    return step, (params, TX.init(params))


# -- Flax NNX: nnx.RNN(nnx.LSTMCell) ---------------------------------------------------------------


class Mask(nnx.Variable):
    """A recurrent dropout mask: state that is neither a parameter nor trained."""


class NNXMaskedLSTM(nnx.Module):
    """nnx.LSTMCell whose hidden state is multiplied by a per-sequence mask before each step;
    the step fills the masks (a ``Mask`` state) from its key before merging the model."""

    def __init__(self, cell):
        self.cell = cell
        self.mask = Mask(jnp.ones((BATCH, HIDDEN)))

    def __call__(self, carry, x):
        c, h = carry
        return self.cell((c, h * self.mask[...]), x)

    def initialize_carry(self, input_shape, rngs=None):
        return self.cell.initialize_carry(input_shape, rngs)

    @property
    def num_feature_axes(self):
        return 1


class NNXLM(nnx.Module):
    def __init__(self, rate, rngs):
        self.rate = rate
        self.embed = nnx.Embed(VOCAB, HIDDEN, rngs=rngs)
        self.cells = nnx.List(
            [NNXMaskedLSTM(nnx.LSTMCell(HIDDEN, HIDDEN, rngs=rngs)) for _ in range(LAYERS)]
        )
        self.rnns = nnx.List([nnx.RNN(cell) for cell in self.cells])
        self.drop = nnx.Dropout(rate, broadcast_dims=(1,), rngs=rngs)  # variational: over time
        self.head = nnx.Linear(HIDDEN, VOCAB, rngs=rngs)

    def __call__(self, tokens, key):
        x = self.embed(tokens)
        for i, rnn in enumerate(self.rnns):
            k_in, k_rec = jax.random.split(jax.random.fold_in(key, i))
            if self.rate:
                x = self.drop(x, rngs=nnx.Rngs(k_in))
            zeros = jnp.zeros((BATCH, HIDDEN))
            x = rnn(x, initial_carry=(zeros, zeros))
        if self.rate:
            x = self.drop(x, rngs=nnx.Rngs(jax.random.fold_in(key, LAYERS)))
        return self.head(x)


def nnx_step(rate):
    """The NNX way: nnx.value_and_grad over the model, nnx.Optimizer; wrapped in a pure
    function (split/merge) so that jax.jit(...).lower() gives the memory analysis."""
    model = NNXLM(rate, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, TX, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    def step(state, tokens, key):
        model, optimizer = nnx.merge(graphdef, state)

        def loss(model):
            if rate:  # the variational recurrent masks, one per layer and sequence
                for i, cell in enumerate(model.cells):
                    k = jax.random.fold_in(key, LAYERS + 1 + i)
                    cell.mask[...] = jax.random.bernoulli(k, 1 - rate, (BATCH, HIDDEN)) / (1 - rate)
            return _xent(model(tokens, key), tokens)

        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), value

    return step, state


# -- Equinox: eqx.nn.LSTMCell in lax.scan ----------------------------------------------------------


class EqxLM(eqx.Module):
    embed: eqx.nn.Embedding
    cells: list
    head: eqx.nn.Linear
    rate: float = eqx.field(static=True)

    def __init__(self, rate, key):
        ks = jax.random.split(key, LAYERS + 2)
        self.embed = eqx.nn.Embedding(VOCAB, HIDDEN, key=ks[-2])
        self.cells = [eqx.nn.LSTMCell(HIDDEN, HIDDEN, key=ks[i]) for i in range(LAYERS)]
        self.head = eqx.nn.Linear(HIDDEN, VOCAB, key=ks[-1])
        self.rate = rate

    def __call__(self, tokens, key):  # one sequence (vmapped over the batch)
        x = jax.vmap(self.embed)(tokens)
        scale = 1 / (1 - self.rate)
        for i, cell in enumerate(self.cells):
            k_in, k_rec = jax.random.split(jax.random.fold_in(key, i))
            m_in = jax.random.bernoulli(k_in, 1 - self.rate, (HIDDEN,)) * scale
            m_rec = jax.random.bernoulli(k_rec, 1 - self.rate, (HIDDEN,)) * scale
            if not self.rate:
                m_in = m_rec = jnp.ones(HIDDEN)

            def body(carry, x_t, cell=cell, m_in=m_in, m_rec=m_rec):
                h, c = carry
                h, c = cell(x_t * m_in, (h * m_rec, c))
                return (h, c), h

            zeros = jnp.zeros(HIDDEN)
            _, x = jax.lax.scan(body, (zeros, zeros), x)
        if self.rate:
            x = x * jax.random.bernoulli(jax.random.fold_in(key, LAYERS), 1 - self.rate, (HIDDEN,))
            x = x * scale
        return jax.vmap(self.head)(x)


def eqx_step(rate):
    model = EqxLM(rate, jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def step(state, tokens, key):
        params, opt = state

        def loss(p):
            m = eqx.combine(p, static)
            logits = jax.vmap(m)(tokens, jax.random.split(key, BATCH))
            return _xent(logits, tokens)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt = TX.update(grads, opt, params)
        return (eqx.apply_updates(params, updates), opt), value

    return step, (params, TX.init(params))


# -- the table -------------------------------------------------------------------------------------


def main():
    tokens = jax.random.randint(jax.random.key(1), (BATCH, SEQ), 0, VOCAB)
    programs = {}
    for name, make in [
        ("stoax RNN", stoax_step),
        ("stoax RNN per-step dropout", lambda r: stoax_step(r, mode="per_step")),
        ("Flax NNX nnx.RNN(LSTMCell)", nnx_step),
        ("Equinox LSTMCell + lax.scan", eqx_step),
    ]:
        if ARGS.only not in name:
            continue
        for on in (True, False):
            step, state = make(RATE if on else 0.0)
            t0 = time.perf_counter()
            compiled = jax.jit(step).lower(state, tokens, jax.random.key(2)).compile()
            compile_s = time.perf_counter() - t0
            temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
            jax.block_until_ready(compiled(state, tokens, jax.random.key(2)))  # warm-up
            programs[name, on] = (compiled, state, temp, compile_s)
            print(f"compiled {name} dropout {'on' if on else 'off'}: {compile_s:.1f} s", flush=True)
    times = {k: [] for k in programs}
    for r in range(REPS):  # interleaved rounds: a change of load hits every program alike
        for k, (compiled, state, _, _) in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(state, tokens, jax.random.key(3 + r)))
            times[k].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    names = sorted({k[0] for k in programs}, key=[k[0] for k in programs].index)
    print(
        f"\nLSTM LM step: {LAYERS} layers, hidden {HIDDEN}, seq {SEQ}, batch {BATCH}, "
        f"variational dropout {RATE}; medians of {REPS} rounds\n"
    )
    print("| library | ms on | ms off | temp MiB on | temp MiB off | temp on/off | compile s |")
    print("|---|---|---|---|---|---|---|")
    for n in names:
        t_on, t_off = programs[n, True][2], programs[n, False][2]
        print(
            f"| {n} | {ms[n, True]:.0f} | {ms[n, False]:.0f} | {t_on:.1f} | {t_off:.1f} | "
            f"{t_on / t_off:.3f} | {programs[n, True][3]:.1f} |"
        )
    anchors = [ms[n, True] for n in names if not n.startswith("stoax")]
    fastest = min(anchors) if anchors else float("nan")
    for n in names:
        if n.startswith("stoax"):
            print(f"\n{n}: step time on / fastest anchor on = {ms[n, True] / fastest:.2f}")


if __name__ == "__main__":
    main()
