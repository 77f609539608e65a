"""How long ``stoax.audit`` takes on real training steps, next to a plain ``jax.make_jaxpr``.

Three programs, each a full adamw training step (loss, gradients, optimiser update) with dropout
0.1 on embeddings, attention probabilities, residual branches and the MLP:

* ``flax-wmt``: a small Flax linen encoder-decoder Transformer step written like the Flax wmt
  example (``rngs={"dropout": fold_in(dropout_rng, step)}``), 6 + 6 layers;

* ``stack``: ``stoax.nn.TransformerEncoder`` -- its 24 blocks run in one ``lax.scan``, so the
  jaxpr holds one block and the auditor follows the key through the scan body;
* ``unrolled``: the same 24 ``TransformerBlock`` s applied in a Python loop -- 24 copies of the
  block in the jaxpr, the worst case for an auditor (what a Flax/Equinox model without ``scan``
  looks like).

Each repeat builds the program afresh (a new jitted step, so nothing is reused from an earlier
trace) and times ``jax.make_jaxpr`` of it, then builds it afresh again and audits it; the audit's
time includes tracing to a jaxpr, which is what a user waits for. Prints the medians of
``--repeats`` first traces of fresh steps ("make_jaxpr s", "audit s") and their ratio, with the
number of equations and random draws, and checks that every report is clean.

    python benchmarks/audit_speed.py [--layers 24] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

import stoax

VOCAB, FEATURES, HEADS, SEQ, BATCH = 256, 128, 4, 64, 8


def training_step(forward, model):
    """A jitted adamw step over the trainable half of ``model``; returns it and its arguments."""
    params, rest = stoax.partition(model)
    opt = optax.adamw(1e-3)

    @jax.jit
    def step(params, opt_state, tokens, step_index):
        key = stoax.step_key(0, step_index)

        def loss(p):
            logits = forward(stoax.combine(p, rest), tokens, key)
            labels = tokens[:, 1:]
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], labels).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    tokens = jnp.zeros((BATCH, SEQ), jnp.int32)
    return step, (params, opt.init(params), tokens, jnp.uint32(0))


def stack_program(layers: int):
    model = stoax.nn.TransformerEncoder(
        vocab_size=VOCAB,
        out_features=VOCAB,
        features=FEATURES,
        num_heads=HEADS,
        num_layers=layers,
        max_len=SEQ,
        causal=True,
        key=jax.random.key(0),
    )
    return training_step(lambda m, tokens, key: m(tokens, key=key), model)


def unrolled_program(layers: int):
    block_keys = stoax.keys.derive(jax.random.key(0), *range(layers))
    model = stoax.nn.Sequential(
        [
            stoax.nn.Embedding(VOCAB, FEATURES, key=jax.random.key(1)),
            stoax.nn.Dropout(0.1),
            *(stoax.nn.TransformerBlock(FEATURES, HEADS, causal=True, key=k) for k in block_keys),
            stoax.nn.LayerNorm(FEATURES),
            stoax.nn.Linear(FEATURES, VOCAB, key=jax.random.key(2)),
        ]
    )
    return training_step(lambda m, tokens, key: m(tokens, key=key), model)


class _WmtLayer(nn.Module):
    decoder: bool

    @nn.compact
    def __call__(self, x, enc=None, *, train: bool):
        drop = nn.Dropout(0.1, deterministic=not train)
        h = nn.LayerNorm()(x)
        h = nn.MultiHeadDotProductAttention(HEADS, dropout_rate=0.1, deterministic=not train)(
            h, h, mask=nn.make_causal_mask(x[..., 0]) if self.decoder else None
        )
        x = x + drop(h)
        if self.decoder:
            h = nn.LayerNorm()(x)
            h = nn.MultiHeadDotProductAttention(HEADS, dropout_rate=0.1, deterministic=not train)(
                h, enc
            )
            x = x + drop(h)
        h = nn.LayerNorm()(x)
        h = nn.Dense(FEATURES)(nn.relu(nn.Dense(4 * FEATURES)(h)))
        return x + drop(h)


class _Wmt(nn.Module):
    layers: int

    @nn.compact
    def __call__(self, src, tgt, *, train: bool):
        embed = nn.Embed(VOCAB, FEATURES)
        drop = nn.Dropout(0.1, deterministic=not train)
        enc = drop(embed(src))
        for _ in range(self.layers):
            enc = _WmtLayer(decoder=False)(enc, train=train)
        dec = drop(embed(tgt))
        for _ in range(self.layers):
            dec = _WmtLayer(decoder=True)(dec, nn.LayerNorm()(enc), train=train)
        return embed.attend(nn.LayerNorm()(dec))


def flax_wmt_program(layers: int):
    """A Flax wmt-style train step (``layers`` // 4 encoder and decoder layers)."""
    model = _Wmt(max(1, layers // 4))
    tokens = jnp.zeros((BATCH, SEQ), jnp.int32)
    params = model.init(jax.random.key(0), tokens, tokens, train=False)["params"]
    opt = optax.adamw(1e-3)

    @jax.jit
    def train_step(params, opt_state, batch, dropout_rng, step):
        rng = jax.random.fold_in(dropout_rng, step)

        def loss(p):
            logits = model.apply({"params": p}, batch, batch, train=True, rngs={"dropout": rng})
            return optax.softmax_cross_entropy_with_integer_labels(logits, batch).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return train_step, (params, opt.init(params), tokens, jax.random.key(1), jnp.int32(0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; median of {args.repeats}")
    print(
        f"{'program':10s} {'layers':>6s} {'equations':>10s} {'draws':>6s} "
        f"{'make_jaxpr s':>12s} {'audit s':>8s} {'ratio':>6s}"
    )
    programs = (("flax-wmt", flax_wmt_program), ("stack", stack_program))
    programs += (("unrolled", unrolled_program),)
    for name, build in programs:
        plain, audited = [], []
        for _ in range(args.repeats):
            step, step_args = build(args.layers)
            t0 = time.perf_counter()
            jax.make_jaxpr(step)(*step_args)
            plain.append(time.perf_counter() - t0)
            step, step_args = build(args.layers)
            t0 = time.perf_counter()
            report = stoax.audit(step, *step_args)
            audited.append(time.perf_counter() - t0)
            if not report.ok:
                raise SystemExit(f"unexpected findings on correct code:\n{report}")
        p, a = statistics.median(plain), statistics.median(audited)
        print(
            f"{name:10s} {args.layers:6d} {report.num_equations:10d} {report.num_draws:6d} "
            f"{p:12.2f} {a:8.2f} {a / p:6.2f}"
        )


if __name__ == "__main__":
    main()
