"""A seed handler that hands its key to a sample site, then advances with ``split(key, 1)``.

Thread: https://github.com/pyro-ppl/numpyro/pull/263 ("Fix some issues related to reuse rngs"):
``msg['kwargs']['random_state'] = self.rng`` followed by ``self.rng, = random.split(self.rng, 1)``
-- the sample site draws from (or splits) the very key that the handler then splits; the fix is
``self.rng, rng_sample = random.split(self.rng)``.
"""

import jax
import jax.numpy as jnp
from jax import random

THREAD = "https://github.com/pyro-ppl/numpyro/pull/263"
KIND = "reused_key"


class seed:
    def __init__(self, rng):
        self.rng = rng

    def process_sample(self, fn, shape):
        value = fn(self.rng, shape)  # BUG-RELATED
        (self.rng,) = random.split(self.rng, 1)  # BUG
        return value


def model(rng, x):
    handler = seed(rng)
    loc = handler.process_sample(random.normal, x.shape)
    scale = jnp.exp(handler.process_sample(random.normal, x.shape))
    return loc + scale * x


def audit_target():
    return jax.jit(model), (random.PRNGKey(0), jnp.ones(3))
