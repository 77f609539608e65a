"""Keys as values, derived by structure, each role in its own domain.

One key enters at the top of a forward pass. Containers derive each child's key -- by position,
or by a stable hash of a name -- so a user never splits keys for library layers, and renaming or
adding a layer leaves the other layers' keys unchanged. ``None`` (evaluation) passes through every
helper here.

**Key domains.** With JAX's threefry, ``jax.random.split(k, n)[i]`` *is* ``fold_in(k, i)``: a
library that folds step numbers, positions and hashed names straight into one key hands out the
same key for different jobs (step 0's training key would be the init key of the first layer of
a model made from the same seed). stoax never does: every derivation first folds in a tag of its
*role* and only then the step, position or name::

    step_key(seed, step)   = fold_in(fold_in(key(seed), STEP),     step)
    child(key, i)          = fold_in(fold_in(key,       POSITION), i)
    child(key, "name")     = fold_in(fold_in(key,       NAME),     crc32("name"))
    init_child(key, i)     = fold_in(fold_in(key,       INIT_POSITION), i)
    init_child(key, "name")= fold_in(fold_in(key,       INIT_NAME),     crc32("name"))

The tags are 32-bit constants above ``2**31`` (so also no ``split(k, n)[tag]`` a user might
write), and keys of different roles are different hashes of different inputs: no two roles can
produce the same key from one seed. Constructors derive the keys of their sublayers'
initialisation with :func:`init_child` / :func:`init_derive`, forward passes with :func:`child` /
:func:`derive`, training loops with :func:`step_key`.

Example:
    >>> import jax, stoax
    >>> key = jax.random.key(0)
    >>> k_attn, k_mlp = stoax.keys.derive(key, "attn", "mlp")
    >>> stoax.keys.derive(None, "attn", "mlp")
    (None, None)
    >>> same = lambda a, b: bool((jax.random.key_data(a) == jax.random.key_data(b)).all())
    >>> same(stoax.step_key(0, 0), stoax.keys.init_child(jax.random.key(0), 0))
    False
"""

from __future__ import annotations

import zlib
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "as_key",
    "child",
    "derive",
    "init_child",
    "init_derive",
    "step_key",
    "is_key",
    "KeyLike",
]

KeyLike = jax.Array  # a typed key (``jax.random.key``) or a legacy ``uint32`` key

_U32 = 2**32


def _tag(role: str) -> int:
    # A fixed 32-bit tag per role, >= 2**31: far above any split(k, n) index a user would use.
    return zlib.crc32(f"stoax.keys:{role}".encode()) | 0x80000000


STEP = _tag("step")
POSITION = _tag("position")
NAME = _tag("name")
INIT_POSITION = _tag("init-position")
INIT_NAME = _tag("init-name")
_DOMAINS = (STEP, POSITION, NAME, INIT_POSITION, INIT_NAME)


def is_key(x: Any) -> bool:
    """True for a typed JAX key array (``jax.random.key``), traced or not."""
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def as_key(key: Any, where: str = "stoax") -> jax.Array:
    """Return ``key`` as a typed key array, converting a legacy ``uint32`` key.

    A legacy key (``jax.random.PRNGKey(0)``, ``uint32[2]`` for threefry) is wrapped with the
    default PRNG implementation when its trailing dimension matches it. Anything else -- a float
    array, an int seed, a legacy key of another implementation, ``None`` -- raises a
    ``TypeError`` that names ``where`` and says what to pass.
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
    if key is None:
        raise TypeError(f"{where}: got key=None where a key is needed. Pass jax.random.key(seed).")
    raise TypeError(
        f"{where}: expected a JAX key (jax.random.key(seed)) or None, got "
        f"{type(key).__name__}{' of dtype ' + str(dtype) if dtype is not None else ''}."
    )


def _name_to_int(name: str) -> int:
    # crc32, not hash(): Python's string hash changes from one process to the next.
    return zlib.crc32(name.encode("utf-8"))


def _fold(key: jax.Array, domain: int, data: Any) -> jax.Array:
    """The one derivation of this module: ``fold_in(fold_in(key, domain), data)``."""
    return jax.random.fold_in(jax.random.fold_in(key, np.uint32(domain)), data)


def _check_index(value: Any, where: str, what: str) -> Any:
    """A position / step: a Python or NumPy int in [0, 2**32), or a scalar integer array."""
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{where}: {what} must be an int, got the bool {value}.")
    if isinstance(value, int | np.integer):
        if not 0 <= int(value) < _U32:
            raise ValueError(
                f"{where}: {what} must be in [0, 2**32) (it is folded into the key as a uint32), "
                f"got {int(value)}."
            )
        return np.uint32(int(value))
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jnp.ndim(value) == 0 and jnp.issubdtype(dtype, jnp.integer):
        if not isinstance(value, jax.core.Tracer):
            v = int(np.asarray(value))
            if not 0 <= v < _U32:
                raise ValueError(f"{where}: {what} must be in [0, 2**32), got {v}.")
        return value
    raise TypeError(
        f"{where}: {what} must be an int (or a scalar integer array), got "
        f"{value!r}{' of dtype ' + str(dtype) if dtype is not None else ''}. A float is never "
        "truncated silently: pass int(...) if that is what you mean."
    )


def _derive(key: Any, name: Any, where: str, by_name: int, by_position: int) -> jax.Array:
    key = as_key(key, where=f"{where}({name!r})")
    if isinstance(name, str):
        return _fold(key, by_name, _name_to_int(name))
    if isinstance(name, int | np.integer) or hasattr(name, "dtype"):
        return _fold(key, by_position, _check_index(name, where, "a position"))
    raise TypeError(f"{where}: a child is named by a str or an int, got {name!r}.")


@overload
def child(key: jax.Array, name: str | int | jax.Array) -> jax.Array: ...
@overload
def child(key: None, name: str | int | jax.Array) -> None: ...
@overload
def child(key: jax.Array | None, name: str | int | jax.Array) -> jax.Array | None: ...
def child(key: jax.Array | None, name: str | int | jax.Array) -> jax.Array | None:
    """The forward-pass key of the child called ``name`` (a string) or at position ``name``
    (an int, or a scalar integer array such as a ``lax.scan`` index).

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
    return _derive(key, name, "stoax.keys.child", NAME, POSITION)


