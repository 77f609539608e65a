"""A ``match`` method that draws its random indices from a key made inside it: the same indices
on every call.

Thread: https://github.com/gchq/coreax/issues/373 ("Review randomness in SlicedScoreMatching
match() method"): "the random indexing variable ``idx`` in the SlicedScoreMatching method match()
gives the same output each time".
"""

import jax
import jax.numpy as jnp

THREAD = "https://github.com/gchq/coreax/issues/373"
KIND = "constant_key"


class SlicedScoreMatching:
    def __init__(self, random_seed=0, num_random_vectors=2):
        self.random_seed = random_seed
        self.num_random_vectors = num_random_vectors

    def match(self, x):
        key = jax.random.PRNGKey(self.random_seed)  # BUG
        idx = jax.random.choice(key, x.shape[0], (self.num_random_vectors,), replace=False)
        return x[idx].mean(0)


def audit_target():
    matcher = SlicedScoreMatching()
    return jax.jit(matcher.match), (jnp.arange(12.0).reshape(6, 2),)
