"""A NoisyNet layer that keeps its key as a module attribute: no new noise, ever.

Thread: https://github.com/google/dopamine/issues/189 ("NoisyNets implementation issues"): "The
same rng_key is used each time noise is generated meaning that no 'new' noise is generated each
time an input is passed to the layer." The key is a field of the Flax module, so under ``jit`` it
is a constant.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

THREAD = "https://github.com/google/dopamine/issues/189"
KIND = "constant_key"
RNG_KEY = jax.random.PRNGKey(1)


class NoisyNetwork(nn.Module):
    rng_key: jax.Array
    features: int = 3

    @nn.compact
    def __call__(self, x):
        mu_w = self.param("mu_w", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
        sigma_w = self.param("sigma_w", nn.initializers.constant(0.017), mu_w.shape)
        eps = jax.random.normal(self.rng_key, mu_w.shape)  # BUG
        return x @ (mu_w + sigma_w * eps)


def apply_net(params, state):
    net_def = NoisyNetwork(rng_key=RNG_KEY)
    return net_def.apply(params, state)


def audit_target():
    net_def = NoisyNetwork(rng_key=RNG_KEY)
    params = jax.eval_shape(net_def.init, jax.random.PRNGKey(2), jnp.zeros(10))
    return jax.jit(apply_net), (params, jnp.ones(10))
