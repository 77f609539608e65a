"""Key domains: stoax's derivations (init keys, step keys, child keys by name and by position)
never hand out one key for two jobs -- over the keys a real training run derives -- and the
arguments of ``step_key`` are checked, never truncated or wrapped."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax import keys
from stoax.examples import digits
from stoax.train import classification_loss, make_train_step


def _data(k: jax.Array) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(jax.random.key_data(k)).ravel())


def test_the_probe_step_key_differs_from_init_and_child_keys():
    # The probe: with threefry split(k, n)[i] == fold_in(k, i), so without domains
    # step_key(0, 0) was the init key of the first layer of a model made from key(0).
    root = jax.random.key(0)
    step0 = _data(stoax.step_key(0, 0))
    others = {
        "split(key(0), 2)[0]": _data(jax.random.split(root, 2)[0]),
        "fold_in(key(0), 0)": _data(jax.random.fold_in(root, 0)),
        "child(key(0), 0)": _data(keys.child(root, 0)),
        "init_child(key(0), 0)": _data(keys.init_child(root, 0)),
        "key(0)": _data(root),
    }
    assert all(step0 != v for v in others.values()), others
    # Positions, names and init keys are apart too, even where crc32(name) could equal a
    # position: child by name folds the name's hash in another domain.
    name = "a"
    crc = keys._name_to_int(name)
    assert _data(keys.child(root, name)) != _data(keys.child(root, crc))
    assert _data(keys.child(root, name)) != _data(keys.init_child(root, name))
    assert _data(keys.child(root, 3)) != _data(keys.init_child(root, 3))
    # The first layer of an MLP built from key(0) is not initialised with step 0's key.
    mlp = stoax.nn.MLP(4, 2, hidden=(8,), key=root)
    linear0 = stoax.nn.Linear(4, 8, key=stoax.step_key(0, 0))
    assert not np.array_equal(mlp.layers[0].weight, linear0.weight)


def _record_derivations(monkeypatch) -> list[tuple[bytes, int, int, bytes]]:
    """Every derivation stoax.keys makes at run time (inside jit, vmap and scan too), as
    (parent key data, domain, data, derived key data)."""
    records: list[tuple[bytes, int, int, bytes]] = []
    real = keys._fold

    def record(parent, domain, data, out):
        out = np.asarray(out).reshape(-1, np.shape(out)[-1])
        parent = np.asarray(parent).reshape(-1, np.shape(parent)[-1])
        parent = np.broadcast_to(parent, (len(out), parent.shape[-1]))  # vmapped data
        data = np.broadcast_to(np.asarray(data).reshape(-1), (len(out),))
        for p, d, o in zip(parent, data, out, strict=True):
            records.append((p.tobytes(), int(domain), int(d), o.tobytes()))

    def fold(key, domain, data):
        out = real(key, domain, data)
        jax.debug.callback(
            lambda p, d, o, domain=int(domain): record(p, domain, d, o),
            jax.random.key_data(key),
            jnp.asarray(data, jnp.uint32),
            jax.random.key_data(out),
        )
        return out

    monkeypatch.setattr(keys, "_fold", fold)
    jax.clear_caches()  # programs traced before the patch would not record
    return records


@pytest.mark.parametrize("model", ["mlp", "transformer"])
def test_every_key_of_a_training_run_is_distinct(monkeypatch, model):
    """The digits run (the MLP and the Transformer): the init keys of every layer, the step
    keys of three steps and every child key the forward passes derive are all different."""
    records = _record_derivations(monkeypatch)
    try:
        config = digits.Config(seed=0, model=model, batch_size=8)
        state = config.init_state(0.2)
        step = make_train_step(classification_loss, config.optimizer(), seed=config.seed)
        rng = np.random.default_rng(0)
        batch = {
            "x": rng.random((8, digits.N_PIXELS), np.float32),
            "y": rng.integers(0, digits.N_CLASSES, 8).astype(np.int32),
        }
        for _ in range(3):
            state, _ = step(state, batch)
        jax.effects_barrier()
    finally:
        jax.clear_caches()
    derivations = {(p, dom, d): o for p, dom, d, o in records}  # recomputations count once
    by_role = {dom for _, dom, _ in derivations}
    # the MLP's: each Linear's weight and bias keys are init keys by name
    roles = {keys.STEP, keys.POSITION, keys.NAME, keys.INIT_POSITION, keys.INIT_NAME}
    assert by_role == roles
    assert len({o for (_, dom, _), o in derivations.items() if dom == keys.STEP}) == 3
    outs = list(derivations.values())
    root = np.asarray(jax.random.key_data(jax.random.key(config.seed))).tobytes()
    if model == "mlp":  # "init" + 3 Linears (their key, weight, bias); per step: step key,
        # "dropouts", 0, 1
        assert len(outs) == 1 + 3 * 3 + 3 * 4
    else:
        assert len(outs) > 50
    assert len(set(outs)) == len(outs), "two derivations gave the same key"
    assert root not in set(outs)
    # Every key derived from is the root or itself a derived key: the whole run's randomness
    # comes from the seed through these derivations, so their distinctness is the whole story.
    assert {p for p, _, _ in derivations} <= set(outs) | {root}


@pytest.mark.parametrize(
    ("seed", "step", "error", "words"),
    [
        (0, 1.5, TypeError, "step must be an int"),
        (0, jnp.float32(1.0), TypeError, "step must be an int"),
        (0, True, TypeError, "bool"),
        (0, -1, ValueError, r"step must be in \[0, 2\*\*32\)"),
        (0, 2**32, ValueError, r"step must be in \[0, 2\*\*32\)"),
        (-1, 0, ValueError, r"seed must be in \[0, 2\*\*32\).*wrap"),
        (2**32, 0, ValueError, r"seed must be in \[0, 2\*\*32\)"),
        (0, np.asarray(-3, np.int32), ValueError, r"step must be in \[0, 2\*\*32\)"),
    ],
)
def test_step_key_refuses_bad_steps_and_seeds(seed, step, error, words):
    with pytest.raises(error, match=words):
        stoax.step_key(seed, step)


def test_step_key_accepts_ints_arrays_and_traced_steps():
    a = _data(stoax.step_key(7, 3))
    assert a == _data(stoax.step_key(np.int64(7), np.uint32(3)))
    assert a == _data(jax.jit(stoax.step_key)(jnp.int32(7), jnp.int32(3)))
    assert _data(stoax.step_key(0, 2**32 - 1)) != _data(stoax.step_key(0, 0))
    with pytest.raises(TypeError, match="named by a str or an int"):
        keys.child(jax.random.key(0), 1.5)
    with pytest.raises(TypeError, match="initialisation needs a key"):
        keys.init_child(None, "layer")
