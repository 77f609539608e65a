"""Flax NNX randomness guide: a batch through ``nnx.vmap`` with ``Rngs.split``, one dropout key
per example.

Source: google/flax, docs_nnx/guides/randomness.md (section "Explicit random state" /
``model_forward`` with ``dropout_rngs.split(5)``).

Randomness as in the guide: the model holds no key (``nnx.Dropout(0.1)``, keys passed at call
time); ``dropout_rngs = nnx.Rngs(1)`` and ``split_rngs = dropout_rngs.split(5)`` gives a stream
whose key has a leading axis of 5; ``nnx.vmap(in_axes=(None, 0, 0))`` maps the model over the
examples and over the split stream, so each example draws its own mask. Tiny sizes.
"""

import jax.numpy as jnp
from flax import nnx


class Model(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.linear = nnx.Linear(6, 4, rngs=rngs)
        self.drop = nnx.Dropout(0.1)

    def __call__(self, x, rngs):
        return nnx.relu(self.drop(self.linear(x), rngs=rngs))


@nnx.vmap(in_axes=(None, 0, 0), out_axes=0)
def model_forward(model, x, rngs):
    return model(x, rngs=rngs)


def audit_target():
    model = nnx.eval_shape(lambda: Model(rngs=nnx.Rngs(0)))
    dropout_rngs = nnx.Rngs(1)
    split_rngs = dropout_rngs.split(5)
    return model_forward, (model, jnp.ones((5, 6)), split_rngs)
