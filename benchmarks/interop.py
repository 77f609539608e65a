"""Switch one import, save the memory: the peers' own Transformers with stoax's drop-in Dropout.

    python benchmarks/interop.py [--reps N] [--quick]

The Flax NNX, Flax linen and Equinox Transformers of ``benchmarks/run.py`` (4 pre-LN layers,
d_model 256, 4 heads, seq 128, batch 32, vocabulary 512, next-token loss, adamw; dropout 0.1 on
embeddings, attention probabilities, residual branches and the MLP hidden layer), each built
twice: with the library's own ``Dropout`` and with ``stoax.interop.<library>.Dropout`` -- the
only change is which ``Dropout`` the model code names. For each: XLA's compiled temporary
memory of a training step (``compiled.memory_analysis().temp_size_in_bytes``) with dropout on
and off, and the step time (median of ``--reps`` interleaved rounds).

The model builders are importable (``tests/test_interop_peers.py`` runs them on tiny sizes):
``make(lib, dropout_cls, cfg, rate)`` returns ``(loss_fn, params)`` with ``loss_fn(params,
tokens, key)``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass

import equinox as eqx
import flax.linen as linen
import jax
import jax.numpy as jnp
import optax
from flax import nnx


@dataclass(frozen=True)
class Config:
    vocab: int = 512
    features: int = 256
    heads: int = 4
    layers: int = 4
    seq: int = 128
    batch: int = 32


def lm_loss(logits, tokens):
    return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


def _heads(x, cfg):
    return x.reshape(*x.shape[:-1], cfg.heads, cfg.features // cfg.heads)


def _attention(q, k, v, drop_probs, cfg):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(cfg.features // cfg.heads), k)
    probs = drop_probs(jax.nn.softmax(logits, axis=-1))
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
    return out.reshape(*out.shape[:-2], cfg.features)


# ---- Flax NNX (benchmarks/run.py's model; ``Dropout`` is the only name that changes) ----


def nnx_model(Dropout, cfg: Config, rate: float):  # Dropout: a class, named as imported
    D, V = cfg.features, cfg.vocab

    class Block(nnx.Module):
        def __init__(self, rngs):
            self.ln1, self.ln2 = nnx.LayerNorm(D, rngs=rngs), nnx.LayerNorm(D, rngs=rngs)
            self.q, self.k, self.v, self.o = (nnx.Linear(D, D, rngs=rngs) for _ in range(4))
            self.fc1, self.fc2 = nnx.Linear(D, 4 * D, rngs=rngs), nnx.Linear(4 * D, D, rngs=rngs)
            self.drop_probs, self.drop_attn = Dropout(rate, rngs=rngs), Dropout(rate, rngs=rngs)
            self.drop_hidden, self.drop_mlp = Dropout(rate, rngs=rngs), Dropout(rate, rngs=rngs)

        def __call__(self, x):
            h = self.ln1(x)
            h = _attention(
                _heads(self.q(h), cfg), _heads(self.k(h), cfg), _heads(self.v(h), cfg),
                self.drop_probs, cfg,
            )  # fmt: skip
            x = x + self.drop_attn(self.o(h))
            h = self.drop_hidden(jax.nn.gelu(self.fc1(self.ln2(x))))
            return x + self.drop_mlp(self.fc2(h))

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(V, D, rngs=rngs)
            self.pos = nnx.Param(0.02 * jax.random.normal(jax.random.key(1), (cfg.seq, D)))
            self.drop = Dropout(rate, rngs=rngs)
            self.blocks = nnx.List([Block(rngs) for _ in range(cfg.layers)])
            self.ln = nnx.LayerNorm(D, rngs=rngs)
            self.head = nnx.Linear(D, V, rngs=rngs)

        def __call__(self, tokens):
            x = self.drop(self.embed(tokens) + self.pos[...])
            for block in self.blocks:
                x = block(x)
            return self.head(self.ln(x))

    model = Model(nnx.Rngs(params=0, dropout=1))
    if rate == 0.0:
        model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(params, tokens, key):
        model = nnx.merge(graphdef, params, rest, copy=True)
        nnx.reseed(model, dropout=key)  # a fresh dropout stream per step, from the step key
        return lm_loss(model(tokens), tokens)

    return loss_fn, params


# ---- Flax linen ----


def linen_model(Dropout, cfg: Config, rate: float):
    D, V = cfg.features, cfg.vocab

    class Block(linen.Module):
        @linen.compact
        def __call__(self, x, train):
            drop = lambda: Dropout(rate, deterministic=not train)
            h = linen.LayerNorm()(x)
            h = _attention(
                _heads(linen.Dense(D)(h), cfg), _heads(linen.Dense(D)(h), cfg),
                _heads(linen.Dense(D)(h), cfg), drop(), cfg,
            )  # fmt: skip
            x = x + drop()(linen.Dense(D)(h))
            h = drop()(jax.nn.gelu(linen.Dense(4 * D)(linen.LayerNorm()(x))))
            return x + drop()(linen.Dense(D)(h))

    class Model(linen.Module):
        @linen.compact
        def __call__(self, tokens, train):
            pos = self.param("pos", lambda k: 0.02 * jax.random.normal(k, (cfg.seq, D)))
            x = Dropout(rate, deterministic=not train)(linen.Embed(V, D)(tokens) + pos)
            for _ in range(cfg.layers):
                x = Block()(x, train)
            return linen.Dense(V)(linen.LayerNorm()(x))

    model = Model()
    tokens = jnp.zeros((cfg.batch, cfg.seq), jnp.int32)
    params = model.init(jax.random.key(0), tokens, False)["params"]
    train = rate > 0

    def loss_fn(params, tokens, key):
        logits = model.apply({"params": params}, tokens, train, rngs={"dropout": key})
        return lm_loss(logits, tokens)

    return loss_fn, params


# ---- Equinox ----


def eqx_model(Dropout, cfg: Config, rate: float):
    D, V, L = cfg.features, cfg.vocab, cfg.layers

    class Block(eqx.Module):
        ln1: eqx.nn.LayerNorm
        ln2: eqx.nn.LayerNorm
        q: eqx.nn.Linear
        k: eqx.nn.Linear
        v: eqx.nn.Linear
        o: eqx.nn.Linear
        fc1: eqx.nn.Linear
        fc2: eqx.nn.Linear
        drop: eqx.Module

        def __init__(self, key):
            ks = jax.random.split(key, 6)
            self.ln1, self.ln2 = eqx.nn.LayerNorm(D), eqx.nn.LayerNorm(D)
            self.q, self.k, self.v, self.o = (eqx.nn.Linear(D, D, key=k) for k in ks[:4])
            self.fc1 = eqx.nn.Linear(D, 4 * D, key=ks[4])
            self.fc2 = eqx.nn.Linear(4 * D, D, key=ks[5])
            self.drop = Dropout(rate, inference=rate == 0.0)

        def __call__(self, x, key):  # x: (T, D), one example (vmapped over the batch)
            k1, k2, k3, k4 = jax.random.split(key, 4)
            lin = lambda layer, h: jax.vmap(layer)(h)
            h = jax.vmap(self.ln1)(x)
            q, k, v = (_heads(lin(m, h), cfg) for m in (self.q, self.k, self.v))
            h = _attention(q[None], k[None], v[None], lambda p: self.drop(p, key=k1), cfg)[0]
            x = x + self.drop(lin(self.o, h), key=k2)
            h = self.drop(jax.nn.gelu(lin(self.fc1, jax.vmap(self.ln2)(x))), key=k3)
            return x + self.drop(lin(self.fc2, h), key=k4)

    class Model(eqx.Module):
        embed: eqx.nn.Embedding
        pos: jax.Array
        blocks: list
        ln: eqx.nn.LayerNorm
        head: eqx.nn.Linear
        drop: eqx.Module

        def __init__(self, key):
            ks = jax.random.split(key, L + 3)
            self.embed = eqx.nn.Embedding(V, D, key=ks[0])
            self.pos = 0.02 * jax.random.normal(ks[1], (cfg.seq, D))
            self.blocks = [Block(k) for k in ks[3:]]
            self.ln = eqx.nn.LayerNorm(D)
            self.head = eqx.nn.Linear(D, V, key=ks[2])
            self.drop = Dropout(rate, inference=rate == 0.0)

        def __call__(self, tokens, key):  # one example
            keys = jax.random.split(key, L + 1)
            x = self.drop(jax.vmap(self.embed)(tokens) + self.pos, key=keys[0])
            for block, k in zip(self.blocks, keys[1:], strict=True):
                x = block(x, k)
            return jax.vmap(self.head)(jax.vmap(self.ln)(x))

    params, static = eqx.partition(Model(jax.random.key(0)), eqx.is_inexact_array)

    def loss_fn(params, tokens, key):
        model = eqx.combine(params, static)
        logits = jax.vmap(model)(tokens, jax.random.split(key, tokens.shape[0]))
        return lm_loss(logits, tokens)

    return loss_fn, params


MODELS = {"flax nnx": nnx_model, "flax linen": linen_model, "equinox": eqx_model}


def peer_dropout(lib: str):
    """The library's own ``Dropout`` class."""
    return {"flax nnx": nnx.Dropout, "flax linen": linen.Dropout, "equinox": eqx.nn.Dropout}[lib]


