"""Model init from ``split(seed)[0]`` and the first training key from ``fold_in(seed, 0)``: the
same key.

Thread: https://github.com/jax-ml/jax/pull/13341 ("make threefry split and fold_in symmetric"):
with the default (partitionable) threefry, ``split(key, n)[i]`` equals ``fold_in(key, i)``. A
program that derives its parameters' key with ``split`` and its step keys with ``fold_in(key,
step)`` from one seed draws its first dropout mask from the parameters' key.
"""

import jax
import jax.numpy as jnp

THREAD = "https://github.com/jax-ml/jax/pull/13341"
KIND = "reused_key"


@jax.jit
def init_and_first_step(seed_key, x):
    params_key, _ = jax.random.split(seed_key)
    w = jax.random.normal(params_key, (x.shape[-1], 4))  # BUG-RELATED
    step_key = jax.random.fold_in(seed_key, 0)
    mask = jax.random.bernoulli(step_key, 0.9, (x.shape[0], 4))  # BUG
    return (x @ w) * mask


def audit_target():
    return init_and_first_step, (jax.random.key(0), jnp.ones((2, 3)))
