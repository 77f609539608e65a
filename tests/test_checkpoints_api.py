"""stoax.train.Checkpoints in one process: both formats behind one API (the multi-process
behaviour is in test_multiprocess.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stoax
from stoax.train import CheckpointError, Checkpoints, TrainState

TX = optax.adam(1e-2)


def make_state(features: int = 3) -> TrainState:
    model = stoax.nn.Sequential(
        [stoax.nn.Linear(features, 2, key=jax.random.key(0)), stoax.nn.Dropout(0.5)]
    )
    return TrainState.create(model, TX)


def at_step(state: TrainState, step: int) -> TrainState:
    params = jax.tree.map(lambda p: p + step, state.params)  # a different state per step
    return state.replace(params=params, step=jnp.asarray(step, jnp.int32))


def equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) and x.dtype == y.dtype
        for x, y in zip(la, lb, strict=True)
    )


@pytest.mark.parametrize("fmt", ["safetensors", "orbax"])
def test_keeps_the_last_k_and_restores_the_latest_bitwise(tmp_path, fmt):
    state = make_state()
    with Checkpoints(tmp_path / "run", keep=2, format=fmt) as ckpts:
        for step in (1, 2, 3):
            ckpts.save(at_step(state, step), metadata={"epoch": step})
        ckpts.wait()
        assert ckpts.steps() == [2, 3]
        restored, meta = ckpts.restore(state)
        assert equal(restored, at_step(state, 3)) and meta == {"epoch": 3}
        older, _ = ckpts.restore(state, step=2)
        assert equal(older, at_step(state, 2))
        with pytest.raises(ValueError, match="already holds step 3"):
            ckpts.save(at_step(state, 3))
    # a new Checkpoints on the folder finds the format and the steps by itself
    again = Checkpoints(tmp_path / "run")
    assert again.format == fmt and again.latest_step() == 3
    again.close()


def test_auto_format_is_safetensors_on_one_process_for_a_new_folder(tmp_path):
    ckpts = Checkpoints(tmp_path / "new")
    assert ckpts.format == "safetensors"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        ckpts.restore(make_state())


def test_orbax_round_trips_typed_keys_with_their_implementation(tmp_path):
    tree = {"w": jnp.arange(3.0), "k": jax.random.key(7, impl="rbg")}
    with Checkpoints(tmp_path, format="orbax") as ckpts:
        ckpts.save(tree, step=5)
        restored, _ = ckpts.restore(tree)
    assert str(jax.random.key_impl(restored["k"])) == str(jax.random.key_impl(tree["k"]))
    assert np.array_equal(jax.random.key_data(restored["k"]), jax.random.key_data(tree["k"]))
    # a template whose key has another implementation is refused, not silently converted
    other = {"w": jnp.arange(3.0), "k": jax.random.key(7, impl="threefry2x32")}
    with pytest.raises(CheckpointError, match="k"):
        Checkpoints(tmp_path).restore(other)


def test_orbax_restore_refuses_another_model_naming_the_difference(tmp_path):
    with Checkpoints(tmp_path, format="orbax") as ckpts:
        ckpts.save(make_state(3))
        with pytest.raises(
            CheckpointError, match=r"params/layers/0/weight: file has float32\[3, 2\]"
        ):
            ckpts.restore(make_state(4))


def test_orbax_save_is_asynchronous(tmp_path):
    # save() returns once the arrays are off the devices; the write goes on in the background
    big = {"a": jnp.ones((512, 1024))}
    with Checkpoints(tmp_path, format="orbax") as ckpts:
        ckpts.save(big, step=1)
        in_flight = ckpts.saving()
        ckpts.wait()
        assert not ckpts.saving() and ckpts.steps() == [1]
    assert in_flight


def test_orbax_restores_onto_the_template_sharding(tmp_path):
    mesh = jax.make_mesh((1,), ("data",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    tree = {"x": jnp.arange(4.0)}
    with Checkpoints(tmp_path, format="orbax") as ckpts:
        ckpts.save(tree, step=1)
        like = {"x": jax.ShapeDtypeStruct((4,), jnp.float32, sharding=sharding)}
        restored, _ = ckpts.restore(like)
    assert restored["x"].sharding == sharding and equal(restored, tree)


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        Checkpoints(tmp_path, format="pickle")
    with pytest.raises(ValueError, match="keep must be"):
        Checkpoints(tmp_path, keep=0)
    with pytest.raises(ValueError, match="has no `step`"):
        Checkpoints(tmp_path).save({"a": jnp.ones(2)})
