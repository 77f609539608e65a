"""Sharding: the same masks on every device mesh, and no communication for random numbers.

stoax draws every mask with ``jax.random.bits`` on the *global* shape of the array it drops. Under
``jax.jit`` with shardings, JAX's threefry generates each device's block of those bits where the
device is -- shard-locally, with no communication -- and the bits at a global position depend only
on the key and that position. So a mask is bitwise the same on one device, an ``(8,)`` data mesh
or a ``(4, 2)`` data x model mesh, and a training step with dropout has exactly the collectives of
the same step without dropout.

That needs ``jax_threefry_partitionable=True``, JAX's default since 0.5.0. With it off, masks are
still the same on every mesh, but XLA generates them with all-gathers and collective-permutes.
stoax does not change JAX's configuration for you (the flag changes the value of every random
draw, model initialisation included): :func:`check_partitionable` -- called by :func:`shardings`
-- warns when it is off.

The helpers here are small: :func:`shardings` places a model by a list of ``(regex,
PartitionSpec)`` rules (tensor parallelism in a few lines), :func:`example_keys` gives
mesh-independent per-example keys inside ``jax.shard_map``, and :func:`count_collectives` counts
the communication in a compiled step.

Example:
    >>> import jax, stoax
    >>> from jax.sharding import PartitionSpec as P
    >>> mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    >>> layer = stoax.nn.Linear(4, 8, key=jax.random.key(0))
    >>> s = stoax.sharding.shardings(layer, mesh, [(r"\\.weight$", P(None, "model"))])
    >>> s.weight.spec == P(None, "model"), s.bias.spec == P()
    (True, True)
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = [
    "COLLECTIVES",
    "ShardingWarning",
    "check_partitionable",
    "count_collectives",
    "example_keys",
    "shardings",
]

T = TypeVar("T")

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_RBG_UNSAFE_FLAG = "--xla_tpu_spmd_rng_bit_generator_unsafe"


class ShardingWarning(UserWarning):
    """A JAX setting under which stoax's sharding guarantees do not hold."""


def check_partitionable(*, strict: bool = False) -> bool:
    """Check that random numbers are generated shard-locally; warn (or raise) when they are not.

    Returns ``True`` when every guarantee holds. Two settings break one:

    * ``jax_threefry_partitionable=False`` (the default before JAX 0.5.0): masks are still the
      same on every mesh, but sharded random bits are computed with communication (all-gathers
      and collective-permutes in the compiled step).
    * ``XLA_FLAGS`` with ``--xla_tpu_spmd_rng_bit_generator_unsafe`` and an ``rbg`` /
      ``unsafe_rbg`` key: generation is shard-local but the values change with the mesh.

    ``strict=True`` raises a ``RuntimeError`` instead of a :class:`ShardingWarning`.

    Example:
        >>> import stoax
        >>> stoax.sharding.check_partitionable()
        True
    """
    problems = []
    flags: Any = jax.config  # its options are dynamic attributes, unknown to type checkers
    if not flags.jax_threefry_partitionable:
        problems.append(
            "jax_threefry_partitionable is False: sharded random bits (every dropout mask) are "
            "generated with all-gathers and collective-permutes. Masks are still the same on "
            "every mesh. Turn it on once, at program start, before initialising a model -- it "
            "changes the value of every random draw: "
            "jax.config.update('jax_threefry_partitionable', True) (JAX's default since 0.5.0)."
        )
    impl = str(flags.jax_default_prng_impl)
    if _RBG_UNSAFE_FLAG in os.environ.get("XLA_FLAGS", "") and "rbg" in impl:
        problems.append(
            f"XLA_FLAGS sets {_RBG_UNSAFE_FLAG} with the {impl} PRNG: random bits then depend on "
            "the device mesh, so dropout masks change when the mesh does. Use threefry2x32 for "
            "mesh-independent masks."
        )
    for problem in problems:
        if strict:
            raise RuntimeError(f"stoax.sharding: {problem}")
        warnings.warn(f"stoax.sharding: {problem}", ShardingWarning, stacklevel=2)
    return not problems


