"""Checkpoints: exact round trips, clear refusals of mismatched or corrupt files, atomic writes."""

import errno
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

import stoax
from stoax import train as st


def _state(hidden=(8,), dtype=jnp.float32, tx=None):
    tx = tx or optax.adam(1e-3)
    model = stoax.nn.MLP(4, 3, hidden=hidden, dropout=0.2, key=jax.random.key(0))
    if dtype != jnp.float32:
        model = jax.tree.map(lambda x: x.astype(dtype), model)
    return st.TrainState.create(model, tx)


def _bitwise_equal(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb, strict=True):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            if jax.random.key_impl(x) != jax.random.key_impl(y):
                return False
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        if x.dtype != y.dtype or np.asarray(x).tobytes() != np.asarray(y).tobytes():
            return False
    return True


def _perturbed(state):
    # Non-trivial values everywhere (a fresh Adam state is all zeros).
    leaves, treedef = jax.tree.flatten(state)
    rng = np.random.default_rng(1)
    new = [
        jnp.asarray(rng.normal(size=x.shape), x.dtype)
        if jnp.issubdtype(x.dtype, jnp.floating)
        else x + 7
        for x in leaves
    ]
    return jax.tree.unflatten(treedef, new)


def test_round_trip_is_bitwise_with_metadata(tmp_path):
    state = _perturbed(_state())
    path = st.save_checkpoint(tmp_path / "c.safetensors", state, metadata={"history": [0.5]})
    restored, meta = st.load_checkpoint(path, _state())
    assert _bitwise_equal(restored, state)
    assert meta == {"history": [0.5]}
    info = st.read_checkpoint_metadata(path)
    assert info["step"] == 7 and info["stoax_version"] == stoax.__version__
    assert os.listdir(tmp_path) == ["c.safetensors"]  # no temporary file left behind


def test_tensor_names_are_pytree_paths(tmp_path):
    from safetensors import safe_open

    path = st.save_checkpoint(tmp_path / "c.safetensors", _state())
    with safe_open(path, framework="np") as f:
        names = set(f.keys())
    assert {"step", "params/layers/0/weight", "opt_state/0/mu/layers/1/bias"} <= names


def test_bf16_round_trip(tmp_path):
    state = _perturbed(_state(dtype=jnp.bfloat16))
    st.save_checkpoint(tmp_path / "c.safetensors", state)
    restored, _ = st.load_checkpoint(tmp_path / "c.safetensors", _state(dtype=jnp.bfloat16))
    assert restored.params.layers[0].weight.dtype == jnp.bfloat16
    assert _bitwise_equal(restored, state)


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
def test_typed_keys_round_trip_with_their_implementation(tmp_path, impl):
    tree = {"key": jax.random.key(5, impl=impl), "keys": jax.random.split(jax.random.key(6), 3)}
    st.save_checkpoint(tmp_path / "k.safetensors", tree)
    template = jax.eval_shape(lambda: tree)  # an abstract template is enough
    restored, _ = st.load_checkpoint(tmp_path / "k.safetensors", template)
    assert _bitwise_equal(restored, tree)


def test_abstract_template(tmp_path):
    state = _perturbed(_state())
    st.save_checkpoint(tmp_path / "c.safetensors", state)
    restored, _ = st.load_checkpoint(tmp_path / "c.safetensors", jax.eval_shape(_state))
    assert _bitwise_equal(restored, state)


def test_other_model_shape_is_refused_by_name(tmp_path):
    st.save_checkpoint(tmp_path / "c.safetensors", _state(hidden=(8,)))
    with pytest.raises(
        st.CheckpointError,
        match=r"different model(.|\n)*"
        r"params/layers/0/weight: file has float32\[4, 8\], template has float32\[4, 16\]",
    ):
        st.load_checkpoint(tmp_path / "c.safetensors", _state(hidden=(16,)))


