"""JAX differentially private SGD: the private update, Gaussian noise on clipped gradients.

Source: jax-ml/jax, examples/differentially_private_sgd.py (``clipped_grad``, ``private_grad``,
``private_update``).

Randomness as in the example: the jitted ``private_update(rng, i, opt_state, batch)`` receives
the run's one key and the iteration number ``i`` (a Python ``int`` from ``itertools.count``,
traced by ``jit``) and derives this step's key with ``rng = random.fold_in(rng, i)``;
``private_grad`` splits it into one key per gradient leaf and adds
``l2_norm_clip * noise_multiplier * random.normal(r, g.shape)`` to each summed, clipped
gradient. Tiny sizes.
"""

import jax
import jax.numpy as jnp
from jax import grad, jit, random, vmap
from jax.example_libraries import optimizers, stax
from jax.example_libraries.stax import Dense, LogSoftmax, Relu
from jax.tree_util import tree_flatten, tree_unflatten

L2_NORM_CLIP, NOISE_MULTIPLIER, BATCH = 1.5, 1.1, 4
init_random_params, predict = stax.serial(Dense(8), Relu, Dense(3), LogSoftmax)
opt_init, opt_update, get_params = optimizers.sgd(0.15)


def loss(params, batch):
    inputs, targets = batch
    return -jnp.mean(jnp.sum(predict(params, inputs) * targets, axis=1))


def clipped_grad(params, l2_norm_clip, single_example_batch):
    grads = grad(loss)(params, single_example_batch)
    nonempty_grads, tree_def = tree_flatten(grads)
    total_grad_norm = jnp.linalg.norm(
        jnp.array([jnp.linalg.norm(g.ravel()) for g in nonempty_grads])
    )
    divisor = jnp.maximum(total_grad_norm / l2_norm_clip, 1.0)
    return tree_unflatten(tree_def, [g / divisor for g in nonempty_grads])


def private_grad(params, batch, rng, l2_norm_clip, noise_multiplier, batch_size):
    clipped_grads = vmap(clipped_grad, (None, None, 0))(params, l2_norm_clip, batch)
    clipped_grads_flat, grads_treedef = tree_flatten(clipped_grads)
    aggregated_clipped_grads = [g.sum(0) for g in clipped_grads_flat]
    rngs = random.split(rng, len(aggregated_clipped_grads))
    noised_aggregated_clipped_grads = [
        g + l2_norm_clip * noise_multiplier * random.normal(r, g.shape)
        for r, g in zip(rngs, aggregated_clipped_grads, strict=True)
    ]
    normalized = [g / batch_size for g in noised_aggregated_clipped_grads]
    return tree_unflatten(grads_treedef, normalized)


@jit
def private_update(rng, i, opt_state, batch):
    params = get_params(opt_state)
    rng = random.fold_in(rng, i)
    return opt_update(
        i, private_grad(params, batch, rng, L2_NORM_CLIP, NOISE_MULTIPLIER, BATCH), opt_state
    )


def audit_target():
    key = random.key(0)
    # shapes only (the audit traces): init_random_params(key, ...) then opt_init, as the example
    opt_state = jax.eval_shape(lambda k: opt_init(init_random_params(k, (-1, 5))[1]), key)
    batch = (jnp.ones((BATCH, 1, 5)), jnp.ones((BATCH, 1, 3)) / 3)
    return private_update, (key, 7, opt_state, batch)
