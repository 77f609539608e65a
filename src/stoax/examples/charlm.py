"""The char-LM example: a character-level language model on the Python language reference.

The text ships with every Python install: ``pydoc_data.topics.topics``, the ~80 topics of the
language reference that ``help()`` shows (about 465 KB). The topics are joined in sorted order,
characters become ids (the sorted set of characters of the whole text), the first 90% of the
text is the training set and the last 10% (other topics) the validation set, cut into windows
of ``seq_len + 1`` characters: the model reads ``seq_len`` characters and predicts each next
one. Every source of randomness is a function of the seed: the initial weights, the batch order
of each epoch (``(seed, epoch)``) and the dropout key of each step (``(seed, step)``).

Two runs of one model from the same seed and weights -- with dropout (``dropout_mode``:
variational by default) and without -- compare validation loss and perplexity.

A model is one function ``make(vocab_size, config, rate, *, key) -> module`` mapping ``(batch,
seq_len)`` ids to ``(batch, seq_len, vocab_size)`` next-character logits; register it in
:data:`MODELS` to offer it as ``--model``.

Example:
    >>> from stoax.examples import charlm
    >>> data = charlm.load_data(charlm.Config(seq_len=32))
    >>> data.train["x"].shape[1], data.vocab_size, data.decode(data.train["x"][0][:5])
    (32, 103, 'The "')
"""

from __future__ import annotations

import dataclasses
import functools
import math
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

__all__ = [
    "MODELS",
    "CharLSTM",
    "Config",
    "Data",
    "format_table",
    "lm_loss",
    "load_data",
    "load_text",
    "make_lstm",
    "run_experiment",
    "summary",
]

VAL_FRACTION = 0.1
TRAIN_EVAL_WINDOWS = 64


