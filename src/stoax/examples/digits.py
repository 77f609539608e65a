"""The digits example: an MLP on scikit-learn's bundled 8x8 digits, with and without dropout.

The data set ships with scikit-learn (1797 images, 10 classes; no download). Every source of
randomness is a function of the seed: the train/test split, the initial weights, the batch order
of each epoch and the dropout key of each step -- so two runs with one seed agree bit for bit, and
a run resumed from its checkpoint equals the uninterrupted one.

A model is one small function ``make(rate, *, key) -> module`` mapping ``(batch, 64)`` pixels in
[0, 1] to ``(batch, 10)`` logits; register it in :data:`MODELS` to offer it as ``--model``.

Example:
    >>> from stoax.examples import digits
    >>> train, test = digits.load_data(seed=0)
    >>> train["x"].shape, test["x"].shape, train["x"].dtype.name
    ((1437, 64), (360, 64), 'float32')
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import stoax
from stoax import train as st
from stoax.examples._runs import check_resumable, checkpoint_path
from stoax.examples._table import align_table
from stoax.examples.digits_cnn import make_cnn
from stoax.train._extras import require

__all__ = [
    "MODELS",
    "Config",
    "load_data",
    "make_mlp",
    "run_experiment",
    "runs",
    "summary",
    "format_table",
]

IMAGE_SIDE, N_CLASSES = 8, 10
N_PIXELS = IMAGE_SIDE * IMAGE_SIDE


def load_data(
    seed: int, test_fraction: float = 0.2
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The digits split into ``(train, test)`` dicts of ``x`` (float32 pixels in [0, 1]) and
    ``y`` (int32 labels): a stratified split that depends on ``seed`` only."""
    load_digits = require("sklearn.datasets", "the digits example").load_digits
    train_test_split = require("sklearn.model_selection", "the digits example").train_test_split
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, stratify=y
    )
    return {"x": x_tr, "y": y_tr}, {"x": x_te, "y": y_te}


def make_mlp(rate: float | jax.Array, *, key: jax.Array) -> stoax.Module:
    """64 pixels -> 256 -> 256 -> 10 logits, GELU, dropout ``rate`` after each hidden layer."""
    return stoax.nn.MLP(N_PIXELS, N_CLASSES, hidden=(256, 256), dropout=rate, key=key)


class RowTransformer(stoax.Module):
    """A Transformer reading each 8x8 image as a sequence of its 8 rows: a row of 8 pixels is
    one token, embedded by a Linear, plus a learned position embedding; pre-norm
    Transformer blocks in a :class:`~stoax.nn.Stack`; mean-pooled into 10 logits.

    Rows rather than single pixels as tokens: a sequence of 8 instead of 64 makes attention 64x
    cheaper, and a token then carries a stroke rather than one intensity."""

    embed: stoax.nn.Linear
    pos_embed: jax.Array
    embed_dropout: stoax.nn.Dropout
    blocks: stoax.nn.Stack
    norm: stoax.nn.LayerNorm
    head: stoax.nn.Linear

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        k_drop, k_blocks = stoax.keys.derive(key, "embed_dropout", "blocks")
        rows = x.reshape(*x.shape[:-1], IMAGE_SIDE, IMAGE_SIDE)
        h = self.embed_dropout(self.embed(rows) + self.pos_embed, key=k_drop)
        h = self.norm(self.blocks(h, key=k_blocks))
        return self.head(h.mean(axis=-2))


def make_transformer(rate: float | jax.Array, *, key: jax.Array) -> stoax.Module:
    """A 2-layer, 64-wide, 4-head :class:`RowTransformer`; dropout ``rate`` on the embeddings,
    residual branches, MLP hidden layers and attention probabilities."""
    k_embed, k_pos, k_blocks, k_head = stoax.keys.init_derive(key, "embed", "pos", "blocks", "head")
    width = 64

    def block(k: jax.Array) -> stoax.nn.TransformerBlock:
        return stoax.nn.TransformerBlock(
            width, num_heads=4, dropout=rate, attention_dropout=rate, key=k
        )

    return RowTransformer(
        embed=stoax.nn.Linear(IMAGE_SIDE, width, key=k_embed),
        pos_embed=0.02 * jax.random.normal(k_pos, (IMAGE_SIDE, width)),
        embed_dropout=stoax.nn.Dropout(rate),
        blocks=stoax.nn.Stack.build(block, 2, key=k_blocks),
        norm=stoax.nn.LayerNorm(width),
        head=stoax.nn.Linear(width, N_CLASSES, key=k_head),
    )


