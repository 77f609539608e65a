"""Flax NNX functional API: ``nnx.split`` / ``nnx.merge`` around a plain ``jax.jit`` training
step, with a dropout stream carried in the split state.

Source: google/flax, examples/nnx_toy_examples/01_functional_api.py (``MLP``, ``train_step``) and
03_train_state.py (``nnx.merge(..., copy=True)`` inside the loss);
the dropout stream is the pattern of docs_nnx/guides/randomness.md (``nnx.Rngs(params=0,
dropout=1)`` held by the model, the ``RngState`` split off with the other state).

Randomness as in the sources: the module is split into ``graphdef, params, rest`` with
``nnx.split(model, nnx.Param, ...)``; inside ``jax.jit`` the step merges them, runs the model --
whose ``nnx.Dropout`` takes a key from the stored ``dropout`` stream -- and returns the updated
non-parameter state (counters and the stream's count) alongside the new parameters. Tiny sizes.
"""

import jax
import jax.numpy as jnp
from flax import nnx


class Count(nnx.Variable):
    pass


class MLP(nnx.Module):
    def __init__(self, din, dhidden, dout, *, rngs: nnx.Rngs):
        self.count = Count(jnp.array(0))
        self.linear1 = nnx.Linear(din, dhidden, rngs=rngs)
        self.dropout = nnx.Dropout(0.2, rngs=rngs)
        self.linear2 = nnx.Linear(dhidden, dout, rngs=rngs)

    def __call__(self, x):
        self.count[...] += 1
        return self.linear2(self.dropout(jax.nn.relu(self.linear1(x) * 0.5)))


GRAPHDEF, PARAMS, REST = nnx.split(
    nnx.eval_shape(lambda: MLP(1, 8, 1, rngs=nnx.Rngs(params=0, dropout=1))), nnx.Param, ...
)


@jax.jit
def train_step(params, rest, batch):
    x, y = batch

    def loss_fn(params):
        model = nnx.merge(GRAPHDEF, params, rest, copy=True)
        y_pred = model(x)
        new_rest = nnx.state(model, nnx.Not(nnx.Param))
        return jnp.mean((y - y_pred) ** 2), new_rest

    grad, rest = jax.grad(loss_fn, has_aux=True)(params)
    params = jax.tree.map(lambda w, g: w - 0.1 * g, params, grad)
    return params, rest


def audit_target():
    return train_step, (PARAMS, REST, (jnp.ones((4, 1)), jnp.zeros((4, 1))))
