"""``Sequential``: layers applied in order, each with its own key derived by position."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

import jax

from stoax import keys
from stoax._errors import locate_layer_errors
from stoax._module import Module, is_module
from stoax._peer_layers import takes_key
from stoax._state import apply, updates_state
from stoax.nn._fused_dropout import dropout_into, fused_steps

__all__ = ["Sequential"]


class Sequential(Module):
    """Apply ``layers`` in order. Modules get ``key=stoax.keys.child(key, i)``, and so do layers
    of other libraries whose call takes a keyword ``key`` (``eqx.nn.Dropout``, ``eqx.nn.Linear``);
    plain functions (``jax.nn.relu``) are called with the input alone. :func:`stoax.set_mode`
    reaches the ``inference`` flag of Equinox layers here.

    Keys are derived by position: appending a layer leaves the masks of the others unchanged.
    A ``Dropout`` directly followed by a ``Linear`` or ``Conv`` runs with it as one
    :func:`stoax.random.dropout_then` (same key, same values): the backward pass keeps the
    dropout's input and key, not the dropped activation.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> k = jax.random.key(0)
        >>> model = stoax.nn.Sequential(
        ...     [stoax.nn.Linear(4, 8, key=k), jax.nn.relu, stoax.nn.Dropout(0.1)]
        ... )
        >>> model(jnp.ones(4), key=jax.random.key(1)).shape
        (8,)
    """

    layers: tuple[Callable[..., Any], ...]

    def __init__(self, layers: Sequence[Callable[..., Any]]):
        self.layers = cast(tuple[Callable[..., Any], ...], layers)  # a tuple after __check_init__

    def __check_init__(self) -> None:
        layers = self.layers
        if (
            is_module(layers)
            or callable(layers)
            or isinstance(layers, str | bytes)
            or not (hasattr(layers, "__iter__"))
        ):
            raise TypeError(
                "Sequential: layers must be a list of layers, e.g. Sequential([Linear(...), "
                f"jax.nn.relu]), got {type(layers).__name__}."
            )
        layers = tuple(layers)
        for i, layer in enumerate(layers):
            if not callable(layer):
                raise TypeError(
                    f"Sequential: layers[{i}] is {layer!r}, which is not callable. Each entry "
                    "must be a stoax module or a function of the input (jax.nn.relu)."
                )
        self.layers = layers

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The layers applied in order.

        Args:
            x: the first layer's input.
            key: layer ``i`` gets ``child(key, i)`` (a plain function that takes no ``key`` is
                called without one); needed in training mode when a layer is stochastic."""
        for i, layer, fused in fused_steps(self.layers):
            if fused is not None:  # Dropout -> Linear/Conv as one dropout_then, the same key
                x = dropout_into(layer, fused, x, key=keys.child(key, i))
            elif is_module(layer) or takes_key(layer):
                x = layer(x, key=keys.child(key, i))
            else:
                x = layer(x)
        return x

    @locate_layer_errors
    def apply(self, x: jax.Array, *, key: jax.Array | None = None) -> tuple[jax.Array, Sequential]:
        """``(y, updated Sequential)``: each layer through :func:`stoax.apply`, with the key
        ``__call__`` gives it, so stateful layers (BatchNorm) return their updated state."""
        if not updates_state(self):  # stateless, or evaluation mode: nothing to thread
            return self(x, key=key), self
        layers = []
        for i, layer, fused in fused_steps(self.layers):
            if fused is not None:  # stateless both: nothing to update
                x = dropout_into(layer, fused, x, key=keys.child(key, i))
                layers += [layer, fused]
                continue
            if is_module(layer):
                x, layer = apply(layer, x, key=keys.child(key, i))
            elif takes_key(layer):
                x = layer(x, key=keys.child(key, i))
            else:
                x = layer(x)
            layers.append(layer)
        return x, self.replace(layers=tuple(layers))

    def __getitem__(self, i: int | slice) -> Callable[..., Any] | Sequential:
        if isinstance(i, slice):
            return Sequential(self.layers[i])
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)