# name -> model builder; the command line offers these as ``--model``.
MODELS: dict[str, Callable[..., stoax.Module]] = {"mlp": make_mlp, "transformer": make_transformer}
MODELS["cnn"] = make_cnn  # a CNN with BatchNorm: see stoax.examples.digits_cnn


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings of an experiment. ``rate`` is the dropout rate of the dropout run (the other
    run uses 0). Every field but ``epochs`` must match to resume a run."""

    seed: int = 0
    epochs: int = 40
    rate: float = 0.2
    model: str = "mlp"
    batch_size: int = 64
    learning_rate: float = 1e-3

    def optimizer(self) -> optax.GradientTransformation:
        return _adam(self.learning_rate)

    def init_state(self, rate: float) -> st.TrainState:
        """The fresh train state of a run: the model built from the seed, Adam at step 0.

        Both runs start from the same weights (dropout adds no parameters). The dropout rate is
        a JAX array, a non-trainable leaf: the two runs differ in a value, not in structure, so
        they share every compiled program (init, train step, evaluation)."""
        key = stoax.keys.child(jax.random.key(self.seed), "init")
        rate_leaf = jnp.asarray(rate, jnp.float32)
        return _init_state(key, rate_leaf, make=MODELS[self.model], tx=self.optimizer())


@functools.cache
def _adam(learning_rate: float) -> optax.GradientTransformation:
    # One object per learning rate: jitted functions keyed on it compile once per process.
    return optax.adam(learning_rate)


@functools.partial(jax.jit, static_argnames=("make", "tx"))
def _init_state(key: jax.Array, rate: jax.Array, *, make: Callable, tx: Any) -> st.TrainState:
    return st.TrainState.create(make(rate, key=key), tx)


def runs(config: Config) -> list[tuple[str, str, float]]:
    """The two runs of an experiment: ``(file stem, label, dropout rate)``."""
    return [("dropout", f"dropout {config.rate:g}", config.rate), ("no_dropout", "no dropout", 0.0)]


def train_run(
    config: Config,
    stem: str,
    label: str,
    rate: float,
    out: Path,
    data: tuple[dict[str, np.ndarray], dict[str, np.ndarray]],
    *,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train one run on ``data = (train, test)`` (from its checkpoint in ``out`` when
    ``resume``), saving a checkpoint after every epoch; return its per-epoch metrics."""
    train, test = data
    tx = config.optimizer()
    path = checkpoint_path(out, stem)
    resuming = resume and path.exists()
    if resuming:
        check_resumable(config, path)
    state = config.init_state(rate)
    history: list[dict[str, float]] = []
    if resuming:
        state, meta = st.load_checkpoint(path, state)
        history = list(meta.get("history", []))

    def save(state: st.TrainState, record: dict[str, float]) -> None:
        history.append(record)
        meta = {"config": dataclasses.asdict(config), "run": stem, "rate": rate, "history": history}
        st.save_checkpoint(path, state, metadata=meta)

    st.fit(
        state,
        tx,
        st.classification_loss,
        train,
        seed=config.seed,
        epochs=config.epochs,
        batch_size=config.batch_size,
        eval_data={"train": train, "test": test},
        progress=progress,
        description=label,
        on_epoch_end=save,
    )
    return history


def run_experiment(
    config: Config, out: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, list[dict[str, float]]]:
    """Both runs, their checkpoints and ``curves.png`` in ``out``; returns label -> history."""
    data = load_data(config.seed)
    histories = {
        label: train_run(config, stem, label, rate, out, data, resume=resume, progress=progress)
        for stem, label, rate in runs(config)
    }
    st.plot_history(
        histories,
        Path(out) / "curves.png",
        title=f"stoax: {config.model.upper()} on scikit-learn digits, with and without dropout "
        f"(seed {config.seed})",
    )
    return histories


def summary(histories: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """One row per run, from its last epoch: train and test accuracy (evaluation mode) and the
    generalisation gap (train - test), in percent."""
    rows = []
    for label, history in histories.items():
        last = history[-1]
        train_acc, test_acc = 100 * last["train_accuracy"], 100 * last["test_accuracy"]
        rows.append(
            {
                "run": label,
                "epochs": int(last["epoch"]),
                "train_accuracy": train_acc,
                "test_accuracy": test_acc,
                "gap": train_acc - test_acc,
                "test_loss": last["test_loss"],
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summary as an aligned text table.

    Example:
        >>> print(format_table([{"run": "dropout 0.2", "epochs": 40, "train_accuracy": 100.0,
        ...                      "test_accuracy": 97.5, "gap": 2.5, "test_loss": 0.1}]))
        run          epochs  train acc  test acc  gap (train - test)  test loss
        dropout 0.2      40    100.00%    97.50%            2.50 pts     0.1000
    """
    header = ["run", "epochs", "train acc", "test acc", "gap (train - test)", "test loss"]
    body = [
        [
            r["run"],
            str(r["epochs"]),
            f"{r['train_accuracy']:.2f}%",
            f"{r['test_accuracy']:.2f}%",
            f"{r['gap']:.2f} pts",
            f"{r['test_loss']:.4f}",
        ]
        for r in rows
    ]
    return align_table(header, body)
