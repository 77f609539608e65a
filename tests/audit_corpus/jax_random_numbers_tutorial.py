"""JAX "Pseudorandom numbers" tutorial: split before every use, many subkeys, ``vmap`` over keys.

Source: jax-ml/jax, docs/random-numbers.md (sections on ``random.split``, ``key, *subkeys =
random.split(key, num=...)`` and ``jax.vmap(random.normal)(subkeys)``).

Randomness as in the tutorial: ``new_key, subkey = random.split(key)`` and the old key is never
used again; one sample from ``subkey``; then ``new_key, *subkeys = random.split(new_key, num)``
and a vectorised draw ``jax.vmap(random.normal)`` over the stacked subkeys; the function returns
``new_key`` for the caller's next use. Jitted, tiny sizes.
"""

import jax
import jax.numpy as jnp
from jax import random


@jax.jit
def draw(key):
    new_key, subkey = random.split(key)
    del key  # the old key is consumed by split(): never use it again
    normal_sample = random.normal(subkey)
    new_key, *subkeys = random.split(new_key, num=4)
    vectorized = jax.vmap(random.normal)(jnp.stack(subkeys))
    return normal_sample, vectorized, new_key


def audit_target():
    return draw, (random.key(42),)
