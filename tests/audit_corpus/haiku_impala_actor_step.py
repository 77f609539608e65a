"""Haiku IMPALA (lite): one actor step -- split the actor's key, sample an action.

Source: google-deepmind/dm-haiku, examples/impala_lite.py (``SimpleNet``, ``Agent.step``,
``run_actor``).

Randomness as in the example: the actor loop does ``rng_key, step_key =
jax.random.split(rng_key)`` every step and calls the jitted ``agent.step(params, step_key,
timestep)``, which samples ``hk.multinomial(rng, logits, num_samples=1)``; the network itself is
``hk.without_apply_rng``. Here one iteration of the actor loop (split, step) is the audited
function, returning the key for the next iteration. Tiny sizes.
"""

import functools

import haiku as hk
import jax
import jax.numpy as jnp

ACTIONS, OBS = 3, 5


def net(observation):
    torso = hk.Sequential([hk.Flatten(), hk.Linear(8), jax.nn.relu])
    h = torso(observation)
    return hk.Linear(ACTIONS)(h), hk.Linear(1)(h)[..., 0]


class Agent:
    def __init__(self, net_apply):
        self._net = net_apply

    @functools.partial(jax.jit, static_argnums=0)
    def step(self, params, rng, observation):
        observation = jnp.expand_dims(observation, 0)
        logits, _ = self._net(params, observation)
        logits = jnp.squeeze(logits, axis=0)
        action = hk.multinomial(rng, logits, num_samples=1)
        return jnp.squeeze(action, axis=-1), logits


NET = hk.without_apply_rng(hk.transform(net))
AGENT = Agent(NET.apply)


def actor_iteration(params, rng_key, observation):
    rng_key, step_key = jax.random.split(rng_key)
    action, logits = AGENT.step(params, step_key, observation)
    return action, logits, rng_key


def audit_target():
    observation = jnp.ones((OBS,))
    params = jax.eval_shape(NET.init, jax.random.PRNGKey(428), observation[None])
    return actor_iteration, (params, jax.random.PRNGKey(1), observation)
