"""``old, rng = random.split(rng)``, ``update(t, ..., rng)`` -- and ``rng`` is split again.

Thread: https://github.com/jax-ml/jax/pull/181 (the first ADVI example), review comment: "This
line may be problematic: ``old, rng = random.split(rng)  # 'old' isn't used anywhere`` ... the
function you're calling, ``update(t, opt_state, rng)``, could itself call split": the key handed
to ``update`` is also the one the loop splits next.
"""

import jax
import jax.numpy as jnp
from jax import random

THREAD = "https://github.com/jax-ml/jax/pull/181"
KIND = "reused_key"


def update(t, params, rng):
    sample = params + random.normal(rng, params.shape)  # BUG-RELATED
    return params - 0.1 * (sample - 1.0)


@jax.jit
def optimize(params, rng):
    for t in range(2):
        old, rng = random.split(rng)  # BUG
        params = update(t, params, rng)
    return params


def audit_target():
    return optimize, (jnp.zeros(2), random.PRNGKey(0))
