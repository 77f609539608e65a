"""``broadcast_dims`` dropout: one mask value shared along the broadcast axes, drawn once per
mask element (issue 20, item 3), and forward mode through it (item 4)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _independence import assert_independent

import stoax
from stoax import keys
from stoax.random import dropout, keep_mask

IMPLS = ("threefry2x32", "rbg")
X = jnp.linspace(-2.0, 2.0, 4 * 3 * 8, dtype=jnp.float32).reshape(4, 3, 8)


def _by_hand(x, rate, key, dims):
    """The documented mask: keep_mask on the shape with the broadcast axes set to 1."""
    shape = tuple(1 if i in dims else n for i, n in enumerate(x.shape))
    return jnp.where(keep_mask(key, shape, rate), x / (1 - rate), 0.0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dims", [(1,), (0, 2), (-1,)])
def test_the_mask_is_keep_mask_on_the_small_shape(impl, dims):
    # Same key, same mask as before the mask was drawn on the small shape: bitwise.
    def key():
        return jax.random.key(0, impl=impl)

    dims_pos = tuple(d % X.ndim for d in dims)
    y = jax.jit(lambda x, k: dropout(x, 0.5, k, broadcast_dims=dims))(X, key())
    np.testing.assert_array_equal(y, _by_hand(X, 0.5, key(), dims_pos))


def test_shared_along_the_axis_and_independent_across_the_others():
    x = jnp.ones((64, 16, 512), jnp.float32)
    kept = np.asarray(dropout(x, 0.5, jax.random.key(1), broadcast_dims=(1,)) != 0)
    # Shared: every slice along axis 1 has the mask of the first.
    assert (kept == kept[:, :1, :]).all()
    # Independent across axes 0 and 2 (keep rate and pairwise co-occurrence; the tolerance is
    # the binomial bound of tests/_independence.py, 6 sigma, fixed seed).
    m = kept[:, 0, :]
    assert_independent(np.stack([m[:, ::2], m[:, 1::2]]), keep=0.5)  # neighbours on axis 2
    assert_independent(np.stack([m[::2], m[1::2]]), keep=0.5)  # neighbours on axis 0


@pytest.mark.parametrize("impl", IMPLS)
def test_gradient_bitwise_that_of_plain_autodiff(impl):
    def loss(x, regen):
        y = dropout(
            x, 0.3, jax.random.key(2, impl=impl), broadcast_dims=(1,), regenerate_mask=regen
        )
        return jnp.sum(jnp.sin(y) * x)

    np.testing.assert_array_equal(jax.grad(loss)(X, True), jax.grad(loss)(X, False))


@pytest.mark.parametrize("dims", [(), (1,)], ids=["full mask", "broadcast"])
def test_jvp_and_jacfwd_equal_plain_autodiff(dims):
    # Forward mode through training-mode dropout: the tangents of plain autodiff of the same
    # computation, with the same mask (item 4).
    def f(x, regen=True):
        return dropout(x, 0.5, jax.random.key(3), broadcast_dims=dims, regenerate_mask=regen)

    def plain(x):
        return f(x, False)

    tangent = jnp.cos(X)
    y, t = jax.jvp(f, (X,), (tangent,))
    y_ref, t_ref = jax.jvp(plain, (X,), (tangent,))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_array_equal(t, f(tangent))  # the tangent dropped with the same mask
    np.testing.assert_array_equal(jax.jacfwd(f)(X), jax.jacfwd(plain)(X))
    np.testing.assert_array_equal(jax.jit(jax.jacfwd(f))(X), jax.jit(jax.jacrev(plain))(X))


def test_the_hash_runs_on_the_small_shape_only():
    # XLA would fuse the hash into the broadcast consumer and run it once per *output*
    # element (128x here); the mask is packed to bits so that it runs once per mask element,
    # in the forward pass and in the backward regeneration.
    x = jnp.ones((8, 128, 64), jnp.float32)

    def fwd_bwd(x, k):
        y, vjp = jax.vjp(lambda x: dropout(x, 0.1, k, broadcast_dims=(1,)), x)
        return y, vjp(jnp.cos(x))[0]

    hlo = jax.jit(fwd_bwd).lower(x, jax.random.key(0)).compile().as_text()
    # The Threefry key-schedule constant 0x1BD11BDA marks the computations that run the hash.
    computations = re.split(r"\n\n", hlo)
    hashing = [c for c in computations if "466688986" in c]
    assert len(hashing) >= 2  # forward draw and backward regeneration
    for c in hashing:
        # A fused computation's header ends with its result type: the small packed mask, never
        # the input's shape (the cotangent may be read, sliced to the small shape, as the tie).
        result = re.search(r"\)\s*->\s*([^{]*)\{", c).group(1)
        assert "[8,128,64]" not in result, c[:1000]


def test_broadcast_dropout_before_a_linear_in_a_sequential():
    k = jax.random.split(jax.random.key(4), 2)
    model = stoax.nn.Sequential(
        [
            stoax.nn.Linear(8, 8, key=k[0]),
            stoax.nn.Dropout(0.5, broadcast_dims=(1,)),
            stoax.nn.Linear(8, 2, key=k[1]),
        ]
    )

    def one_by_one(m, x, key):
        for i, layer in enumerate(m.layers):
            x = layer(x, key=keys.child(key, i))
        return x

    def loss(call):
        return jax.jit(jax.grad(lambda m, x, key: jnp.sum(jnp.sin(call(m, x, key))), (0, 1)))

    fused = lambda m, x, key: m(x, key=key)  # noqa: E731
    np.testing.assert_array_equal(
        jax.jit(fused)(model, X, jax.random.key(5)),
        jax.jit(one_by_one)(model, X, jax.random.key(5)),
    )
    for a, b in zip(
        jax.tree.leaves(loss(fused)(model, X, jax.random.key(5))),
        jax.tree.leaves(loss(one_by_one)(model, X, jax.random.key(5))),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
