"""``broadcast_dims`` dropout (one mask value shared along an axis): stoax vs Flax NNX, Flax
linen and a mask drawn with ``jax.random.bernoulli`` on the small shape (what an Equinox user
writes: ``eqx.nn.Dropout`` has no ``broadcast_dims``), at equal semantics.

    python benchmarks/broadcast_dropout.py [--reps N] [--impl threefry2x32|rbg]

A ``(32, 128, 1024)`` float32 input, the mask ``(32, 1, 1024)`` shared along axis 1, rate 0.1,
also at low load ``(32, 8, 1024)``. Forward and forward + backward (``jax.vjp``: the output
and the input cotangent), each as a multiple of a jitted copy of the same array (1.0 = as fast
as a copy; lower is better). Medians of ``--reps`` interleaved rounds: each round times every
program once, so the machine's load hits all of them alike; wall time and the process's CPU time
(all threads), which is steadier on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--impl", default="threefry2x32", choices=["threefry2x32", "rbg"])
PARSER.add_argument("--reps", type=int, default=15, help="interleaved timed rounds (median)")
PARSER.add_argument("--rate", type=float, default=0.1)
ARGS = PARSER.parse_args()
jax.config.update("jax_default_prng_impl", ARGS.impl)

import flax.linen as linen  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

import stoax  # noqa: E402

AXIS = 1


def dropouts(rate: float):
    """Broadcast dropout ``(x, key) -> y`` of each library, one mask value along ``AXIS``."""
    nnx_drop = nnx.Dropout(rate, broadcast_dims=(AXIS,), rngs=nnx.Rngs(0))
    linen_drop = linen.Dropout(rate, broadcast_dims=(AXIS,))

    def bernoulli(x, k):
        shape = tuple(1 if i == AXIS else n for i, n in enumerate(x.shape))
        keep = jax.random.bernoulli(k, 1 - rate, shape)
        return jnp.where(keep, x / (1 - rate), 0)

    return {
        "stoax": lambda x, k: stoax.random.dropout(x, rate, k, broadcast_dims=(AXIS,)),
        "flax nnx": lambda x, k: nnx_drop(x, rngs=nnx.Rngs(dropout=k)),
        "flax linen": lambda x, k: linen_drop.apply(
            {}, x, deterministic=False, rngs={"dropout": k}
        ),
        "bernoulli (equinox)": bernoulli,
    }


def programs(shape, rate):
    x = jax.random.normal(jax.random.key(0), shape, jnp.float32)
    ct = jnp.ones_like(x)
    key = jax.random.key(1)
    out = {"copy": (jax.jit(jnp.copy), (x,))}
    for name, d in dropouts(rate).items():

        def fwd_bwd(x, k, ct, d=d):
            y, vjp = jax.vjp(lambda x: d(x, k), x)
            return y, vjp(ct)[0]

        out[name, "fwd"] = (jax.jit(d), (x, key))
        out[name, "fwd+bwd"] = (jax.jit(fwd_bwd), (x, key, ct))
    return out


def measure(shape, rate, reps):
    progs = programs(shape, rate)
    for fn, args in progs.values():
        jax.block_until_ready(fn(*args))  # compile and warm up
    wall = {k: [] for k in progs}
    cpu = {k: [] for k in progs}
    for _ in range(reps):
        for k, (fn, args) in progs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(fn(*args))
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return (
        {k: 1e3 * statistics.median(v) for k, v in wall.items()},
        {k: 1e3 * statistics.median(v) for k, v in cpu.items()},
    )


def main() -> None:
    print(
        f"jax {jax.__version__}, {jax.default_backend()}, impl {ARGS.impl}, rate {ARGS.rate}, "
        f"mask shared along axis {AXIS}; median of {ARGS.reps} interleaved rounds; x copy"
    )
    for shape in ((32, 128, 1024), (32, 8, 1024)):
        wall, cpu = measure(shape, ARGS.rate, ARGS.reps)
        print(
            f"\n{shape} f32, copy {wall['copy']:.2f} ms wall, {cpu['copy']:.2f} ms CPU (all "
            "threads; steadier than wall time on a shared machine)"
        )
        print(f"  {'library':22s} {'fwd':>6s} {'fwd+bwd':>8s}   {'CPU fwd':>8s} {'fwd+bwd':>8s}")
        for name in dropouts(ARGS.rate):
            w = [wall[name, what] / wall["copy"] for what in ("fwd", "fwd+bwd")]
            c = [cpu[name, what] / cpu["copy"] for what in ("fwd", "fwd+bwd")]
            print(f"  {name:22s} {w[0]:6.2f} {w[1]:8.2f}   {c[0]:8.2f} {c[1]:8.2f}")


if __name__ == "__main__":
    main()
