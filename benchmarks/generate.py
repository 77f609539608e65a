"""Generation speed: stoax cached vs uncached, and a plain Flax NNX decode loop, in ONE process.

    python benchmarks/generate.py [--reps 5] [--batch 8] [--prompt 16] [--new 112] [--quick]

The model: a pre-norm causal Transformer LM, 4 layers, d_model 128, 4 heads, MLP 4x, vocabulary
96, max_len = prompt + new tokens, float32, evaluation mode (no dropout). Sampling: a categorical
draw at temperature 0.8.

- stoax cached: ``stoax.inference.generate`` on ``stoax.nn.TransformerEncoder`` -- the prompt
  in one ``decode`` call (prefill), then one token per step of a ``lax.while_loop``; the layers
  one after the other (``Stack.decode`` on the encoder's tuple of per-layer caches, written in
  place); per-example keys.
- stoax cached, stacked caches: the same model with its caches stacked on a layer axis (one
  array per cache field; every step slices each layer's cache out and restacks it).
- stoax uncached: ``generate(..., use_cache=False)``: every step runs the model on the whole
  ``(batch, max_len)`` token buffer (static shapes) and reads the logits at the new position.
- Flax NNX: the same architecture with ``nnx.MultiHeadAttention(decode=True)`` and its
  ``init_cache``, layers unrolled, in a ``lax.fori_loop`` over positions with
  ``nnx.split`` / ``nnx.merge`` -- NNX's decode mode takes one token per call, so the prompt is
  fed token by token; one key per step for the whole batch (``fold_in(key, t)``).

Each figure: median over ``--reps`` timed calls after a warm-up (compile) call, the programs
interleaved round by round so a change of machine load hits all alike; both the wall time and
the process's CPU time (all threads; steadier than wall time on a shared machine). tokens/s
counts the new tokens of the whole batch (``batch * new``) over the wall time of the whole
generation, prompt included.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
from flax import nnx

import stoax
from stoax.inference import Sampler, generate

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--reps", type=int, default=5)
PARSER.add_argument("--batch", type=int, default=8)
PARSER.add_argument("--prompt", type=int, default=16)
PARSER.add_argument("--new", type=int, default=112)
PARSER.add_argument("--quick", action="store_true", help="2 layers, 32 new tokens, 3 reps")
ARGS = PARSER.parse_args()

LAYERS, D, HEADS, VOCAB, T = (2 if ARGS.quick else 4), 128, 4, 96, 0.8
B, P, N = ARGS.batch, ARGS.prompt, (32 if ARGS.quick else ARGS.new)
L = P + N
REPS = 3 if ARGS.quick else ARGS.reps


def stoax_model() -> stoax.nn.TransformerEncoder:
    lm = stoax.nn.TransformerEncoder(
        VOCAB,
        VOCAB,
        features=D,
        num_heads=HEADS,
        num_layers=LAYERS,
        max_len=L,
        causal=True,
        dropout=0.0,
        attention_dropout=0.0,
        key=jax.random.key(0),
    )
    return stoax.eval_mode(lm)


class StackedCacheLM(stoax.Module):
    """The encoder with its caches stacked on a layer axis (sliced and restacked every step)."""

    lm: stoax.nn.TransformerEncoder

    def init_cache(self, batch_shape, length):
        caches = self.lm.init_cache(batch_shape, length)
        return jax.tree.map(lambda *a: jnp.stack(a), *caches)

    def decode(self, tokens, cache, *, lengths=None):
        lm = self.lm
        positions = cache.index[0][:, None] + jnp.arange(tokens.shape[1])
        x = lm.embed(tokens) + jnp.take(lm.pos_embed, positions, axis=0)
        x, cache = lm.blocks.decode(x, cache, lengths=lengths)
        return lm.head(lm.norm(x)), cache


class NNXBlock(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.ln1 = nnx.LayerNorm(D, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(
            num_heads=HEADS, in_features=D, decode=True, deterministic=True, rngs=rngs
        )
        self.ln2 = nnx.LayerNorm(D, rngs=rngs)
        self.fc1 = nnx.Linear(D, 4 * D, rngs=rngs)
        self.fc2 = nnx.Linear(4 * D, D, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))


class NNXLM(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, D, rngs=rngs)
        self.pos = nnx.Param(0.02 * jax.random.normal(rngs.params(), (L, D)))
        self.blocks = nnx.List([NNXBlock(rngs) for _ in range(LAYERS)])
        self.ln = nnx.LayerNorm(D, rngs=rngs)
        self.head = nnx.Linear(D, VOCAB, rngs=rngs)

    def __call__(self, token, t):  # token (B, 1) at position t
        x = self.embed(token) + self.pos[...][t][None, None]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def nnx_generator():
    model = NNXLM(nnx.Rngs(0))
    for block in model.blocks:
        block.attn.init_cache((B, L, D))
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, prompt, key):
        tokens = jnp.zeros((B, L), jnp.int32).at[:, :P].set(prompt)

        def body(t, carry):
            state, tokens = carry
            m = nnx.merge(graphdef, state)
            logits = m(tokens[:, t][:, None], t)[:, 0]
            drawn = jax.random.categorical(jax.random.fold_in(key, t), logits / T)
            nxt = jnp.where(t + 1 < P, tokens[:, jnp.minimum(t + 1, L - 1)], drawn)
            return nnx.state(m), tokens.at[:, t + 1].set(nxt)

        _, tokens = jax.lax.fori_loop(0, L - 1, body, (state, tokens))
        return tokens[:, P:]

    return lambda prompt, key: run(state, prompt, key)


def main() -> None:
    prompt = jax.random.randint(jax.random.key(1), (B, P), 0, VOCAB)
    sampler = Sampler(temperature=T)
    lm = stoax_model()

    def stoax_run(lm, use_cache):
        return lambda prompt, key: (
            generate(
                lm, prompt, key=key, max_new_tokens=N, sampler=sampler, use_cache=use_cache
            ).tokens
        )

    programs = {
        "stoax cached (per-layer caches)": stoax_run(lm, True),
        "stoax cached (caches stacked on a layer axis)": stoax_run(StackedCacheLM(lm), True),
        "stoax uncached (full buffer every step)": stoax_run(lm, False),
        "Flax NNX decode=True loop (unrolled layers)": nnx_generator(),
    }
    compile_s = {}
    for name, fn in programs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(prompt, jax.random.key(2)))
        compile_s[name] = time.perf_counter() - t0
    times = {name: [] for name in programs}
    cpu = {name: [] for name in programs}
    for rep in range(REPS):
        for name, fn in programs.items():
            key = jax.random.key(100 + rep)
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(prompt, key))
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)

    print(
        f"jax {jax.__version__}, {jax.default_backend()}, {jax.config.jax_default_prng_impl}; "
        f"{LAYERS} layers, d {D}, {HEADS} heads, vocab {VOCAB}; batch {B}, prompt {P}, "
        f"{N} new tokens; median of {REPS}"
    )
    uncached = "stoax uncached (full buffer every step)"
    nnx_name = "Flax NNX decode=True loop (unrolled layers)"
    base, nnx_ms = (1e3 * statistics.median(cpu[n]) for n in (uncached, nnx_name))
    print(
        f"{'program':44s} {'wall ms':>8s} {'tokens/s':>9s} {'cpu ms':>8s} "
        f"{'vs uncached':>12s} {'time / NNX':>11s} {'first call s':>13s}"
    )
    for name in programs:
        ms, cpu_ms = (1e3 * statistics.median(v[name]) for v in (times, cpu))
        print(
            f"{name:44s} {ms:8.1f} {B * N / (ms / 1e3):9.0f} {cpu_ms:8.1f} "
            f"{base / cpu_ms:11.2f}x {cpu_ms / nnx_ms:10.2f}x {compile_s[name]:13.1f}"
        )
    print("vs uncached (speed-up) and time / NNX: ratios of the CPU-time medians")


if __name__ == "__main__":
    main()
