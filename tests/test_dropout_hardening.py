"""The dropout primitive under hostile use: gradients with respect to a traced rate, forward
mode, invalid rates, narrow dtypes, argument checks and ``broadcast_dims``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax.nn import Dropout
from stoax.random import dropout, dropout_then, keep_mask

X = jnp.linspace(-2.0, 2.0, 64, dtype=jnp.float32)


def _plain(x, rate, key, **kw):
    return dropout(x, rate, key, regenerate_mask=False, **kw)


# -- item 7: the gradient with respect to a traced rate --------------------------------------


def test_gradient_wrt_traced_rate_is_plain_autodiffs():
    # The probe: d/d rate of sum(dropout(x, rate)) was silently 0 with regenerate_mask=True.
    def loss(rate, fn):
        return jnp.sum(fn(X, rate, jax.random.key(0)) ** 2)

    rate = jnp.float32(0.3)
    g = jax.grad(loss)(rate, dropout)
    g_plain = jax.grad(loss)(rate, _plain)
    # By hand, same mask: y = x / (1 - r) on kept elements, d sum(y^2)/dr = sum(2 y x) / (1-r)^2.
    mask = keep_mask(jax.random.key(0), X.shape, rate)
    by_hand = jnp.sum(jnp.where(mask, 2 * X * X / (1 - rate) ** 3, 0.0))
    assert float(g) != 0.0
    np.testing.assert_allclose(g, g_plain, rtol=1e-6)
    np.testing.assert_allclose(g, by_hand, rtol=1e-5)
    # Under jit and vmap over a sweep of rates too.
    rates = jnp.array([0.1, 0.5, 0.9], jnp.float32)
    gs = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None)), static_argnums=1)(rates, dropout)
    gs_plain = jax.vmap(jax.grad(loss), in_axes=(0, None))(rates, _plain)
    np.testing.assert_allclose(gs, gs_plain, rtol=1e-6)


def test_gradient_wrt_rate_of_dropout_then_is_plain_autodiffs():
    w = jnp.ones((8, 3)) / 8

    def loss(rate, regen):
        y = dropout_then(
            jnp.matmul, X.reshape(8, 8), w, rate=rate, key=jax.random.key(1), regenerate_mask=regen
        )
        return jnp.sum(jnp.tanh(y))

    g = jax.grad(loss)(jnp.float32(0.4), True)
    assert float(g) != 0.0
    np.testing.assert_allclose(g, jax.grad(loss)(jnp.float32(0.4), False), rtol=1e-5)


def test_gradient_wrt_x_is_still_bitwise_and_rate_grad_only_when_asked():
    def loss(x, rate, fn):
        return jnp.sum(jnp.sin(fn(x, rate, jax.random.key(2))))

    for rate in (0.25, jnp.float32(0.25)):
        g = jax.grad(loss)(X, rate, dropout)
        np.testing.assert_array_equal(g, jax.grad(loss)(X, rate, _plain))


# -- forward mode ---------------------------------------------------------------------------


def test_forward_mode_tangents_equal_plain_autodiff():
    def key():  # the same key, a fresh object per use (jax_debug_key_reuse)
        return jax.random.key(3)

    tangent = jnp.cos(X)
    for rate in (0.5, jnp.float32(0.5)):
        y, t = jax.jvp(lambda x, r=rate: dropout(x, r, key()), (X,), (tangent,))
        y_ref, t_ref = jax.jvp(lambda x, r=rate: _plain(x, r, key()), (X,), (tangent,))
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(t, t_ref)
    # jvp with respect to the rate.
    one = (jnp.float32(1.0),)
    _, t_rate = jax.jvp(lambda r: dropout(X, r, key()), (jnp.float32(0.5),), one)
    _, t_rate_ref = jax.jvp(lambda r: _plain(X, r, key()), (jnp.float32(0.5),), one)
    np.testing.assert_allclose(t_rate, t_rate_ref, rtol=1e-6)


def test_jacfwd_and_hessian_through_a_training_mode_model():
    model = stoax.nn.MLP(4, 2, hidden=(8,), dropout=0.5, key=jax.random.key(0))
    x = jnp.linspace(-1.0, 1.0, 4)
    key = jax.random.key(1)

    def f(x):
        return model(x, key=key)

    jf = jax.jit(jax.jacfwd(f))(x)
    jr = jax.jit(jax.jacrev(f))(x)
    np.testing.assert_allclose(jf, jr, rtol=1e-6, atol=1e-7)

    def plain(x):
        with_plain = stoax.random.set_regenerate_mask(False)
        try:
            return jax.hessian(lambda x: jnp.sum(f(x) ** 2))(x)
        finally:
            stoax.random.set_regenerate_mask(with_plain)

    h = jax.hessian(lambda x: jnp.sum(f(x) ** 2))(x)
    np.testing.assert_allclose(h, plain(x), rtol=1e-5, atol=1e-6)


def test_forward_mode_through_dropout_then_equals_plain_autodiff():
    # dropout_then's lean backward pass is a custom_vjp; forward mode tracing it switches to
    # dropout (a custom_jvp) then fn: same mask, tangents of plain autodiff.
    x, w = X.reshape(8, 8), jnp.ones((8, 3))

    def f(x, regen=None):
        return dropout_then(
            jnp.matmul, x, w, rate=0.5, key=jax.random.key(4), regenerate_mask=regen
        )

    y, t = jax.jvp(f, (x,), (jnp.cos(x),))
    y_ref, t_ref = jax.jvp(lambda x: f(x, False), (x,), (jnp.cos(x),))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_array_equal(jax.jit(jax.jacfwd(f))(x), jax.jacfwd(lambda x: f(x, False))(x))
    # By hand: the tangent is the tangent dropped with the same mask, times w.
    np.testing.assert_allclose(t, _plain(jnp.cos(x), 0.5, jax.random.key(4)) @ w, rtol=1e-6)


def _mlp_grad_temp(regen: bool) -> int:
    # rbg's draws cannot fuse, so plain autodiff keeps the mask for the backward pass.
    params = [jnp.ones((128, 128)) / 16 for _ in range(3)]

    def loss(params, x, key):
        for i, w in enumerate(params):
            x = dropout(jnp.tanh(x @ w), 0.1, stoax.keys.child(key, i), regenerate_mask=regen)
        return jnp.mean(x**2)

    key = jax.random.key(0, impl="rbg")
    lowered = jax.jit(jax.grad(loss)).lower(params, jnp.ones((512, 128)), key)
    return lowered.compile().memory_analysis().temp_size_in_bytes


def test_lean_backward_kept_by_the_forward_mode_capable_primitive():
    # XLA's memory analysis is deterministic for one jax/XLA version: the regenerating backward
    # keeps 1 bit per element (rbg), plain autodiff a byte per element at least.
    assert _mlp_grad_temp(True) < _mlp_grad_temp(False)


# -- item 10: traced rates outside [0, 1] ---------------------------------------------------


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), float("inf")])
def test_invalid_traced_rate_gives_nan_output_and_gradient(rate):
    f = jax.jit(lambda x, r: dropout(x, r, jax.random.key(5)))
    y = f(X, jnp.float32(rate))
    assert np.isnan(np.asarray(y)).all()
    g = jax.grad(lambda x, r: f(x, r).sum())(X, jnp.float32(rate))
    assert np.isnan(np.asarray(g)).all()
    # The layer with a traced rate (its concrete value is checked at construction).
    out = jax.jit(lambda r: Dropout(r)(X, key=jax.random.key(6)))(jnp.float32(rate))
    assert np.isnan(np.asarray(out)).all()


def test_valid_traced_rate_edges_still_exact():
    f = jax.jit(lambda x, r: dropout(x, r, jax.random.key(7)))
    np.testing.assert_array_equal(f(X, jnp.float32(0.0)), X)
    np.testing.assert_array_equal(f(X, jnp.float32(1.0)), jnp.zeros_like(X))


# -- item 11: stoax.random.dropout checks its arguments --------------------------------------


@pytest.mark.parametrize(
    ("rate", "error", "words"),
    [
        (-0.1, ValueError, r"rate must be in \[0, 1\].*got -0.1"),
        (1.5, ValueError, r"rate must be in \[0, 1\].*got 1.5"),
        (float("nan"), ValueError, r"rate must be in \[0, 1\].*got nan"),
        (True, TypeError, "got the bool True"),
        ("0.5", TypeError, "rate must be a float or a JAX array, got str"),
        (np.asarray(1.5, np.float32), ValueError, r"every rate must be in \[0, 1\]"),
        (np.asarray(1, np.int32), TypeError, "rate must be a floating array"),
    ],
)
def test_dropout_refuses_bad_rates(rate, error, words):
    for fn in (
        lambda: dropout(X, rate, jax.random.key(0)),
        lambda: dropout_then(jnp.sin, X, rate=rate, key=jax.random.key(0)),
    ):
        with pytest.raises(error, match=r"stoax\.random\.dropout.*" + words):
            fn()


def test_dropout_refuses_non_float_input():
    with pytest.raises(
        TypeError, match=r"stoax\.random\.dropout: x must be a floating-point.*int32"
    ):
        dropout(jnp.arange(4), 0.5, jax.random.key(0))


# -- item 12: float16 near rate 1 -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16])
def test_narrow_dtypes_near_rate_one_no_inf_no_nan(dtype):
    # 1/(1-0.99999) = 1e5 overflows float16 (max 65504): before, zeros became 0 * inf = NaN
    # and every kept value inf. Computed in float32 and rounded once: 1e-3 * 1e5 = 100.
    n = 1 << 20  # about 10 kept elements expected at rate 0.99999

    def key():  # the same key, a fresh object per use (jax_debug_key_reuse)
        return jax.random.key(8)

    for rate in (0.99999, jnp.float32(0.99999)):
        zeros = jax.jit(lambda x, r: dropout(x, r, key()))(jnp.zeros(n, dtype), rate)
        assert zeros.dtype == dtype and not np.isnan(np.asarray(zeros, np.float32)).any()
        assert (np.asarray(zeros, np.float32) == 0).all()
        small = jax.jit(lambda x, r: dropout(x, r, key()))(jnp.full(n, 1e-3, dtype), rate)
        values = np.asarray(small, np.float32)
        kept = values[values != 0]
        assert len(kept) > 0 and np.isfinite(kept).all()
        expected = float(jnp.asarray(jnp.asarray(1e-3, dtype).astype(jnp.float32) / 1e-5, dtype))
        np.testing.assert_allclose(kept, expected, rtol=1e-2)


# -- item 8: broadcast_dims -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dims", "error", "words"),
    [
        (
            (5,),
            ValueError,
            r"broadcast_dims \(5,\) names axis 5, but the input has 2 axes "
            r"\(valid: -2 \.\. 1\)",
        ),
        ((-3,), ValueError, r"broadcast_dims \(-3,\) names axis -3, but the input has 2 axes"),
        ((1.7,), TypeError, r"every axis in broadcast_dims must be an int, got 1.7"),
        ("ab", TypeError, r"broadcast_dims must be a tuple of axes.*got 'ab'"),
        ((1, 1), ValueError, r"broadcast_dims \(1, 1\) names an axis twice"),
        ((1, -1), ValueError, r"broadcast_dims \(1, -1\) names one axis twice on a 2-D input"),
        ((True,), TypeError, r"every axis in broadcast_dims must be an int, got True"),
    ],
)
def test_broadcast_dims_checked(dims, error, words):
    x = jnp.ones((4, 6))
    with pytest.raises(error, match=r"stoax\.random\.dropout: " + words):
        dropout(x, 0.5, jax.random.key(0), broadcast_dims=dims)
    if isinstance(dims, str) or any(not isinstance(d, int) or isinstance(d, bool) for d in dims):
        construction_error = True
    else:
        construction_error = len(set(dims)) != len(dims)
    if construction_error:  # refused when the layer is built
        with pytest.raises(error, match="Dropout: "):
            Dropout(0.5, broadcast_dims=dims)
    else:  # checked against the input's rank at the call, naming the layer's place
        model = stoax.nn.Sequential([Dropout(0.5, broadcast_dims=dims)])
        with pytest.raises(error, match=r"Sequential\.layers\[0\] \(Dropout\(.*\): " + words):
            model(x, key=jax.random.key(0))


def test_broadcast_dims_int_and_negative_axes():
    x = jnp.ones((4, 6, 3))

    def key():  # the same key, a fresh object per use (jax_debug_key_reuse)
        return jax.random.key(9)

    a = Dropout(0.5, broadcast_dims=1)
    assert a.broadcast_dims == (1,)
    y = a(x, key=key())
    assert (y == y[:, :1, :]).all()
    # A negative axis is normalised against the input's rank: -2 is axis 1 here.
    np.testing.assert_array_equal(Dropout(0.5, broadcast_dims=(-2,))(x, key=key()), y)
    np.testing.assert_array_equal(dropout(x, 0.5, key(), broadcast_dims=[1]), y)


def test_mixed_second_derivatives_in_x_and_rate_are_plain_autodiffs():
    def f(x, rate, regen):
        y = dropout(x, rate, jax.random.key(10), regenerate_mask=regen)
        return jnp.sum(jnp.tanh(y) ** 2)

    args = (X[:16], jnp.float32(0.3))
    h = jax.hessian(f, argnums=(0, 1))(*args, True)
    h_plain = jax.hessian(f, argnums=(0, 1))(*args, False)
    for a, b in zip(jax.tree.leaves(h), jax.tree.leaves(h_plain), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(h[0][1]).max()) > 0  # the mixed term is there
