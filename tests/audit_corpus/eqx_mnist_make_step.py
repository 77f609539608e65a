"""Equinox MNIST: the CNN's training step (returns the updated model; no randomness).

Source: patrick-kidger/equinox, docs/examples/mnist.ipynb (``CNN``, ``loss``, ``train``,
``make_step``).

Randomness as in the example: keys only build the model (``key, subkey = jax.random.split(key,
2)``, ``CNN(subkey)`` splitting into four layer keys); the ``eqx.filter_jit`` step draws nothing
and returns ``(model, opt_state, loss_value)`` -- a model whose leaves include ``jax.nn.relu``,
``jnp.ravel`` and ``eqx.nn.MaxPool2d``'s settings, none of them arrays. The audit must trace such a
step and report nothing. Tiny sizes.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import optax


class CNN(eqx.Module):
    layers: list

    def __init__(self, key):
        key1, key2, key3 = jax.random.split(key, 3)
        self.layers = [
            eqx.nn.Conv2d(1, 2, kernel_size=2, key=key1),
            eqx.nn.MaxPool2d(kernel_size=2),
            jax.nn.relu,
            jnp.ravel,
            eqx.nn.Linear(2 * 4 * 4, 8, key=key2),
            jax.nn.sigmoid,
            eqx.nn.Linear(8, 10, key=key3),
            jax.nn.log_softmax,
        ]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def loss(model, x, y):
    pred_y = jax.vmap(model)(x)
    return -jnp.mean(jnp.take_along_axis(pred_y, y[:, None], axis=1))


OPTIM = optax.adamw(3e-4)


@eqx.filter_jit
def make_step(model, opt_state, x, y):
    loss_value, grads = eqx.filter_value_and_grad(loss)(model, x, y)
    updates, opt_state = OPTIM.update(grads, opt_state, eqx.filter(model, eqx.is_array))
    model = eqx.apply_updates(model, updates)
    return model, opt_state, loss_value


def setup():
    key = jax.random.PRNGKey(5678)
    key, subkey = jax.random.split(key, 2)
    model = CNN(subkey)
    return model, OPTIM.init(eqx.filter(model, eqx.is_array))


def audit_target():
    model, opt_state = eqx.filter_eval_shape(setup)  # shapes only: the audit traces
    x, y = jnp.ones((2, 1, 6, 6)), jnp.zeros((2,), jnp.int32)
    return make_step, (model, opt_state, x, y)
