"""Run by tests/test_sharding.py in a subprocess with 8 simulated CPU devices; prints JSON.

``stoax.audit`` on sharded functions: the (4, 2)-mesh training step under ``jax.jit`` with
shardings, a ``jax.shard_map`` step with per-example keys (both correct: no finding expected), and
functions with a constant key under each (the bug: expected ``constant_key``). The constant-key
cases draw with ``jax.random.bernoulli`` (plain JAX) and, separately, with stoax's dropout.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json

import jax
from jax.sharding import AxisType
from jax.sharding import PartitionSpec as P
from mlp_step import BATCH, compiled_step, data, exact_params, make_model, per_example

import stoax
from stoax.audit import audit


def kinds(report):
    return sorted(f.kind for f in report.findings)


def main():
    out = {}
    jitted, args = compiled_step("4x2", 0.5)
    out["jit_sharded_step"] = kinds(audit(jitted, *args))

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    n = BATCH // 8
    params, rest = stoax.partition(exact_params(make_model(0.5)))
    x, y = data(exact=True)
    specs = dict(mesh=mesh, in_specs=(P(), P(), P("data"), P("data"), P()), out_specs=P("data"))

    def good(p, r, x, y, k):
        return per_example(p, r, x, y, stoax.sharding.example_keys(k, n, axis_name="data"))[0]

    def constant(p, r, x, y, k):  # the bug: a key made inside, from a constant seed
        return x * jax.random.bernoulli(jax.random.key(0), 0.5, x.shape)

    def constant_stoax(p, r, x, y, k):  # the same bug, with stoax's dropout primitive
        return stoax.random.dropout(x, 0.5, jax.random.key(0))

    args = (params, rest, x, y, stoax.step_key(42, 0))
    out["shard_map_step"] = kinds(audit(jax.jit(jax.shard_map(good, **specs)), *args))
    out["shard_map_constant_key"] = kinds(audit(jax.jit(jax.shard_map(constant, **specs)), *args))
    out["shard_map_constant_key_stoax"] = kinds(
        audit(jax.jit(jax.shard_map(constant_stoax, **specs)), *args)
    )
    batch = jax.sharding.NamedSharding(mesh, P("data"))
    out["jit_sharded_constant_key"] = kinds(
        audit(jax.jit(lambda x: constant(None, None, x, None, None), in_shardings=batch), x)
    )
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
