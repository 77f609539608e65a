"""Run by tests/test_multiprocess.py: on 1 process of 8 CPU devices (plain subprocess) or as
N processes of 8/N devices (stoax.distributed.launch). Prints one JSON line (every process).

``transformer_job.py WORKDIR PHASE [PHASE ...]``, phases run in order:

* ``equivalence``: a tiny Transformer language model with dropout on an ``(8,)`` data mesh and a
  ``(4, 2)`` data x model mesh over all devices of the job: a dropout mask, the per-example losses
  and per-example gradients (bitwise digests), and the collectives of the compiled training step
  with dropout on and off (on the data x model mesh).
* ``reference``: ``stoax.train.fit`` for EPOCHS epochs, uninterrupted (digest of the final state).
* ``save-half``: ``fit`` for HALF epochs, orbax checkpoint after each epoch, into WORKDIR/ckpt-P
  (P = number of processes).
* ``resume-from-other``: restore the latest checkpoint written by the *other* process count,
  finish to EPOCHS epochs (digest); on 1 process, also restore it onto one device and onto a
  (4, 2) tensor-parallel mesh.
* ``kill-mid-save``: save a checkpoint, start an asynchronous save of the next one, and SIGKILL
  this process while it is being written.
* ``after-kill``: which steps the killed run's folder holds, and the restored step.
* ``sockets``: this process's TCP sockets that are not on loopback (from /proc).

Training runs data-parallel on a 2-device mesh (one device of each process on 2 processes): a
batch-mean gradient there is the sum of two partial sums, which is exact whatever order the
collective adds them in, so runs on 1 and 2 processes can be compared bit for bit.
"""

import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import hashlib
import json
import signal
import time
from pathlib import Path

import stoax

stoax.distributed.initialize()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from stoax import train  # noqa: E402

jax.config.update("jax_default_prng_impl", os.environ.get("STOAX_TEST_PRNG_IMPL", "threefry2x32"))
# Compiling dominates these jobs: skip XLA's costly optimisations (every process of every job
# compiles the same way, so the comparisons are unaffected; the SPMD partitioner, which places
# the collectives, still runs).
jax.config.update("jax_disable_most_optimizations", True)

sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))
import sharded_transformer as example  # noqa: E402  (its tensor-parallel rules, unchanged)

VOCAB, LENGTH, BATCH, SEED = 16, 8, 16, 0
EPOCHS, HALF, EXAMPLES = 3, 1, 32  # 2 steps per epoch


def make_model(dropout=0.25):
    return stoax.nn.TransformerEncoder(
        vocab_size=VOCAB,
        out_features=VOCAB,
        features=16,
        num_heads=2,
        num_layers=1,
        max_len=LENGTH,
        dropout=dropout,
        attention_dropout=dropout,
        causal=True,
        key=jax.random.key(SEED),
    )


def make_data(n):
    rng = np.random.default_rng(1)
    start = rng.integers(0, VOCAB, (n, 1))
    stride = rng.integers(1, 4, (n, 1))
    seq = (start + stride * np.arange(LENGTH + 1)) % VOCAB
    return {"x": seq[:, :-1].astype(np.int32), "y": seq[:, 1:].astype(np.int32)}


def digest(tree):
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        if stoax.keys.is_key(leaf):
            leaf = jax.random.key_data(leaf)
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


MESHES = {"data": ((8,), ("data",)), "dxm": ((4, 2), ("data", "model"))}


def mesh_of(name):
    shape, names = MESHES[name]
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(shape))


def per_example_losses(params, rest, x, y, key):
    logits = stoax.combine(params, rest)(x, key=key)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(axis=-1)


