"""Run by tests/test_sharding.py in a subprocess with 8 simulated CPU devices; prints JSON.

``python mlp_step.py equivalence``: dropout masks, losses (3 Adam steps) and gradients of a tiny
MLP with dropout on one device, an (8,) data mesh and a (4, 2) data x model mesh.
``python mlp_step.py collectives [--plain-autodiff]``: the collectives of the compiled sharded
step, dropout on/off (``--plain-autodiff``: dropout's mask-regenerating custom_vjp switched off).
``python mlp_step.py shard_map``: per-example keys under ``jax.shard_map``.
"""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hashlib
import json
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import stoax

jax.config.update("jax_default_prng_impl", os.environ.get("STOAX_TEST_PRNG_IMPL", "threefry2x32"))

BATCH, IN, HIDDEN = 16, 8, 32
# Megatron-style tensor parallelism: the first Linear is column-parallel, the second row-parallel,
# so the hidden activation (and the dropout mask on it) is split over ("data", "model").
TP_RULES = [
    (r"layers\[0\]\.weight", P(None, "model")),
    (r"layers\[0\]\.bias", P("model")),
    (r"layers\[3\]\.weight", P("model", None)),
]
MESHES = {"1": None, "8": ((8,), ("data",)), "4x2": ((4, 2), ("data", "model"))}


def make_model(rate):
    k1, k2 = jax.random.split(jax.random.key(0))
    return stoax.nn.Sequential(
        [
            stoax.nn.Linear(IN, HIDDEN, key=k1),
            jax.nn.relu,
            stoax.nn.Dropout(rate),
            stoax.nn.Linear(HIDDEN, IN, key=k2),
        ]
    )


def data(exact):
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (BATCH, IN))
    y = jax.random.normal(ky, (BATCH, IN))
    if exact:  # multiples of 1/2 in [-2, 2]: see exact_params
        x, y = (jnp.clip(jnp.round(v * 2) / 2, -2, 2) for v in (x, y))
    return x, y


def exact_params(model):
    # multiples of 1/8 in [-1/2, 1/2]: with exact data every product and partial sum of the first
    # step's forward and backward pass is exactly representable in float32, so summing in any
    # order (one device, or partial sums all-reduced across a mesh) gives the same bits, and only
    # the masks can make two meshes differ.
    return jax.tree.map(lambda w: jnp.clip(jnp.round(w * 8) / 8, -0.5, 0.5), model)


def loss_fn(params, rest, x, y, key):
    model = stoax.combine(params, rest)
    return jnp.mean((model(x, key=key) - y) ** 2)


OPT = optax.adam(1e-2)


def step(params, opt_state, rest, x, y, t):
    key = stoax.step_key(42, t)
    loss, grads = jax.value_and_grad(loss_fn)(params, rest, x, y, key)
    updates, opt_state = OPT.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, grads


def compiled_step(mesh_name, rate, exact=False):
    """(jitted step, its placed arguments) for one mesh; ``None`` = one device, no shardings."""
    model = make_model(rate)
    if exact:
        model = exact_params(model)
    params, rest = stoax.partition(model)
    opt_state = OPT.init(params)
    x, y = data(exact)
    args = (params, opt_state, rest, x, y, jnp.uint32(0))
    if MESHES[mesh_name] is None:
        return jax.jit(step), args
    shape, names = MESHES[mesh_name]
    mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))
    rules = TP_RULES if "model" in names else []
    p_s = stoax.sharding.shardings(params, mesh, rules)
    o_s = stoax.sharding.shardings(opt_state, mesh, rules)  # Adam moments sharded like params
    r_s = stoax.sharding.shardings(rest, mesh)
    batch = NamedSharding(mesh, P("data"))
    scalar = NamedSharding(mesh, P())
    jitted = jax.jit(
        step,
        in_shardings=(p_s, o_s, r_s, batch, batch, scalar),
        out_shardings=(p_s, o_s, scalar, p_s),
    )
    placed = jax.device_put(args, (p_s, o_s, r_s, batch, batch, scalar))
    return jitted, placed


def masks(mesh_name):
    """The dropout layer's keep-mask on a (BATCH, HIDDEN) activation, placed as in the model."""
    drop = make_model(0.5).layers[2]
    f = lambda key, h: drop(h, key=stoax.keys.child(key, 2)) != 0
    key, h = stoax.step_key(42, 0), jnp.ones((BATCH, HIDDEN))
    if MESHES[mesh_name] is None:
        return np.asarray(jax.jit(f)(key, h))
    shape, names = MESHES[mesh_name]
    mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))
    act = NamedSharding(mesh, P("data", "model" if "model" in names else None))
    g = jax.jit(f, in_shardings=(NamedSharding(mesh, P()), act), out_shardings=act)
    out = g(key, jax.device_put(h, act))
    assert len(out.sharding.device_set) == len(mesh.devices.flat)
    return np.asarray(out)