@overload
def derive(key: jax.Array, *names: str | int | jax.Array) -> tuple[jax.Array, ...]: ...
@overload
def derive(key: None, *names: str | int | jax.Array) -> tuple[None, ...]: ...
@overload
def derive(
    key: jax.Array | None, *names: str | int | jax.Array
) -> tuple[jax.Array | None, ...]: ...
def derive(key: jax.Array | None, *names: str | int | jax.Array) -> tuple[jax.Array | None, ...]:
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


def init_child(key: jax.Array, name: str | int | jax.Array) -> jax.Array:
    """The *initialisation* key of the sublayer called ``name`` (or at position ``name``).

    The init domain is separate from the forward-pass domain of :func:`child`: a model built
    from ``key`` and then (carelessly) called with the same ``key`` still draws masks unrelated
    to its weights. Constructors use this, never a raw ``jax.random.split``.

    Example:
        >>> import jax, stoax
        >>> class Pair(stoax.Module):
        ...     a: stoax.nn.Linear
        ...     b: stoax.nn.Linear
        ...     def __init__(self, *, key):
        ...         k_a, k_b = stoax.keys.init_derive(key, "a", "b")
        ...         self.a = stoax.nn.Linear(2, 2, key=k_a)
        ...         self.b = stoax.nn.Linear(2, 2, key=k_b)
        >>> Pair(key=jax.random.key(0)).a.weight.shape
        (2, 2)
    """
    if key is None:
        raise TypeError(
            f"stoax.keys.init_child({name!r}): initialisation needs a key, got None. Pass "
            "key=jax.random.key(seed) to the constructor."
        )
    return _derive(key, name, "stoax.keys.init_child", INIT_NAME, INIT_POSITION)


def init_derive(key: jax.Array, *names: str | int | jax.Array) -> tuple[jax.Array, ...]:
    """One initialisation key per name, each :func:`init_child` ``(key, name)``."""
    return tuple(init_child(key, name) for name in names)


def _check_seed(seed: Any) -> Any:
    if isinstance(seed, bool | np.bool_):
        raise TypeError(f"step_key: seed must be an int or a key, got the bool {seed}.")
    if isinstance(seed, int | np.integer):
        if not 0 <= int(seed) < _U32:
            raise ValueError(
                f"step_key: seed must be in [0, 2**32), got {int(seed)} (jax.random.key would "
                "silently wrap it onto another seed). Pick a seed in that range."
            )
        return int(seed)
    return seed


def step_key(seed: int | jax.Array, step: int | jax.Array) -> jax.Array:
    """The training key of ``step``, in the step domain (see the module docstring).

    A function of ``(seed, step)`` alone, so a run resumed at step ``n`` draws exactly the
    randomness an uninterrupted run draws there. ``seed`` may be a Python int in ``[0, 2**32)``,
    a scalar integer array (traced or vmapped over an ensemble's seeds), or a key. ``step`` is an
    int in ``[0, 2**32)`` or a scalar integer array; a float or a bool is refused, never
    truncated.

    Example:
        >>> import stoax
        >>> k = stoax.step_key(0, 10)
        >>> k.shape
        ()
    """
    seed = _check_seed(seed)
    step = _check_index(step, "step_key", "step")
    integer_seed = isinstance(seed, int) or (
        hasattr(seed, "dtype") and jnp.ndim(seed) == 0 and jnp.issubdtype(seed.dtype, jnp.integer)
    )  # a scalar integer array (traced, or vmapped over seeds) is a seed, not a legacy key
    base = jax.random.key(seed) if integer_seed else as_key(seed, "step_key")
    return _fold(base, STEP, step)
