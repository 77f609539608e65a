"""A trajectory-expansion loop that consumes its key and also carries it to the next iteration.

Thread: https://github.com/blackjax-devs/blackjax/issues/53 ("reuse of a prng key in
expand_once()"): "the key ``rng_key`` ... is used twice: in the call to trajectory_integrator and
as an element of the loop state returned ... thus, it is reused in the next iteration for
splitting." JAX's ``jax_debug_key_reuse`` does not catch it either. The finding points at the
split that, in the next iteration, consumes the carried key a second time, and names the draw
that consumed it first.
"""

import jax
import jax.numpy as jnp

THREAD = "https://github.com/blackjax-devs/blackjax/issues/53"
KIND = "reused_key"


def trajectory_integrator(rng_key, position):
    return position + 0.1 * jax.random.normal(rng_key, position.shape)  # BUG-RELATED


@jax.jit
def expand(rng_key, position):
    def cond(state):
        return state[0] < 4

    def body(state):
        step, position, rng_key = state
        rng_key, direction_key = jax.random.split(rng_key)  # BUG
        direction = jnp.where(jax.random.bernoulli(direction_key), 1.0, -1.0)
        position = direction * trajectory_integrator(rng_key, position)
        return step + 1, position, rng_key

    return jax.lax.while_loop(cond, body, (0, position, rng_key))[1]


def audit_target():
    return expand, (jax.random.PRNGKey(0), jnp.zeros(3))
