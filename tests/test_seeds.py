"""The five seed scenarios (S0-S4 in DESIGN.md), each written in stoax's own API with plain JAX
transforms and no workaround: no filter_jit, no split_rngs, no partition/rebuild in a scan body,
no hand-threaded dropout key stream. Every test runs with each PRNG implementation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stoax
from stoax import keys
from stoax.nn import Dropout, Linear, MissingKeyError, Sequential

IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")


@pytest.fixture(params=IMPLS)
def impl(request):
    """Run the test with ``jax.random.key`` / ``stoax.step_key`` making keys of each PRNG impl."""
    with jax.default_prng_impl(request.param):
        yield request.param


@functools.cache
def mlp(width: int = 32):
    """Linear -> relu -> Dropout(0.5) -> Linear, parameters from one key (built under jit)."""

    def make(key):
        k1, k2 = keys.derive(key, "in", "out")
        return Sequential(
            [Linear(8, width, key=k1), jax.nn.relu, Dropout(0.5), Linear(width, 1, key=k2)]
        )

    return jax.jit(make)(jax.random.key(0, impl="threefry2x32"))


X = jnp.asarray(np.random.default_rng(0).normal(size=(16, 8)), jnp.float32)
Y = jnp.asarray(np.random.default_rng(1).normal(size=(16, 1)), jnp.float32)


# S0 -- Flax Dropout + jit: a jitted model returned the same mask every call (the key was a
# compile-time constant). In stoax the key is an argument of the jitted step.
def test_s0_jitted_step_gets_a_fresh_mask_per_step_and_the_same_mask_per_key(impl):
    model = mlp()
    traces = []

    @jax.jit
    def train_step(model, x, key):
        traces.append(None)

        def loss(model):
            hidden = model[:2](x)  # the layers before the Dropout: its input
            out = model[3](model[2](hidden, key=keys.child(key, 2)))
            return jnp.mean((out - Y) ** 2), hidden

        (value, hidden), grads = jax.value_and_grad(loss, has_aux=True)(model)
        mask = model[2](jnp.ones_like(hidden), key=keys.child(key, 2)) != 0
        return value, grads, mask

    masks = [np.asarray(train_step(model, X, stoax.step_key(0, step))[2]) for step in range(4)]
    assert len(traces) == 1  # one compiled program; the key is not baked into it
    for i in range(4):
        for j in range(i):
            assert (masks[i] != masks[j]).any(), f"steps {i} and {j} share a mask"

    a = train_step(model, X, stoax.step_key(0, 2))
    b = train_step(model, X, stoax.step_key(0, 2))
    np.testing.assert_array_equal(a[2], masks[2])  # same key: same mask, bitwise
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_s0_step_key_inside_jit_from_a_traced_step(impl):
    drop = Dropout(0.5)
    step_fn = jax.jit(lambda step: drop(jnp.ones(256), key=stoax.step_key(7, step)))
    m0, m1, m0_again = jax.device_get([step_fn(jnp.asarray(s)) for s in (0, 1, 0)])
    assert (m0 != m1).any()
    np.testing.assert_array_equal(m0, m0_again)


# S1 -- NNX vmap + split_rngs + scan: the Dropout RNG state of a vmapped stack was scalar again
# and scan failed. In stoax a module holds no RNG state; the scan body derives each layer's key.
def make_block(key):
    return Sequential([Linear(64, 64, key=key), Dropout(0.5)])


@functools.cache
def vmapped_stack():
    """Three blocks built by jax.vmap of the constructor over three keys (once per session)."""
    return jax.jit(jax.vmap(make_block))(
        jax.random.split(jax.random.key(0, impl="threefry2x32"), 3)
    )


def run_stack(stack, x, key):
    def body(h, layer_and_index):
        block, i = layer_and_index
        h = block(h, key=keys.child(key, i))
        return h, h != 0

    return jax.lax.scan(body, x, (stack, jnp.arange(3)))


def test_s1_vmapped_stack_scanned_with_plain_lax_scan(impl):
    stack = vmapped_stack()
    assert stack.layers[0].weight.shape == (3, 64, 64)
    assert type(stack.layers[1].rate) is float  # static: no per-layer copy, no scalar RNG state

    x = jnp.ones((8, 64))
    run = jax.jit(run_stack)
    out, masks = jax.device_get(run(stack, x, jax.random.key(1)))
    assert out.shape == (8, 64) and masks.shape == (3, 8, 64)
    for i in range(3):
        for j in range(i):
            assert (masks[i] != masks[j]).any(), f"layers {i} and {j} share a mask"
    out2, masks2 = jax.device_get(run(stack, x, jax.random.key(2)))
    assert (masks2 != masks).any() and (out2 != out).any()

    # Bit for bit the same computation as a Python loop over the layers.
    def loop(stack, x, key):
        for i in range(3):
            x = jax.tree.map(lambda a, i=i: a[i], stack)(x, key=keys.child(key, i))
        return x

    np.testing.assert_array_equal(jax.jit(loop)(stack, x, jax.random.key(1)), out)


# S2 -- Equinox Dropout + lax.scan: a traced inference flag raised TracerBoolConversionError. In
# stoax the flag is a traced bool set with set_mode inside the scan body.
def test_s2_traced_train_eval_flag_as_scan_carry(impl):
    model = mlp()
    x = X

    def rollout(model, key):
        def body(training, i):
            m = stoax.set_mode(model, training)
            y = m[:2](x)
            dropped = m[2](y, key=keys.child(key, i))
            return ~training, (dropped, y)  # alternate train / eval steps

        return jax.lax.scan(body, jnp.asarray(True), jnp.arange(4))

    flag, (dropped, before) = jax.device_get(jax.jit(rollout)(model, jax.random.key(3)))
    assert flag.dtype == jnp.bool_
    for step in (1, 3):  # eval steps: the identity
        np.testing.assert_array_equal(dropped[step], before[step])
    for step in (0, 2):  # train steps: dropped and scaled by 2
        active = before[step] != 0
        zeroed = active & (dropped[step] == 0)
        assert zeroed.any()
        kept = active & ~zeroed
        np.testing.assert_allclose(dropped[step][kept], 2 * before[step][kept], rtol=1e-6)
    assert (dropped[0] != dropped[2]).any()

    # The whole model with a traced flag too, forward and backward.
    def loss(model, training, key):
        return jnp.mean((stoax.set_mode(model, training)(x, key=key) - Y) ** 2)

    grad = jax.jit(jax.grad(loss))(model, jnp.asarray(False), jax.random.key(4))
    assert all(np.isfinite(g).all() for g in jax.device_get(jax.tree.leaves(grad)))


# S3 -- Equinox Dropout's p: under plain jax.jit the float became a tracer, optimiser state held
# None for it and `float * NoneType` failed; vmapping a model tripped on it. In stoax a Python rate
# is static metadata and never a leaf.
def test_s3_rate_stays_a_python_float_under_plain_jit(impl):
    model = mlp()

    @jax.jit
    def forward(model, key):
        assert type(model[2].rate) is float and model[2].rate == 0.5
        return model(X, key=key)

    forward(model, jax.random.key(0))
    jax.jit(jax.grad(lambda m, k: forward(m, k).sum()))(model, jax.random.key(1))
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(model))  # no float leaf


def test_s3_optax_over_the_model_has_no_none_and_updates(impl):
    model = mlp()
    params, rest = stoax.partition(model)
    is_none = lambda x: x is None
    assert None not in jax.tree.leaves(params, is_leaf=is_none)
    optimizer = optax.adam(1e-2)
    opt_state = optimizer.init(params)
    assert None not in jax.tree.leaves(opt_state, is_leaf=is_none)

    @jax.jit
    def step(params, opt_state, key):
        def loss(params):
            model = stoax.combine(params, rest)
            return jnp.mean((model(X, key=key) - Y) ** 2)

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    losses = []
    for i in range(3):
        params, opt_state, value = step(params, opt_state, stoax.step_key(0, i))
        losses.append(float(value))
    trained = stoax.combine(params, rest)
    assert type(trained[2].rate) is float
    assert (np.asarray(trained[0].weight) != np.asarray(model[0].weight)).any()
    assert all(np.isfinite(losses))


def test_s3_a_rate_given_as_an_array_is_never_trained():
    model = mlp()
    model = model.replace(layers=(*model.layers[:2], Dropout(jnp.asarray(0.5)), model.layers[3]))
    params, rest = stoax.partition(model)
    assert params[2].rate is None and float(rest[2].rate) == 0.5
    optimizer = optax.sgd(0.1)

    @jax.jit
    def step(params, opt_state, key):
        grads = jax.grad(lambda p: stoax.combine(p, rest)(X, key=key).sum())(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates)

    new_params = step(params, optimizer.init(params), stoax.step_key(0, 0))
    assert new_params[2].rate is None  # the optimiser never saw it
    assert float(stoax.combine(new_params, rest)[2].rate) == 0.5


@functools.cache
def built_ensemble():
    def make(key):
        k1, k2 = keys.derive(key, "in", "out")
        return Sequential([Linear(8, 32, key=k1), Dropout(0.5), Linear(32, 1, key=k2)])

    return jax.jit(jax.vmap(make))(jax.random.split(jax.random.key(0, impl="threefry2x32"), 4))


def test_s3_vmap_over_an_ensemble_of_models_with_dropout(impl):
    ensemble = built_ensemble()
    assert ensemble.layers[0].weight.shape == (4, 8, 32) and type(ensemble.layers[1].rate) is float

    @jax.jit
    def forward(ensemble, key):
        member_keys = jax.vmap(lambda i: keys.child(key, i))(jnp.arange(4))
        return jax.vmap(lambda m, k: m(X, key=k))(ensemble, member_keys)

    out = forward(ensemble, jax.random.key(1))
    assert out.shape == (4, 16, 1)
    same_weights = jax.tree.map(lambda a: np.broadcast_to(np.asarray(a)[:1], a.shape), ensemble)
    out_same = np.asarray(forward(same_weights, jax.random.key(1)))
    assert (out_same[0] != out_same[1]).any()  # same weights, different members: own masks


# S4 -- Flax linen: a model with dropout needed a separate 'dropout' key stream at apply time,
# forgetting it failed, reusing it repeated masks. In stoax building needs one parameter key and
# the forward pass one key, from which every layer's key is derived.
def test_s4_one_key_to_build_one_key_to_run(impl):
    model = mlp()  # built from a single parameter key
    assert not any(keys.is_key(leaf) for leaf in jax.tree.leaves(model))  # no RNG state held

    forward = jax.jit(lambda m, x, k: m(x, key=k))
    with pytest.raises(MissingKeyError, match="Dropout"):
        forward(model, X, None)
    with pytest.raises(MissingKeyError, match="eval_mode"):
        model(X)

    a, b, c = jax.device_get([forward(model, X, stoax.step_key(0, s)) for s in (5, 5, 6)])
    np.testing.assert_array_equal(a, b)  # reproducible
    assert (a != c).any()  # a new step, new masks
    evaluation = stoax.eval_mode(model)
    np.testing.assert_array_equal(jax.jit(evaluation)(X), forward(evaluation, X, None))
