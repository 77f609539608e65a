"""How long a training loop waits for a checkpoint: ``stoax.train.Checkpoints`` with
asynchronous orbax saves, synchronous orbax saves, and single safetensors files.

A state of ``--megabytes`` of float32 parameters (plus Adam's two moments: three times that on
disk) is saved ``--repeats`` times. "blocked s" is the time ``save`` takes to return -- what the
training loop waits -- and "written s" the time until the checkpoint is committed. Asynchronous
orbax returns once the arrays are copied off the devices and writes in the background.

    python benchmarks/checkpoint_save.py [--megabytes 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import optax

import stoax
from stoax.train import Checkpoints, TrainState


def make_state(megabytes: int) -> TrainState:
    width = 1024
    rows = megabytes * 2**20 // (4 * width)
    model = stoax.nn.Linear(rows, width, key=jax.random.key(0))
    return TrainState.create(model, optax.adam(1e-3))


def measure(state: TrainState, fmt: str, async_save: bool, repeats: int) -> tuple[float, float]:
    blocked, written = [], []
    with tempfile.TemporaryDirectory() as folder:
        ckpts = Checkpoints(folder, format=fmt, async_save=async_save, keep=2)
        for step in range(1, repeats + 1):
            s = state.replace(step=jnp.asarray(step, jnp.int32))
            jax.block_until_ready(s)
            start = time.perf_counter()
            ckpts.save(s)
            blocked.append(time.perf_counter() - start)
            ckpts.wait()
            written.append(time.perf_counter() - start)
        ckpts.close()
    return statistics.median(blocked), statistics.median(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    state = make_state(args.megabytes)
    print(
        f"state: {args.megabytes} MiB of parameters (x3 with Adam's moments), medians of "
        f"{args.repeats} saves"
    )
    print(f"{'format':>22} {'blocked s':>10} {'written s':>10}")
    rows = {}
    for label, fmt, async_save in (
        ("orbax, async", "orbax", True),
        ("orbax, sync", "orbax", False),
        ("safetensors (sync)", "safetensors", False),
    ):
        rows[label] = measure(state, fmt, async_save, args.repeats)
        print(f"{label:>22} {rows[label][0]:>10.3f} {rows[label][1]:>10.3f}")
    ratio = rows["orbax, sync"][0] / rows["orbax, async"][0]
    print(f"async orbax blocks the loop {ratio:.1f}x less than sync orbax")


if __name__ == "__main__":
    main()
