"""Training curves as a PNG (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from stoax.train._extras import require
from stoax.train._files import atomic_write

__all__ = ["plot_history"]


def plot_history(
    histories: Mapping[str, Sequence[Mapping[str, float]]],
    path: str | os.PathLike[str],
    *,
    title: str = "Training curves",
    sets: Sequence[str] = ("train", "test"),
) -> Path:
    """Plot accuracy and loss per epoch of one or more runs into a PNG at ``path``.

    ``histories`` maps a run's label to its records (as :func:`stoax.train.fit` returns them);
    for each evaluation set in ``sets`` the curves ``{set}_accuracy`` and ``{set}_loss`` are drawn,
    one colour per run, one line style per set. The file is written atomically (a temporary file
    renamed over ``path``), like a checkpoint.

    Example:
        >>> import os, tempfile
        >>> from stoax.train import plot_history
        >>> records = [{"epoch": 1, "train_accuracy": 0.5, "test_accuracy": 0.4,
        ...             "train_loss": 1.0, "test_loss": 1.2}]
        >>> path = plot_history({"run": records}, os.path.join(tempfile.mkdtemp(), "c.png"))
        >>> path.suffix
        '.png'
    """
    matplotlib = require("matplotlib", "plot_history")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    styles = ["-", "--", ":", "-."]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.4))
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.85, wspace=0.22)
    for colour, (label, records) in enumerate(histories.items()):
        epochs = [r["epoch"] for r in records]
        for style, set_name in zip(styles, sets, strict=False):
            for ax, metric in ((ax_acc, "accuracy"), (ax_loss, "loss")):
                key = f"{set_name}_{metric}"
                if records and key in records[0]:
                    values = [r[key] for r in records]
                    if metric == "accuracy":
                        values = [100 * v for v in values]
                    ax.plot(epochs, values, style, color=f"C{colour}", label=f"{label}, {set_name}")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy (evaluation mode)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="Loss (evaluation mode)")
    ax_loss.set_yscale("log")
    for ax in (ax_acc, ax_loss):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    path = Path(path)
    try:
        with atomic_write(path, what="the plot") as f:  # a crash never leaves half a PNG
            fig.savefig(f, dpi=120, format=path.suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)
    return path
