"""One subkey for both the noise level and the noise itself.

Thread: https://github.com/p-doom/jasmine/pull/214 ("Add noise to combat exposure bias"), review
comment on ``rng, _rng_noise = jax.random.split(rng)`` followed by ``jax.random.uniform(_rng_noise,
...)`` and ``jax.random.normal(_rng_noise, ...)``: "Do not reuse rng keys."
"""

import jax
import jax.numpy as jnp

THREAD = "https://github.com/p-doom/jasmine/pull/214"
KIND = "reused_key"
MAX_NOISE_LEVEL = 0.5


@jax.jit
def add_noise(vid_embed, rng):
    batch = vid_embed.shape[0]
    rng, _rng_noise = jax.random.split(rng)
    noise_level = jax.random.uniform(  # BUG-RELATED
        _rng_noise, shape=(batch,), minval=0.0, maxval=MAX_NOISE_LEVEL
    )
    noise = jax.random.normal(_rng_noise, shape=vid_embed.shape)  # BUG
    return vid_embed + noise_level[:, None, None] * noise, rng


def audit_target():
    return add_noise, (jnp.ones((2, 3, 4)), jax.random.PRNGKey(0))