def digest(tree):
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


def train(mesh_name, steps=3):
    """First step on exact data (loss, gradients); ``steps`` Adam steps on float data (losses)."""
    out = {}
    for exact in (True, False):
        jitted, (params, opt_state, rest, x, y, _) = compiled_step(mesh_name, 0.5, exact)
        losses, grad_digests = [], []
        for t in range(1 if exact else steps):
            params, opt_state, loss, grads = jitted(params, opt_state, rest, x, y, jnp.uint32(t))
            losses.append(float(loss))
            grad_digests.append(digest(grads))
        out["exact" if exact else "float"] = {"losses": losses, "grads": grad_digests}
    return out


def equivalence():
    out = {"threefry_partitionable": bool(jax.config.jax_threefry_partitionable)}
    for name in MESHES:
        m = masks(name)
        out[name] = {
            "mask": digest(m),
            "keep_fraction": float(m.mean()),
            **train(name),
        }
    return out


def collectives():
    """Collectives of the compiled step, dropout on and off; any ShardingWarning raised."""
    out = {"threefry_partitionable": bool(jax.config.jax_threefry_partitionable)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out.update(_collectives())
    out["warnings"] = sorted({str(w.message)[:80] for w in caught})
    return out


def _collectives():
    out = {}
    for name in ("8", "4x2"):
        for rate in (0.5, 0.0):  # a Python rate of 0.0 compiles dropout away
            jitted, args = compiled_step(name, rate)
            counts = stoax.sharding.count_collectives(jitted.lower(*args).compile())
            out[f"{name}/{'on' if rate else 'off'}"] = counts
    return out


def per_example(params, rest, x, y, keys):
    """Per-example losses and keep-masks; each example's masks come from its own key."""
    model = stoax.combine(params, rest)

    def one(xi, yi, ki):
        # dropout before the relu here, so that a zero in the output is a dropped unit
        h = model.layers[2](model.layers[0](xi), key=ki)
        return jnp.mean((model.layers[3](jax.nn.relu(h)) - yi) ** 2), h != 0

    return jax.vmap(one)(x, y, keys)


def shard_map_case():
    """``jax.shard_map`` data parallelism: per-example keys by global index (stoax.sharding.
    example_keys) against one shared key per shard (the pitfall: every shard repeats the mask)."""
    params, rest = stoax.partition(exact_params(make_model(0.5)))
    x, y = data(exact=True)
    key = stoax.step_key(42, 0)
    loss1, mask1 = jax.jit(
        lambda p, r, x, y, k: per_example(p, r, x, y, stoax.sharding.example_keys(k, BATCH))
    )(params, rest, x, y, key)
    out = {"1": {"losses": digest(loss1), "mask": digest(mask1)}}
    for name, axes in (("8", "data"), ("4x2", ("data", "model"))):
        shape, names = MESHES[name]
        mesh = jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))
        n = BATCH // len(mesh.devices.flat)

        def good(p, r, x, y, k, axes=axes, n=n):
            return per_example(p, r, x, y, stoax.sharding.example_keys(k, n, axis_name=axes))

        def shared(p, r, x, y, k, n=n):  # the same key on every shard
            return per_example(p, r, x, y, jax.random.split(k, n))

        results = {}
        for label, fn in (("example_keys", good), ("shared_key", shared)):
            sm = jax.shard_map(
                fn,
                mesh=mesh,
                in_specs=(P(), P(), P(axes), P(axes), P()),
                out_specs=(P(axes), P(axes)),
            )
            loss, mask = jax.jit(sm)(params, rest, x, y, key)
            mask = np.asarray(mask)
            # mask = kept & (input != 0): with the exact data an input unit can be exactly 0,
            # so compare the first two shards where both inputs are nonzero (the mask itself).
            pre = np.asarray(stoax.combine(params, rest).layers[0](x)) != 0
            both = pre[:n] & pre[n : 2 * n]
            results[label] = {
                "losses": digest(loss),
                "mask": digest(mask),
                "shards_repeat": bool((mask[:n] == mask[n : 2 * n])[both].all()),
            }
        out[name] = results
    return out


if __name__ == "__main__":
    if "--plain-autodiff" in sys.argv:  # before any trace: jit caches ignore this setting
        stoax.random.set_regenerate_mask(False)
    cases = {"equivalence": equivalence, "collectives": collectives, "shard_map": shard_map_case}
    print(json.dumps(cases[sys.argv[1]]()))