def _path_str(path: Sequence[Any]) -> str:
    return jax.tree_util.keystr(tuple(path))


def shardings(
    tree: T,
    mesh: Mesh,
    rules: Iterable[tuple[str, PartitionSpec]] = (),
) -> T:
    """A pytree of ``NamedSharding`` shaped like ``tree``: each array placed by the first rule
    whose regex matches its path (``re.search`` on ``jax.tree_util.keystr``), else replicated.

    A rule's ``PartitionSpec`` names the *trailing* axes of an array: ``P(None, "model")`` shards
    the output features of a ``Linear`` weight ``(in, out)`` and of a stack of them ``(layers, in,
    out)`` alike; leading axes it does not name are replicated. ``None`` holes (from
    :func:`stoax.partition`) stay ``None``, so the result fits ``jax.jit``'s ``in_shardings`` /
    ``out_shardings`` and ``jax.device_put``.

    Example (Megatron-style tensor parallelism for a two-layer MLP):
        >>> import jax, stoax
        >>> from jax.sharding import PartitionSpec as P
        >>> rules = [
        ...     (r"layers\\[0\\]\\.weight", P(None, "model")),  # column-parallel
        ...     (r"layers\\[0\\]\\.bias", P("model")),
        ...     (r"layers\\[2\\]\\.weight", P("model", None)),  # row-parallel
        ... ]
    """
    check_partitionable()
    compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

    def place(path: Sequence[Any], leaf: Any) -> NamedSharding:
        name = _path_str(path)
        spec = next((spec for pattern, spec in compiled if pattern.search(name)), PartitionSpec())
        ndim = jnp.ndim(leaf)
        if len(spec) > ndim:
            raise ValueError(
                f"stoax.sharding.shardings: the rule {spec} names {len(spec)} axes but {name} "
                f"has shape {jnp.shape(leaf)}."
            )
        for axis, names in zip(jnp.shape(leaf)[ndim - len(spec) :], spec, strict=True):
            size = 1
            for n in (names,) if isinstance(names, str) else names or ():
                size *= mesh.shape[n]
            if axis % size:
                raise ValueError(
                    f"stoax.sharding.shardings: {name} has shape {jnp.shape(leaf)}; the rule "
                    f"{spec} splits an axis of size {axis} over {size} devices, which does not "
                    "divide it."
                )
        if len(spec):  # name the trailing axes: replicate the leading (e.g. stacked) ones
            spec = PartitionSpec(*([None] * (ndim - len(spec))), *spec)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(place, tree)


def example_keys(
    key: jax.Array, batch: int, *, axis_name: str | tuple[str, ...] | None = None
) -> jax.Array:
    """One key per example, ``fold_in(key, global_index)``, for per-example masks.

    Inside ``jax.shard_map`` over a batch split on ``axis_name``, ``batch`` is the *local* batch
    size and the global index of local example ``i`` is ``axis_index * batch + i``: every example
    gets the key it gets on one device, so masks drawn from these keys (``jax.vmap(model)(x,
    key=keys)``) do not depend on how many devices share the batch. (Folding ``axis_index`` into
    one shared key instead gives each shard its own randomness, but masks that change with the
    mesh.) With ``axis_name=None`` -- outside ``shard_map`` -- the keys of a whole batch.

    Example:
        >>> import jax, stoax
        >>> stoax.sharding.example_keys(jax.random.key(0), 4).shape
        (4,)
    """
    start = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch
    index = start + jnp.arange(batch, dtype=jnp.uint32)
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index)


def count_collectives(compiled: Any) -> dict[str, int]:
    """Count the collectives in compiled HLO: ``jax.jit(f).lower(*args).compile()``, or its
    ``as_text()``. Asynchronous pairs (``all-gather-start`` / ``-done``) count once.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> compiled = jax.jit(jnp.sin).lower(jnp.ones(3)).compile()
        >>> sum(stoax.sharding.count_collectives(compiled).values())
        0
    """
    text = compiled if isinstance(compiled, str) else compiled.as_text()
    return {op: len(re.findall(rf"(?<![\w-]){op}(?:-start)?\(", text)) for op in COLLECTIVES}
