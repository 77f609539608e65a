"""stoax dropout vs Flax NNX, Flax linen, Equinox and jax.random.bernoulli, in ONE process.

    python benchmarks/run.py [--impl threefry2x32|rbg|unsafe_rbg] [--reps N] [--quick]

(1) 16M f32 elements: mask generation, dropout forward, dropout forward+backward (``jax.vjp``:
    output and input cotangent), each as a multiple of a plain jitted copy of the same array
    (the memory-bandwidth floor; lower is better, 1.0 = as fast as a copy).
(2) A Transformer training step (4 pre-LN layers, d_model 256, 4 heads, seq 128, batch 32,
    vocabulary 512, next-token loss, adamw; dropout 0.1 on embeddings, attention probabilities,
    residual branches and the MLP hidden layer): step time with dropout on/off and XLA's
    compiled temporary memory (``compiled.memory_analysis().temp_size_in_bytes``) on/off.
    stoax uses its library ``stoax.nn.TransformerEncoder`` ("stoax": the layers in one
    ``lax.scan``; "stoax unrolled": the same model with ``unroll=True``, one copy of the layer
    per layer in the program, as the anchors have it; "stoax remat": the scan with each layer
    rematerialised except its weight matmuls, ``remat=jax.checkpoint_policies.
    dots_with_no_batch_dims_saveable``); "stoax prims" is the
    anchors' hand-written architecture (unrolled layers, no scan) on stoax's primitives
    (``dropout``; ``dropout_then`` for attention probabilities and the MLP hidden layer); the
    anchors are that architecture with each library's own Linear/LayerNorm/Embed/Dropout.
(3) Compile time of that step (lower + compile, dropout on).

Times are medians over ``--reps`` timed calls after a warm-up call (for (2), interleaved rounds:
each round times one step of every program); every library is measured at the same PRNG
implementation (``--impl``, set as ``jax_default_prng_impl`` before any key is made).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time

import jax

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--impl", default="threefry2x32", choices=["threefry2x32", "rbg", "unsafe_rbg"])
PARSER.add_argument("--reps", type=int, default=7, help="timed repetitions per figure (median)")
PARSER.add_argument("--quick", action="store_true", help="smaller arrays, 3 reps (smoke test)")
PARSER.add_argument("--layers", type=int, default=4, help="Transformer layers (default 4)")
PARSER.add_argument("--d-model", type=int, default=256, help="model width (default 256)")
PARSER.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
PARSER.add_argument("--seq", type=int, default=128, help="sequence length (default 128)")
PARSER.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
PARSER.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
PARSER.add_argument(
    "--memory-only",
    action="store_true",
    help="(2)+(3) only: compile every step and print temp memory and compile time, no timing",
)
PARSER.add_argument("--skip-elementwise", action="store_true", help="skip table (1)")
PARSER.add_argument("--rows", default="", help="comma-separated names of the (2) rows to run")
PARSER.add_argument("--json", default="", help="also write the (2) results to this file")
ARGS = PARSER.parse_args()
jax.config.update("jax_default_prng_impl", ARGS.impl)

import equinox as eqx  # noqa: E402
import flax.linen as linen  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

import stoax  # noqa: E402

REPS = 3 if ARGS.quick else ARGS.reps
RATE = 0.1


def bench(fn, *args):
    """Median wall time (ms) of ``fn(*args)`` over REPS calls, after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


# --------------------------------------------------------------------------------------------
# (1) elementwise: masks and dropout on 16M elements
# --------------------------------------------------------------------------------------------


