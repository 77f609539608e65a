"""The training loop: determinism from the seed, keys from (seed, step), exact resume."""

import jax
import numpy as np
import optax
import pytest

import stoax
from stoax import train as st

SEED = 3


def _data(n=48):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return {"x": x, "y": (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0).astype(np.int32)}


def _model(key=0):
    return stoax.nn.MLP(6, 3, hidden=(16,), dropout=0.3, key=jax.random.key(key))


TX = optax.adam(1e-2)


def _fit(state, epochs, data=None, seed=SEED, **kwargs):
    data = _data() if data is None else data
    return st.fit(
        state,
        TX,
        st.classification_loss,
        data,
        seed=seed,
        epochs=epochs,
        batch_size=10,
        eval_data={"train": data},
        progress=False,
        **kwargs,
    )


def _assert_trees_bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def test_batches_depend_on_seed_and_epoch_only():
    data = {"i": np.arange(23)}
    order = lambda **kw: np.concatenate([b["i"] for b in st.batches(data, 5, **kw)])
    a = order(seed=1, epoch=4, drop_last=True)
    assert len(a) == 20 and len(set(a.tolist())) == 20  # full batches, no repeats
    np.testing.assert_array_equal(a, order(seed=1, epoch=4, drop_last=True))
    assert not np.array_equal(a, order(seed=1, epoch=5, drop_last=True))
    assert not np.array_equal(a, order(seed=2, epoch=4, drop_last=True))
    np.testing.assert_array_equal(order(), np.arange(23))  # no seed: data order, last batch kept


def test_batches_refuse_ragged_data():
    with pytest.raises(ValueError, match="same leading"):
        next(st.batches({"x": np.zeros(4), "y": np.zeros(5)}, 2))


def test_same_seed_same_run_bitwise():
    state_a, hist_a = _fit(st.TrainState.create(_model(), TX), epochs=2)
    state_b, hist_b = _fit(st.TrainState.create(_model(), TX), epochs=2)
    assert hist_a == hist_b
    _assert_trees_bitwise_equal(state_a, state_b)
    assert [r["epoch"] for r in hist_a] == [1, 2] and hist_a[-1]["step"] == 8
    assert {"loss", "accuracy", "train_loss", "train_accuracy"} <= set(hist_a[0])
    _, hist_c = _fit(st.TrainState.create(_model(), TX), epochs=2, seed=SEED + 1)
    assert hist_c != hist_a  # the seed reaches batch order and dropout


def test_step_key_is_a_function_of_seed_and_step():
    # A loss that reports a draw from its key: the train step must pass step_key(seed, step).
    def loss_fn(model, batch, *, key):
        loss, metrics = st.classification_loss(model, batch, key=key)
        return loss, {**metrics, "draw": jax.random.uniform(key)}

    step = st.make_train_step(loss_fn, TX, seed=SEED)
    state = st.TrainState.create(_model(), TX)
    batch = next(st.batches(_data(), 10))
    draws = []
    for _ in range(3):
        state, metrics = step(state, batch)
        draws.append(float(metrics["draw"]))
    expected = [float(jax.random.uniform(stoax.step_key(SEED, s))) for s in range(3)]
    assert draws == expected


def test_evaluation_runs_in_eval_mode_without_a_key():
    model = _model()
    data = _data()
    metrics = st.evaluate(st.make_eval_step(st.classification_loss), model, data, batch_size=7)
    logits = stoax.eval_mode(model)(data["x"])
    accuracy = float((np.argmax(logits, -1) == data["y"]).mean())
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)


def test_resume_from_checkpoint_is_bitwise_identical(tmp_path):
    straight_state, straight_hist = _fit(st.TrainState.create(_model(), TX), epochs=3)

    first_state, first_hist = _fit(st.TrainState.create(_model(), TX), epochs=1)
    st.save_checkpoint(tmp_path / "c.safetensors", first_state, metadata={"history": first_hist})
    template = st.TrainState.create(_model(key=99), TX)  # fresh objects, other weights
    restored, meta = st.load_checkpoint(tmp_path / "c.safetensors", template)
    resumed_state, resumed_hist = _fit(restored, epochs=3)

    assert meta["history"] + resumed_hist == straight_hist  # every metric, exactly
    _assert_trees_bitwise_equal(resumed_state, straight_state)  # params, opt state, step


