"""Mini-batches whose order is a function of ``(seed, epoch)``, so a resumed run sees the same
batches as an uninterrupted one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import jax
import numpy as np

__all__ = ["batches", "check_batch_size", "num_batches", "dataset_size"]

T = TypeVar("T")


def dataset_size(data: Any) -> int:
    """The number of examples in ``data``, a pytree of arrays sharing their leading axis."""
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("stoax.train: the data set holds no arrays.")
    sizes = {int(np.shape(x)[0]) if np.ndim(x) else -1 for x in leaves}
    if len(sizes) != 1 or -1 in sizes:
        shapes = [np.shape(x) for x in leaves]
        raise ValueError(
            "stoax.train: every array of a data set needs the same leading (example) axis; got "
            f"shapes {shapes}."
        )
    return sizes.pop()


def check_batch_size(batch_size: Any, caller: str) -> int:
    """``batch_size`` as an int, if it is a whole number >= 1; otherwise a ``TypeError`` or
    ``ValueError`` naming ``caller``'s ``batch_size`` argument.

    Example:
        >>> from stoax.train._data import check_batch_size
        >>> check_batch_size(32, "fit")
        32
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise TypeError(
            f"{caller}: batch_size must be a whole number >= 1 (examples per step), got the "
            f"{type(batch_size).__name__} {batch_size!r}."
        )
    if batch_size < 1:
        raise ValueError(
            f"{caller}: batch_size must be >= 1 (examples per step), got {int(batch_size)}."
        )
    return int(batch_size)


def num_batches(data: Any, batch_size: int, *, drop_last: bool = False) -> int:
    """How many batches :func:`batches` yields for ``data``."""
    batch_size = check_batch_size(batch_size, "stoax.train.num_batches")
    n = dataset_size(data)
    return n // batch_size if drop_last else -(-n // batch_size)


def batches(
    data: T,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int = 0,
    drop_last: bool = False,
) -> Iterator[T]:
    """Split ``data`` (a pytree of NumPy or JAX arrays) into batches along the leading axis.

    With a ``seed`` the examples are shuffled by a NumPy generator seeded with ``(seed, epoch)``:
    the order of epoch ``e`` depends on nothing else, so training resumed at epoch ``e`` sees
    exactly the batches an uninterrupted run sees. (A NumPy generator, not ``jax.random``: the
    training keys are ``fold_in(key(seed), step)``, and a data key made the same way would
    coincide with a step key.) Without a seed the order is the data's own. ``drop_last`` drops a
    final short batch (training: every step then has one shape and compiles once).

    Example:
        >>> import numpy as np
        >>> from stoax.train import batches
        >>> data = {"x": np.arange(5), "y": np.arange(5) * 10}
        >>> [b["x"].tolist() for b in batches(data, 2)]
        [[0, 1], [2, 3], [4]]
        >>> a = [b["x"].tolist() for b in batches(data, 2, seed=0, epoch=3, drop_last=True)]
        >>> a == [b["x"].tolist() for b in batches(data, 2, seed=0, epoch=3, drop_last=True)]
        True
    """
    batch_size = check_batch_size(batch_size, "stoax.train.batches")
    n = dataset_size(data)
    if seed is None:
        order = np.arange(n)
    else:
        order = np.random.default_rng((int(seed), int(epoch))).permutation(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield jax.tree.map(lambda x, index=index: x[index], data)