def stoax_dropout(lib: str):
    """stoax's drop-in ``Dropout`` class for the library."""
    from stoax.interop import equinox as s_eqx
    from stoax.interop import linen as s_linen
    from stoax.interop import nnx as s_nnx

    return {"flax nnx": s_nnx.Dropout, "flax linen": s_linen.Dropout, "equinox": s_eqx.Dropout}[lib]


def make(lib: str, dropout_cls, cfg: Config, rate: float):
    """``(loss_fn, params)`` of the library's Transformer built with ``dropout_cls``."""
    return MODELS[lib](dropout_cls, cfg, rate)


def train_step(loss_fn, lr: float = 1e-3):
    """An adamw step ``(state, tokens, key) -> (state, loss)`` and the initial-state maker."""
    opt = optax.adamw(lr)

    def step(state, tokens, key):
        params, opt_state = state
        value, grads = jax.value_and_grad(loss_fn)(params, tokens, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    return step, lambda params: (params, opt.init(params))


def temp_bytes(lib: str, dropout_cls, cfg: Config, rate: float) -> int:
    """XLA's temporary memory of one compiled training step."""
    loss_fn, params = make(lib, dropout_cls, cfg, rate)
    step, init = train_step(loss_fn)
    tokens = jnp.zeros((cfg.batch, cfg.seq), jnp.int32)
    compiled = jax.jit(step, donate_argnums=0).lower(init(params), tokens, jax.random.key(3))
    return compiled.compile().memory_analysis().temp_size_in_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed rounds (median)")
    parser.add_argument("--quick", action="store_true", help="2 layers, seq 64, batch 8")
    args = parser.parse_args()
    cfg = Config(layers=2, seq=64, batch=8) if args.quick else Config()
    rate = 0.1
    tokens = jax.random.randint(jax.random.key(2), (cfg.batch, cfg.seq), 0, cfg.vocab)
    print(
        f"jax {jax.__version__}, backend {jax.default_backend()}, {cfg}, dropout {rate}, "
        f"reps {args.reps}"
    )
    programs = {}
    for lib in MODELS:
        for which, cls in (("own", peer_dropout(lib)), ("stoax", stoax_dropout(lib))):
            for r in (rate, 0.0):
                loss_fn, params = make(lib, cls, cfg, r)
                step, init = train_step(loss_fn)
                jitted = jax.jit(step, donate_argnums=0)
                compiled = jitted.lower(init(params), tokens, jax.random.key(3)).compile()
                temp = compiled.memory_analysis().temp_size_in_bytes
                box = [init(params)]
                keys = iter(jax.random.split(jax.random.key(4), args.reps + 2))

                def run(box=box, compiled=compiled, keys=keys):
                    box[0], value = compiled(box[0], tokens, next(keys))
                    return value

                jax.block_until_ready(run())
                programs[lib, which, r] = (run, temp)
        print(f"  compiled {lib}", file=sys.stderr)
    times = {k: [] for k in programs}
    for _ in range(args.reps):
        for k, (run, _) in programs.items():
            t0 = time.perf_counter()
            jax.block_until_ready(run())
            times[k].append(time.perf_counter() - t0)
    print(
        f"{'model':12s} {'Dropout':28s} {'temp MiB on':>12s} {'temp MiB off':>13s} "
        f"{'on/off':>7s} {'ms on':>8s} {'ms off':>8s}"
    )
    for lib in MODELS:
        for which in ("own", "stoax"):
            name = (
                f"{peer_dropout(lib).__module__.split('.')[0]} own"
                if which == "own"
                else f"stoax.interop.{ {'flax nnx': 'nnx', 'flax linen': 'linen'}.get(lib, lib) }"
            )
            on_t, off_t = programs[lib, which, rate][1], programs[lib, which, 0.0][1]
            on_ms = 1e3 * statistics.median(times[lib, which, rate])
            off_ms = 1e3 * statistics.median(times[lib, which, 0.0])
            print(
                f"{lib:12s} {name:28s} {on_t / 2**20:12.1f} {off_t / 2**20:13.1f} "
                f"{on_t / off_t:7.3f} {on_ms:8.1f} {off_ms:8.1f}"
            )


if __name__ == "__main__":
    main()
