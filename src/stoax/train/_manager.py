"""One checkpoint API for every scale: :class:`Checkpoints` keeps the last ``k`` checkpoints of a
run in a folder, as single safetensors files (small single-process runs) or as sharded orbax
checkpoints (multi-process runs, models sharded over many devices)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import jax

from stoax.train._checkpoint import load_checkpoint, save_checkpoint
from stoax.train._files import remove_stale_temps

__all__ = ["Checkpoints"]

T = TypeVar("T")
FORMATS = ("auto", "orbax", "safetensors")
_STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")


class _SafetensorsCheckpoints:
    """``step_NNNNNNNNN.safetensors`` files in a folder, written synchronously and atomically."""

    format = "safetensors"

    def __init__(self, directory: Path, *, keep: int | None):
        if jax.process_count() > 1:
            raise ValueError(
                f"stoax.train.Checkpoints: format='safetensors' writes one file from one process, "
                f"but this run has {jax.process_count()} processes. Use format='orbax' (or "
                "'auto'): every process then writes its own shards."
            )
        self.directory = directory
        self.keep = keep
        directory.mkdir(parents=True, exist_ok=True)

    def _path(self, step: int) -> Path:
        return self.directory / f"step_{step:09d}.safetensors"

    def save(self, step: int, tree: Any, *, metadata: Mapping[str, Any] | None = None) -> None:
        save_checkpoint(self._path(step), tree, metadata=metadata)
        if self.keep is not None:
            for old in self.steps()[: -self.keep]:
                self._path(old).unlink(missing_ok=True)

    def steps(self) -> list[int]:
        found = (_STEP_FILE.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def restore(self, step: int, like: T) -> tuple[T, dict[str, Any]]:
        remove_stale_temps(self.directory)
        return load_checkpoint(self._path(step), like)

    def wait(self) -> None:
        pass

    def saving(self) -> bool:
        return False

    def close(self) -> None:
        pass


def _detect(directory: Path) -> str | None:
    if not directory.is_dir():
        return None
    names = [p.name for p in directory.iterdir()]
    if any(_STEP_FILE.match(n) for n in names):
        return "safetensors"
    if any(n.isdigit() and (directory / n).is_dir() for n in names):
        return "orbax"
    return None


class Checkpoints:
    """The checkpoints of one run, in ``directory``: save every so often, restore the latest.

    ``format="auto"`` (the default) uses the format the folder already holds; for a new folder,
    sharded **orbax** checkpoints when the run has several processes, else single
    **safetensors** files. ``"orbax"``: every process writes the shards its devices hold, saves
    are asynchronous (``async_save``: :meth:`save` returns once the arrays are copied off the
    devices, and training goes on while they are written), and a checkpoint restores onto any
    mesh and any number of processes -- the template's shardings decide. ``"safetensors"``: one
    file per step, written synchronously and atomically (see
    :func:`~stoax.train.save_checkpoint`), single-process runs only. Either way the last ``keep``
    checkpoints are kept (``None``: all); a save cut short (the process killed mid-write) leaves
    the previous checkpoint restorable; typed key leaves come back with their PRNG implementation;
    a template of another model or optimiser is refused with :class:`~stoax.train.CheckpointError`
    naming the difference.

    With :func:`~stoax.train.fit`: ``on_epoch_end=lambda state, record: ckpts.save(state,
    metadata=record)``, and to resume, ``state, _ = ckpts.restore(fresh_state)``.

    Example:
        >>> import jax, optax, stoax, tempfile
        >>> from stoax.train import Checkpoints, TrainState
        >>> tx = optax.adam(1e-3)
        >>> state = TrainState.create(stoax.nn.Linear(3, 2, key=jax.random.key(0)), tx)
        >>> ckpts = Checkpoints(tempfile.mkdtemp(), keep=2)
        >>> ckpts.format
        'safetensors'
        >>> for step in (1, 2, 3):
        ...     _ = ckpts.save(state.replace(step=state.step + step))
        >>> ckpts.steps()
        [2, 3]
        >>> restored, metadata = ckpts.restore(state)
        >>> int(restored.step)
        3
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        keep: int | None = 3,
        format: str = "auto",
        async_save: bool = True,
    ):
        if format not in FORMATS:
            raise ValueError(
                f"stoax.train.Checkpoints: format must be one of {FORMATS}, got {format!r}."
            )
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise ValueError(
                f"stoax.train.Checkpoints: keep must be a whole number >= 1 (how many "
                f"checkpoints to keep) or None (all), got {keep!r}."
            )
        directory = Path(directory)
        if format == "auto":
            format = _detect(directory) or ("orbax" if jax.process_count() > 1 else "safetensors")
        if format == "orbax":
            from stoax.train._orbax import OrbaxCheckpoints

            self._backend: Any = OrbaxCheckpoints(directory, keep=keep, async_save=async_save)
        else:
            self._backend = _SafetensorsCheckpoints(directory, keep=keep)
        self.directory = directory
        self.format: str = format

    def save(
        self, tree: Any, *, step: int | None = None, metadata: Mapping[str, Any] | None = None
    ) -> int:
        """Save ``tree`` as checkpoint ``step`` (default: ``int(tree.step)``); return the step.

        In a multi-process run every process calls it (each writes its own shards). ``metadata``
        is any JSON-serialisable mapping; it comes back from :meth:`restore`.
        """
        if step is None:
            if getattr(tree, "step", None) is None:
                raise ValueError(
                    "stoax.train.Checkpoints.save: the tree has no `step`; pass step=."
                )
            step = int(jax.device_get(tree.step))
        step = int(step)
        if step in self.steps():
            raise ValueError(
                f"stoax.train.Checkpoints.save: {self.directory} already holds step {step}. "
                "Checkpoints are never overwritten; save another step, or restore this one."
            )
        self._backend.save(step, tree, metadata=metadata)
        return step

    def steps(self) -> list[int]:
        """The steps saved (and, for an asynchronous save, being saved), oldest first."""
        return self._backend.steps()

    def latest_step(self) -> int | None:
        """The newest step, or ``None`` for an empty folder."""
        steps = self.steps()
        return steps[-1] if steps else None

    def restore(self, like: T, *, step: int | None = None) -> tuple[T, dict[str, Any]]:
        """Read checkpoint ``step`` (default: the latest) into the structure and shardings of
        ``like`` (a fresh state placed as this run places it, or its ``jax.eval_shape``); return
        ``(tree, metadata)``. Waits for any save in flight first."""
        self.wait()
        if step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(
                    f"stoax.train.Checkpoints.restore: no checkpoint in {self.directory}."
                )
        elif int(step) not in self.steps():
            raise FileNotFoundError(
                f"stoax.train.Checkpoints.restore: no step {step} in {self.directory} (it holds "
                f"{self.steps()})."
            )
        return self._backend.restore(int(step), like)

    def wait(self) -> None:
        """Block until every asynchronous save is written and committed."""
        self._backend.wait()

    def saving(self) -> bool:
        """Whether an asynchronous save is still being written."""
        return self._backend.saving()

    def close(self) -> None:
        """Wait for saves in flight and release the folder."""
        self.wait()
        self._backend.close()

    def __enter__(self) -> Checkpoints:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
