"""Containers run ``Dropout -> Linear/Conv`` as one ``dropout_then`` (issue 20, item 2).

The promise: the same keys, so outputs and gradients are bitwise those of calling the layers one
by one; the backward pass keeps the pre-dropout activation and the key, not the dropped copy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stoax
from stoax import keys
from stoax.nn import MLP, Conv, Dropout, Linear, Sequential

X = jnp.linspace(-2.0, 2.0, 5 * 6, dtype=jnp.float32).reshape(5, 6)
IMPLS = ("threefry2x32", "rbg")


def _mlp(rate=0.4):
    return MLP(6, 3, hidden=(16, 16), activation=jnp.tanh, dropout=rate, key=jax.random.key(0))


def _mlp_one_by_one(m, x, key):
    """MLP.__call__ before the fusion: each layer called on its own, the same keys."""
    drop_key = keys.child(key, "dropouts")
    for i, (linear, drop) in enumerate(zip(m.layers[:-1], m.dropouts, strict=True)):
        x = drop(m.activation(linear(x)), key=keys.child(drop_key, i))
    return m.layers[-1](x)


def _sequential():
    k = jax.random.split(jax.random.key(2), 3)
    return Sequential(
        [
            Linear(6, 16, key=k[0]),
            jnp.tanh,
            Dropout(0.4),
            Linear(16, 16, key=k[1]),
            jax.nn.relu,
            Dropout(0.3),
            Linear(16, 3, key=k[2]),
        ]
    )


def _sequential_one_by_one(s, x, key):
    for i, layer in enumerate(s.layers):
        x = layer(x, key=keys.child(key, i)) if stoax.is_module(layer) else layer(x)
    return x


def _assert_trees_equal(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


def _loss(call):
    return lambda model, x, key: jnp.sum(jnp.sin(call(model, x, key)))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("regenerate", [True, False])
@pytest.mark.parametrize(
    "build, one_by_one",
    [(_mlp, _mlp_one_by_one), (_sequential, _sequential_one_by_one)],
    ids=["MLP", "Sequential"],
)
def test_outputs_and_gradients_bitwise_those_of_the_layers_one_by_one(
    impl, regenerate, build, one_by_one
):
    model = build()

    def key():  # the same key, a fresh object per use (jax_debug_key_reuse)
        return jax.random.key(1, impl=impl)

    previous = stoax.random.set_regenerate_mask(regenerate)
    try:
        fused = jax.jit(lambda m, x, k: m(x, key=k))(model, X, key())
        ref = jax.jit(one_by_one)(model, X, key())
        np.testing.assert_array_equal(fused, ref)
        assert (fused != model.__class__.__call__(stoax.eval_mode(model), X)).any()
        grad = jax.jit(jax.grad(_loss(lambda m, x, k: m(x, key=k)), argnums=(0, 1)))
        grad_ref = jax.jit(jax.grad(_loss(one_by_one), argnums=(0, 1)))
        _assert_trees_equal(grad(model, X, key()), grad_ref(model, X, key()))
    finally:
        stoax.random.set_regenerate_mask(previous)


def test_conv_after_dropout_in_a_sequential():
    k = jax.random.split(jax.random.key(3), 2)
    model = Sequential([Conv(2, 4, 3, key=k[0]), jnp.tanh, Dropout(0.5), Conv(4, 2, 3, key=k[1])])
    x = jnp.linspace(-1.0, 1.0, 3 * 10 * 2).reshape(3, 10, 2)
    loss = _loss(lambda m, x, k: m(x, key=k))
    np.testing.assert_array_equal(
        jax.jit(lambda m, x, k: m(x, key=k))(model, x, jax.random.key(4)),
        jax.jit(_sequential_one_by_one)(model, x, jax.random.key(4)),
    )
    _assert_trees_equal(
        jax.jit(jax.grad(loss))(model, x, jax.random.key(4)),
        jax.jit(jax.grad(_loss(_sequential_one_by_one)))(model, x, jax.random.key(4)),
    )


def test_eval_mode_rate_zero_and_traced_training_flag_unchanged():
    model = _mlp()
    eval_model = stoax.eval_mode(model)
    np.testing.assert_array_equal(eval_model(X), _mlp_one_by_one(eval_model, X, None))
    zero = _mlp(0.0)
    np.testing.assert_array_equal(zero(X, key=jax.random.key(1)), _mlp_one_by_one(zero, X, None))

    # A traced training flag selects between the two without a branch.
    def by_flag(flag, call):
        return call(stoax.set_mode(model, flag), X, jax.random.key(1))

    jitted = jax.jit(by_flag, static_argnums=1)
    for flag in (True, False):
        got = jitted(jnp.asarray(flag), lambda m, x, k: m(x, key=k))
        np.testing.assert_array_equal(got, jitted(jnp.asarray(flag), _mlp_one_by_one))


def test_under_vmap_scan_and_remat():
    model = _mlp()
    ks = jax.random.split(jax.random.key(5), 4)
    call = jax.vmap(lambda k: model(X, key=k))
    np.testing.assert_array_equal(call(ks), jax.vmap(lambda k: _mlp_one_by_one(model, X, k))(ks))

    def scanned(one_by_one):
        def body(x, k):
            y = _mlp_one_by_one(model, x, k) if one_by_one else model(x, key=k)
            return x + jnp.sum(y), None

        return lambda x: jnp.sum(jax.lax.scan(jax.checkpoint(body), x, ks)[0])

    np.testing.assert_array_equal(jax.grad(scanned(False))(X), jax.grad(scanned(True))(X))


def test_forward_mode_through_the_fused_pair_equals_plain_autodiff():
    model = _mlp(0.5)

    def f(x, plain=False):
        previous = stoax.random.set_regenerate_mask(not plain)
        try:
            return model(x, key=jax.random.key(1))
        finally:
            stoax.random.set_regenerate_mask(previous)

    x = X[0]
    _, t = jax.jvp(f, (x,), (jnp.cos(x),))
    _, t_ref = jax.jvp(lambda x: f(x, True), (x,), (jnp.cos(x),))
    np.testing.assert_array_equal(t, t_ref)
    np.testing.assert_array_equal(
        jax.jit(jax.jacfwd(f))(x), jax.jit(jax.jacfwd(lambda x: f(x, True)))(x)
    )


WIDTH, BATCH = 256, 256
ACTIVATION = 4 * WIDTH * BATCH  # bytes of one float32 activation


def _mlp_step_temp(rate: float, impl: str, hidden: int) -> int:
    """XLA's temporary memory of a donated grad + adamw step of a tanh MLP."""
    model = MLP(
        WIDTH,
        WIDTH,
        hidden=(WIDTH,) * hidden,
        activation=jnp.tanh,
        dropout=rate,
        key=jax.random.key(0),
    )
    params, rest = stoax.partition(model)
    opt = optax.adamw(1e-3)

    def step(state, x, key):
        params, opt_state = state
        loss = lambda p: jnp.mean(stoax.combine(p, rest)(x, key=key) ** 2)  # noqa: E731
        grads = jax.grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    state = (params, opt.init(params))
    lowered = jax.jit(step, donate_argnums=0).lower(
        state, jnp.ones((BATCH, WIDTH)), jax.random.key(1, impl=impl)
    )
    return lowered.compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("impl", IMPLS)
def test_dropout_keeps_no_dropped_activation(impl):
    # XLA's memory analysis is exact and deterministic for one jax/XLA version. What dropout
    # adds must not grow with depth: calling the layers one by one kept each dropped
    # activation for the next Linear's weight gradient, +1 activation per hidden layer (+2
    # from 1 to 3 hidden layers). Fused, what remains is a constant working set (the dropped
    # input of a matmul while it runs) plus, for rbg, the 1-bit masks.
    def extra(hidden):
        return _mlp_step_temp(0.1, impl, hidden) - _mlp_step_temp(0.0, impl, hidden)

    assert extra(3) - extra(1) < ACTIVATION


def test_shape_errors_name_the_fused_layer():
    k = jax.random.split(jax.random.key(0), 2)
    model = Sequential([Linear(6, 8, key=k[0]), Dropout(0.5), Linear(5, 2, key=k[1])])
    with pytest.raises(ValueError, match=r"Sequential\.layers\[2\].*in_features = 5"):
        model(X, key=jax.random.key(1))
