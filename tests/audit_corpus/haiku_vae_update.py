"""Haiku VAE: the training update (reparameterised latent sample and a sampled image).

Source: google-deepmind/dm-haiku, examples/vae.py (``VariationalAutoEncoder``, ``loss_fn``,
``update``, ``TrainingState``).

Randomness as in the example: the state carries ``rng_key``; the jitted ``update`` does
``rng_key, next_rng_key = jax.random.split(state.rng_key)``, differentiates
``loss_fn(params, rng_key, batch)`` and returns ``next_rng_key`` in the new state. The model draws
``jax.random.normal(hk.next_rng_key(), mean.shape)`` for the latent code and
``jax.random.bernoulli(hk.next_rng_key(), p)`` for an image that the loss ignores. Tiny sizes.
"""

from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import optax

PIXELS, HIDDEN, LATENT = 16, 8, 3


class VAEOutput(NamedTuple):
    image: jax.Array
    mean: jax.Array
    variance: jax.Array
    logits: jax.Array


class TrainingState(NamedTuple):
    params: hk.Params
    opt_state: optax.OptState
    rng_key: jax.Array


def model(x):
    h = jax.nn.relu(hk.Linear(HIDDEN)(hk.Flatten()(x)))
    mean = hk.Linear(LATENT)(h)
    stddev = jnp.exp(0.5 * hk.Linear(LATENT)(h))
    z = mean + stddev * jax.random.normal(hk.next_rng_key(), mean.shape)
    logits = hk.Linear(PIXELS)(jax.nn.relu(hk.Linear(HIDDEN)(z)))
    p = jax.nn.sigmoid(logits)
    image = jax.random.bernoulli(hk.next_rng_key(), p)
    return VAEOutput(image, mean, jnp.square(stddev), logits)


MODEL = hk.transform(model)
OPTIMIZER = optax.adam(1e-3)


@jax.jit
def loss_fn(params, rng_key, batch):
    _, mean, var, logits = MODEL.apply(params, rng_key, batch)
    log_likelihood = -jnp.sum(optax.sigmoid_binary_cross_entropy(logits, batch), -1)
    kl = 0.5 * jnp.sum(-jnp.log(var) - 1.0 + var + jnp.square(mean), axis=-1)
    return -jnp.mean(log_likelihood - kl)


@jax.jit
def update(state, batch):
    rng_key, next_rng_key = jax.random.split(state.rng_key)
    gradients = jax.grad(loss_fn)(state.params, rng_key, batch)
    updates, new_opt_state = OPTIMIZER.update(gradients, state.opt_state)
    new_params = optax.apply_updates(state.params, updates)
    return TrainingState(new_params, new_opt_state, next_rng_key)


def setup(batch):
    initial_rng_key, train_rng_key = jax.random.split(jax.random.PRNGKey(42))
    initial_params = MODEL.init(initial_rng_key, batch)
    return TrainingState(initial_params, OPTIMIZER.init(initial_params), train_rng_key)


def audit_target():
    batch = jnp.ones((2, PIXELS))
    return update, (jax.eval_shape(setup, batch), batch)  # shapes only: the audit traces
