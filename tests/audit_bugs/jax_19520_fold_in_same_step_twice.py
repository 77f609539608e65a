"""The same traced step number folded into one key twice: two identical "independent" keys.

Thread: https://github.com/jax-ml/jax/pull/19520 ("[key reuse] don't consume key in fold_in"):
folding into one key many times "is safe so long as the folded-in value is different every time
... we must trust the user to not repeat seeds". Here two layers both derive their key as
``fold_in(key, step)`` with the same traced ``int32`` step.
"""

import jax
import jax.numpy as jnp

THREAD = "https://github.com/jax-ml/jax/pull/19520"
KIND = "reused_key"


@jax.jit
def two_dropouts(x, key, step):
    k1 = jax.random.fold_in(key, step)
    h = x * jax.random.bernoulli(k1, 0.5, x.shape)  # BUG-RELATED
    k2 = jax.random.fold_in(key, step)
    return h * jax.random.bernoulli(k2, 0.5, x.shape)  # BUG


def audit_target():
    return two_dropouts, (jnp.ones(4), jax.random.key(0), jnp.asarray(3, jnp.int32))
