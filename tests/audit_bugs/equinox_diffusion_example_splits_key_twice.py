"""Equinox score-based diffusion example: the training step splits its key twice.

Source: https://github.com/patrick-kidger/equinox/blob/main/docs/examples/score_based_diffusion.ipynb
(``single_loss_fn``, ``batch_loss_fn``, ``make_step``, ``main``) -- found by the audit corpus, not
reported upstream (no thread yet).

``make_step`` hands ``key`` to the loss, which splits it (``tkey, losskey = jr.split(key)``), and
then advances with ``key = jr.split(key, 1)[0]`` -- a second split of the same key. With JAX's
default (partitionable) threefry, ``split(key, 1)[0] == split(key, 2)[0]``: the next step's key
*is* this step's ``tkey``, already consumed by ``jr.uniform``. Everything else is as in the
example: ``batch_loss_fn`` splits its key into ``tkey, losskey``, splits
``losskey`` into one key per example, draws low-discrepancy times with ``jr.uniform(tkey, ...)``
and, under ``jax.vmap``, each example's noise with ``jr.normal(key, data.shape)``; ``make_step``
(``eqx.filter_jit``) then advances its key with ``key = jr.split(key, 1)[0]`` and returns it with
the model. ``weight`` and ``int_beta`` are Python lambdas and ``t1`` a Python float, passed as
arguments; ``opt_update`` is the optimiser's ``update`` function. The Mixer2d score network is
replaced by a small MLP on ``(t, y)``. Tiny sizes.
"""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

SOURCE = (
    "https://github.com/patrick-kidger/equinox/blob/main/docs/examples/score_based_diffusion.ipynb"
)
KIND = "reused_key"
SHAPE = (1, 3, 3)


class ScoreNet(eqx.Module):
    mlp: eqx.nn.MLP
    t1: float

    def __init__(self, t1, key):
        self.mlp = eqx.nn.MLP(9 + 1, 9, 16, 2, key=key)
        self.t1 = t1

    def __call__(self, t, y):
        h = jnp.concatenate([y.reshape(-1), jnp.atleast_1d(t / self.t1)])
        return self.mlp(h).reshape(SHAPE)


def single_loss_fn(model, weight, int_beta, data, t, key):
    mean = data * jnp.exp(-0.5 * int_beta(t))
    var = jnp.maximum(1 - jnp.exp(-int_beta(t)), 1e-5)
    std = jnp.sqrt(var)
    noise = jr.normal(key, data.shape)
    y = mean + std * noise
    pred = model(t, y)
    return weight(t) * jnp.mean((pred + noise / std) ** 2)


def batch_loss_fn(model, weight, int_beta, data, t1, key):
    batch_size = data.shape[0]
    tkey, losskey = jr.split(key)  # BUG-RELATED
    losskey = jr.split(losskey, batch_size)
    t = jr.uniform(tkey, (batch_size,), minval=0, maxval=t1 / batch_size)
    t = t + (t1 / batch_size) * jnp.arange(batch_size)
    loss_fn = jax.vmap(ft.partial(single_loss_fn, model, weight, int_beta))
    return jnp.mean(loss_fn(data, t, losskey))


@eqx.filter_jit
def make_step(model, weight, int_beta, data, t1, key, opt_state, opt_update):
    loss_fn = eqx.filter_value_and_grad(batch_loss_fn)
    loss, grads = loss_fn(model, weight, int_beta, data, t1, key)
    updates, opt_state = opt_update(grads, opt_state)
    model = eqx.apply_updates(model, updates)
    key = jr.split(key, 1)[0]  # BUG
    return loss, model, key, opt_state


OPT = optax.adabelief(3e-4)
T1 = 10.0


def setup():
    key = jr.PRNGKey(5678)
    model_key, train_key, loader_key, sample_key = jr.split(key, 4)
    model = ScoreNet(T1, model_key)
    return model, OPT.init(eqx.filter(model, eqx.is_inexact_array)), train_key


def audit_target():
    model, opt_state, train_key = eqx.filter_eval_shape(setup)  # shapes only: the audit traces
    int_beta = lambda t: t  # noqa: E731 - as in the example
    weight = lambda t: 1 - jnp.exp(-int_beta(t))  # noqa: E731
    data = jnp.ones((4, *SHAPE))
    args = (model, weight, int_beta, data, T1, train_key, opt_state, OPT.update)
    return make_step, args