def equivalence():
    out = {}
    data = make_data(BATCH)
    for name in MESHES:
        mesh = mesh_of(name)
        rules = example.TP_RULES if "model" in mesh.axis_names else []
        params, rest = stoax.partition(make_model())
        p_s = stoax.sharding.shardings(params, mesh, rules)
        r_s = stoax.sharding.shardings(rest, mesh)
        batch_s = NamedSharding(mesh, P("data"))
        repl = NamedSharding(mesh, P())
        params, rest = jax.device_put((params, rest), (p_s, r_s))
        x, y = stoax.distributed.shard_batch((data["x"], data["y"]), batch_s)
        key = stoax.step_key(SEED, 0)

        # Per-example losses and their gradients (a Jacobian: each row's backward pass has one
        # non-zero cotangent, so the sum over the batch adds zeros -- exact in any order). Every
        # example's masks are drawn on the whole batch, as in training.
        def per_example(params, rest, x, y, key):
            losses = per_example_losses(params, rest, x, y, key)
            grads = jax.jacrev(per_example_losses)(params, rest, x, y, key)
            return losses, grads

        losses, grads = jax.jit(per_example, out_shardings=repl)(params, rest, x, y, key)

        # A dropout mask placed as the hidden activations are (batch over "data", features over
        # "model" on the tensor-parallel mesh).
        drop = stoax.nn.Dropout(0.5)
        act_s = NamedSharding(
            mesh, P("data", None, "model" if "model" in mesh.axis_names else None)
        )
        h = jax.device_put(np.ones((BATCH, LENGTH, 16), np.float32), act_s)
        mask = jax.jit(lambda k, h, drop=drop: drop(h, key=k) != 0, out_shardings=act_s)(key, h)
        mask = np.asarray(jax.jit(lambda m: m, out_shardings=repl)(mask))  # gathered: no arithmetic

        # The collectives of the example's own compiled training step, dropout on and off, on
        # the data x model mesh (its all-reduces: the data-parallel gradient sum and tensor
        # parallelism; tests/test_sharding.py covers the data mesh in one process).
        counts = {}
        for label, model in (("on", make_model()), ("off", stoax.eval_mode(make_model()))):
            if name != "dxm":
                break
            step, args = example.compile_step(model, data["x"], data["y"], mesh)
            counts[label] = stoax.sharding.count_collectives(step.lower(*args).compile())
        out[name] = {
            "mask": digest(mask),
            "keep_fraction": float(mask.mean()),
            "losses": digest(losses),
            "loss_mean": float(np.asarray(losses).mean()),
            "grads": digest(grads),
            "collectives": counts,
        }
    return out


# -- training, checkpoints -----------------------------------------------------------------------


def loss_fn(model, batch, *, key):
    logits = model(batch["x"], key=key)
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}


TX = optax.adam(1e-2)


