"""Run by tests/test_state.py in a subprocess with 8 simulated CPU devices; prints JSON.

BatchNorm's statistics on a mesh: (a) under ``jax.shard_map`` over a 4-device ``data`` axis with
``axis_name="data"`` (each device holds a quarter of the batch), (b) under plain ``jax.jit`` with
the batch sharded over 8 devices (no axis name: XLA reduces globally). Both are compared with the
one-device computation on the whole batch: the largest absolute differences of the output and of
the running statistics are printed.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import stoax


def max_diff(a, b):
    return float(
        max(np.abs(np.asarray(x) - np.asarray(y)).max() for x, y in zip(a, b, strict=True))
    )


def main():
    x = jax.random.normal(jax.random.key(0), (32, 5, 3)) * 2 + 1
    bn = stoax.nn.BatchNorm(3, momentum=0.8)
    y_ref, bn_ref = jax.jit(lambda m, x: stoax.apply(m, x))(bn, x)
    ref = (y_ref, bn_ref.running_mean, bn_ref.running_var)

    mesh = jax.make_mesh((4,), ("data",))
    named = bn.replace(axis_name="data")

    def local(x):
        y, m = stoax.apply(named, x)
        return y, m.running_mean, m.running_var

    sharded = jax.jit(
        jax.shard_map(local, mesh=mesh, in_specs=P("data"), out_specs=(P("data"), P(), P()))
    )
    x4 = jax.device_put(x, NamedSharding(mesh, P("data")))
    shard_map_out = sharded(x4)
    without_name = jax.jit(
        jax.shard_map(
            lambda x: stoax.apply(bn, x)[0], mesh=mesh, in_specs=P("data"), out_specs=P("data")
        )
    )(x4)

    mesh8 = jax.make_mesh((8,), ("data",))
    x8 = jax.device_put(x, NamedSharding(mesh8, P("data")))
    y8, bn8 = jax.jit(lambda m, x: stoax.apply(m, x))(bn, x8)
    out = {
        "devices": jax.device_count(),
        "shard_map": max_diff(shard_map_out, ref),
        "shard_map_without_axis_name": max_diff([without_name], [y_ref]),
        "jit_sharded": max_diff((y8, bn8.running_mean, bn8.running_var), ref),
        "output_sharded_on_data": y8.sharding.spec[:1] == ("data",),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
