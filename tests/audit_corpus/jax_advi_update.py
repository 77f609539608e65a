"""JAX ADVI: the variational update, the key rebuilt from the iteration number.

Source: jax-ml/jax, examples/advi.py (``diag_gaussian_sample``, ``elbo``, ``batch_elbo``,
``objective``, ``update``).

Randomness as in the example: the jitted ``objective(params, t)`` makes its key with
``rng = random.key(t)`` from the iteration number, which the jitted ``update(i, opt_state)``
receives as a Python ``int`` from the training loop -- ``jax.jit`` traces it, so each iteration
has its own key; ``batch_elbo`` splits that key into ``num_samples`` keys and ``vmap``s the
reparameterised sample over them. Tiny sizes.
"""

from functools import partial

import jax.numpy as jnp
from jax import grad, jit, random, vmap
from jax.example_libraries import optimizers
from jax.scipy.stats import norm

NUM_SAMPLES = 5


def diag_gaussian_sample(rng, mean, log_std):
    return mean + jnp.exp(log_std) * random.normal(rng, mean.shape)


def diag_gaussian_logpdf(x, mean, log_std):
    return jnp.sum(vmap(norm.logpdf)(x, mean, jnp.exp(log_std)))


def elbo(logprob, rng, mean, log_std):
    sample = diag_gaussian_sample(rng, mean, log_std)
    return logprob(sample) - diag_gaussian_logpdf(sample, mean, log_std)


def batch_elbo(logprob, rng, params, num_samples):
    rngs = random.split(rng, num_samples)
    vectorized_elbo = vmap(partial(elbo, logprob), in_axes=(0, None, None))
    return jnp.mean(vectorized_elbo(rngs, *params))


def funnel_log_density(params):
    return norm.logpdf(params[0], 0, jnp.exp(params[1])) + norm.logpdf(params[1], 0, 1.35)


@jit
def objective(params, t):
    rng = random.key(t)
    return -batch_elbo(funnel_log_density, rng, params, NUM_SAMPLES)


opt_init, opt_update, get_params = optimizers.momentum(step_size=0.1, mass=0.9)


@jit
def update(i, opt_state):
    params = get_params(opt_state)
    gradient = grad(objective)(params, i)
    return opt_update(i, gradient, opt_state)


def audit_target():
    opt_state = opt_init((jnp.zeros(2), jnp.zeros(2)))
    return update, (3, opt_state)  # the training loop passes the iteration as a Python int
