"""A small convolutional network for the digits example (``stoax train digits --model cnn``).

Two blocks of ``Conv -> BatchNorm -> ReLU`` (twice), max pooling and *spatial* dropout (whole
channels: ``Dropout(rate, broadcast_dims=(-3, -2))`` on ``(N, H, W, C)``), then global average
pooling, dropout and a linear classifier. BatchNorm makes it a model with state: the train step
runs it through :func:`stoax.apply` and keeps the running statistics in ``TrainState.rest``;
evaluation uses them.

Example:
    >>> import jax, jax.numpy as jnp, stoax
    >>> from stoax.examples.digits_cnn import make_cnn
    >>> model = make_cnn(0.1, key=jax.random.key(0))
    >>> logits, model = stoax.apply(model, jnp.ones((4, 64)), key=jax.random.key(1))
    >>> logits.shape, stoax.has_state(model)
    ((4, 10), True)
"""

from __future__ import annotations

import jax

import stoax

__all__ = ["make_cnn", "to_images"]

_SIDE, _CLASSES = 8, 10


def to_images(x: jax.Array) -> jax.Array:
    """``(..., 64)`` pixels -> ``(..., 8, 8, 1)`` channels-last images."""
    return x.reshape(*x.shape[:-1], _SIDE, _SIDE, 1)


def make_cnn(rate: float | jax.Array, *, key: jax.Array, width: int = 32) -> stoax.nn.Sequential:
    """8x8x1 -> [conv-BN-ReLU x2, 2x2 max pool, spatial dropout] at ``width`` and ``2 * width``
    channels -> global average pool -> dropout -> 10 logits. ``rate`` is every dropout's rate."""
    k = stoax.keys.init_derive(key, "conv1", "conv2", "conv3", "conv4", "head")
    w1, w2 = width, 2 * width

    def conv_bn(cin: int, cout: int, ck: jax.Array) -> list:
        return [
            stoax.nn.Conv(cin, cout, (3, 3), use_bias=False, key=ck),
            stoax.nn.BatchNorm(cout, momentum=0.9),
            jax.nn.relu,
        ]

    def spatial_dropout() -> stoax.nn.Dropout:  # one draw per (example, channel)
        return stoax.nn.Dropout(rate, broadcast_dims=(-3, -2))

    return stoax.nn.Sequential(
        [
            to_images,
            *conv_bn(1, w1, k[0]),
            *conv_bn(w1, w1, k[1]),
            stoax.nn.MaxPool((2, 2)),  # 8x8 -> 4x4
            spatial_dropout(),
            *conv_bn(w1, w2, k[2]),
            *conv_bn(w2, w2, k[3]),
            stoax.nn.MaxPool((2, 2)),  # 4x4 -> 2x2
            spatial_dropout(),
            stoax.nn.GlobalAvgPool(),
            stoax.nn.Dropout(rate),
            stoax.nn.Linear(w2, _CLASSES, key=k[4]),
        ]
    )
