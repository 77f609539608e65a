"""``key, subkey = split(key)`` and then drawing from ``key`` -- which is split again next.

Thread: https://github.com/AakashKumarNain/TF_JAX_tutorials/issues/4 ("Incorrect usage of PRNG"):
``key, subkey = random.split(key)`` followed by ``random.randint(key, ...)`` -- "you shall be
using the subkey in random.randint, not the original key. The way it is now subkey is never
used"; the drawn-from ``key`` is then split for the next batch.
"""

import jax
import jax.numpy as jnp
from jax import random

THREAD = "https://github.com/AakashKumarNain/TF_JAX_tutorials/issues/4"
KIND = "reused_key"


@jax.jit
def augment_two_batches(key, images):
    key, subkey = random.split(key)
    rotate = random.randint(key, shape=[images.shape[0]], minval=0, maxval=2)  # BUG-RELATED
    first = jnp.where(rotate[:, None, None] == 1, jnp.rot90(images, axes=(1, 2)), images)
    key, subkey = random.split(key)  # BUG
    flip = random.bernoulli(subkey, 0.5, [images.shape[0]])
    second = jnp.where(flip[:, None, None], images[:, ::-1], images)
    return first, second, key


def audit_target():
    return augment_two_batches, (random.PRNGKey(0), jnp.ones((3, 4, 4)))
