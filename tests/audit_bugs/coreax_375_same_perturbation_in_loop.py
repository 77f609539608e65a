"""A score-matching loop body that perturbs its inputs with the same noise on every iteration.

Thread: https://github.com/gchq/coreax/issues/375 ("Review randomness in SlicedScoreMatching
_noise_conditional_loop_body"): "the statement perturbing the inputs with Gaussian noise
generates the same perturbation (i.e., the same set of random numbers) on each function call".
Here the loop body uses the key the enclosing function received, not one derived per iteration.
"""

import jax
import jax.numpy as jnp

THREAD = "https://github.com/gchq/coreax/issues/375"
KIND = "loop_invariant_key"


@jax.jit
def noise_conditional_loss(params, x, random_key, sigmas):
    def loop_body(i, total):
        sigma = sigmas[i]
        perturbed = x + sigma * jax.random.normal(random_key, x.shape)  # BUG
        score = perturbed @ params
        return total + jnp.mean((sigma * score + (perturbed - x) / sigma) ** 2)

    return jax.lax.fori_loop(0, sigmas.shape[0], loop_body, 0.0)


def audit_target():
    args = (jnp.eye(3), jnp.ones((4, 3)), jax.random.PRNGKey(0), jnp.linspace(0.1, 1.0, 5))
    return noise_conditional_loss, args
