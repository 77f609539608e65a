"""Sharding figures: collectives in the compiled Transformer training step with dropout on and off
(an (8,) data mesh and a (4, 2) data x model mesh), and step time on 1 vs 8 simulated devices.

Run:  python benchmarks/sharding.py [--repeats 20] [--plain-autodiff]

The 8 "devices" are XLA host-platform devices: threads on this machine's CPU cores. The step
times say what the simulation costs here, not what 8 accelerators would do; the collective
counts are properties of the compiled program and carry over.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import sharded_transformer as ex

import stoax


def step_time(mesh, repeats):
    step, (params, opt_state, rest, tokens, targets, _) = ex.compile_step(
        ex.make_model(), *ex.make_batch(), mesh
    )
    params, opt_state, loss = step(params, opt_state, rest, tokens, targets, jnp.uint32(0))
    jax.block_until_ready(loss)  # compile + first run
    times = []
    for t in range(1, repeats + 1):
        start = time.perf_counter()
        params, opt_state, loss = step(params, opt_state, rest, tokens, targets, jnp.uint32(t))
        jax.block_until_ready((params, loss))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--plain-autodiff",
        action="store_true",
        help="dropout's backward by plain autodiff (stoax.random.set_regenerate_mask(False))",
    )
    args = parser.parse_args()
    repeats = args.repeats
    if args.plain_autodiff:
        stoax.random.set_regenerate_mask(False)
    stoax.sharding.check_partitionable(strict=True)
    meshes = {
        "(8,) data": ex.mesh_of((8,), ("data",)),
        "(4,2) data x model": ex.mesh_of((4, 2), ("data", "model")),
    }
    print(
        f"jax {jax.__version__}, {len(jax.devices())} simulated CPU devices, "
        f"{os.cpu_count()} cores, regenerate_mask={stoax.random.get_regenerate_mask()}"
    )
    print("collectives in the compiled training step (Transformer, 2 layers, width 32):")
    for name, mesh in meshes.items():
        for on in (True, False):
            counts = {k: v for k, v in ex.collectives(mesh, on).items() if v}
            print(f"  {name:>20}  dropout {'on ' if on else 'off'}: {counts}")
    print(f"step time, median of {repeats} (dropout on):")
    for name, mesh in {"1 device": None, **meshes}.items():
        print(f"  {name:>20}: {step_time(mesh, repeats) * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