def elementwise_table():
    side = 1024 if ARGS.quick else 4096
    x = jax.random.normal(jax.random.key(0), (side, side), jnp.float32)
    ct = jnp.ones_like(x)
    key = jax.random.key(1)

    nnx_drop = nnx.Dropout(RATE, rngs=nnx.Rngs(0))
    linen_drop = linen.Dropout(RATE)
    eqx_drop = eqx.nn.Dropout(RATE)

    def bern(x, k):
        return jnp.where(jax.random.bernoulli(k, 1 - RATE, x.shape), x / (1 - RATE), 0)

    drops = {
        "stoax": lambda x, k: stoax.random.dropout(x, RATE, k),
        "stoax (stored mask)": lambda x, k: stoax.random.dropout(x, RATE, k, regenerate_mask=False),
        "flax nnx": lambda x, k: nnx_drop(x, rngs=nnx.Rngs(dropout=k)),
        "flax linen": lambda x, k: linen_drop.apply(
            {}, x, deterministic=False, rngs={"dropout": k}
        ),
        "equinox": lambda x, k: eqx_drop(x, key=k),
        "jax.random.bernoulli": bern,
    }
    masks = {
        "stoax": lambda k: stoax.random.keep_mask(k, x.shape, RATE),
        "jax.random.bernoulli (anchors)": lambda k: jax.random.bernoulli(k, 1 - RATE, x.shape),
    }

    copy_ms = bench(jax.jit(jnp.copy), x)
    rows = []
    for name, m in masks.items():
        rows.append((name, "mask", bench(jax.jit(m), key)))
    for name, d in drops.items():
        fwd = jax.jit(d)

        def fwd_bwd(x, k, ct, d=d):
            y, vjp = jax.vjp(lambda x: d(x, k), x)
            return y, vjp(ct)[0]

        rows.append((name, "fwd", bench(fwd, x, key)))
        rows.append((name, "fwd+bwd", bench(jax.jit(fwd_bwd), x, key, ct)))
    print(
        f"\n(1) {x.size / 2**20:.0f}M f32 elements, rate {RATE}, impl {ARGS.impl}: "
        f"copy floor {copy_ms:.1f} ms (median of {REPS})"
    )
    print(f"{'library':32s} {'what':8s} {'ms':>9s} {'x copy':>8s}")
    for name, what, ms in rows:
        print(f"{name:32s} {what:8s} {ms:9.1f} {ms / copy_ms:8.2f}")
    return copy_ms, rows


# --------------------------------------------------------------------------------------------
# (2) Transformer training step
# --------------------------------------------------------------------------------------------

V, D, H, L, T, B = 512, ARGS.d_model, ARGS.heads, ARGS.layers, ARGS.seq, ARGS.batch
if ARGS.quick:
    L, T, B = 2, 64, 8
DTYPE = jnp.dtype(ARGS.dtype)
LR = 1e-3


def lm_loss(logits, tokens):
    logits = logits[:, :-1].astype(jnp.float32)  # the loss in float32 whatever the model's dtype
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()


