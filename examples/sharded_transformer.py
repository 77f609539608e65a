"""Train a Transformer language model with dropout on 1 device, an (8,) data mesh and a (4, 2)
data x model (tensor-parallel) mesh -- the same dropout masks on all three, and no communication
added by random-number generation.

Run:  python examples/sharded_transformer.py            (8 simulated CPU devices)
      python examples/sharded_transformer.py --steps 3  (quicker)
      python -m stoax.distributed -n 2 -d 4 -- python examples/sharded_transformer.py --steps 3
                          (unchanged, on 2 processes of 4 devices: one global mesh of 8)

Nothing here is stoax-specific JAX: the step is a plain function, parallelism is ``jax.jit`` with
``in_shardings`` / ``out_shardings`` on a ``jax.sharding.Mesh``. stoax contributes the model, the
per-step key (``stoax.step_key``) and two helpers from ``stoax.sharding``: ``shardings`` (place a
model by regex rules) and ``count_collectives``.
"""

import os

# Simulate 8 devices on the CPU. This must happen before JAX starts; keep any flags already set.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import stoax

VOCAB, LENGTH, BATCH = 32, 16, 16
SEED = 0

# Megatron-style tensor parallelism over the "model" axis. A spec names an array's trailing axes,
# so the same rule places one layer's weight (in, out) and the Stack's (layers, in, out).
# Query/key/value projections are column-parallel (each device holds whole heads), the output
# projection row-parallel; the MLP's first Linear column-parallel, its second row-parallel.
TP_RULES = [
    (r"attn\.(query|key|value)_proj\.weight", P(None, "model")),
    (r"attn\.(query|key|value)_proj\.bias", P("model")),
    (r"attn\.out_proj\.weight", P("model", None)),
    (r"mlp\.layers\[0\]\.weight", P(None, "model")),
    (r"mlp\.layers\[0\]\.bias", P("model")),
    (r"mlp\.layers\[1\]\.weight", P("model", None)),
]


def make_model():
    return stoax.nn.TransformerEncoder(
        vocab_size=VOCAB,
        out_features=VOCAB,
        features=32,
        num_heads=4,
        num_layers=2,
        max_len=LENGTH,
        dropout=0.1,
        attention_dropout=0.1,
        causal=True,
        key=jax.random.key(SEED),
    )


def make_batch():
    """Sequences that count up by a per-sequence stride, mod VOCAB: learnable next tokens."""
    k_start, k_stride = jax.random.split(jax.random.key(SEED + 1))
    start = jax.random.randint(k_start, (BATCH, 1), 0, VOCAB)
    stride = jax.random.randint(k_stride, (BATCH, 1), 1, 4)
    seq = (start + stride * jnp.arange(LENGTH + 1)) % VOCAB
    return seq[:, :-1], seq[:, 1:]


optimizer = optax.adamw(3e-3)


def loss_fn(params, rest, tokens, targets, key):
    model = stoax.combine(params, rest)
    logits = model(tokens, key=key)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def train_step(params, opt_state, rest, tokens, targets, step):
    key = stoax.step_key(SEED, step)  # a function of (seed, step): nothing to split or carry
    loss, grads = jax.value_and_grad(loss_fn)(params, rest, tokens, targets, key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def compile_step(model, tokens, targets, mesh=None):
    """The jitted step and its arguments, placed on ``mesh`` (``None``: one device)."""
    params, rest = stoax.partition(model)
    opt_state = optimizer.init(params)
    args = (params, opt_state, rest, tokens, targets, jnp.uint32(0))
    if mesh is None:
        return jax.jit(train_step), args
    rules = TP_RULES if "model" in mesh.axis_names else []
    param_s = stoax.sharding.shardings(params, mesh, rules)
    opt_s = stoax.sharding.shardings(opt_state, mesh, rules)  # Adam moments placed like params
    rest_s = stoax.sharding.shardings(rest, mesh)
    batch_s = NamedSharding(mesh, P("data"))  # split the batch over "data"
    scalar_s = NamedSharding(mesh, P())
    in_s = (param_s, opt_s, rest_s, batch_s, batch_s, scalar_s)
    step = jax.jit(train_step, in_shardings=in_s, out_shardings=(param_s, opt_s, scalar_s))
    return step, jax.device_put(args, in_s)


def run(name, mesh, steps):
    tokens, targets = make_batch()
    step, (params, opt_state, rest, tokens, targets, _) = compile_step(
        make_model(), tokens, targets, mesh
    )
    losses = []
    for t in range(steps):
        params, opt_state, loss = step(params, opt_state, rest, tokens, targets, jnp.uint32(t))
        losses.append(float(loss))
        print(f"  [{name:>10}] step {t}: loss {losses[-1]:.7f}")
    return np.array(losses)


def mesh_of(shape, names):
    # Auto axes: jax.jit propagates the shardings (GSPMD); the step's code does not change.
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def collectives(mesh, dropout_on):
    model = make_model()
    if not dropout_on:
        model = stoax.eval_mode(model)  # a static False: dropout compiled away
    step, args = compile_step(model, *make_batch(), mesh)
    return stoax.sharding.count_collectives(step.lower(*args).compile())


def main():
    stoax.distributed.initialize()  # joins a multi-process job if launched as one; else a no-op
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    steps = parser.parse_args().steps
    stoax.sharding.check_partitionable(strict=True)
    print(
        f"{jax.device_count()} devices on {jax.process_count()} process(es); "
        "jax_threefry_partitionable = True"
    )
    setups = {
        "1 device": None,
        "(8,) data": mesh_of((8,), ("data",)),
        "(4,2) d x m": mesh_of((4, 2), ("data", "model")),
    }
    losses = {name: run(name, mesh, steps) for name, mesh in setups.items()}
    ref = losses["1 device"]
    for name, values in losses.items():
        bitwise = bool((values == ref).all())
        print(f"{name:>12}: max |loss - 1 device| = {np.abs(values - ref).max():.2e} ({bitwise=})")
    print("collectives in the compiled step (dropout on vs off):")
    for name, mesh in list(setups.items())[1:]:
        on, off = collectives(mesh, True), collectives(mesh, False)
        print(f"  {name:>12}: on {on}\n  {'':>12}  off {off}")
        assert on == off, "random-number generation added communication"


if __name__ == "__main__":
    main()
