"""A random-variable sampler that draws with the state's key and only then splits it.

Thread: https://github.com/aesara-devs/aesara/issues/1344 ("In JAX random linking splitting
should happen before using the key"): the JAX dispatch of random variables sampled with
``rng["jax_state"]`` and then stored a key split from that same key as the next state; the fix
splits first and samples with the new subkey.
"""

import jax
import jax.numpy as jnp

THREAD = "https://github.com/aesara-devs/aesara/issues/1344"
KIND = "reused_key"


def sample_fn(rng, size, loc, scale):
    rng_key = rng["jax_state"]
    sample = loc + scale * jax.random.normal(rng_key, size)  # BUG-RELATED
    rng["jax_state"] = jax.random.split(rng_key, num=1)[0]  # BUG
    return rng, sample


@jax.jit
def graph(rng, x):
    rng, a = sample_fn(rng, x.shape, 0.0, 1.0)
    rng, b = sample_fn(rng, x.shape, 1.0, 2.0)
    return rng, a + b * x


def audit_target():
    return graph, ({"jax_state": jax.random.PRNGKey(0)}, jnp.ones(4))
