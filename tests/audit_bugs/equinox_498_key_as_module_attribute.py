"""A dropout key stored as a module attribute: the same mask for every batch of the epoch.

Thread: https://github.com/patrick-kidger/equinox/issues/498 -- the user kept a ``key`` attribute
on the model so as not to pass keys through ``__call__``; the maintainer: "That's probably not
what you want. It means you'll get the exact same dropout mask every time." Here an epoch is a
``lax.scan`` over batches, every step calling the model that uses ``self.key``.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

THREAD = "https://github.com/patrick-kidger/equinox/issues/498"
KIND = "loop_invariant_key"


class Net(eqx.Module):
    linear: eqx.nn.Linear
    dropout: eqx.nn.Dropout
    key: jax.Array

    def __init__(self, key):
        lkey, self.key = jax.random.split(key)
        self.linear = eqx.nn.Linear(4, 2, key=lkey)
        self.dropout = eqx.nn.Dropout(0.5)

    def __call__(self, x):
        return self.linear(self.dropout(x, key=self.key))  # BUG


OPTIM = optax.sgd(0.1)


@eqx.filter_jit
def train_epoch(model, opt_state, xs, ys):
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def step(carry, batch):
        params, opt_state = carry
        x, y = batch

        def loss(params):
            net = eqx.combine(params, static)
            return jnp.mean((jax.vmap(net)(x) - y) ** 2)

        grads = jax.grad(loss)(params)
        updates, opt_state = OPTIM.update(grads, opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), (xs, ys))
    return params, opt_state


def setup():
    model = Net(jax.random.PRNGKey(0))
    return model, OPTIM.init(eqx.filter(model, eqx.is_inexact_array))


def audit_target():
    model, opt_state = eqx.filter_eval_shape(setup)  # shapes only: the audit traces
    return train_epoch, (model, opt_state, jnp.ones((3, 5, 4)), jnp.zeros((3, 5, 2)))
