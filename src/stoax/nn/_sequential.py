"""``Sequential``: layers applied in order, each with its own key derived by position."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from stoax import keys
from stoax._module import Module, is_module

__all__ = ["Sequential"]


class Sequential(Module):
    """Apply ``layers`` in order. Modules get ``key=stoax.keys.child(key, i)``; plain functions
    (``jax.nn.relu``) are called with the input alone.

    Keys are derived by position: appending a layer leaves the masks of the others unchanged.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> k = jax.random.key(0)
        >>> model = stoax.nn.Sequential(
        ...     [stoax.nn.Linear(4, 8, key=k), jax.nn.relu, stoax.nn.Dropout(0.1)]
        ... )
        >>> model(jnp.ones(4), key=jax.random.key(1)).shape
        (8,)
    """

    layers: tuple[Callable, ...]

    def __init__(self, layers: Sequence[Callable]):
        self.layers = layers

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
        for i, layer in enumerate(self.layers):
            x = layer(x, key=keys.child(key, i)) if is_module(layer) else layer(x)
        return x

    def __getitem__(self, i: int | slice) -> Callable | Sequential:
        if isinstance(i, slice):
            return Sequential(self.layers[i])
        return self.layers[i]

    def __len__(self) -> int:
        return len(self.layers)
