"""``MLP``: Linear -> activation -> Dropout per hidden layer, then a final Linear."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from stoax import keys
from stoax._module import Module
from stoax.nn._dropout import Dropout
from stoax.nn._fused_dropout import dropout_into
from stoax.nn._init import LECUN_NORMAL, ZEROS, Initializer
from stoax.nn._linear import Linear
from stoax.nn._sizes import positive_int

__all__ = ["MLP"]


class MLP(Module):
    """A multilayer perceptron: ``Linear -> activation -> Dropout(dropout)`` for each size in
    ``hidden``, then a final ``Linear`` to ``out_features`` with no activation.

    ``layers`` holds the ``len(hidden) + 1`` Linear layers, ``dropouts`` the ``len(hidden)``
    Dropout layers (in training mode; switch with ``stoax.eval_mode``). ``activation`` is static
    metadata. The key of ``dropouts[i]`` is ``keys.child(keys.child(key, "dropouts"), i)``: each
    hidden layer draws its own mask. Each dropout runs with the Linear after it as one
    :func:`stoax.random.dropout_then`: the backward pass keeps the activation and the key, not
    the dropped activation (the values are those of calling the layers one by one).
    Initialisation: each Linear as :class:`Linear`, with ``kernel_init`` and ``bias_init``
    (default LeCun-normal and zeros), layer ``i`` from ``stoax.keys.init_child(key, i)``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> mlp = stoax.nn.MLP(4, 2, hidden=(16,), dropout=0.1, key=jax.random.key(0))
        >>> mlp(jnp.ones((8, 4)), key=jax.random.key(1)).shape
        (8, 2)
        >>> stoax.eval_mode(mlp)(jnp.ones(4)).shape  # no key needed in evaluation
        (2,)
    """

    layers: tuple[Linear, ...]
    dropouts: tuple[Dropout, ...]
    activation: Callable[[jax.Array], jax.Array]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu,
        dropout: float | jax.Array = 0.0,
        use_bias: bool = True,
        *,
        key: jax.Array,
        dtype: jnp.dtype = jnp.float32,
        kernel_init: Initializer = LECUN_NORMAL,
        bias_init: Initializer = ZEROS,
    ):
        if isinstance(hidden, int) or not isinstance(hidden, Sequence):
            raise TypeError(
                f"MLP: hidden must be a sequence of layer sizes such as (64, 64), got {hidden!r}."
            )
        if not callable(activation):
            raise TypeError(f"MLP: activation must be a callable, got {activation!r}.")
        sizes = [
            positive_int(in_features, "MLP", "in_features"),
            *(positive_int(h, "MLP", "hidden") for h in hidden),
            positive_int(out_features, "MLP", "out_features"),
        ]
        self.dropouts = tuple(Dropout(dropout) for _ in hidden)
        self.activation = activation
        init_keys = keys.init_derive(keys.as_key(key, "MLP"), *range(len(sizes) - 1))
        self.layers = tuple(
            Linear(
                a,
                b,
                use_bias=use_bias,
                key=k,
                dtype=dtype,
                kernel_init=kernel_init,
                bias_init=bias_init,
            )
            for a, b, k in zip(sizes[:-1], sizes[1:], init_keys, strict=True)
        )

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The network's output, ``(..., out_features)``.

        Args:
            x: ``(..., in_features)``.
            key: the key of the dropouts (the one after hidden layer ``i`` draws with
                ``child(child(key, "dropouts"), i)``); needed in training mode unless ``dropout`` is
                0 (a :class:`~stoax.nn.MissingKeyError` names the layer otherwise), unused in
                evaluation mode."""
        drop_key = keys.child(key, "dropouts")
        x = self.layers[0](x)
        for i, (drop, linear) in enumerate(zip(self.dropouts, self.layers[1:], strict=True)):
            # Dropout and the next Linear as one dropout_then: the backward pass keeps the
            # activation (which its own gradient keeps anyway) and the key, not the dropped copy.
            x = dropout_into(drop, linear, self.activation(x), key=keys.child(drop_key, i))
        return x