def heads(x):
    return x.reshape(*x.shape[:-1], H, D // H)


def attention(q, k, v, drop_probs):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(D // H), k)
    probs = drop_probs(jax.nn.softmax(logits, axis=-1))
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return out.reshape(*out.shape[:-2], D)


# ---- stoax: the library model ----


def stoax_step_fn(rate, unroll=1, **remat):
    model = stoax.nn.TransformerEncoder(
        vocab_size=V,
        out_features=V,
        features=D,
        num_heads=H,
        num_layers=L,
        max_len=T,
        dropout=rate,
        attention_dropout=rate,
        unroll=unroll,
        key=jax.random.key(0),
        dtype=DTYPE,
        **remat,  # absent: the library's default
    )
    params, rest = stoax.partition(model)
    opt = optax.adamw(LR)
    state = (params, opt.init(params))

    def step(state, tokens, key):
        params, opt_state = state

        def loss(p):
            return lm_loss(stoax.combine(p, rest)(tokens, key=key), tokens)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return step, state


def stored_mask(make):
    """``make``'s step traced with ``stoax.random.set_regenerate_mask(False)``: every dropout
    keeps its mask for the backward pass instead of regenerating it from the key."""

    def make_stored(rate):
        step, state = make(rate)

        def traced_storing_masks(*args):
            previous = stoax.random.set_regenerate_mask(False)
            try:
                return step(*args)
            finally:
                stoax.random.set_regenerate_mask(previous)

        return traced_storing_masks, state

    return make_stored


# ---- stoax primitives in the anchors' hand-written architecture (no Stack / scan) ----


def _dense(key, n_in, n_out):
    w = jax.random.normal(key, (n_in, n_out), DTYPE) / math.sqrt(n_in)
    return {"w": w, "b": jnp.zeros(n_out, DTYPE)}


def _ln(x):
    mean = x.mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-6)


def _affine(x, w, b):
    return x @ w + b


def stoax_prims_step_fn(rate):
    ks = iter(jax.random.split(jax.random.key(0), 8 * L + 4))
    params = {
        "embed": 0.02 * jax.random.normal(next(ks), (V, D), DTYPE),
        "pos": 0.02 * jax.random.normal(next(ks), (T, D), DTYPE),
        "head": _dense(next(ks), D, V),
        "blocks": [
            {
                n: _dense(next(ks), *io)
                for n, io in {
                    "q": (D, D),
                    "k": (D, D),
                    "v": (D, D),
                    "o": (D, D),
                    "fc1": (D, 4 * D),
                    "fc2": (4 * D, D),
                }.items()
            }
            for _ in range(L)
        ],
    }
    lin = lambda p, x: x @ p["w"] + p["b"]
    drop = lambda x, k: stoax.random.dropout(x, rate, k) if rate else x

    def forward(params, tokens, key):
        x = drop(params["embed"][tokens] + params["pos"], stoax.keys.child(key, "embed"))
        for i, p in enumerate(params["blocks"]):
            k1, k2, k3, k4 = stoax.keys.derive(stoax.keys.child(key, i), "p", "a", "h", "m")
            h = _ln(x)
            q, k, v = heads(lin(p["q"], h)), heads(lin(p["k"], h)), heads(lin(p["v"], h))
            logits = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(D // H), k)
            probs = jax.nn.softmax(logits, axis=-1)
            pv = lambda pr, v: jnp.einsum("bhqk,bkhd->bqhd", pr, v)
            out = (
                stoax.random.dropout_then(pv, probs, v, rate=rate, key=k1) if rate else pv(probs, v)
            )
            x = x + drop(lin(p["o"], out.reshape(B, T, D)), k2)
            h = jax.nn.gelu(lin(p["fc1"], _ln(x)))
            h = (
                stoax.random.dropout_then(
                    _affine, h, p["fc2"]["w"], p["fc2"]["b"], rate=rate, key=k3
                )
                if rate
                else lin(p["fc2"], h)
            )
            x = x + drop(h, k4)
        return lin(params["head"], _ln(x))

    opt = optax.adamw(LR)

    def step(state, tokens, key):
        params, opt_state = state
        value, grads = jax.value_and_grad(lambda p: lm_loss(forward(p, tokens, key), tokens))(
            params
        )
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return step, (params, opt.init(params))


# ---- Flax NNX ----


class NNXBlock(nnx.Module):
    def __init__(self, rate, rngs):
        kw = dict(rngs=rngs, dtype=DTYPE, param_dtype=DTYPE)
        self.ln1, self.ln2 = nnx.LayerNorm(D, **kw), nnx.LayerNorm(D, **kw)
        self.q, self.k, self.v, self.o = (nnx.Linear(D, D, **kw) for _ in range(4))
        self.fc1, self.fc2 = nnx.Linear(D, 4 * D, **kw), nnx.Linear(4 * D, D, **kw)
        self.drop_probs, self.drop_attn = nnx.Dropout(rate, rngs=rngs), nnx.Dropout(rate, rngs=rngs)
        self.drop_hidden, self.drop_mlp = nnx.Dropout(rate, rngs=rngs), nnx.Dropout(rate, rngs=rngs)

    def __call__(self, x):
        h = self.ln1(x)
        h = attention(heads(self.q(h)), heads(self.k(h)), heads(self.v(h)), self.drop_probs)
        x = x + self.drop_attn(self.o(h))
        h = self.drop_hidden(jax.nn.gelu(self.fc1(self.ln2(x))))
        return x + self.drop_mlp(self.fc2(h))


class NNXModel(nnx.Module):
    def __init__(self, rate, rngs):
        kw = dict(rngs=rngs, dtype=DTYPE, param_dtype=DTYPE)
        self.embed = nnx.Embed(V, D, **kw)
        self.pos = nnx.Param(0.02 * jax.random.normal(jax.random.key(1), (T, D), DTYPE))
        self.drop = nnx.Dropout(rate, rngs=rngs)
        self.blocks = nnx.List([NNXBlock(rate, rngs) for _ in range(L)])
        self.ln = nnx.LayerNorm(D, **kw)
        self.head = nnx.Linear(D, V, **kw)

    def __call__(self, tokens):
        x = self.drop(self.embed(tokens) + self.pos[...])
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def nnx_step_fn(rate):
    model = NNXModel(rate, nnx.Rngs(params=0, dropout=1))
    if rate == 0.0:
        model.eval()
    opt = nnx.Optimizer(model, optax.adamw(LR), wrt=nnx.Param)
    graphdef, state = nnx.split((model, opt))

    def step(state, tokens, key):
        model, opt = nnx.merge(graphdef, state)
        # A fresh dropout stream per step from the step key (as a stoax user passes a key).
        nnx.reseed(model, dropout=key)
        value, grads = nnx.value_and_grad(lambda m: lm_loss(m(tokens), tokens))(model)
        opt.update(model, grads)
        return nnx.state((model, opt)), value

    return step, state


# ---- Flax linen ----


class LinenBlock(linen.Module):
    rate: float

    @linen.compact
    def __call__(self, x, train):
        drop = lambda: linen.Dropout(self.rate, deterministic=not train)
        dense = lambda n: linen.Dense(n, dtype=DTYPE, param_dtype=DTYPE)
        norm = lambda: linen.LayerNorm(dtype=DTYPE, param_dtype=DTYPE)
        h = norm()(x)
        h = attention(heads(dense(D)(h)), heads(dense(D)(h)), heads(dense(D)(h)), drop())
        x = x + drop()(dense(D)(h))
        h = drop()(jax.nn.gelu(dense(4 * D)(norm()(x))))
        return x + drop()(dense(D)(h))


class LinenModel(linen.Module):
    rate: float

    @linen.compact
    def __call__(self, tokens, train):
        pos = self.param("pos", lambda k: 0.02 * jax.random.normal(k, (T, D), DTYPE))
        embed = linen.Embed(V, D, dtype=DTYPE, param_dtype=DTYPE)
        x = linen.Dropout(self.rate, deterministic=not train)(embed(tokens) + pos)
        for _ in range(L):
            x = LinenBlock(self.rate)(x, train)
        x = linen.LayerNorm(dtype=DTYPE, param_dtype=DTYPE)(x)
        return linen.Dense(V, dtype=DTYPE, param_dtype=DTYPE)(x)


def linen_step_fn(rate):
    model = LinenModel(rate)
    params = model.init(jax.random.key(0), jnp.zeros((B, T), jnp.int32), False)["params"]
    opt = optax.adamw(LR)
    train = rate > 0

    def step(state, tokens, key):
        params, opt_state = state

        def loss(p):
            logits = model.apply({"params": p}, tokens, train, rngs={"dropout": key})
            return lm_loss(logits, tokens)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return step, (params, opt.init(params))


# ---- Equinox ----


class EqxBlock(eqx.Module):
    ln1: eqx.nn.LayerNorm
    ln2: eqx.nn.LayerNorm
    q: eqx.nn.Linear
    k: eqx.nn.Linear
    v: eqx.nn.Linear
    o: eqx.nn.Linear
    fc1: eqx.nn.Linear
    fc2: eqx.nn.Linear
    drop: eqx.nn.Dropout

    def __init__(self, rate, key):
        ks = jax.random.split(key, 6)
        self.ln1, self.ln2 = eqx.nn.LayerNorm(D, dtype=DTYPE), eqx.nn.LayerNorm(D, dtype=DTYPE)
        self.q, self.k, self.v, self.o = (eqx.nn.Linear(D, D, key=k, dtype=DTYPE) for k in ks[:4])
        self.fc1 = eqx.nn.Linear(D, 4 * D, key=ks[4], dtype=DTYPE)
        self.fc2 = eqx.nn.Linear(4 * D, D, key=ks[5], dtype=DTYPE)
        self.drop = eqx.nn.Dropout(rate, inference=rate == 0.0)

    def __call__(self, x, key):  # x: (T, D), one example (vmapped over the batch)
        k1, k2, k3, k4 = jax.random.split(key, 4)
        lin = lambda layer, h: jax.vmap(layer)(h)
        h = jax.vmap(self.ln1)(x)
        q, k, v = heads(lin(self.q, h)), heads(lin(self.k, h)), heads(lin(self.v, h))
        h = attention(q[None], k[None], v[None], lambda p: self.drop(p, key=k1))[0]
        x = x + self.drop(lin(self.o, h), key=k2)
        h = self.drop(jax.nn.gelu(lin(self.fc1, jax.vmap(self.ln2)(x))), key=k3)
        return x + self.drop(lin(self.fc2, h), key=k4)


class EqxModel(eqx.Module):
    embed: eqx.nn.Embedding
    pos: jax.Array
    blocks: list
    ln: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    drop: eqx.nn.Dropout

    def __init__(self, rate, key):
        ks = jax.random.split(key, L + 3)
        self.embed = eqx.nn.Embedding(V, D, key=ks[0], dtype=DTYPE)
        self.pos = 0.02 * jax.random.normal(ks[1], (T, D), DTYPE)
        self.blocks = [EqxBlock(rate, k) for k in ks[3:]]
        self.ln = eqx.nn.LayerNorm(D, dtype=DTYPE)
        self.head = eqx.nn.Linear(D, V, key=ks[2], dtype=DTYPE)
        self.drop = eqx.nn.Dropout(rate, inference=rate == 0.0)

    def __call__(self, tokens, key):  # one example
        keys = jax.random.split(key, L + 1)
        x = self.drop(jax.vmap(self.embed)(tokens) + self.pos, key=keys[0])
        for block, k in zip(self.blocks, keys[1:], strict=True):
            x = block(x, k)
        return jax.vmap(self.head)(jax.vmap(self.ln)(x))


def eqx_step_fn(rate):
    model = EqxModel(rate, jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt = optax.adamw(LR)

    def step(state, tokens, key):
        params, opt_state = state

        def loss(p):
            m = eqx.combine(p, static)
            logits = jax.vmap(m)(tokens, jax.random.split(key, tokens.shape[0]))
            return lm_loss(logits, tokens)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (eqx.apply_updates(params, updates), opt_state), value

    return step, (params, opt.init(params))


STEPS = {
    "stoax": stoax_step_fn,  # the library's default: one lax.scan, remat=recompute_elementwise
    "stoax remat=False": functools.partial(stoax_step_fn, remat=False),
    "stoax stored mask": stored_mask(stoax_step_fn),
    "stoax unrolled": functools.partial(stoax_step_fn, unroll=True),
    "stoax unrolled stored mask": stored_mask(functools.partial(stoax_step_fn, unroll=True)),
    "stoax unrolled remat=False": functools.partial(stoax_step_fn, unroll=True, remat=False),
    "stoax remat dots": functools.partial(
        stoax_step_fn, remat=jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    ),
    "stoax prims": stoax_prims_step_fn,
    "flax nnx": nnx_step_fn,
    "flax linen": linen_step_fn,
    "equinox": eqx_step_fn,
}
if ARGS.rows:
    STEPS = {name: STEPS[name] for name in ARGS.rows.split(",")}
STOAX_ROWS = tuple(name for name in STEPS if name.startswith("stoax"))
ANCHORS = tuple(name for name in ("flax nnx", "equinox") if name in STEPS)


def transformer_table():
    tokens = jax.random.randint(jax.random.key(2), (B, T), 0, V)
    programs = {}  # (name, rate) -> run; compile time; temp memory
    for name, make in STEPS.items():
        for rate in (RATE, 0.0):
            step, state = make(rate)
            # donate the state, as a training loop does
            jitted = jax.jit(step, donate_argnums=0)
            t0 = time.perf_counter()
            compiled = jitted.lower(state, tokens, jax.random.key(3)).compile()
            compile_s = time.perf_counter() - t0
            # XLA's own figure for the compiled program (no profiler): the same on CPU and GPU.
            temp = compiled.memory_analysis().temp_size_in_bytes
            keys = iter(jax.random.split(jax.random.key(4), REPS + 2))
            box = [state]

            def run(box=box, compiled=compiled, keys=keys):
                box[0], value = compiled(box[0], tokens, next(keys))
                return value

            if not ARGS.memory_only:
                jax.block_until_ready(run())  # warm-up
            programs[name, rate] = (run, compile_s, temp)
        print(f"  compiled {name}", file=sys.stderr)

    # Interleaved rounds: each round times one step of every program, so a change in the
    # machine's load hits all of them alike; the figure is the median over rounds.
    times = {k: [] for k in programs}
    for _ in range(0 if ARGS.memory_only else REPS):
        for k, (run, _, _) in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times[k].append(time.perf_counter() - t0)
    results = {name: {} for name in STEPS}  # name -> rate -> (ms, temp bytes, compile s)
    for (name, rate), (_, compile_s, temp) in programs.items():
        ms = 1e3 * statistics.median(times[name, rate]) if times[name, rate] else math.nan
        results[name][rate] = (ms, temp, compile_s)

    print(
        f"\n(2)+(3) Transformer step: {L} layers, d_model {D}, {H} heads, seq {T}, batch {B}, "
        f"{DTYPE.name}, adamw, dropout {RATE}; impl {ARGS.impl}; "
        + ("memory only" if ARGS.memory_only else f"median of {REPS} interleaved rounds")
    )
    unrolled = results.get("stoax unrolled", {}).get(RATE)
    print(
        f"{'library':27s} {'ms on':>8s} {'ms off':>8s} {'on/off':>7s} {'temp MiB on':>12s} "
        f"{'temp MiB off':>13s} {'on/off':>7s} {'/unrolled':>9s} {'compile s':>10s}"
    )
    for name, row in results.items():
        (on_ms, on_t, on_c), (off_ms, off_t, _) = row[RATE], row[0.0]
        vs_unrolled = on_t / unrolled[1] if unrolled else math.nan
        print(
            f"{name:27s} {on_ms:8.1f} {off_ms:8.1f} {on_ms / off_ms:7.2f} {on_t / 2**20:12.1f} "
            f"{off_t / 2**20:13.1f} {on_t / off_t:7.3f} {vs_unrolled:9.3f} {on_c:10.1f}"
        )
    if ANCHORS and not ARGS.memory_only:
        fastest_anchor = min(results[n][RATE][0] for n in ANCHORS)
        for name in STOAX_ROWS:
            print(
                f"{name} dropout-on step time / fastest of ({', '.join(ANCHORS)}): "
                f"{results[name][RATE][0] / fastest_anchor:.2f}"
            )
    if ARGS.json:
        config = dict(
            impl=ARGS.impl, dtype=DTYPE.name, layers=L, d_model=D, heads=H, seq=T, batch=B
        )
        rows = {
            name: {
                "on": dict(zip(("ms", "temp_bytes", "compile_s"), row[RATE], strict=True)),
                "off": dict(zip(("ms", "temp_bytes", "compile_s"), row[0.0], strict=True)),
            }
            for name, row in results.items()
        }
        with open(ARGS.json, "w") as f:
            json.dump({"config": config, "jax": jax.__version__, "rows": rows}, f, indent=1)
    return results


if __name__ == "__main__":
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.device_count()}, "
        f"impl {ARGS.impl}, reps {REPS}"
    )
    if not (ARGS.skip_elementwise or ARGS.memory_only):
        elementwise_table()
    transformer_table()
