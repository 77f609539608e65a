"""Flax linen VAE: evaluation -- reconstructions and samples from fixed latent codes.

Source: google/flax, examples/vae/train.py (``eval_f``, ``train_and_evaluate``).

Randomness as in the example: before training, ``rng, z_key, eval_rng = random.split(rng, 3)``;
``z = random.normal(z_key, (64, latents))`` are the codes decoded at every evaluation, and
``eval_rng`` is the ``z_rng`` of the reconstruction; ``eval_f`` binds the model with
``nn.apply(eval_model, model)({"params": params})``. Tiny sizes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax import random

PIXELS, HIDDEN, LATENTS = 16, 8, 3


class VAE(nn.Module):
    latents: int

    def setup(self):
        self.enc = nn.Dense(HIDDEN)
        self.mean = nn.Dense(self.latents)
        self.logvar = nn.Dense(self.latents)
        self.dec1 = nn.Dense(HIDDEN)
        self.dec2 = nn.Dense(PIXELS)

    def __call__(self, x, z_rng):
        h = nn.relu(self.enc(x))
        mean, logvar = self.mean(h), self.logvar(h)
        z = mean + random.normal(z_rng, logvar.shape) * jnp.exp(0.5 * logvar)
        return self.dec2(nn.relu(self.dec1(z))), mean, logvar

    def generate(self, z):
        return nn.sigmoid(self.dec2(nn.relu(self.dec1(z))))


def eval_f(params, images, z, z_rng):
    def eval_model(vae):
        recon, mean, logvar = vae(images, z_rng)
        comparison = jnp.concatenate([images[:2], recon[:2]])
        generated = vae.generate(z)
        bce = optax.sigmoid_binary_cross_entropy(recon, images).sum(-1).mean()
        kld = -0.5 * jnp.sum(1 + logvar - mean**2 - jnp.exp(logvar), -1).mean()
        return {"bce": bce, "kld": kld}, comparison, generated

    return nn.apply(eval_model, VAE(LATENTS))({"params": params})


def setup():
    rng = random.key(0)
    rng, key, init_z_rng = random.split(rng, 3)
    images = jnp.ones((4, PIXELS))
    params = VAE(LATENTS).init(key, images, init_z_rng)["params"]
    rng, z_key, eval_rng = random.split(rng, 3)
    z = random.normal(z_key, (5, LATENTS))
    return params, images, z, eval_rng


def audit_target():
    return jax.jit(eval_f), jax.eval_shape(setup)  # shapes only: the audit traces
