"""Flax linen VAE: the training step (reparameterised sample of the latent code).

Source: google/flax, examples/vae/train.py (``train_step``, ``train_and_evaluate``) and
examples/vae/models.py (``VAE``, ``reparameterize``).

Randomness as in the example: the training loop does ``rng, key = random.split(rng)`` before every
step and passes ``key`` as ``z_rng``, an ordinary argument of ``apply`` (not an rng stream); the
model draws ``random.normal(z_rng, logvar.shape)``. Tiny sizes.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax import random

PIXELS, HIDDEN = 16, 8


class VAE(nn.Module):
    latents: int

    @nn.compact
    def __call__(self, x, z_rng):
        h = nn.relu(nn.Dense(HIDDEN, name="fc1")(x))
        mean, logvar = nn.Dense(self.latents)(h), nn.Dense(self.latents)(h)
        z = mean + random.normal(z_rng, logvar.shape) * jnp.exp(0.5 * logvar)
        return nn.Dense(PIXELS)(nn.relu(nn.Dense(HIDDEN)(z))), mean, logvar


def train_step(state, batch, z_rng, latents):
    def loss_fn(params):
        recon_x, mean, logvar = VAE(latents).apply({"params": params}, batch, z_rng)
        bce = optax.sigmoid_binary_cross_entropy(recon_x, batch).sum(-1).mean()
        kld = -0.5 * jnp.sum(1 + logvar - mean**2 - jnp.exp(logvar), -1).mean()
        return bce + kld

    return state.apply_gradients(grads=jax.grad(loss_fn)(state.params))


def setup():
    rng = random.key(0)
    rng, key, init_z_rng = random.split(rng, 3)
    init_data = jnp.ones((4, PIXELS))
    params = VAE(3).init(key, init_data, init_z_rng)["params"]
    state = train_state.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-3))
    rng, key = random.split(rng)
    return state, init_data, key


def audit_target():
    step = jax.jit(functools.partial(train_step, latents=3))
    return step, jax.eval_shape(setup)  # shapes only: the audit traces
