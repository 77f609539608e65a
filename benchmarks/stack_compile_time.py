"""Compile time of a Transformer training step on a Stack of 4 vs 24 layers.

The blocks run in one ``lax.scan``, so the compiled program -- and the time to compile it --
should not grow with depth. Prints the median of 3 compilations for each depth.

    python benchmarks/stack_compile_time.py
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp

import stoax


def step_fn(model, tokens, key):
    params, rest = stoax.partition(model)

    def loss(p):
        logits = stoax.combine(p, rest)(tokens, key=key)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1))

    return jax.value_and_grad(loss)(params)


def compile_seconds(layers: int, repeats: int = 3) -> float:
    model = jax.eval_shape(
        lambda: stoax.nn.TransformerEncoder(
            vocab_size=64,
            out_features=64,
            features=128,
            num_heads=4,
            num_layers=layers,
            max_len=64,
            causal=True,
            key=jax.random.key(0),
        )
    )
    tokens = jax.ShapeDtypeStruct((8, 64), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(1))
    times = []
    for _ in range(repeats):
        jax.clear_caches()
        lowered = jax.jit(step_fn).lower(model, tokens, key)
        start = time.perf_counter()
        lowered.compile()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    print(f"backend: {jax.default_backend()}")
    for layers in (4, 24):
        print(f"{layers:>2} layers: compile {compile_seconds(layers):.3f} s (median of 3)")