def train_mesh():
    devices = jax.devices()[:: jax.device_count() // 2][:2]  # one per process on 2 processes
    return Mesh(np.array(devices), ("data",), axis_types=(AxisType.Auto,))


def fresh_state():
    mesh = train_mesh()
    state = train.TrainState.create(make_model(), TX)
    return jax.device_put(state, stoax.sharding.shardings(state, mesh)), mesh


def fit_to(state, mesh, epochs, ckpts=None):
    save = None if ckpts is None else (lambda s, record: ckpts.save(s, metadata=record))
    state, _ = train.fit(
        state,
        TX,
        loss_fn,
        make_data(EXAMPLES),
        seed=SEED,
        epochs=epochs,
        batch_size=BATCH,
        progress=False,
        eval_data={"probe": make_data(4)},  # evaluation batches, replicated on the mesh
        on_epoch_end=save,
        batch_sharding=NamedSharding(mesh, P("data")),
    )
    return state


def ckpt_dir(workdir, processes):
    return Path(workdir) / f"ckpt-{processes}"


def reference(workdir):
    state, mesh = fresh_state()
    return {"final": digest(fit_to(state, mesh, EPOCHS))}


def save_half(workdir):
    state, mesh = fresh_state()
    with train.Checkpoints(ckpt_dir(workdir, jax.process_count()), format="orbax") as ckpts:
        state = fit_to(state, mesh, HALF, ckpts)
        steps = ckpts.steps()
    return {"steps": steps, "format": ckpts.format}


def resume_from_other(workdir):
    other = 2 if jax.process_count() == 1 else 1
    like, mesh = fresh_state()
    with train.Checkpoints(ckpt_dir(workdir, other)) as ckpts:  # format detected: orbax
        state, meta = ckpts.restore(like)
        fmt = ckpts.format
        # the same checkpoint onto other meshes: one device, and a (4, 2) tensor-parallel mesh
        plain = train.TrainState.create(make_model(), TX)
        tp_mesh = mesh_of("dxm")
        tp = jax.device_put(plain, stoax.sharding.shardings(plain, tp_mesh, example.TP_RULES))
        on_other_meshes = [ckpts.restore(other_like)[0] for other_like in (plain, tp)]
    return {
        "restored_step": int(state.step),
        "format": fmt,
        "meta_epoch": meta.get("epoch"),
        "meta_has_eval": "probe_loss" in meta,
        "same_on_other_meshes": [digest(s) == digest(state) for s in on_other_meshes],
        "tp_sharded_leaves": sum(
            not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(on_other_meshes[1])
        ),
        "final": digest(fit_to(state, mesh, EPOCHS)),
    }


KEYED = {"a": jnp.arange(4.0), "k": jax.random.key(3, impl="rbg")}


def kill_mid_save(workdir):
    ckpts = train.Checkpoints(Path(workdir) / "killed", format="orbax", keep=None)
    ckpts.save(KEYED, step=1)
    ckpts.wait()
    big = {"a": jnp.ones((256, 1024)), "k": KEYED["k"]}  # a write that takes a moment
    ckpts.save(big, step=2)
    saving = ckpts.saving()
    print(json.dumps({"saving_when_killed": saving}), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


def after_kill(workdir):
    folder = Path(workdir) / "killed"
    ckpts = train.Checkpoints(folder)
    restored, _ = ckpts.restore(KEYED)
    return {
        "steps": ckpts.steps(),
        "left": sorted(p.name for p in folder.iterdir()),
        "restored_equal": digest(restored) == digest(KEYED),
        "key_impl": str(jax.random.key_impl(restored["k"])),
    }


def _is_loopback(hex_address):
    host = hex_address.split(":")[0]
    if len(host) == 8:  # IPv4, little-endian: 127.x.x.x
        return int(host[6:8], 16) == 127
    if host == "00000000000000000000000001000000":  # ::1
        return True
    return host.startswith("0000000000000000FFFF0000") and int(host[30:32], 16) == 127


def sockets(workdir):
    """This process's TCP sockets (listening and connected) whose local or remote address is
    not loopback, from /proc: the coordinator, its clients and the gloo collectives."""
    inodes = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found, outside = 0, []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode not in inodes:
                continue
            found += 1
            # a listening socket's remote address is all zeros: judge it by its local address
            listening = fields[3] == "0A"
            if not _is_loopback(local) or (not listening and not _is_loopback(remote)):
                outside.append(f"{table}: {local} -> {remote} (state {fields[3]})")
    return {"tcp_sockets": found, "not_loopback": outside}


PHASES = {
    "sockets": sockets,
    "equivalence": lambda w: equivalence(),
    "reference": reference,
    "save-half": save_half,
    "resume-from-other": resume_from_other,
    "kill-mid-save": kill_mid_save,
    "after-kill": after_kill,
}

if __name__ == "__main__":
    workdir, phases = sys.argv[1], sys.argv[2:]
    out = {"processes": jax.process_count(), "devices": jax.device_count()}
    for phase in phases:
        start = time.process_time()
        out[phase] = PHASES[phase](workdir)
        out.setdefault("cpu_seconds", {})[phase] = round(time.process_time() - start, 2)
        print(json.dumps(out), flush=True)
