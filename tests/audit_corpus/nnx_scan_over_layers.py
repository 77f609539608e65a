"""Flax NNX scan over layers: blocks created under ``nnx.vmap`` with split rngs, applied with
``nnx.scan``, each with its own dropout stream.

Source: google/flax, examples/nnx_toy_examples/06_scan_over_layers.py (``Block``, ``ScanMLP``).

Randomness as in the example: ``ScanMLP.__init__`` creates the stack with
``@nnx.split_rngs(splits=n_layers)`` around ``@nnx.vmap(axis_size=n_layers)``, so every layer's
``nnx.Dropout(0.5, rngs=rngs)`` holds its own key; ``__call__`` runs ``@nnx.scan`` over the layer
axis and each block's dropout draws from its own stream. Here the forward pass is ``nnx.jit``-ed.
Tiny sizes.
"""

import jax
import jax.numpy as jnp
from flax import nnx

DIM, LAYERS = 4, 3


class Block(nnx.Module):
    def __init__(self, dim, *, rngs: nnx.Rngs):
        self.linear = nnx.Linear(dim, dim, rngs=rngs)
        self.bn = nnx.BatchNorm(dim, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return jax.nn.gelu(self.dropout(self.bn(self.linear(x))))


class ScanMLP(nnx.Module):
    def __init__(self, dim, *, n_layers, rngs: nnx.Rngs):
        self.n_layers = n_layers

        @nnx.split_rngs(splits=n_layers)
        @nnx.vmap(axis_size=n_layers)
        def create_block(rngs: nnx.Rngs):
            return Block(dim, rngs=rngs)

        self.layers = create_block(rngs)

    def __call__(self, x):
        @nnx.scan
        def scan_fn(x, block):
            return block(x), None

        x, _ = scan_fn(x, self.layers)
        return x


@nnx.jit
def forward(model, x):
    return model(x)


def audit_target():
    model = nnx.eval_shape(lambda: ScanMLP(DIM, n_layers=LAYERS, rngs=nnx.Rngs(0)))
    return forward, (model, jnp.ones((3, DIM)))
