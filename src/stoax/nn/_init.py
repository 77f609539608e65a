"""Initialisers as constructor arguments: the ``jax.nn.initializers`` convention.

An initialiser is any ``init(key, shape, dtype) -> array`` (every function of
``jax.nn.initializers`` is one). Layers with a weight and a bias take ``kernel_init`` and
``bias_init``; the two draw from ``stoax.keys.init_child(key, "weight")`` and
``init_child(key, "bias")``, so replacing one initialiser never changes the other's values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax

from stoax import keys

__all__ = [
    "CONV_LECUN_NORMAL",
    "LECUN_NORMAL",
    "ZEROS",
    "Initializer",
    "check_initializer",
    "weight_and_bias",
]

Initializer = Callable[[jax.Array, Sequence[int], Any], jax.Array]

# The defaults, as Flax: weights LeCun-normal (truncated normal, variance 1 / fan-in), biases 0.
LECUN_NORMAL = jax.nn.initializers.lecun_normal()
# over a kernel (*spatial, in, out): the fan-in is prod(spatial) * in
CONV_LECUN_NORMAL = jax.nn.initializers.lecun_normal(in_axis=-2, out_axis=-1)
ZEROS = jax.nn.initializers.zeros


def check_initializer(init: Any, layer: str, name: str) -> Initializer:
    """``init`` if it is callable, else a ``TypeError`` naming ``layer`` and ``name``."""
    if not callable(init):
        raise TypeError(
            f"{layer}: {name} must be an initialiser, a function (key, shape, dtype) -> array "
            f"such as jax.nn.initializers.lecun_normal(); got {init!r}."
        )
    return init


def weight_and_bias(
    key: jax.Array,
    weight_shape: tuple[int, ...],
    bias_shape: tuple[int, ...] | None,
    *,
    kernel_init: Initializer,
    bias_init: Initializer,
    dtype: Any,
    layer: str,
) -> tuple[jax.Array, jax.Array | None]:
    """``(weight, bias)`` drawn by the two initialisers (``bias`` is ``None`` when
    ``bias_shape`` is), each from its own init key of ``key``, with shapes checked.

    Example:
        >>> import jax
        >>> from stoax.nn._init import weight_and_bias
        >>> w, b = weight_and_bias(jax.random.key(0), (3, 2), (2,), dtype=jax.numpy.float32,
        ...                        kernel_init=jax.nn.initializers.ones,
        ...                        bias_init=jax.nn.initializers.zeros, layer="Linear")
        >>> w.tolist(), b.tolist()
        ([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]], [0.0, 0.0])
    """
    kernel_init = check_initializer(kernel_init, layer, "kernel_init")
    bias_init = check_initializer(bias_init, layer, "bias_init")
    key = keys.as_key(key, f"{layer}(key=...)")
    k_weight, k_bias = keys.init_derive(key, "weight", "bias")
    weight = _drawn(kernel_init, k_weight, weight_shape, dtype, layer, "kernel_init")
    if bias_shape is None:
        return weight, None
    return weight, _drawn(bias_init, k_bias, bias_shape, dtype, layer, "bias_init")


def _drawn(
    init: Initializer, key: jax.Array, shape: tuple[int, ...], dtype: Any, layer: str, name: str
) -> jax.Array:
    value = init(key, shape, dtype)
    if getattr(value, "shape", None) != tuple(shape):
        raise ValueError(
            f"{layer}: {name} returned an array of shape {getattr(value, 'shape', None)}, "
            f"expected {tuple(shape)}; an initialiser must return an array of the shape it is "
            "given."
        )
    return value