def test_resume_mid_epoch_is_bitwise_identical():
    data = _data()
    straight, _ = _fit(st.TrainState.create(_model(), TX), epochs=2, data=data)
    # Stop after 6 steps (epoch 2 of 4-step epochs, 2 batches in), then let fit finish.
    state = st.TrainState.create(_model(), TX)
    step = st.make_train_step(st.classification_loss, TX, seed=SEED)
    for epoch in range(2):
        for i, batch in enumerate(st.batches(data, 10, seed=SEED, epoch=epoch, drop_last=True)):
            if epoch * 4 + i < 6:
                state, _ = step(state, batch)
    assert int(state.step) == 6
    resumed, hist = _fit(state, epochs=2, data=data)
    assert [r["epoch"] for r in hist] == [2]
    _assert_trees_bitwise_equal(resumed, straight)


def test_progress_bar_can_be_turned_off(capsys):
    _fit(st.TrainState.create(_model(), TX), epochs=1)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_fit_refuses_a_batch_larger_than_the_data():
    with pytest.raises(ValueError, match="larger than the training set"):
        st.fit(
            st.TrainState.create(_model(), TX),
            TX,
            st.classification_loss,
            _data(8),
            seed=0,
            epochs=1,
            batch_size=10,
            progress=False,
        )


def _fit_raw(**kwargs):
    args = {"seed": 0, "epochs": 1, "batch_size": 8, "progress": False, **kwargs}
    return st.fit(st.TrainState.create(_model(), TX), TX, st.classification_loss, _data(16), **args)


@pytest.mark.parametrize(
    ("batch_size", "error", "message"),
    [
        (0, ValueError, "fit: batch_size must be >= 1 (examples per step), got 0"),
        (-4, ValueError, "fit: batch_size must be >= 1 (examples per step), got -4"),
        (
            2.5,
            TypeError,
            "fit: batch_size must be a whole number >= 1 (examples per step), got the float 2.5",
        ),
        (True, TypeError, "got the bool True"),
    ],
)
def test_fit_refuses_a_bad_batch_size(batch_size, error, message):
    # The probe: fit(batch_size=0) died with a ZeroDivisionError deep in the batching code.
    with pytest.raises(error) as info:
        _fit_raw(batch_size=batch_size)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("seed", "error", "message"),
    [
        (-1, ValueError, "fit: seed must be in [0, 4294967295] (2**32 - 1), got -1"),
        (2**32, ValueError, "got 4294967296; a seed outside that range would wrap around"),
        (1.0, TypeError, "fit: seed must be a whole number in [0, 4294967295], got the float"),
    ],
)
def test_fit_refuses_a_seed_out_of_range(seed, error, message):
    with pytest.raises(error) as info:
        _fit_raw(seed=seed)
    assert message in str(info.value)


@pytest.mark.parametrize("seed", [2**31, 2**32 - 1])
def test_seeds_above_int32_train_with_their_own_keys(seed):
    # The probe: --seed=2147483648 died with an int32 OverflowError in the train step. Every
    # uint32 seed works, and its step keys are step_key(seed, step) for the Python int.
    def loss_fn(model, batch, *, key):
        loss, metrics = st.classification_loss(model, batch, key=key)
        return loss, {**metrics, "draw": jax.random.uniform(key)}

    step = st.make_train_step(loss_fn, TX, seed=seed)
    state = st.TrainState.create(_model(), TX)
    batch = next(st.batches(_data(), 10))
    draws = []
    for _ in range(2):
        state, metrics = step(state, batch)
        draws.append(float(metrics["draw"]))
    assert draws == [float(jax.random.uniform(stoax.step_key(seed, s))) for s in range(2)]


def test_fit_refuses_a_state_past_the_epochs_asked_for():
    # The probe: resuming a 3-epoch state with epochs=1 returned it silently, and the CLI wrote
    # a results.json that contradicted itself. Equal is fine (a finished run: nothing to do).
    state, _ = _fit(st.TrainState.create(_model(), TX), epochs=2)  # 4 steps per epoch
    same, history = _fit(state, epochs=2)
    assert history == [] and int(same.step) == 8
    with pytest.raises(ValueError) as info:
        _fit(state, epochs=1)
    message = str(info.value)
    assert "the state is at step 8 (2 epochs of 4 steps each), past the epochs=1" in message
    assert "pass epochs >= 2" in message
