"""Sharded checkpoints with orbax: every process writes its own shards, restore onto any mesh.

A checkpoint is a step folder of an ``orbax.checkpoint.CheckpointManager`` directory holding two
items: ``state``, the array leaves of the pytree (a :class:`~stoax.train.TrainState`) saved
with orbax's standard handler -- each process writes the shards its devices hold, in parallel --
and ``meta``, a JSON record: the format, the stoax version, the step, the structure (name,
dtype, shape of every leaf, as in the safetensors format) and the PRNG implementation of every
typed key leaf (stored as its ``uint32`` key data, wrapped back on restore). The caller's own
metadata rides along.

Restoring reads into the shardings of a template: each leaf of ``like`` that has a ``sharding``
(a placed array, or a ``jax.ShapeDtypeStruct`` with one) is read straight into it, so a
checkpoint written by 2 processes on a ``(4, 2)`` mesh restores on 1 process on one device, and
the other way round. A leaf with no sharding is restored replicated on every device.

Orbax writes a step into a temporary folder and renames it when every process is done: a save
cut short (a process killed, a full disk) leaves no step behind, and the previous one restores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from stoax.keys import is_key
from stoax.train._checkpoint import (
    CheckpointError,
    _check_structure,
    _fingerprint,
    _name,
    _structure_of,
    _version,
)
from stoax.train._extras import require

__all__ = ["OrbaxCheckpoints"]

FORMAT = "stoax.orbax/1"
T = TypeVar("T")


def _ocp() -> Any:
    return require("orbax.checkpoint", "sharded checkpoints (stoax.train.Checkpoints)")


def _leaf_id(i: int) -> str:
    return f"{i:06d}"


class OrbaxCheckpoints:
    """A folder of sharded orbax checkpoints, one step folder per save, the last ``keep`` kept.

    Prefer :class:`stoax.train.Checkpoints`, which picks this format or safetensors.
    """

    format = "orbax"

    def __init__(self, directory: str | Path, *, keep: int | None = 3, async_save: bool = True):
        ocp = _ocp()
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    # -- saving --

    def save(self, step: int, tree: Any, *, metadata: Mapping[str, Any] | None = None) -> None:
        ocp = _ocp()
        arrays: dict[str, Any] = {}
        keys: dict[str, str] = {}
        for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(tree)[0]):
            if not hasattr(leaf, "dtype") or not hasattr(leaf, "shape"):
                raise TypeError(
                    f"Checkpoints.save: the leaf at {_name(path)!r} is a {type(leaf).__name__}, "
                    "not an array; a checkpoint stores arrays only."
                )
            if is_key(leaf):
                keys[_name(path)] = str(jax.random.key_impl(leaf))
                leaf = jax.random.key_data(leaf)
            arrays[_leaf_id(i)] = leaf
        structure = [list(entry) for entry in _structure_of(tree)[0]]
        try:
            user = json.loads(json.dumps(dict(metadata or {}), allow_nan=True))
        except TypeError as err:
            raise TypeError(
                f"Checkpoints.save: metadata must be JSON-serialisable ({err})."
            ) from err
        meta = {
            "format": FORMAT,
            "stoax_version": _version(),
            "step": int(step),
            "structure": structure,
            "fingerprint": _fingerprint(structure),
            "keys": keys,
            "user": user,
        }
        self._manager.save(
            int(step),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)
            ),
        )

    def wait(self) -> None:
        """Block until every asynchronous save has been written and committed."""
        self._manager.wait_until_finished()

    def saving(self) -> bool:
        """Whether an asynchronous save is still being written."""
        return bool(self._manager.is_saving_in_progress())

    # -- reading --

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def metadata(self, step: int) -> dict[str, Any]:
        ocp = _ocp()
        where = self.directory / str(step)
        try:
            meta = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )["meta"]
        except Exception as err:  # orbax raises a variety of errors for a damaged folder
            raise CheckpointError(
                f"{where} is not a readable stoax orbax checkpoint ({type(err).__name__}: {err})."
            ) from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(
                f"{where} is not a stoax orbax checkpoint (format {FORMAT!r} missing from its "
                "metadata)."
            )
        return meta

    def restore(self, step: int, like: T) -> tuple[T, dict[str, Any]]:
        ocp = _ocp()
        meta = self.metadata(step)
        where = self.directory / str(step)
        expected, expected_keys = _structure_of(like)
        stored = [tuple(entry) for entry in meta["structure"]]
        _check_structure(where, stored, meta.get("fingerprint", "?"), expected)
        stored_keys = meta.get("keys", {})
        leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(like)
        replicated = NamedSharding(
            jax.sharding.Mesh(np.array(jax.devices()), ("all",)), PartitionSpec()
        )
        target = {}
        for i, (path, leaf) in enumerate(leaves_with_path):
            name = _name(path)
            sharding = getattr(leaf, "sharding", None) or replicated
            if is_key(leaf):
                if name not in stored_keys:
                    raise CheckpointError(
                        f"{where}: {name} is a key array in the template but not in the checkpoint."
                    )
                data = jax.eval_shape(jax.random.key_data, leaf)
                target[_leaf_id(i)] = jax.ShapeDtypeStruct(
                    data.shape, data.dtype, sharding=sharding
                )
            else:
                target[_leaf_id(i)] = jax.ShapeDtypeStruct(
                    leaf.shape, leaf.dtype, sharding=sharding
                )
        try:
            arrays = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )["state"]
        except Exception as err:
            raise CheckpointError(
                f"{where} could not be restored ({type(err).__name__}: {err}). Is it complete? "
                "Restore an earlier step."
            ) from None
        leaves = []
        for i, (path, _) in enumerate(leaves_with_path):
            value = arrays[_leaf_id(i)]
            name = _name(path)
            if name in stored_keys:
                value = jax.random.wrap_key_data(value, impl=stored_keys[name])
            leaves.append(value)
        return jax.tree.unflatten(treedef, leaves), meta.get("user", {})

    def close(self) -> None:
        self._manager.close()
