"""Equinox score-based diffusion: sampling a grid of images, one key per sample.

Source: patrick-kidger/equinox, docs/examples/score_based_diffusion.ipynb (``single_sample_fn``,
``main``).

Randomness as in the example: ``main`` splits its seed into ``model_key, train_key, loader_key,
sample_key``; for sampling ``sample_key = jr.split(sample_key, sample_size**2)`` and
``jax.vmap(sample_fn)(sample_key)``; ``single_sample_fn`` (``eqx.filter_jit``) draws the starting
point ``y1 = jr.normal(key, data_shape)`` and integrates the probability-flow ODE backwards,
deterministically. The example solves the ODE with diffrax's ``Tsit5``; this reproduction uses a
fixed-step Euler scheme in ``lax.scan`` (no randomness either way). Tiny sizes.
"""

import functools as ft

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr

SHAPE = (1, 3, 3)


class ScoreNet(eqx.Module):
    mlp: eqx.nn.MLP

    def __init__(self, key):
        self.mlp = eqx.nn.MLP(9 + 1, 9, 16, 2, key=key)

    def __call__(self, t, y):
        return self.mlp(jnp.concatenate([y.reshape(-1), jnp.atleast_1d(t)])).reshape(SHAPE)


@eqx.filter_jit
def single_sample_fn(model, int_beta, data_shape, dt0, t1, key):
    def drift(t, y):
        _, beta = jax.jvp(int_beta, (t,), (jnp.ones_like(t),))
        return -0.5 * beta * (y + model(t, y))

    y1 = jr.normal(key, data_shape)
    times = jnp.arange(t1, 0.0, -dt0)

    def euler(y, t):
        return y - dt0 * drift(t, y), None

    y0, _ = jax.lax.scan(euler, y1, times)
    return y0


def sample(model, sample_key):
    int_beta = lambda t: t  # noqa: E731 - as in the example
    sample_fn = ft.partial(single_sample_fn, model, int_beta, SHAPE, 1.0, 4.0)
    keys = jr.split(sample_key, 2**2)
    return jax.vmap(sample_fn)(keys)


def setup():
    key = jr.PRNGKey(5678)
    model_key, train_key, loader_key, sample_key = jr.split(key, 4)
    return ScoreNet(model_key), sample_key


def audit_target():
    return sample, eqx.filter_eval_shape(setup)  # shapes only: the audit traces
