"""stoax.distributed and fit(batch_sharding=) in one process (the suite's single device)."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import stoax
from stoax import train


def test_initialize_without_a_coordinator_is_a_single_process_no_op(monkeypatch):
    monkeypatch.delenv(stoax.distributed.ENV_COORDINATOR, raising=False)
    assert stoax.distributed.initialize() == 0
    with pytest.raises(ValueError, match="without a coordinator_address"):
        stoax.distributed.initialize(num_processes=2, process_id=1)


def test_initialize_checks_its_settings_before_joining(monkeypatch):
    monkeypatch.delenv(stoax.distributed.ENV_NUM_PROCESSES, raising=False)
    with pytest.raises(ValueError, match="num_processes is not"):
        stoax.distributed.initialize("127.0.0.1:1234", process_id=0)
    with pytest.raises(ValueError, match=r"process_id=2 is not in \[0, 2\)"):
        stoax.distributed.initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="'host:port'"):
        stoax.distributed.initialize("127.0.0.1", 2, 0)


def test_fit_with_batch_sharding_is_bitwise_fit_without():
    rng = np.random.default_rng(0)
    data = {
        "x": rng.normal(size=(32, 4)).astype(np.float32),
        "y": rng.integers(0, 2, 32).astype(np.int32),
    }
    model = stoax.nn.Sequential(
        [stoax.nn.Linear(4, 2, key=jax.random.key(0)), stoax.nn.Dropout(0.5)]
    )
    tx = optax.adam(1e-2)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    runs = []
    for sharding in (None, NamedSharding(mesh, P("data"))):
        state, history = train.fit(
            train.TrainState.create(model, tx),
            tx,
            train.classification_loss,
            data,
            seed=3,
            epochs=2,
            batch_size=8,
            eval_data={"all": data},
            progress=False,
            batch_sharding=sharding,
        )
        runs.append((jax.tree.leaves(state), history))
    (a, ha), (b, hb) = runs
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)) and ha == hb


def test_fit_refuses_a_batch_sharding_that_is_not_named():
    model = stoax.nn.Linear(4, 2, key=jax.random.key(0))
    tx = optax.sgd(0.1)
    data = {"x": np.ones((8, 4), np.float32), "y": np.zeros(8, np.int32)}
    with pytest.raises(TypeError, match="batch_sharding must be a jax.sharding.NamedSharding"):
        train.fit(
            train.TrainState.create(model, tx),
            tx,
            train.classification_loss,
            data,
            seed=0,
            epochs=1,
            batch_size=4,
            progress=False,
            batch_sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]),
        )


def test_fit_refuses_a_batch_that_does_not_split_over_the_mesh():
    # 8 examples per step on a data axis of size 1 split fine; the check reads the mesh's axis
    # sizes, so fake a 3-device axis with an abstract mesh of the same shape
    model = stoax.nn.Linear(4, 2, key=jax.random.key(0))
    tx = optax.sgd(0.1)
    data = {"x": np.ones((8, 4), np.float32), "y": np.zeros(8, np.int32)}
    mesh = jax.sharding.AbstractMesh((3,), ("data",))
    with pytest.raises(ValueError, match="batch_size=4 does not split over the 3 devices"):
        train.fit(
            train.TrainState.create(model, tx),
            tx,
            train.classification_loss,
            data,
            seed=0,
            epochs=1,
            batch_size=4,
            progress=False,
            batch_sharding=NamedSharding(mesh, P("data")),
        )
