"""The training loop: epochs of jitted steps, evaluation after each epoch, a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax

from stoax.distributed import shard_batch
from stoax.train._data import batches, check_batch_size, dataset_size, num_batches
from stoax.train._extras import require
from stoax.train._state import TrainState
from stoax.train._step import LossFn, check_seed, make_eval_step, make_train_step

__all__ = ["evaluate", "fit"]

Record = dict[str, float]


def evaluate(
    eval_step: Callable[[Any, Any], Mapping[str, jax.Array]],
    model: Any,
    data: Any,
    *,
    batch_size: int = 2048,
    _place: Callable[[Any], Any] | None = None,
) -> Record:
    """Metrics of ``model`` on the whole of ``data``, averaged over examples.

    ``eval_step`` comes from :func:`make_eval_step` (it puts the model in evaluation mode).

    Example:
        >>> import jax, numpy as np, stoax
        >>> from stoax.train import classification_loss, evaluate, make_eval_step
        >>> model = stoax.nn.Linear(4, 3, key=jax.random.key(0))
        >>> data = {"x": np.ones((5, 4), np.float32), "y": np.zeros(5, np.int32)}
        >>> sorted(evaluate(make_eval_step(classification_loss), model, data, batch_size=2))
        ['accuracy', 'loss']
    """
    sizes, results = [], []
    for batch in batches(data, batch_size):
        sizes.append(len(jax.tree.leaves(batch)[0]))
        results.append(eval_step(model, batch if _place is None else _place(batch)))
    results = jax.device_get(results)  # one transfer, and the sums below run in NumPy
    weights = np.asarray(sizes, np.float64) / sum(sizes)
    return {name: float(np.dot(weights, [r[name] for r in results])) for name in results[0]}


def fit(
    state: TrainState,
    tx: optax.GradientTransformation,
    loss_fn: LossFn,
    train_data: Any,
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    eval_data: Mapping[str, Any] | None = None,
    progress: bool = True,
    description: str = "training",
    on_epoch_end: Callable[[TrainState, Record], None] | None = None,
    batch_sharding: jax.sharding.NamedSharding | None = None,
) -> tuple[TrainState, list[Record]]:
    """Train ``state`` until ``epochs`` epochs are done; return the final state and one metrics
    record per epoch run.

    ``epochs`` counts every epoch of the run, those ``state`` has already done included.
    Training continues from ``state.step``: a state restored from a checkpoint picks up at its
    epoch (mid-epoch too, skipping the batches already seen), with the same batches
    (:func:`batches` seeded by ``(seed, epoch)``) and the same keys (``step_key(seed, step)``) as
    an uninterrupted run -- the result is bitwise the same. A state exactly at the end of
    ``epochs`` comes back unchanged with an empty history; one past it is refused with a
    ``ValueError`` (training cannot be undone). The model is used in the mode it is in; make it
    with dropout in training mode (the default).

    After each epoch the model is evaluated in evaluation mode on every ``eval_data`` set; the
    record holds ``epoch``, ``step``, the running means over the epoch's training batches
    (``loss``, ``accuracy``, ... as ``loss_fn`` reports them, with dropout active) and
    ``{name}_{metric}`` for each evaluation set (e.g. ``test_accuracy``). ``on_epoch_end(state,
    record)`` is called after each epoch (save a checkpoint there). ``progress=False`` turns the
    tqdm progress bar off.

    Sharded and multi-process runs: place ``state`` on a mesh first (``jax.device_put(state,
    stoax.sharding.shardings(state, mesh, rules))``) and pass ``batch_sharding`` (typically
    ``NamedSharding(mesh, P("data"))``). Every process derives the same global batch from
    ``(seed, epoch)`` and feeds only its devices' rows of it
    (:func:`stoax.distributed.shard_batch`), so a run on N processes trains on exactly the
    batches, keys and masks of one process; evaluation batches are placed replicated on the
    mesh. A run with several processes needs ``batch_sharding``.

    Example:
        >>> import jax, numpy as np, optax, stoax
        >>> from stoax.train import TrainState, classification_loss, fit
        >>> rng = np.random.default_rng(0)
        >>> data = {"x": rng.normal(size=(32, 4)).astype(np.float32),
        ...         "y": rng.integers(0, 3, 32).astype(np.int32)}
        >>> model = stoax.nn.Sequential(
        ...     [stoax.nn.Linear(4, 3, key=jax.random.key(0)), stoax.nn.Dropout(0.1)]
        ... )
        >>> tx = optax.adam(1e-2)
        >>> state, history = fit(TrainState.create(model, tx), tx, classification_loss, data,
        ...                      seed=0, epochs=2, batch_size=8, eval_data={"train": data},
        ...                      progress=False)
        >>> int(state.step), [r["epoch"] for r in history], "train_accuracy" in history[0]
        (8, [1, 2], True)
    """
    batch_size = check_batch_size(batch_size, "stoax.train.fit")
    seed = check_seed(seed, "stoax.train.fit")
    if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 0:
        raise ValueError(
            f"stoax.train.fit: epochs must be a whole number >= 0 (the total number of epochs, "
            f"counting those the state has done), got {epochs!r}."
        )
    steps_per_epoch = num_batches(train_data, batch_size, drop_last=True)
    if steps_per_epoch == 0:
        raise ValueError(
            f"stoax.train.fit: batch_size={batch_size} is larger than the training set "
            f"({dataset_size(train_data)} examples); no full batch to train on. Pass a smaller "
            "batch_size."
        )
    start = int(state.step)
    first_epoch, skip = divmod(start, steps_per_epoch)
    if start > epochs * steps_per_epoch:
        done = f"{first_epoch} epochs" + (f" and {skip} steps" if skip else "")
        raise ValueError(
            f"stoax.train.fit: the state is at step {start} ({done} of {steps_per_epoch} steps "
            f"each), past the epochs={epochs} asked for. `epochs` counts every epoch of the run, "
            f"those already done included, and training cannot be undone: pass epochs >= "
            f"{-(-start // steps_per_epoch)} to continue, or start from a fresh state."
        )
    if batch_sharding is None and jax.process_count() > 1:
        raise ValueError(
            f"stoax.train.fit: this run has {jax.process_count()} processes; pass "
            "batch_sharding= (e.g. NamedSharding(mesh, P('data'))) so that each process feeds "
            "its shard of the global batch."
        )
    place = _placer(batch_sharding, batch_size)
    train_step = make_train_step(loss_fn, tx, seed=seed)
    eval_step = make_eval_step(loss_fn)
    history: list[Record] = []
    bar = _progress_bar(progress, total=epochs * steps_per_epoch, initial=start, desc=description)
    try:
        for epoch in range(first_epoch, epochs):
            step_metrics = []
            epoch_batches = batches(train_data, batch_size, seed=seed, epoch=epoch, drop_last=True)
            for i, batch in enumerate(epoch_batches):
                if epoch == first_epoch and i < skip:
                    continue
                state, metrics = train_step(state, place(batch))
                step_metrics.append(metrics)
                bar.update(1)
            record: Record = {"epoch": epoch + 1, "step": int(state.step)}
            step_metrics = jax.device_get(step_metrics)
            record.update(
                {k: float(np.mean([m[k] for m in step_metrics])) for k in step_metrics[0]}
            )
            for set_name, data in (eval_data or {}).items():
                for name, value in evaluate(
                    eval_step, state.model, data, _place=place.eval
                ).items():
                    record[f"{set_name}_{name}"] = value
            history.append(record)
            bar.set_postfix(_postfix(record), refresh=False)
            if on_epoch_end is not None:
                on_epoch_end(state, record)
    finally:
        bar.close()
    return state, history


class _Placer:
    """Training batches as global arrays sharded by ``sharding``; evaluation batches (of any
    size) replicated on its mesh. Without a sharding, batches go to ``jax.jit`` as they are."""

    def __init__(self, sharding: jax.sharding.NamedSharding | None):
        self.sharding = sharding
        if sharding is not None:
            self.replicated = jax.sharding.NamedSharding(
                sharding.mesh, jax.sharding.PartitionSpec()
            )

    def __call__(self, batch: Any) -> Any:
        return batch if self.sharding is None else shard_batch(batch, self.sharding)

    def eval(self, batch: Any) -> Any:
        return batch if self.sharding is None else shard_batch(batch, self.replicated)


def _placer(sharding: jax.sharding.NamedSharding | None, batch_size: int) -> _Placer:
    if sharding is not None and not isinstance(sharding, jax.sharding.NamedSharding):
        raise TypeError(
            "stoax.train.fit: batch_sharding must be a jax.sharding.NamedSharding (e.g. "
            f"NamedSharding(mesh, P('data'))), got {type(sharding).__name__}."
        )
    if sharding is not None and len(sharding.spec) and sharding.spec[0] is not None:
        names = sharding.spec[0] if isinstance(sharding.spec[0], tuple) else (sharding.spec[0],)
        shards = int(np.prod([sharding.mesh.shape[n] for n in names]))
        if batch_size % shards:
            raise ValueError(
                f"stoax.train.fit: batch_size={batch_size} does not split over the {shards} "
                f"devices of the mesh axes {names} that batch_sharding splits the batch over. "
                f"Pass a batch_size that is a multiple of {shards}."
            )
    return _Placer(sharding)


def _postfix(record: Record) -> dict[str, str]:
    shown = {k: v for k, v in record.items() if k == "loss" or k.endswith("_accuracy")}
    return {k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in shown.items()}


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, *, total: int, initial: int, desc: str) -> Any:
    if not enabled:
        return _NoBar()
    tqdm = require(
        "tqdm.auto", "the progress bar of stoax.train.fit (progress=False turns it off)"
    ).tqdm
    return tqdm(total=total, initial=min(initial, total), desc=desc, unit="step", leave=False)
