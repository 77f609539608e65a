"""Checkpoints as safetensors files.

Why safetensors: it is a simple, safe (no pickle, so loading runs no code), framework-neutral
tensor file that PyTorch, JAX, NumPy and the Hugging Face tools all read, and a small synchronous
write fits a small training loop. Orbax is the heavier choice: asynchronous, multi-host,
directory-based -- worth it for sharded giant models, not needed here.

The file holds every array leaf of a pytree (a :class:`~stoax.train.TrainState`: parameters,
other model arrays, optimiser state, step) under its pytree path (``params/layers/0/weight``).
Typed key arrays are stored as their ``uint32`` key data, with the PRNG implementation in the
metadata. The metadata also holds the format, the stoax version, the step, the structure (name,
dtype, shape of every tensor) with its fingerprint, a SHA-256 of the tensor bytes, the caller's
own JSON metadata, and a SHA-256 of all of these (the header checksum): a damaged or edited
header -- the training history, the structure -- is refused as corrupt, like damaged tensors.
Loading needs a *template* -- a pytree built the way the saved one was (or its
``jax.eval_shape``) -- and refuses a file whose structure differs, naming the difference.

Files of format ``stoax.checkpoint/1`` (stoax before the header checksum) still load; only their
tensors are checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from stoax.keys import is_key
from stoax.train._extras import require
from stoax.train._files import atomic_write, remove_stale_temps

__all__ = ["CheckpointError", "load_checkpoint", "read_checkpoint_metadata", "save_checkpoint"]

FORMAT = "stoax.checkpoint/2"
LEGACY_FORMAT = "stoax.checkpoint/1"  # no header checksum
T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: corrupt, not a stoax checkpoint, or made for another
    model or optimiser than the template it is loaded into."""


