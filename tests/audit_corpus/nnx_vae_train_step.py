"""Flax NNX VAE: the training step, the latent noise drawn from a stream stored in the model.

Source: google/flax, examples/nnx_toy_examples/05_vae.py (``Encoder``, ``VAE``, ``train_step``).

Randomness as in the example: the model is built with ``rngs=nnx.Rngs(0, noise=1)`` and the
encoder keeps that ``Rngs`` object (``self.rngs = rngs``); each forward pass takes
``key = self.rngs.noise()`` and draws ``jax.random.normal(key, mean.shape)``. The stream's counter
is model state, so ``nnx.jit`` gives every step a new key. The KL term is stored as a ``Loss``
variable and popped with ``nnx.pop``. Tiny sizes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

IMAGE_SHAPE, LATENT, HIDDEN = (4, 4), 3, 8


class Loss(nnx.Variable):
    pass


class Encoder(nnx.Module):
    def __init__(self, din, dmid, dout, *, rngs: nnx.Rngs):
        self.linear1 = nnx.Linear(din, dmid, rngs=rngs)
        self.linear_mean = nnx.Linear(dmid, dout, rngs=rngs)
        self.linear_std = nnx.Linear(dmid, dout, rngs=rngs)
        self.rngs = rngs

    def __call__(self, x):
        x = jax.nn.relu(self.linear1(x.reshape((x.shape[0], -1))))
        mean = self.linear_mean(x)
        std = jnp.exp(self.linear_std(x))
        self.kl_loss = Loss(jnp.mean(0.5 * jnp.mean(-jnp.log(std**2) - 1.0 + std**2 + mean**2, -1)))
        key = self.rngs.noise()
        return mean + std * jax.random.normal(key, mean.shape)


class VAE(nnx.Module):
    def __init__(self, din, hidden, latent, output_shape, *, rngs: nnx.Rngs):
        self.output_shape = output_shape
        self.encoder = Encoder(din, hidden, latent, rngs=rngs)
        self.decoder1 = nnx.Linear(latent, hidden, rngs=rngs)
        self.decoder2 = nnx.Linear(hidden, int(np.prod(output_shape)), rngs=rngs)

    def __call__(self, x):
        z = self.encoder(x)
        logits = self.decoder2(jax.nn.relu(self.decoder1(z)))
        return jnp.reshape(logits, (-1, *self.output_shape))


@nnx.jit
def train_step(model, optimizer, x):
    def loss_fn(model):
        logits = model(x)
        losses = nnx.pop(model, Loss)
        kl_loss = sum(jax.tree_util.tree_leaves(losses), 0.0)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, x)) + 0.1 * kl_loss

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def setup():
    model = VAE(16, HIDDEN, LATENT, IMAGE_SHAPE, rngs=nnx.Rngs(0, noise=1))
    return model, nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)


def audit_target():
    model, optimizer = nnx.eval_shape(setup)  # shapes only: the audit traces
    return train_step, (model, optimizer, jnp.ones((2, *IMAGE_SHAPE)))
