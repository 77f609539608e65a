"""Training utilities: a train state, jitted steps with optax, a loop with a progress bar,
deterministic batches, safetensors checkpoints and PNG curves.

Everything random is a function of ``(seed, step)`` (dropout keys, via
:func:`stoax.step_key`) or ``(seed, epoch)`` (batch order), so a run resumed from a checkpoint is
bitwise the same as an uninterrupted one.

Example:
    >>> import jax, numpy as np, optax, stoax
    >>> from stoax import train
    >>> rng = np.random.default_rng(0)
    >>> data = {"x": rng.normal(size=(64, 4)).astype(np.float32),
    ...         "y": (rng.normal(size=64) > 0).astype(np.int32)}
    >>> model = stoax.nn.Sequential([stoax.nn.Linear(4, 2, key=jax.random.key(0)),
    ...                              stoax.nn.Dropout(0.1)])
    >>> tx = optax.adam(1e-2)
    >>> state, history = train.fit(train.TrainState.create(model, tx), tx,
    ...                            train.classification_loss, data, seed=0, epochs=3,
    ...                            batch_size=16, eval_data={"train": data}, progress=False)
    >>> len(history), int(state.step)
    (3, 12)
"""

from stoax.train._checkpoint import (
    CheckpointError,
    load_checkpoint,
    read_checkpoint_metadata,
    save_checkpoint,
)
from stoax.train._data import batches, dataset_size, num_batches
from stoax.train._loop import evaluate, fit
from stoax.train._manager import Checkpoints
from stoax.train._plot import plot_history
from stoax.train._state import TrainState
from stoax.train._step import LossFn, classification_loss, make_eval_step, make_train_step

__all__ = [
    "CheckpointError",
    "Checkpoints",
    "LossFn",
    "TrainState",
    "batches",
    "classification_loss",
    "dataset_size",
    "evaluate",
    "fit",
    "load_checkpoint",
    "make_eval_step",
    "make_train_step",
    "num_batches",
    "plot_history",
    "read_checkpoint_metadata",
    "save_checkpoint",
]
