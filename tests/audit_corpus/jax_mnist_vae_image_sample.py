"""JAX MNIST VAE: sampling a grid of images from the prior.

Source: jax-ml/jax, examples/mnist_vae.py (``image_sample``, ``evaluate``).

Randomness as in the example: ``image_sample(rng, params, nrow, ncol)`` does ``code_rng,
img_rng = random.split(rng)``, decodes ``random.normal(code_rng, (nrow * ncol, latent))`` and
samples the pixels with ``random.bernoulli(img_rng, ...)``. (The example's ``evaluate`` closes
over a fixed evaluation key on purpose, to show the same samples every epoch; here the key is the
argument of the jitted sampler, with ``nrow``/``ncol`` static.) Tiny sizes.
"""

from functools import partial

import jax
import jax.numpy as jnp
from jax import random
from jax.example_libraries import stax
from jax.example_libraries.stax import Dense, Relu

PIXELS, LATENT = 16, 3
decoder_init, decode = stax.serial(Dense(8), Relu, Dense(PIXELS))


@partial(jax.jit, static_argnums=(2, 3))
def image_sample(rng, params, nrow, ncol):
    _, dec_params = params
    code_rng, img_rng = random.split(rng)
    logits = decode(dec_params, random.normal(code_rng, (nrow * ncol, LATENT)))
    sampled_images = random.bernoulli(img_rng, jnp.logaddexp(0.0, logits))
    return sampled_images.reshape(nrow, ncol, PIXELS)


def audit_target():
    dec_params = jax.eval_shape(lambda k: decoder_init(k, (1, LATENT))[1], random.key(2))
    return image_sample, (random.key(1), ((), dec_params), 2, 3)
