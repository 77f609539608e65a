"""Equinox DCGAN: one iteration of the training loop -- the discriminator step, then the
generator step, threading one key through both (each returns its updated model and state).

Source: patrick-kidger/equinox, docs/examples/deep_convolutional_gan.ipynb (``Generator``,
``Discriminator``, ``compute_grads_discriminator``, ``compute_grads_generator``,
``step_discriminator``, ``step_generator``, ``train``).

Randomness as in the example: each ``compute_grads_*`` does ``key, subkey = jr.split(key)``,
draws the generator's noise with ``jr.normal(subkey, ...)`` and returns ``key`` in its aux output;
each ``eqx.filter_jit`` step returns that key, and the training loop feeds the key returned by the
discriminator step to the generator step, and the generator step's key to the next iteration.
The models carry ``eqx.nn.BatchNorm`` state (``eqx.nn.State``), ``jax.vmap``-ed with
``axis_name="batch"``. Two convolutions per network instead of five; tiny sizes.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import optax

LATENT, CHANNELS, SIZE, BATCH = 3, 1, 4, 2


class Generator(eqx.Module):
    layers: list

    def __init__(self, key):
        key1, key2 = jr.split(key)
        self.layers = [
            eqx.nn.ConvTranspose2d(LATENT, 4, kernel_size=2, stride=1, key=key1),
            eqx.nn.BatchNorm(4, axis_name="batch", mode="ema"),
            jax.nn.relu,
            eqx.nn.ConvTranspose2d(4, CHANNELS, kernel_size=3, stride=1, key=key2),
            jax.nn.tanh,
        ]

    def __call__(self, x, state):
        for layer in self.layers:
            if isinstance(layer, eqx.nn.BatchNorm):
                x, state = layer(x, state)
            else:
                x = layer(x)
        return x, state


class Discriminator(eqx.Module):
    layers: list

    def __init__(self, key):
        key1, key2 = jr.split(key)
        self.layers = [
            eqx.nn.Conv2d(CHANNELS, 4, kernel_size=2, stride=2, key=key1),
            eqx.nn.BatchNorm(4, axis_name="batch", mode="ema"),
            jax.nn.leaky_relu,
            eqx.nn.Conv2d(4, 1, kernel_size=2, stride=1, key=key2),
        ]

    def __call__(self, x, state):
        for layer in self.layers:
            if isinstance(layer, eqx.nn.BatchNorm):
                x, state = layer(x, state=state)
            else:
                x = layer(x)
        return x.reshape(()), state


@eqx.filter_value_and_grad(has_aux=True)
def compute_grads_discriminator(
    discriminator, generator, fake_labels, real_batch, real_labels, d_state, g_state, key
):
    key, subkey = jr.split(key)
    noise = jr.normal(subkey, (BATCH, LATENT, 1, 1))
    fake_batch, g_state = jax.vmap(
        generator, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
    )(noise, g_state)
    pred_y, d_state = jax.vmap(
        discriminator, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
    )(fake_batch, d_state)
    loss1 = optax.sigmoid_binary_cross_entropy(pred_y, fake_labels).mean()
    pred_y, d_state = jax.vmap(
        discriminator, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
    )(real_batch, d_state)
    loss2 = optax.sigmoid_binary_cross_entropy(pred_y, real_labels).mean()
    return (loss1 + loss2) / 2, (d_state, g_state, key)


@eqx.filter_value_and_grad(has_aux=True)
def compute_grads_generator(generator, discriminator, real_labels, d_state, g_state, key):
    key, subkey = jr.split(key)
    noise = jr.normal(subkey, (BATCH, LATENT, 1, 1))
    fake_batch, g_state = jax.vmap(
        generator, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
    )(noise, g_state)
    pred_y, d_state = jax.vmap(
        discriminator, axis_name="batch", in_axes=(0, None), out_axes=(0, None)
    )(fake_batch, d_state)
    loss = optax.sigmoid_binary_cross_entropy(pred_y, real_labels).mean()
    return loss, (d_state, g_state, key)


@eqx.filter_jit
def step_discriminator(
    discriminator, generator, real_batch, d_optimizer, d_opt_state, g_state, d_state, key
):
    fake_labels, real_labels = jnp.zeros(BATCH), jnp.ones(BATCH)
    (loss, (d_state, g_state, key)), grads = compute_grads_discriminator(
        discriminator, generator, fake_labels, real_batch, real_labels, d_state, g_state, key
    )
    updates, opt_state = d_optimizer.update(grads, d_opt_state)
    discriminator = eqx.apply_updates(discriminator, updates)
    return loss, discriminator, opt_state, g_state, d_state, key


@eqx.filter_jit
def step_generator(generator, discriminator, g_optimizer, g_opt_state, d_state, g_state, key):
    real_labels = jnp.ones(BATCH)
    (loss, (d_state, g_state, key)), grads = compute_grads_generator(
        generator, discriminator, real_labels, d_state, g_state, key
    )
    updates, opt_state = g_optimizer.update(grads, g_opt_state)
    generator = eqx.apply_updates(generator, updates)
    return loss, generator, opt_state, d_state, g_state, key


def train_iteration(
    generator, discriminator, g_opt_state, d_opt_state, g_state, d_state, real_batch, key
):
    d_loss, discriminator, d_opt_state, g_state, d_state, key = step_discriminator(
        discriminator, generator, real_batch, D_OPTIMIZER, d_opt_state, g_state, d_state, key
    )
    g_loss, generator, g_opt_state, d_state, g_state, key = step_generator(
        generator, discriminator, G_OPTIMIZER, g_opt_state, d_state, g_state, key
    )
    return (d_loss, g_loss), generator, discriminator, g_opt_state, d_opt_state, key


G_OPTIMIZER = optax.adam(2e-4, b1=0.5)
D_OPTIMIZER = optax.adam(2e-4, b1=0.5)


def setup():
    key = jr.PRNGKey(2003)
    key, gen_key, disc_key = jr.split(key, 3)
    generator, g_state = eqx.nn.make_with_state(Generator)(gen_key)
    discriminator, d_state = eqx.nn.make_with_state(Discriminator)(disc_key)
    g_opt_state = G_OPTIMIZER.init(eqx.filter(generator, eqx.is_array))
    d_opt_state = D_OPTIMIZER.init(eqx.filter(discriminator, eqx.is_array))
    return generator, discriminator, g_opt_state, d_opt_state, g_state, d_state, key


def audit_target():
    generator, discriminator, g_opt, d_opt, g_state, d_state, key = eqx.filter_eval_shape(setup)
    real_batch = jnp.ones((BATCH, CHANNELS, SIZE, SIZE))
    args = (generator, discriminator, g_opt, d_opt, g_state, d_state, real_batch, key)
    return train_iteration, args
