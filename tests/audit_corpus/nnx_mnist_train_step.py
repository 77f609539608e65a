"""Flax NNX MNIST: the CNN's training step with dropout keys passed as ``nnx.Rngs``.

Source: google/flax, examples/mnist/train.py (``CNN``, ``loss_fn``, ``train_step``,
``train_and_evaluate``).

Randomness as in the example: the model is built with ``CNN(rngs=nnx.Rngs(0))``; its two
``nnx.Dropout`` layers hold no key -- the training loop makes ``rngs = nnx.Rngs(0)`` once and
passes that same object to every ``train_step(model, optimizer, metrics, batch, rngs)``
(``nnx.jit``); each dropout call takes a fresh key from the stream and the stream's counter is
state that ``nnx.jit`` carries from one step to the next. Tiny sizes.
"""

from functools import partial

import jax.numpy as jnp
import optax
from flax import nnx


class CNN(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(4, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=0.025)
        self.conv2 = nnx.Conv(4, 4, kernel_size=(3, 3), rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(4 * 2 * 2, 8, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=0.025)
        self.linear2 = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x, rngs: nnx.Rngs):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x), rngs=rngs))))
        x = self.avg_pool(nnx.relu(self.conv2(x)))
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.dropout2(self.linear1(x), rngs=rngs))
        return self.linear2(x)


def loss_fn(model, batch, rngs):
    logits = model(batch["image"], rngs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, logits


@nnx.jit
def train_step(model, optimizer, metrics, batch, rngs):
    grad_fn = nnx.value_and_grad(loss_fn, has_aux=True)
    (loss, logits), grads = grad_fn(model, batch, rngs)
    metrics.update(loss=loss, logits=logits, labels=batch["label"])
    optimizer.update(model, grads)


def setup():
    model = CNN(rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, 0.9), wrt=nnx.Param)
    metrics = nnx.MultiMetric(accuracy=nnx.metrics.Accuracy(), loss=nnx.metrics.Average("loss"))
    rngs = nnx.Rngs(0)
    return model, optimizer, metrics, rngs


def audit_target():
    model, optimizer, metrics, rngs = nnx.eval_shape(setup)  # shapes only: the audit traces
    batch = {"image": jnp.ones((2, 8, 8, 1)), "label": jnp.zeros((2,), jnp.int32)}
    return train_step, (model, optimizer, metrics, batch, rngs)
