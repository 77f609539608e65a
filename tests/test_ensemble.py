"""``stoax.nn.Ensemble``: a vmapped ensemble is bitwise the Python loop over its members, and
member ``m`` draws its own masks from ``keys.child(key, m)``. Both sides run under ``jax.jit``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _independence import assert_independent

import stoax
from stoax import keys

K = 4
D = 6


def make(key):
    k1, k2 = keys.derive(key, "fc1", "fc2")
    return stoax.nn.Sequential(
        [
            stoax.nn.Linear(D, 16, key=k1),
            jnp.tanh,
            stoax.nn.Dropout(0.4),
            stoax.nn.Linear(16, 2, key=k2),
        ]
    )


@pytest.fixture(scope="module")
def ensemble():
    return stoax.nn.Ensemble.build(make, K, key=jax.random.key(0))


def loop(ens, x, key, per_member=False):
    """The Python loop an Ensemble must equal: member m gets keys.child(key, m)."""
    return jnp.stack(
        [member(x[m] if per_member else x, key=keys.child(key, m)) for m, member in enumerate(ens)]
    )


# One compiled program holds both sides.
ens_and_loop = jax.jit(lambda e, x, k: (e(x, key=k), loop(e, x, k, per_member=e.in_axes == 0)))


def test_build_equals_members_built_in_a_loop(ensemble):
    for m in range(K):
        assert ensemble[m] == make(keys.init_child(jax.random.key(0), m))
    assert len(ensemble) == K and len(list(ensemble)) == K
    assert repr(ensemble).startswith(f"Ensemble({K} x Sequential(")


def test_same_input_equals_loop_bitwise(ensemble):
    x = jax.random.normal(jax.random.key(1), (5, D))
    y, y_loop = ens_and_loop(ensemble, x, jax.random.key(2))
    assert y.shape == (K, 5, 2)
    np.testing.assert_array_equal(y, y_loop)
    # members differ (own parameters, own masks)
    assert not np.array_equal(y[0], y[1])


def test_per_member_input_equals_loop_bitwise(ensemble):
    per = ensemble.replace(in_axes=0)
    x = jax.random.normal(jax.random.key(3), (K, 5, D))
    y, y_loop = ens_and_loop(per, x, jax.random.key(4))
    np.testing.assert_array_equal(y, y_loop)


def test_gradients_equal_loop_bitwise(ensemble):
    x = jax.random.normal(jax.random.key(1), (5, D))

    @jax.jit
    def grads(e, x, k):
        g = jax.grad(lambda e: jnp.sum(e(x, key=k) ** 2))(e)
        g_loop = jax.grad(lambda e: jnp.sum(loop(e, x, k) ** 2))(e)
        return g, g_loop

    g, g_loop = grads(ensemble, x, jax.random.key(5))
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_loop), strict=True):
        np.testing.assert_array_equal(a, b)


def test_each_member_draws_an_independent_mask():
    members, n = 8, 20_000
    ens = stoax.nn.Ensemble(stoax.nn.Dropout(0.5), size=members)
    masks = jax.jit(lambda e, k: e(jnp.ones(n), key=k) > 0)(ens, jax.random.key(6))
    assert masks.shape == (members, n)
    assert_independent(np.asarray(masks), keep=0.5)


def test_traced_training_flag_is_shared_by_members(ensemble):
    traced = stoax.set_mode(ensemble, jnp.asarray(True))
    assert traced.members.layers[2].training.shape == ()
    f = jax.jit(lambda e, flag, x, k: stoax.set_mode(e, flag)(x, key=k))
    x = jax.random.normal(jax.random.key(1), (5, D))
    trained, _ = ens_and_loop(ensemble, x, jax.random.key(2))
    np.testing.assert_array_equal(f(ensemble, jnp.asarray(True), x, jax.random.key(2)), trained)
    evaluated = f(ensemble, jnp.asarray(False), x, jax.random.key(2))
    np.testing.assert_array_equal(evaluated, loop(stoax.eval_mode(ensemble), x, None))


def test_from_members_and_errors(ensemble):
    assert stoax.nn.Ensemble.from_members(list(ensemble)) == ensemble
    with pytest.raises(IndexError):
        ensemble[K]
    with pytest.raises(ValueError, match="leading axis must have size"):
        stoax.nn.Ensemble(make(jax.random.key(0)), size=K)


def test_indexing_slices_and_refusals_follow_stack(ensemble):
    """Stack and Ensemble share one container (transforms/_stacked.Copies): a slice is a smaller
    ensemble with the same options; non-int indices and non-module members are refused."""
    sub = ensemble.replace(in_axes=0)[1:3]
    assert isinstance(sub, stoax.nn.Ensemble) and len(sub) == 2 and sub.in_axes == 0
    assert sub[0] == ensemble[1] and sub[-1] == ensemble[2]
    with pytest.raises(IndexError, match="no member -5"):
        ensemble[-K - 1]
    with pytest.raises(TypeError, match="indices are ints or slices"):
        ensemble["0"]
    with pytest.raises(TypeError, match="members must be a stoax.Module.*from_members"):
        stoax.nn.Ensemble({"w": jnp.ones((K, 2))}, size=K)
