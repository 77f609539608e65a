"""A Haiku model applied with the same key at every training step: the same dropout mask.

Thread: https://github.com/google-deepmind/dm-haiku/issues/585 ("Best Practice for using
hk.next_rng_key()"): keys of ``hk.next_rng_key()`` are split from the key passed to ``apply`` --
"Passing the same key gives the same dropout mask." Here the steps of an epoch run in a
``lax.scan`` and each calls ``apply`` with the epoch's one key.
"""

import haiku as hk
import jax
import jax.numpy as jnp
import optax

THREAD = "https://github.com/google-deepmind/dm-haiku/issues/585"
KIND = "loop_invariant_key"


def forward(x):
    h = jax.nn.relu(hk.Linear(8)(x))
    return hk.Linear(1)(hk.dropout(hk.next_rng_key(), 0.5, h))  # BUG


NET = hk.transform(forward)
OPTIM = optax.sgd(0.1)


@jax.jit
def train_epoch(params, opt_state, key, xs, ys):
    def step(carry, batch):
        params, opt_state = carry
        x, y = batch
        loss = lambda p: jnp.mean((NET.apply(p, key, x) - y) ** 2)  # noqa: E731
        updates, opt_state = OPTIM.update(jax.grad(loss)(params), opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    return jax.lax.scan(step, (params, opt_state), (xs, ys))[0]


def audit_target():
    xs, ys = jnp.ones((3, 4, 2)), jnp.zeros((3, 4, 1))
    params = jax.eval_shape(NET.init, jax.random.PRNGKey(42), xs[0])
    opt_state = jax.eval_shape(OPTIM.init, params)
    return train_epoch, (params, opt_state, jax.random.PRNGKey(0), xs, ys)
