"""What the examples' runs share: where a run's checkpoint lives, and when it may be resumed."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

__all__ = ["check_resumable", "checkpoint_path"]


def checkpoint_path(out: Path, stem: str) -> Path:
    """Where run ``stem``'s checkpoint lives in the experiment folder ``out``.

    Example:
        >>> checkpoint_path(Path("runs/digits"), "dropout").as_posix()
        'runs/digits/dropout.safetensors'
    """
    return Path(out) / f"{stem}.safetensors"


def check_resumable(config: Any, path: Path) -> None:
    """Refuse a checkpoint trained with other settings than the dataclass ``config`` (only
    ``epochs`` may change), naming each setting that differs."""
    from stoax import train as st

    def comparable(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if k != "epochs"}

    was = comparable(dict(st.read_checkpoint_metadata(path).get("config", {})))
    now = comparable(dataclasses.asdict(config))
    if was != now:
        diffs = ", ".join(
            f"{k}={was.get(k)!r} (now {now.get(k)!r})" for k in sorted(now) if was.get(k) != now[k]
        )
        raise st.CheckpointError(
            f"{path} was trained with other settings: {diffs}. Resume with the same options "
            "(only --epochs may change), or pass --overwrite to start a new run."
        )
