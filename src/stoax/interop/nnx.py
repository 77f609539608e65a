"""Flax NNX and stoax together: a drop-in lean ``Dropout``, and stoax modules inside NNX models.

``Dropout`` subclasses ``flax.nnx.Dropout`` with its constructor (``rate, *, broadcast_dims,
deterministic, rng_collection, rngs``), its call (``inputs, *, deterministic=None,
rngs=None``), its key stream (``rngs[rng_collection]``), ``model.eval()``/``model.train()`` and
``nnx.view(model, deterministic=...)``, and its statistics: each element zeroed with probability
``rate``, the others scaled by ``1/(1-rate)``. What changes: the backward pass regenerates the
mask from the key (:func:`stoax.random.dropout`) instead of storing it, and ``deterministic``
may be a JAX bool. The masks differ from ``nnx.Dropout``'s for the same key (stoax compares
random bits with an integer threshold, NNX draws ``jax.random.bernoulli``); their distribution is
the same.

**stoax modules inside NNX modules.** Importing stoax with Flax installed registers every stoax
module type with NNX as *data* with an in-place update, so ``self.body = stoax.nn.Stack(...)``
needs no ``nnx.data(...)``: ``nnx.split``/``nnx.merge``/``nnx.jit`` carry its arrays, and
``nnx.update`` (an optimiser step) writes new arrays into it. NNX sees a stoax module's arrays
as plain arrays, not ``nnx.Param``: train them with the filter :func:`params`, which selects
``nnx.Param`` *and* the trainable arrays of the stoax modules (what :func:`stoax.partition` puts
on the parameter side).

Example:
    >>> import jax, jax.numpy as jnp, optax, stoax
    >>> from flax import nnx
    >>> from stoax.interop.nnx import Dropout, params
    >>> class Model(nnx.Module):
    ...     def __init__(self, rngs):
    ...         self.inp = nnx.Linear(4, 8, rngs=rngs)
    ...         self.drop = Dropout(0.1, rngs=rngs)
    ...         self.body = stoax.nn.MLP(8, 1, hidden=(16,), dropout=0.1, key=jax.random.key(0))
    ...     def __call__(self, x, key):
    ...         return self.body(self.drop(self.inp(x)), key=key)
    >>> model = Model(nnx.Rngs(0))
    >>> wrt = params(model)
    >>> opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=wrt)
    >>> @nnx.jit
    ... def step(model, opt, x, key):
    ...     loss = lambda m: ((m(x, key) - 1.0) ** 2).mean()
    ...     value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, wrt))(model)
    ...     opt.update(model, grads)
    ...     return value
    >>> x = jnp.ones((2, 4))
    >>> losses = [float(step(model, opt, x, stoax.step_key(0, i))) for i in range(20)]
    >>> losses[-1] < losses[0]
    True
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import graphlib

from stoax._module import field_is_trainable, is_array, is_module
from stoax.interop._lean import is_static_true, lean_dropout
from stoax.interop._nnx_graph import Frozen, register_all

__all__ = ["Dropout", "params"]

register_all()


class Dropout(nnx.Dropout):
    """``flax.nnx.Dropout`` with stoax's lean backward pass (same constructor and call)."""

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | jax.Array | None = None,
        rngs: nnx.Rngs | nnx.RngStream | jax.Array | None = None,
    ) -> jax.Array:
        """Drop the elements of ``inputs`` unless ``deterministic``.

        ``rngs``: a key, an ``RngStream`` or ``Rngs`` to draw from instead of the layer's own
        stream (as in NNX).
        """
        deterministic = self.deterministic if deterministic is None else deterministic
        where = "stoax.interop.nnx.Dropout"
        if deterministic is None:
            raise ValueError(
                f"{where}: no deterministic flag. Pass deterministic= to the constructor or the "
                "call, or use model.train()/model.eval()."
            )
        key = None
        skip_now = is_static_true(deterministic) or (
            isinstance(self.rate, float | int) and self.rate == 0.0
        )
        if not skip_now:
            source = rngs if rngs is not None else self.rngs
            if isinstance(source, nnx.Rngs):
                key = source[self.rng_collection]()
            elif isinstance(source, nnx.RngStream):
                key = source()
            elif source is not None:
                key = source
        return lean_dropout(
            inputs,
            self.rate,
            key,
            skip=deterministic,
            broadcast_dims=self.broadcast_dims,
            where=where,
            how_to_key="give it rngs=nnx.Rngs(...) at construction or rngs= at the call.",
        )


def params(model: Any) -> Any:
    """The NNX filter of what to train in ``model``: every ``nnx.Param``, and the trainable
    arrays of the stoax modules it holds (floating arrays not in a
    ``stoax.field(trainable=False)``; not a rate given as an array, not a buffer).

    Use it as ``wrt=`` of ``nnx.Optimizer`` and in ``nnx.DiffState(0, wrt)`` for
    ``nnx.grad``/``nnx.value_and_grad``. It is computed from ``model``'s structure: build it
    again if stoax modules are added or replaced.
    """
    paths: set[tuple[Any, ...]] = set()
    seen: set[int] = set()

    def walk(node: Any, path: tuple[Any, ...], allowed: bool) -> None:
        if isinstance(node, nnx.Variable):
            return
        if is_array(node):
            if allowed and jnp.issubdtype(node.dtype, jnp.inexact):
                paths.add(path)
            return
        if id(node) in seen:
            return
        seen.add(id(node))
        impl = graphlib.get_node_impl(node)
        if impl is None:
            return
        trainable_fields: dict[Any, bool] | None = (
            {f.name: field_is_trainable(f) for f in dataclasses.fields(node)}
            if is_module(node)
            else None
        )
        for key, child in impl.node_dict(node).items():
            if trainable_fields is not None:  # a stoax module: its fields decide
                child_allowed = allowed and trainable_fields.get(key, False)
            elif isinstance(node, Frozen):
                child_allowed = allowed
            else:  # an NNX module or container: only its stoax children hold stoax params
                child_allowed = is_module(child) or isinstance(child, Frozen)
            walk(child, (*path, key), child_allowed)

    walk(model, (), False)
    frozen_paths = frozenset(paths)

    def is_param(path: tuple[Any, ...], value: Any) -> bool:
        return isinstance(value, nnx.Param) or tuple(path) in frozen_paths

    return is_param
