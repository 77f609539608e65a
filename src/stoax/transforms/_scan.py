"""``stoax.scan``: ``jax.lax.scan`` in which step ``t`` gets its own key, ``keys.child(key, t)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from stoax import keys
from stoax._edit import map_modules
from stoax._mode import check_training_flag, has_training_field, set_mode
from stoax.transforms._remat import checkpoint_step
from stoax.transforms._stacked import check_remat

__all__ = ["scan"]

Carry = TypeVar("Carry")


def scan(
    f: Callable[..., tuple[Carry, Any]],
    init: Carry,
    xs: Any = None,
    length: int | None = None,
    *,
    key: jax.Array | None,
    training: bool | jax.Array | None = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    remat: bool | Callable[..., bool] = False,
) -> tuple[Carry, Any]:
    """``jax.lax.scan(f, init, xs, length)`` in which ``f(carry, x, *, key)`` gets a key per step.

    Step ``t`` (the index into ``xs``, ``0 .. length-1``, also with ``reverse=True``) is called
    with ``key=stoax.keys.child(key, t)``, so the scan is bitwise the Python loop
    ``for t in range(length): carry, y = f(carry, xs[t], key=stoax.keys.child(key, t))``.
    ``key=None`` (evaluation) gives every step ``None``; the argument has no default so that a
    stochastic scan is never run with a forgotten key.

    ``f`` may be a plain function closing over a model, or a pytree holding modules -- a
    ``stoax.Module`` whose ``__call__(carry, x, *, key)`` is the step (an RNN cell), or
    ``jax.tree_util.Partial(step, model)``. ``training`` (a Python bool, or a traced scalar
    bool: one compiled rollout for both modes) is then written into every stochastic layer of
    ``f`` with ``stoax.set_mode`` before the scan. A closure's model is set by the caller:
    ``stoax.set_mode(model, flag)`` works with a traced flag too.

    Args:
        f: the step, ``f(carry, x, *, key) -> (carry, y)``.
        init, xs, length, reverse, unroll: as in ``jax.lax.scan``.
        key: the key of the whole scan, or ``None``.
        training: optional train/eval flag for the modules held by ``f``.
        remat: ``True`` (or a ``jax.checkpoint_policies`` policy) to rematerialise each step in
            the backward pass. Random draws are the same with or without it.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> drop = stoax.nn.Dropout(0.5)
        >>> def step(h, x, *, key):
        ...     h = 0.9 * h + drop(x, key=key)
        ...     return h, h.sum()
        >>> h, sums = stoax.scan(step, jnp.zeros(4), jnp.ones((10, 4)), key=jax.random.key(0))
        >>> sums.shape
        (10,)

        An RNN cell as a module, with a traced train/eval flag:

        >>> class Cell(stoax.Module):
        ...     drop: stoax.nn.Dropout
        ...     def __call__(self, h, x, *, key=None):
        ...         h = jnp.tanh(h + self.drop(x, key=key))
        ...         return h, h
        >>> run = jax.jit(lambda flag, k: stoax.scan(
        ...     Cell(stoax.nn.Dropout(0.5)), jnp.zeros(4), jnp.ones((6, 4)), key=k, training=flag))
        >>> _, hs_eval = run(jnp.asarray(False), jax.random.key(1))
        >>> bool((hs_eval[0] == jnp.tanh(1.0)).all())
        True
    """
    if training is not None:
        f = _set_training(f, training)
    if xs is None and length is None:
        raise ValueError("stoax.scan: pass xs, or length= when there are no xs (as lax.scan).")
    remat = check_remat(remat, "stoax.scan")
    if length is None:
        for path, x in jax.tree_util.tree_flatten_with_path(xs)[0]:
            if jnp.ndim(x) == 0:
                raise ValueError(
                    f"stoax.scan: every leaf of xs is scanned over its leading (time) axis, but "
                    f"xs{jax.tree_util.keystr(path)} is a scalar ({x!r}). Close over values "
                    "that every step shares instead of passing them in xs."
                )
        sizes = {jnp.shape(x)[0] for x in jax.tree.leaves(xs)}
        if len(sizes) != 1:
            raise ValueError(
                f"stoax.scan: every array in xs must have the same leading (time) axis, got "
                f"sizes {sorted(sizes)}."
            )
        length = sizes.pop()
    if key is not None:
        key = keys.as_key(key, "stoax.scan")

    def body(carry: Carry, t_x: tuple[jax.Array, Any]) -> tuple[Carry, Any]:
        t, x = t_x
        return f(carry, x, key=keys.child(key, t))

    body = checkpoint_step(body, remat, unrolled=unroll is True or unroll >= length)
    return jax.lax.scan(
        body, init, (jnp.arange(length), xs), length=length, reverse=reverse, unroll=unroll
    )


def _set_training(f: Any, training: bool | jax.Array) -> Any:
    flag = check_training_flag(training, "stoax.scan")
    found: list[Any] = []

    def note(m: Any) -> Any:
        if has_training_field(m):
            found.append(m)
        return m

    map_modules(note, f)
    if not found:
        raise TypeError(
            "stoax.scan(training=...): the step function holds no stochastic layer to set. "
            "Either make the step a stoax.Module (an RNN cell) or jax.tree_util.Partial(step, "
            "model), or leave training out and call stoax.set_mode(model, flag) on the model "
            "the step closes over (a traced flag works there too)."
        )
    return set_mode(f, flag)
