"""``Dropout -> Linear`` (or ``Conv``) as one :func:`stoax.random.dropout_then`: containers use it.

A layer whose gradient needs its input (a matmul: ``dW = x^T @ g``) makes autodiff keep that
input; after a dropout the input is the *dropped* activation, a second stored copy next to the
pre-dropout one that the activation function keeps anyway. Run as one ``dropout_then``, only the
pre-dropout input and the key are kept and the dropped input is rebuilt in the backward pass.

The protocol: a stoax module class that sets ``fuse_preceding_dropout = True`` (a class
attribute) declares that its call is deterministic -- a pure function of its arrays and its
input, needing no key -- so a container may call it inside ``Dropout.then``. ``Linear`` and
``Conv`` do. The dropout's key is the one the container gives it today, so masks, outputs and
gradients are bitwise those of calling the two layers one after the other.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax

from stoax._errors import LayerError
from stoax._module import is_module

__all__ = ["dropout_into", "fuses_with_dropout", "fused_steps"]


def fuses_with_dropout(drop: Any, layer: Any) -> bool:
    """True when ``drop`` (a stoax dropout with ``then``) feeds ``layer``, a stoax module that
    declares ``fuse_preceding_dropout``."""
    return (
        is_module(drop)
        and callable(getattr(drop, "then", None))
        and is_module(layer)
        and getattr(type(layer), "fuse_preceding_dropout", False) is True
    )


def fused_steps(layers: Sequence[Any]) -> Iterator[tuple[int, Any, Any]]:
    """``(i, layer, fused)`` for each step of a container running ``layers`` in order:
    ``fused`` is the layer after ``layer`` when the two run as one :func:`dropout_into` (the
    step then covers positions ``i`` and ``i + 1``), else ``None``."""
    i = 0
    while i < len(layers):
        after = layers[i + 1] if i + 1 < len(layers) else None
        fused = after if after is not None and fuses_with_dropout(layers[i], after) else None
        yield i, layers[i], fused
        i += 1 if fused is None else 2


@dataclass(frozen=True)
class _Rebuilt:
    """``layer(x)`` for a layer given by its treedef and leaves: a hashable, pure ``fn`` for
    ``dropout_then`` (equal treedefs, equal functions: one trace per layer structure)."""

    treedef: Any

    def __call__(self, x: jax.Array, *leaves: Any) -> jax.Array:
        return jax.tree.unflatten(self.treedef, leaves)(x)


def dropout_into(drop: Any, layer: Any, x: jax.Array, *, key: jax.Array | None) -> jax.Array:
    """``layer(drop(x, key=key))``, run as ``drop.then`` when :func:`fuses_with_dropout`.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> from stoax.nn._fused_dropout import dropout_into
        >>> drop = stoax.nn.Dropout(0.5)
        >>> linear = stoax.nn.Linear(4, 2, key=jax.random.key(0))
        >>> x, key = jnp.ones((3, 4)), jax.random.key(1)
        >>> bool((dropout_into(drop, linear, x, key=key) == linear(drop(x, key=key))).all())
        True
    """
    if not fuses_with_dropout(drop, layer):
        return layer(drop(x, key=key))
    leaves, treedef = jax.tree.flatten(layer)
    try:
        return drop.then(_Rebuilt(treedef), x, *leaves, key=key)
    except LayerError as error:
        # Raised by the rebuilt copy of ``layer``: point the error at the layer itself, so the
        # containers around it name its field path (MLP.layers[3]).
        if type(error.root) is type(layer):
            if error.layer is error.root:
                error.layer = layer
            error.root = layer
        raise