def test_other_structure_or_optimiser_is_refused(tmp_path):
    st.save_checkpoint(tmp_path / "c.safetensors", _state(hidden=(8,)))
    with pytest.raises(st.CheckpointError, match="in the template, missing from the file"):
        st.load_checkpoint(tmp_path / "c.safetensors", _state(hidden=(8, 8)))
    with pytest.raises(st.CheckpointError, match="in the file, not in the template"):
        st.load_checkpoint(tmp_path / "c.safetensors", _state(tx=optax.sgd(0.1)))
    with pytest.raises(st.CheckpointError, match="file has float32"):
        st.load_checkpoint(tmp_path / "c.safetensors", _state(dtype=jnp.bfloat16))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip", "empty"])
def test_corrupt_file_is_refused(tmp_path, damage):
    path = st.save_checkpoint(tmp_path / "c.safetensors", _perturbed(_state()))
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"not a checkpoint at all"
    elif damage == "flip":  # one bit of tensor data: only the checksum sees it
        data = data[:-5] + bytes([data[-5] ^ 1]) + data[-4:]
    else:
        data = b""
    path.write_bytes(data)
    with pytest.raises(st.CheckpointError, match="corrupt or truncated"):
        st.load_checkpoint(path, _state())


def test_foreign_safetensors_file_is_refused(tmp_path):
    save_file({"w": np.zeros(3, np.float32)}, tmp_path / "hf.safetensors")
    with pytest.raises(st.CheckpointError, match="not a stoax checkpoint"):
        st.load_checkpoint(tmp_path / "hf.safetensors", _state())


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        st.load_checkpoint(tmp_path / "nope.safetensors", _state())


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = st.save_checkpoint(tmp_path / "c.safetensors", _state(), metadata={"v": 1})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        st.save_checkpoint(path, _perturbed(_state()), metadata={"v": 2})
    monkeypatch.undo()
    assert st.read_checkpoint_metadata(path)["v"] == 1
    assert os.listdir(tmp_path) == ["c.safetensors"]


def _kernel_enospc(*args):
    """Raise the kernel's own "No space left on device": a write to /dev/full."""
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)
    raise AssertionError("/dev/full accepted a write")  # pragma: no cover


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_names_the_checkpoint_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    # The probe: a full disk during save raised a raw OSError about a temporary file. On file
    # systems with delayed allocation ENOSPC surfaces at fsync; here fsync gets the kernel's
    # genuine ENOSPC from /dev/full.
    path = st.save_checkpoint(tmp_path / "c.safetensors", _state(), metadata={"v": 1})
    monkeypatch.setattr(os, "fsync", _kernel_enospc)
    with pytest.raises(OSError) as info:
        st.save_checkpoint(path, _perturbed(_state()), metadata={"v": 2})
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    message = str(info.value)
    assert f"cannot write the checkpoint {path}: No space left on device" in message
    assert "was left as it was" in message and "Free some space" in message
    assert ".stoax-tmp-" not in message  # the user's file, not the temporary one
    assert st.read_checkpoint_metadata(path)["v"] == 1  # the earlier checkpoint survives
    assert os.listdir(tmp_path) == ["c.safetensors"]  # and no temporary file is left


def test_save_into_a_missing_folder_names_that_folder(tmp_path):
    target = tmp_path / "no" / "such" / "c.safetensors"
    with pytest.raises(FileNotFoundError) as info:
        st.save_checkpoint(target, _state())
    message = str(info.value)
    assert f"the folder {target.parent} does not exist" in message and "os.makedirs" in message
    assert ".stoax-tmp-" not in message and not (tmp_path / "no").exists()


def _dead_writers_temp(folder, name="c.safetensors"):
    # What a writer killed mid-write leaves: a temporary file nobody holds a lock on (the
    # kernel drops a dead process's flock).
    temp = folder / f".{name}.stoax-tmp-4242-0123abcd"
    temp.write_bytes(b"\0" * 1000)
    return temp


