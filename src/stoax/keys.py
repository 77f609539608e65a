"""Keys as values, derived by structure.

One key enters at the top of a forward pass. Containers derive each child's key with
``jax.random.fold_in`` -- by position, or by a stable hash of a name -- so a user never splits keys
for library layers, and renaming or adding a layer leaves the other layers' keys unchanged.
``None`` (evaluation) passes through every helper here.

Example:
    >>> import jax, stoax
    >>> key = jax.random.key(0)
    >>> k_attn, k_mlp = stoax.keys.derive(key, "attn", "mlp")
    >>> stoax.keys.derive(None, "attn", "mlp")
    (None, None)
"""

from __future__ import annotations

import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_key", "child", "derive", "step_key", "is_key", "KeyLike"]

KeyLike = jax.Array  # a typed key (``jax.random.key``) or a legacy ``uint32`` key


def is_key(x: Any) -> bool:
    """True for a typed JAX key array (``jax.random.key``), traced or not."""
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def as_key(key: Any, where: str = "stoax") -> jax.Array:
    """Return ``key`` as a typed key array, converting a legacy ``uint32`` key.

    A legacy key (``jax.random.PRNGKey(0)``, ``uint32[2]`` for threefry) is wrapped with the
    default PRNG implementation when its trailing dimension matches it. Anything else -- a float
    array, an int seed, a legacy key of another implementation -- raises a ``TypeError`` that
    names ``where`` and says what to pass.
    """
    if is_key(key):
        return key
    dtype = getattr(key, "dtype", None)
    if dtype is not None and np.dtype(dtype) == np.uint32 and np.ndim(key) >= 1:
        # Evaluated now, not traced: inside jit a traced `jax.random.key(0)` would leave a
        # constant-seed equation in the caller's jaxpr (an auditor would flag it).
        with jax.ensure_compile_time_eval():
            default = jax.random.key(0)
            impl = jax.random.key_impl(default)
            expected = jax.random.key_data(default).shape[-1]
        if np.shape(key)[-1] == expected:
            return jax.random.wrap_key_data(jnp.asarray(key), impl=impl)
        raise TypeError(
            f"{where}: got a legacy uint32 key of shape {tuple(np.shape(key))}, but the default "
            f"PRNG implementation ({impl}) takes uint32[..., {expected}]. Pass a typed key "
            f"made with jax.random.key(seed, impl=...) for the implementation it came from."
        )
    if isinstance(key, int | np.integer) and not isinstance(key, bool):
        raise TypeError(
            f"{where}: got the integer {key} where a key is expected. Pass jax.random.key({key}) "
            "(or stoax.step_key(seed, step) for a training step)."
        )
    raise TypeError(
        f"{where}: expected a JAX key (jax.random.key(seed)) or None, got "
        f"{type(key).__name__}{' of dtype ' + str(dtype) if dtype is not None else ''}."
    )


def _name_to_int(name: str) -> int:
    # crc32, not hash(): Python's string hash changes from one process to the next.
    return zlib.crc32(name.encode("utf-8"))


def child(key: jax.Array | None, name: str | int) -> jax.Array | None:
    """The key of the child called ``name`` (a string) or at position ``name`` (an int).

    Example:
        >>> import jax, stoax
        >>> key = jax.random.key(0)
        >>> a = stoax.keys.child(key, "dropout")
        >>> b = stoax.keys.child(key, "dropout")
        >>> bool((jax.random.key_data(a) == jax.random.key_data(b)).all())
        True
    """
    if key is None:
        return None
    key = as_key(key, where=f"stoax.keys.child({name!r})")
    if isinstance(name, str):
        return jax.random.fold_in(key, _name_to_int(name))
    if isinstance(name, int | np.integer) or (hasattr(name, "dtype") and jnp.ndim(name) == 0):
        return jax.random.fold_in(key, name)
    raise TypeError(f"stoax.keys.child: a child is named by a str or an int, got {name!r}.")


def derive(key: jax.Array | None, *names: str | int) -> tuple[jax.Array | None, ...]:
    """One key per name, each ``child(key, name)``; all ``None`` when ``key`` is ``None``.

    This is the helper for user-written modules: derive the keys of the sublayers by their names,
    and a layer added later does not change the others' keys.

    Example:
        >>> import jax, stoax
        >>> class Block(stoax.Module):
        ...     drop1: stoax.nn.Dropout
        ...     drop2: stoax.nn.Dropout
        ...     def __call__(self, x, *, key=None):
        ...         k1, k2 = stoax.keys.derive(key, "drop1", "drop2")
        ...         return self.drop2(self.drop1(x, key=k1), key=k2)
        >>> block = Block(stoax.nn.Dropout(0.5), stoax.nn.Dropout(0.5))
        >>> block(jax.numpy.ones(4), key=jax.random.key(0)).shape
        (4,)
    """
    return tuple(child(key, name) for name in names)


def step_key(seed: int | jax.Array, step: int | jax.Array) -> jax.Array:
    """The training key of ``step``: ``fold_in(key(seed), step)``.

    A function of ``(seed, step)`` alone, so a run resumed at step ``n`` draws exactly the
    randomness an uninterrupted run draws there. ``seed`` may be a Python int, a scalar integer
    array (traced or vmapped over an ensemble's seeds), or a key.

    Example:
        >>> import stoax
        >>> k = stoax.step_key(0, 10)
        >>> k.shape
        ()
    """
    if isinstance(seed, bool):
        raise TypeError(f"step_key: seed must be an int or a key, got the bool {seed}.")
    integer_seed = isinstance(seed, int | np.integer) or (
        hasattr(seed, "dtype") and jnp.ndim(seed) == 0 and jnp.issubdtype(seed.dtype, jnp.integer)
    )  # a scalar integer array (traced, or vmapped over seeds) is a seed, not a legacy key
    base = jax.random.key(seed) if integer_seed else as_key(seed, "step_key")
    return jax.random.fold_in(base, step)