def load_text() -> str:
    """The Python language reference topics of ``pydoc_data``, joined in sorted order."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


@dataclasses.dataclass(frozen=True)
class Config:
    """The settings of an experiment. ``rate`` is the dropout rate of the dropout run (the other
        run uses 0); ``dropout_mode`` is ``"variational"``, ``"per_step"`` or ``"none"`` (no dropout
        on the recurrent path). ``train_chars`` keeps the first that many characters of the training
        text (0: all of it) -- a small training set is where dropout helps -- and ``val_chars`` the
    first that many of the validation text (0: all of it). Every field but
        ``epochs`` must match to resume a run."""

    seed: int = 0
    epochs: int = 25
    rate: float = 0.25
    dropout_mode: str = "variational"
    model: str = "lstm"
    seq_len: int = 64
    batch_size: int = 32
    train_chars: int = 20_000
    val_chars: int = 16_384
    embed: int = 32
    hidden: int = 256
    layers: int = 1
    learning_rate: float = 3e-3

    def optimizer(self) -> optax.GradientTransformation:
        return _adam(self.learning_rate)

    def init_state(self, vocab_size: int, rate: float) -> st.TrainState:
        """The fresh train state of a run: the model built from the seed, Adam at step 0. The
        rate is a JAX array (a non-trainable leaf): both runs share every compiled program."""
        key = stoax.keys.child(jax.random.key(self.seed), "init")
        rate_leaf = jnp.asarray(rate, jnp.float32)
        return _init_state(key, rate_leaf, vocab_size, self, tx=self.optimizer())


@functools.cache
def _adam(learning_rate: float) -> optax.GradientTransformation:
    return optax.adam(learning_rate)


@functools.partial(jax.jit, static_argnums=(2, 3), static_argnames=("tx",))
def _init_state(key, rate, vocab_size, config, *, tx):
    return st.TrainState.create(MODELS[config.model](vocab_size, config, rate, key=key), tx)


@dataclasses.dataclass(frozen=True)
class Data:
    """Windows of character ids: ``train``/``val`` dicts of ``x`` (inputs) and ``y`` (the next
    characters), int32 ``(windows, seq_len)``; ``chars`` is the vocabulary (id -> character)."""

    train: dict[str, np.ndarray]
    val: dict[str, np.ndarray]
    chars: str

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def decode(self, ids: Any) -> str:
        return "".join(self.chars[int(i)] for i in np.asarray(ids))


def _windows(ids: np.ndarray, seq_len: int) -> dict[str, np.ndarray]:
    n = (len(ids) - 1) // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    return {"x": x, "y": y}


def load_data(config: Config) -> Data:
    """The text as ids, split into training and validation windows (see the module docstring)."""
    text = load_text()
    chars = "".join(sorted(set(text)))
    lookup = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((lookup[c] for c in text), np.int32, len(text))
    cut = int(len(ids) * (1 - VAL_FRACTION))
    train_ids = ids[:cut][: config.train_chars or None]
    val_ids = ids[cut:][: config.val_chars or None]
    return Data(_windows(train_ids, config.seq_len), _windows(val_ids, config.seq_len), chars)


class CharLSTM(stoax.Module):
    """Embedding -> :class:`~stoax.nn.StackedRNN` of LSTM layers -> linear head over characters.

    Dropout (one rate): on every layer's input and recurrent state, in the given mode, and on
    the last layer's output; with ``dropout_mode="none"`` the recurrent state is not dropped."""

    embed: stoax.nn.Embedding
    rnn: stoax.nn.StackedRNN
    head: stoax.nn.Linear

    def __call__(self, ids: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """Next-character logits ``(batch, time, vocab)``.

        Args:
            ids: character ids ``(batch, time)``.
            key: the key of the dropouts; needed in training mode."""
        return self.head(self.rnn(self.embed(ids), key=key))


def make_lstm(vocab_size: int, config: Config, rate: Any, *, key: jax.Array) -> CharLSTM:
    """A :class:`CharLSTM` of ``config.layers`` LSTM layers of ``config.hidden`` units."""
    k_embed, k_rnn, k_head = stoax.keys.init_derive(key, "embed", "rnn", "head")
    recurrent = 0.0 if config.dropout_mode == "none" else rate
    widths = [config.embed] + [config.hidden] * config.layers
    layers = [
        stoax.nn.RNN(
            stoax.nn.LSTMCell(widths[i], config.hidden, key=stoax.keys.init_child(k_rnn, i)),
            dropout=rate,
            recurrent_dropout=recurrent,
            output_dropout=rate if i == config.layers - 1 else 0.0,
            dropout_mode=config.dropout_mode,
        )
        for i in range(config.layers)
    ]
    return CharLSTM(
        embed=stoax.nn.Embedding(vocab_size, config.embed, key=k_embed),
        rnn=stoax.nn.StackedRNN(layers),
        head=stoax.nn.Linear(config.hidden, vocab_size, key=k_head),
    )


# name -> model builder; the command line offers these as ``--model``.
MODELS: dict[str, Callable[..., stoax.Module]] = {"lstm": make_lstm}


def lm_loss(
    model: Callable, batch: dict[str, jax.Array], *, key: jax.Array | None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean next-character cross-entropy (nats) of ``model(batch["x"])`` against
    ``batch["y"]``, and the accuracy of the most likely next character."""
    logits = model(batch["x"], key=key)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    accuracy = (jnp.argmax(logits, axis=-1) == batch["y"]).mean()
    return loss, {"accuracy": accuracy}


def runs(config: Config) -> list[tuple[str, str, float]]:
    """The two runs of an experiment: ``(file stem, label, dropout rate)``."""
    label = f"{config.dropout_mode.replace('_', '-')} dropout {config.rate:g}"
    return [("dropout", label, config.rate), ("no_dropout", "no dropout", 0.0)]


def train_run(
    config: Config,
    stem: str,
    label: str,
    rate: float,
    out: Path,
    data: Data,
    *,
    resume: bool = False,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train one run (from its checkpoint in ``out`` when ``resume``), saving a checkpoint after
    every epoch; return its per-epoch metrics."""
    tx = config.optimizer()
    path = checkpoint_path(out, stem)
    resuming = resume and path.exists()
    if resuming:
        check_resumable(config, path)
    state = config.init_state(data.vocab_size, rate)
    history: list[dict[str, float]] = []
    if resuming:
        state, meta = st.load_checkpoint(path, state)
        history = list(meta.get("history", []))

    def save(state: st.TrainState, record: dict[str, float]) -> None:
        history.append(record)
        meta = {"config": dataclasses.asdict(config), "run": stem, "rate": rate, "history": history}
        st.save_checkpoint(path, state, metadata=meta)

    # The training loss (evaluation mode) is measured on the first TRAIN_EVAL_WINDOWS windows:
    # the whole set would cost an extra pass per epoch.
    train_eval = {k: v[:TRAIN_EVAL_WINDOWS] for k, v in data.train.items()}
    st.fit(
        state,
        tx,
        lm_loss,
        data.train,
        seed=config.seed,
        epochs=config.epochs,
        batch_size=config.batch_size,
        eval_data={"train": train_eval, "val": data.val},
        progress=progress,
        description=label,
        on_epoch_end=save,
    )
    return history


def run_experiment(
    config: Config, out: Path, *, resume: bool = False, progress: bool = True
) -> dict[str, list[dict[str, float]]]:
    """Both runs, their checkpoints and ``curves.png`` in ``out``; returns label -> history."""
    if config.model not in MODELS:
        raise ValueError(f"charlm: unknown model {config.model!r}; choose from {sorted(MODELS)}.")
    data = load_data(config)
    histories = {
        label: train_run(config, stem, label, rate, out, data, resume=resume, progress=progress)
        for stem, label, rate in runs(config)
    }
    st.plot_history(
        histories,
        Path(out) / "curves.png",
        title=f"stoax: character-level {config.model.upper()} on the Python language reference, "
        f"with and without dropout (seed {config.seed})",
        sets=("train", "val"),
    )
    return histories


def sample(
    config: Config,
    out: Path,
    *,
    prompt: str = "The ",
    length: int = 200,
    temperature: float = 0.8,
    seed: int | None = None,
) -> str:
    """Text generated by the dropout run saved in ``out``: ``prompt`` followed by ``length``
    characters drawn by :func:`stoax.inference.generate` at ``temperature``, in evaluation mode
    (no dropout). The key is ``key(seed)`` (default: the run's seed), so the same run and seed
    give the same text.

    Example (after ``run_experiment(config, out)``)::

        print(sample(config, out, prompt="def ", length=100))
    """
    from stoax.inference import Sampler, generate

    data = load_data(config)
    missing = [c for c in prompt if c not in data.chars]
    if not prompt or missing:
        raise ValueError(
            f"charlm.sample: the prompt must be non-empty text made of the corpus's characters; "
            f"{''.join(sorted(set(missing)))!r} never occur in it."
        )
    stem, _, rate = runs(config)[0]
    state, _ = st.load_checkpoint(
        checkpoint_path(out, stem), config.init_state(data.vocab_size, rate)
    )
    model = stoax.eval_mode(state.model)
    ids = jnp.asarray([[data.chars.index(c) for c in prompt]], jnp.int32)
    key = jax.random.key(config.seed if seed is None else seed)
    # An LSTM has no key/value cache: generate reruns it on the tokens so far at each step
    # (the fallback of the cache protocol), which is quick at this size.
    result = generate(
        model, ids, key=key, max_new_tokens=length, sampler=Sampler(temperature=temperature)
    )
    return prompt + data.decode(result.tokens[0, : int(result.lengths[0])])


def summary(histories: dict[str, list[dict[str, float]]]) -> list[dict[str, Any]]:
    """One row per run, from its last epoch: training and validation loss (nats per
    character, evaluation mode) and validation perplexity."""
    rows = []
    for label, history in histories.items():
        last = history[-1]
        rows.append(
            {
                "run": label,
                "epochs": int(last["epoch"]),
                "train_loss": last["train_loss"],
                "val_loss": last["val_loss"],
                "val_perplexity": math.exp(last["val_loss"]),
                "val_accuracy": 100 * last["val_accuracy"],
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The summary as an aligned text table.

    Example:
        >>> print(format_table([{"run": "no dropout", "epochs": 3, "train_loss": 1.0,
        ...                      "val_loss": 1.5, "val_perplexity": 4.48, "val_accuracy": 55.0}]))
        run         epochs  train loss  val loss  val perplexity  val acc
        no dropout       3      1.0000    1.5000            4.48   55.00%
    """
    header = ["run", "epochs", "train loss", "val loss", "val perplexity", "val acc"]
    body = [
        [
            r["run"],
            str(r["epochs"]),
            f"{r['train_loss']:.4f}",
            f"{r['val_loss']:.4f}",
            f"{r['val_perplexity']:.2f}",
            f"{r['val_accuracy']:.2f}%",
        ]
        for r in rows
    ]
    return align_table(header, body)