@pytest.mark.parametrize("next_operation", ["save", "load"])
def test_temp_file_of_a_killed_writer_is_removed(tmp_path, next_operation):
    fcntl = pytest.importorskip("fcntl", reason="stale files are told apart by flock (POSIX)")
    path = st.save_checkpoint(tmp_path / "c.safetensors", _state())
    stale = _dead_writers_temp(tmp_path)
    # A writer still at work holds the lock on its temporary file: that one must stay.
    live = tmp_path / ".c.safetensors.stoax-tmp-99-89abcdef"
    fd = os.open(live, os.O_WRONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        if next_operation == "save":
            st.save_checkpoint(path, _state())
        else:
            st.load_checkpoint(path, _state())
        assert not stale.exists()
        assert live.exists()
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == [live.name, "c.safetensors"]


def _edit_header(path, edit):
    """Rewrite the safetensors JSON header of ``path`` through ``edit(header)``."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])


def test_edited_history_is_refused_as_corrupt(tmp_path):
    # The probe: the header (history, config) was outside the checksum, so an edited history
    # loaded without complaint.
    meta = {"history": [{"epoch": 1, "test_accuracy": 0.5}]}
    path = st.save_checkpoint(tmp_path / "c.safetensors", _state(), metadata=meta)

    def edit(header):
        header["__metadata__"]["user"] = header["__metadata__"]["user"].replace("0.5", "0.99")

    _edit_header(path, edit)
    for read in (
        lambda: st.load_checkpoint(path, _state()),
        lambda: st.read_checkpoint_metadata(path),
    ):
        with pytest.raises(st.CheckpointError, match="corrupt or truncated: its header"):
            read()


def test_damaged_structure_field_is_corrupt_not_another_model(tmp_path):
    path = st.save_checkpoint(tmp_path / "c.safetensors", _state())

    def edit(header):
        meta = header["__metadata__"]
        meta["structure"] = meta["structure"].replace("[4, 8]", "[4, 9]", 1)

    _edit_header(path, edit)
    with pytest.raises(st.CheckpointError) as info:
        st.load_checkpoint(path, _state())
    assert "corrupt or truncated" in str(info.value)
    assert "different model" not in str(info.value)


def test_tensor_shape_in_the_safetensors_table_is_checked(tmp_path):
    # The safetensors table of shapes is not under the checksum: a [4, 8] weight relabelled
    # [8, 4] has the same bytes. It must not load as a transposed weight.
    path = st.save_checkpoint(tmp_path / "c.safetensors", _perturbed(_state()))
    _edit_header(path, lambda h: h["params/layers/0/weight"].update(shape=[8, 4]))
    with pytest.raises(st.CheckpointError, match=r"corrupt(.|\n)*params/layers/0/weight"):
        st.load_checkpoint(path, _state())


def test_checkpoint_of_format_1_still_loads(tmp_path):
    # Format 1 (before the header checksum): the same file without `header_sha256`.
    state = _perturbed(_state())
    path = st.save_checkpoint(tmp_path / "c.safetensors", state, metadata={"v": 1})

    def to_format_1(header):
        meta = header["__metadata__"]
        meta["format"] = "stoax.checkpoint/1"
        del meta["header_sha256"]

    _edit_header(path, to_format_1)
    restored, meta = st.load_checkpoint(path, _state())
    assert _bitwise_equal(restored, state) and meta == {"v": 1}


def test_checkpoint_of_a_newer_format_asks_for_an_upgrade(tmp_path):
    path = st.save_checkpoint(tmp_path / "c.safetensors", _state())
    _edit_header(path, lambda h: h["__metadata__"].update(format="stoax.checkpoint/9"))
    with pytest.raises(st.CheckpointError, match="newer stoax.*Upgrade stoax"):
        st.load_checkpoint(path, _state())


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(TypeError, match="JSON"):
        st.save_checkpoint(tmp_path / "c.safetensors", _state(), metadata={"f": object()})
    assert json.dumps({}) == "{}"
