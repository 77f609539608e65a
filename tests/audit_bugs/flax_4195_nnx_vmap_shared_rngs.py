"""``nnx.vmap`` over a batch with the model's dropout stream broadcast: one mask for the batch.

Thread: https://github.com/google/flax/issues/4195 ("nnx.vmap use the same random key rngs inside
nnx.Module across vectorization"): with ``in_axes=(None, 0)`` the model -- and the ``Rngs`` it
holds -- is broadcast, so "stochastic functions will have the same behavior across the batch";
the fix is ``nnx.split_rngs`` / ``StateAxes`` to vectorise the ``RngState``.
"""

import jax.numpy as jnp
from flax import nnx

THREAD = "https://github.com/google/flax/issues/4195"
KIND = "vmap_shared_key"


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(4, 4, rngs=rngs)
        self.dropout = nnx.Dropout(0.5, rngs=rngs)

    def __call__(self, x):
        return self.dropout(self.linear(x))  # BUG


def inference_fn(model, x):
    return model(x)


def batched(model, xs):
    return nnx.vmap(inference_fn, in_axes=(None, 0))(model, xs)


def audit_target():
    model = nnx.eval_shape(lambda: Model(nnx.Rngs(0)))
    return batched, (model, jnp.ones((3, 4)))
