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

Two comparisons, each the median of ``--repeats``; the audit's time includes tracing to a jaxpr,
which is what a user waits for:

* **first, fresh process** -- what ``stoax audit file.py:step`` or a test does: a new Python
  process builds the program, then times either ``jax.make_jaxpr(step)(*args)`` or
  ``stoax.audit(step, *args)`` (the acceptance figure: the first audit against the first
  ``make_jaxpr``);
* **warm process** -- in this process, with JAX's caches of library functions (``jax.random``,
  ``jnp.where``...) already filled by earlier traces: a plain ``make_jaxpr`` of a fresh step
  reuses them, while the audit always re-traces inner ``jit`` functions (to see a ``vmap`` inside
  a function traced before the audit), so this ratio is the audit's worst case.

Times are CPU seconds of the process (``time.process_time``): tracing is single-threaded Python,
so on an idle machine they equal the wall-clock wait, and on a shared machine they are not
inflated by other processes. The equations and random draws of the audit are printed, and every
report must be clean.

    python benchmarks/audit_speed.py [--layers 24] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
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


PROGRAMS = {"flax-wmt": flax_wmt_program, "stack": stack_program, "unrolled": unrolled_program}


def _time_once(name: str, layers: int, mode: str) -> tuple[float, int, int]:
    """Build ``name`` and time one ``make_jaxpr`` or audit of it: (seconds, equations, draws)."""
    step, step_args = PROGRAMS[name](layers)
    t0 = time.process_time()
    if mode == "plain":
        jax.make_jaxpr(step)(*step_args)
        return time.process_time() - t0, 0, 0
    report = stoax.audit(step, *step_args)
    seconds = time.process_time() - t0
    if not report.ok:
        raise SystemExit(f"unexpected findings on correct code:\n{report}")
    return seconds, report.num_equations, report.num_draws


def _fresh(name: str, layers: int, mode: str) -> tuple[float, int, int]:
    cmd = [sys.executable, __file__, "--one", name, "--mode", mode, "--layers", str(layers)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()
    return float(out[-3]), int(out[-2]), int(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", choices=sorted(PROGRAMS), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=("plain", "audit"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child process: one timing
        print(*_time_once(args.one, args.layers, args.mode))
        return
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; median of {args.repeats}")
    print(
        f"{'':28s}{'-- first, fresh process --':>28s}  {'------ warm process ------':>28s}\n"
        f"{'program':10s} {'equations':>10s} {'draws':>6s} "
        f"{'make_jaxpr s':>12s} {'audit s':>8s} {'ratio':>6s}  "
        f"{'make_jaxpr s':>12s} {'audit s':>8s} {'ratio':>6s}"
    )
    for name in PROGRAMS:
        fresh_p = [_fresh(name, args.layers, "plain")[0] for _ in range(args.repeats)]
        fresh_a = [_fresh(name, args.layers, "audit") for _ in range(args.repeats)]
        _time_once(name, args.layers, "plain")  # fill this process's caches
        warm_p = [_time_once(name, args.layers, "plain")[0] for _ in range(args.repeats)]
        warm_a = [_time_once(name, args.layers, "audit")[0] for _ in range(args.repeats)]
        fp, fa = statistics.median(fresh_p), statistics.median(a[0] for a in fresh_a)
        wp, wa = statistics.median(warm_p), statistics.median(warm_a)
        _, eqns, draws = fresh_a[0]
        print(
            f"{name:10s} {eqns:10d} {draws:6d} {fp:12.2f} {fa:8.2f} {fa / fp:6.2f}  "
            f"{wp:12.2f} {wa:8.2f} {wa / wp:6.2f}"
        )


if __name__ == "__main__":
    main()