def save_checkpoint(
    path: str | os.PathLike[str], tree: Any, *, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write ``tree`` (e.g. a :class:`~stoax.train.TrainState`) to ``path`` as safetensors.

    The write is atomic: the file is written beside ``path`` under a hidden temporary name,
    flushed to disk and renamed over ``path``, so a crash never leaves a half-written checkpoint,
    and a failed write (a full disk) raises an ``OSError`` naming ``path`` and leaves the
    checkpoint that was there as it was. A temporary file left by a writer that was killed is
    removed by the next save or load in that folder. The folder must exist.
    ``metadata`` is any JSON-serialisable mapping (a config, the metrics so far); it comes back
    from :func:`load_checkpoint` and :func:`read_checkpoint_metadata`.

    Example:
        >>> import jax, optax, stoax, tempfile, os
        >>> from stoax.train import TrainState, load_checkpoint, save_checkpoint
        >>> tx = optax.adam(1e-3)
        >>> make = lambda: TrainState.create(stoax.nn.Linear(3, 2, key=jax.random.key(0)), tx)
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.safetensors")
        >>> _ = save_checkpoint(path, make(), metadata={"note": "hello"})
        >>> state, meta = load_checkpoint(path, make())
        >>> int(state.step), meta
        (0, {'note': 'hello'})
    """
    save = require("safetensors.numpy", "save_checkpoint").save
    path = Path(path)
    tensors, keys = _flatten(tree)
    structure = [list(entry) for entry in _structure_of(tree)[0]]
    try:
        user = json.dumps(dict(metadata or {}), sort_keys=True, allow_nan=True)
    except TypeError as err:
        raise TypeError(f"save_checkpoint: metadata must be JSON-serialisable ({err}).") from err
    step = getattr(tree, "step", None)
    header = {
        "format": FORMAT,
        "stoax_version": _version(),
        "step": "" if step is None else str(int(step)),
        "structure": json.dumps(structure),
        "fingerprint": _fingerprint(structure),
        "keys": json.dumps(keys, sort_keys=True),
        "sha256": _digest(tensors),
        "user": user,
    }
    header["header_sha256"] = _header_digest(header)
    data = save(tensors, metadata=header)
    with atomic_write(path, what="the checkpoint") as f:
        f.write(data)
    return path


def read_checkpoint_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The caller's metadata of a checkpoint, plus ``"step"`` and ``"stoax_version"``; reads the
    header only.

    Raises :class:`CheckpointError` for a file that is not a readable stoax checkpoint.
    """
    header = _read_header(Path(path))
    info = _user(header, Path(path))
    info.setdefault("step", int(header["step"]) if header.get("step") else None)
    info.setdefault("stoax_version", header.get("stoax_version"))
    return info


def load_checkpoint(path: str | os.PathLike[str], like: T) -> tuple[T, dict[str, Any]]:
    """Read the checkpoint at ``path`` into the structure of ``like``; return ``(tree, metadata)``.

    ``like`` is a template: a pytree built the same way as the saved one (a fresh model and
    optimiser state), or its ``jax.eval_shape``. Its structure, shapes and dtypes must match the
    file's exactly, otherwise :class:`CheckpointError` names what differs. Arrays land on the
    template leaves' devices (shardings). The result is bitwise the saved tree. See
    :func:`save_checkpoint` for an example.
    """
    path = Path(path)
    header = _read_header(path)
    remove_stale_temps(path.parent)
    expected, expected_keys = _structure_of(like)
    try:
        stored = [tuple(entry) for entry in json.loads(header["structure"])]
        stored_keys = json.loads(header["keys"])
    except (KeyError, ValueError, TypeError) as err:
        raise _corrupt(path, f"its structure metadata is unreadable ({err})") from None
    _check_structure(path, stored, header.get("fingerprint", "?"), expected)
    for name in expected_keys:
        if name not in stored_keys:
            raise _mismatch(path, [f"{name}: the template holds a key array, the file does not"])
    tensors = _read_tensors(path, stored)
    if _digest({k: np.asarray(v) for k, v in tensors.items()}) != header.get("sha256"):
        raise _corrupt(path, "its tensor data does not match the checksum written with it")

    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(like)
    leaves = []
    for leaf_path, leaf in leaves_with_path:
        name = _name(leaf_path)
        value = tensors[name]
        if name in stored_keys:
            value = jax.random.wrap_key_data(value, impl=stored_keys[name])
        sharding = getattr(leaf, "sharding", None)
        leaves.append(jax.device_put(value, sharding) if sharding is not None else value)
    return jax.tree.unflatten(treedef, leaves), _user(header, path)


# -- writing -------------------------------------------------------------------------------------


def _name(path: tuple[Any, ...]) -> str:
    return jax.tree_util.keystr(path, simple=True, separator="/") or "/"


def _flatten(tree: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    tensors: dict[str, np.ndarray] = {}
    keys: dict[str, str] = {}
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = _name(leaf_path)
        if name in tensors:
            raise ValueError(f"save_checkpoint: two leaves share the tensor name {name!r}.")
        if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
            raise TypeError(
                f"save_checkpoint: the leaf at {name!r} is a {type(leaf).__name__}, not an array; "
                "a checkpoint stores arrays only (make it a jnp array, or static metadata)."
            )
        if is_key(leaf):
            keys[name] = str(jax.random.key_impl(leaf))
            leaf = jax.random.key_data(leaf)
        tensors[name] = np.asarray(jax.device_get(leaf))
    return tensors, keys


def _fingerprint(structure: list[list[Any]]) -> str:
    return hashlib.sha256(json.dumps(structure).encode()).hexdigest()[:16]


def _digest(tensors: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.asarray(tensors[name]).tobytes())
    return h.hexdigest()


def _header_digest(header: Mapping[str, str]) -> str:
    fields = {k: v for k, v in header.items() if k != "header_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def _version() -> str:
    from stoax import __version__

    return __version__


# -- reading -------------------------------------------------------------------------------------


def _read_header(path: Path) -> dict[str, str]:
    safe_open = require("safetensors", "load_checkpoint").safe_open
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: the file does not exist.")
    try:
        with safe_open(path, framework="flax") as f:
            header = f.metadata() or {}
    except Exception as err:  # safetensors raises its own SafetensorError (and OSError)
        raise _corrupt(path, f"it is not a readable safetensors file ({err})") from None
    found = header.get("format")
    if found == FORMAT:
        if header.get("header_sha256") != _header_digest(header):
            raise _corrupt(
                path,
                "its header (metadata, training history, structure) does not match the checksum "
                "written with it",
            )
    elif found != LEGACY_FORMAT:
        if isinstance(found, str) and re.fullmatch(r"stoax\.checkpoint/\d+", found):
            raise CheckpointError(
                f"{path} is a checkpoint of format {found!r}, written by a newer stoax than this "
                f"one ({_version()}, which reads {FORMAT!r}). Upgrade stoax to load it."
            )
        if "header_sha256" in header or "structure" in header:
            raise _corrupt(path, f"its format field is damaged ({found!r})")
        raise CheckpointError(
            f"{path} is a safetensors file but not a stoax checkpoint (its metadata has no "
            f"format {FORMAT!r}). Load it with safetensors directly, or point at a file written "
            "by stoax.train.save_checkpoint."
        )
    return header


def _read_tensors(path: Path, stored: list[tuple[Any, ...]]) -> dict[str, jax.Array]:
    """The tensors named in the (checksummed) structure, each checked against its stored dtype
    and shape: the safetensors file's own table of shapes is not covered by a checksum."""
    safe_open = require("safetensors", "load_checkpoint").safe_open
    try:
        with safe_open(path, framework="flax") as f:
            tensors = {name: f.get_tensor(name) for name, _, _ in stored}
    except Exception as err:
        raise _corrupt(path, f"its tensors cannot be read ({err})") from None
    for name, dtype, shape in stored:
        tensor = tensors[name]
        is_key_data = dtype.startswith("key<")
        if list(tensor.shape) != list(shape) or (not is_key_data and str(tensor.dtype) != dtype):
            raise _corrupt(
                path,
                f"the tensor {name!r} is stored as {tensor.dtype}{list(tensor.shape)}, but its "
                f"header says {dtype}{list(shape)}",
            )
    return tensors


def _user(header: Mapping[str, str], path: Path) -> dict[str, Any]:
    try:
        return json.loads(header.get("user") or "{}")
    except ValueError as err:
        raise _corrupt(path, f"its metadata is not valid JSON ({err})") from None


def _structure_of(tree: Any) -> tuple[list[tuple[Any, ...]], set[str]]:
    """``(name, dtype, shape)`` of every leaf, sorted by name (a key array as ``key<impl>`` and
    its key data's shape), and the names of the key leaves. For the saved tree and for a
    template alike: arrays and ``jax.ShapeDtypeStruct`` s."""
    structure, keys = [], set()
    for leaf_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = _name(leaf_path)
        if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
            raise TypeError(
                f"load_checkpoint: the template's leaf at {name!r} is a {type(leaf).__name__}, "
                "not an array (or jax.ShapeDtypeStruct)."
            )
        if is_key(leaf):
            keys.add(name)
            impl = leaf.dtype._impl.name  # works for arrays and ShapeDtypeStructs alike
            shape = jax.eval_shape(jax.random.key_data, leaf).shape
            structure.append((name, f"key<{impl}>", list(shape)))
        else:
            structure.append((name, str(jnp.dtype(leaf.dtype)), list(leaf.shape)))
    return sorted(structure), keys


def _check_structure(
    path: Path, stored: list[tuple[Any, ...]], fingerprint: str, expected: list[tuple[Any, ...]]
) -> None:
    if stored == expected:
        return
    stored_by_name = {name: (dtype, shape) for name, dtype, shape in stored}
    expected_by_name = {name: (dtype, shape) for name, dtype, shape in expected}
    problems = []
    for name in expected_by_name.keys() - stored_by_name.keys():
        problems.append(f"{name}: in the template, missing from the file")
    for name in stored_by_name.keys() - expected_by_name.keys():
        problems.append(f"{name}: in the file, not in the template")
    for name in stored_by_name.keys() & expected_by_name.keys():
        (sd, ss), (ed, es) = stored_by_name[name], expected_by_name[name]
        if (sd, list(ss)) != (ed, list(es)):
            problems.append(f"{name}: file has {sd}{list(ss)}, template has {ed}{list(es)}")
    problems.sort(key=lambda p: (p.startswith("opt_state/"), p))  # the model's own first
    raise _mismatch(path, problems, fingerprint, _fingerprint([list(e) for e in expected]))


def _mismatch(path: Path, problems: list[str], got: str = "?", want: str = "?") -> CheckpointError:
    shown = "\n  ".join(problems[:8])
    more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
    return CheckpointError(
        f"{path} was saved from a different model or optimiser than the template it is loaded "
        f"into (structure fingerprint {got} in the file, {want} for the template):\n  "
        f"{shown}{more}\nBuild the template exactly as the saved run was built (same model "
        "sizes, same optimiser), or start a new run instead of resuming."
    )


def _corrupt(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is corrupt or truncated: {why}. Delete it and start again, or restore it from a "
        "copy."
    )
