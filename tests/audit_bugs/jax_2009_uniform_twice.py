"""Two draws from one key: ``a`` and ``b`` are the same numbers.

Thread: https://github.com/jax-ml/jax/issues/2009 -- "almost every single new user will
incorrectly reuse the PRNG key in this way: ``a = uniform(key, ...)``, ``b = uniform(key, ...)``,
causing ``a`` and ``b`` to be the exact same values".
"""

import jax

THREAD = "https://github.com/jax-ml/jax/issues/2009"
KIND = "reused_key"


@jax.jit
def two_matrices(key):
    a = jax.random.uniform(key, (10, 10))  # BUG-RELATED
    b = jax.random.uniform(key, (10, 10))  # BUG
    return a @ b


def audit_target():
    return two_matrices, (jax.random.PRNGKey(0),)
