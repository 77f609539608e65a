"""A stax ``Dropout`` whose ``apply_fun`` makes its own key: the same mask on every call.

Thread: https://github.com/jax-ml/jax/issues/170 -- the reporter's fix for a missing key was
``rng = PRNGKey(seed)`` inside ``apply_fun``; the maintainer's answer: that makes the layer always
use the same fixed pattern of dropped units; pass a new key into the top-level ``apply_fun``.
"""

import jax
import jax.numpy as jnp
from jax import random
from jax.example_libraries import stax

THREAD = "https://github.com/jax-ml/jax/issues/170"
KIND = "constant_key"


def Dropout(rate):
    def init_fun(rng, input_shape):
        return input_shape, ()

    def apply_fun(params, inputs, **kwargs):
        rng = random.PRNGKey(0)  # BUG
        keep = random.bernoulli(rng, rate, inputs.shape)
        return jnp.where(keep, inputs / rate, 0)

    return init_fun, apply_fun


init_fun, apply_fun = stax.serial(stax.Dense(8), stax.Relu, Dropout(0.6), stax.Dense(3))


def audit_target():
    params = jax.eval_shape(lambda k: init_fun(k, (-1, 4))[1], random.PRNGKey(1))  # shapes
    return jax.jit(apply_fun), (params, jnp.ones((2, 4)))
