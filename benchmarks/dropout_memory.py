"""Temporary memory of a training step's gradient: dropout off, lean (mask regenerated in the
backward pass, the default) and plain autodiff (``regenerate_mask=False``).

XLA's compiled ``memory_analysis()`` is exact and deterministic for one jax/XLA version, so one
run is enough. Checks that the forward-mode-capable dropout primitive (a ``custom_jvp`` whose
tangent is a self-transposing linear map) still keeps only the key for the backward pass.

    python benchmarks/dropout_memory.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

import stoax
from stoax.random import dropout


def mlp_temp(mode: str, impl: str, width: int = 256, batch: int = 2048, depth: int = 6) -> int:
    params = [(jnp.ones((width, width)) / 16, jnp.zeros(width)) for _ in range(depth)]

    def loss(params, x, key):
        for i, (w, b) in enumerate(params):
            h = jax.nn.gelu(x @ w + b)
            if mode != "off":
                k = stoax.keys.child(key, i)
                h = dropout(h, 0.1, k, regenerate_mask=mode == "lean")
            x = jnp.tanh(h)
        return jnp.mean(x**2)

    lowered = jax.jit(jax.grad(loss)).lower(
        params, jnp.ones((batch, width)), jax.random.key(0, impl=impl)
    )
    return lowered.compile().memory_analysis().temp_size_in_bytes


def transformer_temp(rate: float, impl: str) -> int:
    lm = stoax.nn.TransformerEncoder(
        vocab_size=64,
        out_features=64,
        features=128,
        num_heads=4,
        num_layers=2,
        max_len=128,
        causal=True,
        dropout=rate,
        attention_dropout=rate,
        key=jax.random.key(0),
    )
    params, rest = stoax.partition(lm)

    def loss(p, tokens, key):
        return jnp.mean(jax.nn.logsumexp(stoax.combine(p, rest)(tokens, key=key), -1))

    tokens = jnp.zeros((16, 128), jnp.int32)
    lowered = jax.jit(jax.grad(loss)).lower(params, tokens, jax.random.key(1, impl=impl))
    return lowered.compile().memory_analysis().temp_size_in_bytes


def main() -> None:
    mib = 2**20
    for impl in ("threefry2x32", "rbg"):
        off, lean, plain = (mlp_temp(m, impl) for m in ("off", "lean", "plain"))
        print(
            f"MLP 6x256, batch 2048, {impl}: off {off / mib:.1f} MiB, lean {lean / mib:.1f} MiB "
            f"({lean / off:.3f}x), plain autodiff {plain / mib:.1f} MiB ({plain / off:.3f}x)"
        )
        t_off, t_on = transformer_temp(0.0, impl), transformer_temp(0.1, impl)
        print(
            f"Transformer 2x128, (16, 128) tokens, {impl}: dropout off {t_off / mib:.2f} MiB, "
            f"0.1 {t_on / mib:.2f} MiB ({t_on / t_off:.3f}x)"
        )


if __name__ == "__main__":
    main()
