"""JAX MNIST VAE: a whole training epoch in one ``lax.fori_loop``.

Source: jax-ml/jax, examples/mnist_vae.py (``gaussian_sample``, ``elbo``, ``binarize_batch``,
``run_epoch``).

Randomness as in the example: the training loop calls ``run_epoch(random.key(epoch), ...)``; the
jitted ``run_epoch`` runs ``lax.fori_loop`` over the batches and each iteration does
``elbo_rng, data_rng = random.split(random.fold_in(rng, i))`` -- ``data_rng`` binarises the batch
with ``random.bernoulli``, ``elbo_rng`` draws the latent sample. Tiny sizes (stax networks as in
the example).
"""

import jax
import jax.numpy as jnp
from jax import grad, jit, lax, random
from jax.example_libraries import optimizers, stax
from jax.example_libraries.stax import Dense, FanOut, Relu, Softplus

BATCH, PIXELS, LATENT, NUM_BATCHES = 2, 16, 3, 3

encoder_init, encode = stax.serial(
    Dense(8), Relu, FanOut(2), stax.parallel(Dense(LATENT), stax.serial(Dense(LATENT), Softplus))
)
decoder_init, decode = stax.serial(Dense(8), Relu, Dense(PIXELS))
opt_init, opt_update, get_params = optimizers.momentum(1e-3, mass=0.9)


def gaussian_kl(mu, sigmasq):
    return -0.5 * jnp.sum(1.0 + jnp.log(sigmasq) - mu**2.0 - sigmasq)


def gaussian_sample(rng, mu, sigmasq):
    return mu + jnp.sqrt(sigmasq) * random.normal(rng, mu.shape)


def bernoulli_logpdf(logits, x):
    return -jnp.sum(jnp.logaddexp(0.0, jnp.where(x, -1.0, 1.0) * logits))


def elbo(rng, params, images):
    enc_params, dec_params = params
    mu_z, sigmasq_z = encode(enc_params, images)
    logits_x = decode(dec_params, gaussian_sample(rng, mu_z, sigmasq_z))
    return bernoulli_logpdf(logits_x, images) - gaussian_kl(mu_z, sigmasq_z)


def binarize_batch(rng, i, images):
    i = i % NUM_BATCHES
    batch = lax.dynamic_slice_in_dim(images, i * BATCH, BATCH)
    return random.bernoulli(rng, batch)


@jit
def run_epoch(rng, opt_state, images):
    def body_fun(i, opt_state):
        elbo_rng, data_rng = random.split(random.fold_in(rng, i))
        batch = binarize_batch(data_rng, i, images)
        loss = lambda params: -elbo(elbo_rng, params, batch) / BATCH  # noqa: E731
        g = grad(loss)(get_params(opt_state))
        return opt_update(i, g, opt_state)

    return lax.fori_loop(0, NUM_BATCHES, body_fun, opt_state)


def setup():
    enc_init_rng, dec_init_rng = random.split(random.key(2))
    _, init_encoder_params = encoder_init(enc_init_rng, (BATCH, PIXELS))
    _, init_decoder_params = decoder_init(dec_init_rng, (BATCH, LATENT))
    return opt_init((init_encoder_params, init_decoder_params))


def audit_target():
    opt_state = jax.eval_shape(setup)  # shapes only: the audit traces
    train_images = jnp.full((BATCH * NUM_BATCHES, PIXELS), 0.5)
    epoch = 0
    return run_epoch, (random.key(epoch), opt_state, train_images)
