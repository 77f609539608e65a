"""State as values: BatchNorm against Flax linen, state through containers, modes, jaxprs,
partitioning, the train step and an exact resume."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stoax
from stoax import train as st

F32 = dict(rtol=1e-5, atol=1e-5)  # float32 tolerance: one-pass vs two-pass variance


def _bitwise(a, b):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def _x(shape, seed=0, scale=3.0, shift=1.0):
    return jax.random.normal(jax.random.key(seed), shape) * scale + shift


# -- BatchNorm against Flax linen -----------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, axis, momentum, use_scale, use_bias",
    [((6, 5, 5, 3), -1, 0.9, True, True), ((8, 4, 7), 1, 0.99, False, True)],
)
def test_batchnorm_matches_flax_linen_over_training_steps_then_eval(
    shape, axis, momentum, use_scale, use_bias
):
    features = shape[axis]
    kw = dict(momentum=momentum, axis=axis, use_scale=use_scale, use_bias=use_bias)
    flax_bn = fnn.BatchNorm(use_running_average=False, epsilon=1e-5, **kw)
    variables = flax_bn.init(jax.random.key(1), _x(shape))
    params = {}
    if use_scale:
        params["scale"] = jnp.linspace(0.5, 2.0, features)
    if use_bias:
        params["bias"] = jnp.linspace(-1.0, 1.0, features)
    stats = variables["batch_stats"]
    bn = stoax.nn.BatchNorm(features, **kw)
    bn = bn.replace(scale=params.get("scale"), bias=params.get("bias"))
    step = jax.jit(lambda bn, x: stoax.apply(bn, x))
    for t in range(4):  # several training steps on shifting data
        x = _x(shape, seed=t, scale=1.0 + t, shift=float(t))
        y_flax, upd = flax_bn.apply(
            {"params": params, "batch_stats": stats}, x, mutable=["batch_stats"]
        )
        stats = upd["batch_stats"]
        y, bn = step(bn, x)
        np.testing.assert_allclose(y, y_flax, **F32)
        np.testing.assert_allclose(bn.running_mean, stats["mean"], **F32)
        np.testing.assert_allclose(bn.running_var, stats["var"], **F32)
    x = _x(shape, seed=9)
    flax_eval = fnn.BatchNorm(use_running_average=True, epsilon=1e-5, **kw)
    y_flax = flax_eval.apply({"params": params, "batch_stats": stats}, x)
    y_eval, same = stoax.apply(stoax.eval_mode(bn), x)
    np.testing.assert_allclose(y_eval, y_flax, **F32)
    assert same.running_mean is stoax.eval_mode(bn).running_mean or same == stoax.eval_mode(bn)


def test_batchnorm_call_gives_the_output_and_keeps_the_layer():
    bn = stoax.nn.BatchNorm(3)
    x = _x((4, 3))
    y, updated = stoax.apply(bn, x)
    np.testing.assert_array_equal(bn(x), y)
    assert not np.array_equal(updated.running_mean, bn.running_mean)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-5)


def test_batchnorm_keeps_low_precision_dtypes_with_float32_statistics():
    bn = stoax.nn.BatchNorm(3)
    y, bn2 = stoax.apply(bn, _x((16, 3)).astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16 and bn2.running_mean.dtype == jnp.float32


def test_batchnorm_errors_name_the_layer_and_say_what_to_do():
    model = stoax.nn.Sequential([stoax.nn.Identity(), stoax.nn.BatchNorm(4)])
    with pytest.raises(ValueError, match=r"Sequential.layers\[1\].*expected features = 4"):
        stoax.apply(model, jnp.ones((2, 3)))
    with pytest.raises(ValueError, match="has none. Give it a batch axis"):
        stoax.apply(stoax.nn.BatchNorm(4), jnp.ones(4))
    with pytest.raises(ValueError, match="momentum must be in"):
        stoax.nn.BatchNorm(4, momentum=1.0)
    # a single example is fine in evaluation mode
    assert stoax.eval_mode(stoax.nn.BatchNorm(4))(jnp.ones(4)).shape == (4,)


def test_batchnorm_cross_device_statistics_with_a_named_axis():
    # Four "devices" (a vmapped named axis) each hold a quarter of the batch: with axis_name the
    # statistics are those of the whole batch, exactly what one BatchNorm on it computes.
    x = _x((4, 8, 3))
    bn = stoax.nn.BatchNorm(3, momentum=0.8, axis_name="data")
    ys, bns = jax.vmap(lambda x: stoax.apply(bn, x), axis_name="data")(x)
    y_full, bn_full = stoax.apply(bn.replace(axis_name=None), x.reshape(32, 3))
    np.testing.assert_allclose(ys.reshape(32, 3), y_full, **F32)
    for i in range(4):  # every device holds the same, global, running statistics
        np.testing.assert_allclose(bns.running_mean[i], bn_full.running_mean, **F32)
        np.testing.assert_allclose(bns.running_var[i], bn_full.running_var, **F32)


def test_batchnorm_statistics_on_a_mesh_are_those_of_the_global_batch():
    # 8 simulated devices in a subprocess (tests/sharding_cases/batch_norm.py).
    from test_sharding import run_case

    out = run_case("batch_norm.py")
    assert out["devices"] == 8
    assert out["shard_map"] < 1e-5  # shard_map + axis_name: global statistics on every device
    assert out["jit_sharded"] < 1e-5  # plain jit, sharded batch: XLA reduces globally
    assert out["output_sharded_on_data"] is True  # and the output stays sharded
    assert out["shard_map_without_axis_name"] > 0.01  # without the name: local statistics


# -- modes: a traced flag in lax.scan, a static flag compiles the update away --------------------


def test_static_eval_mode_leaves_no_statistics_update_in_the_jaxpr():
    bn = stoax.nn.BatchNorm(3)
    x = _x((8, 3))
    train_jaxpr = jax.make_jaxpr(lambda m, x: stoax.apply(m, x))(bn, x).jaxpr
    eval_jaxpr = jax.make_jaxpr(lambda m, x: stoax.apply(m, x))(stoax.eval_mode(bn), x).jaxpr
    prims = lambda j: [e.primitive.name for e in j.eqns]
    assert "reduce_sum" in prims(train_jaxpr)  # batch statistics computed in training
    assert "reduce_sum" not in prims(eval_jaxpr)  # no statistics at all in evaluation
    # the returned running statistics are the inputs themselves: no update equation
    in_vars = eval_jaxpr.invars
    leaves = jax.tree.leaves(stoax.eval_mode(bn))
    assert len(in_vars) == len(leaves) + 1
    assert all(v in in_vars for v in eval_jaxpr.outvars[1:])
    # the same through containers: an evaluation Stack of BatchNorm blocks computes no statistics
    stack = stoax.eval_mode(stoax.nn.Stack.build(_block, 2, key=jax.random.key(0)))
    text = str(jax.make_jaxpr(lambda m, x: stoax.apply(m, x))(stack, _x((8, 4))))
    assert "reduce_sum" not in text and "scan" in text


def test_traced_mode_flag_inside_lax_scan_switches_statistics_in_one_program():
    bn = stoax.nn.BatchNorm(3, momentum=0.5)
    xs = _x((4, 8, 3))
    flags = jnp.array([True, False, True, False])

    def body(bn, inputs):
        flag, x = inputs
        y, bn = stoax.apply(stoax.set_mode(bn, flag), x)
        return stoax.set_mode(bn, True), y

    run = jax.jit(lambda bn, flags, xs: jax.lax.scan(body, bn, (flags, xs)))
    final, ys = run(bn, flags, xs)
    # the same steps with static flags, one at a time
    m = bn
    for t, flag in enumerate([True, False, True, False]):
        y, m = stoax.apply(stoax.set_mode(m, flag), xs[t])
        m = stoax.set_mode(m, True)
        np.testing.assert_allclose(ys[t], y, **F32)
    np.testing.assert_allclose(final.running_mean, m.running_mean, **F32)
    np.testing.assert_allclose(final.running_var, m.running_var, **F32)
    # evaluation steps left the statistics alone: two updates happened, not four
    assert not np.allclose(ys[1].mean(0), 0.0, atol=1e-3)  # step 1 used running averages


# -- containers: per-layer, per-member state, bitwise the Python loop -----------------------------


def _block(key):
    return stoax.nn.Sequential(
        [stoax.nn.Linear(4, 4, key=key), stoax.nn.BatchNorm(4), jax.nn.relu, stoax.nn.Dropout(0.2)]
    )


def _stack_loop(stack, h, key):
    layers = []
    for i, layer in enumerate(stack):
        h, layer = stoax.apply(layer, h, key=stoax.keys.child(key, i))
        layers.append(layer)
    return h, layers


def _ensemble_loop(ens, xs, key):
    outs = [stoax.apply(m, xs[i], key=stoax.keys.child(key, i)) for i, m in enumerate(ens)]
    return jnp.stack([o[0] for o in outs]), [o[1] for o in outs]


# One compiled program holds both sides (as in test_stack.py / test_ensemble.py).
both = jax.jit(lambda c, x, k, loop: (stoax.apply(c, x, key=k), loop(c, x, k)), static_argnums=3)


def test_stack_keeps_one_state_per_layer_bitwise_equal_to_the_python_loop():
    stack = stoax.nn.Stack.build(_block, 3, key=jax.random.key(0))
    x, key = _x((6, 4)), jax.random.key(1)
    (y, new), (y_loop, layers) = both(stack, x, key, _stack_loop)
    _bitwise(y, y_loop)
    for i in range(3):
        _bitwise(new[i], layers[i])
    means = [new[i].layers[1].running_mean for i in range(3)]
    assert not np.array_equal(means[0], means[1])  # one set of statistics per layer
    # rematerialised layers: the same output and state
    remat = jax.jit(lambda s, x, k: stoax.apply(s, x, key=k))(stack.replace(remat=True), x, key)
    _bitwise(remat, (y, new.replace(remat=True)))


def test_ensemble_keeps_one_state_per_member_bitwise_equal_to_the_python_loop():
    ens = stoax.nn.Ensemble.build(_block, 3, key=jax.random.key(0), in_axes=0)
    xs, key = jnp.stack([_x((6, 4), seed=s, shift=float(s)) for s in range(3)]), jax.random.key(2)
    (ys, new), (ys_loop, members) = both(ens, xs, key, _ensemble_loop)
    _bitwise(ys, ys_loop)
    for i in range(3):
        _bitwise(new[i], members[i])
    m0, m1 = new[0].layers[1].running_mean, new[1].layers[1].running_mean
    assert not np.allclose(m0, m1)  # different data per member => different statistics


def test_stoax_scan_carries_a_stateful_model_like_the_python_loop():
    # A model in the scan's carry: its statistics evolve step by step. Outputs are bitwise the
    # loop's; the running averages agree to the last bit or one: XLA fuses the unrolled loop's
    # multiply-adds of consecutive steps differently from the scan body's (an FMA or not).
    model = stoax.nn.Sequential([stoax.nn.BatchNorm(3, momentum=0.7), stoax.nn.Dropout(0.3)])
    xs, key = _x((5, 4, 3)), jax.random.key(3)

    def step(model, x, *, key):
        y, model = stoax.apply(model, x, key=key)
        return model, y

    def loop(model, xs, key):
        outs = []
        for t in range(5):
            model, y = step(model, xs[t], key=stoax.keys.child(key, t))
            outs.append(y)
        return model, jnp.stack(outs)

    scan = lambda m, xs, k: stoax.scan(step, m, xs, key=k)
    (final, ys), (final_loop, ys_loop) = jax.jit(lambda *a: (scan(*a), loop(*a)))(model, xs, key)
    _bitwise(ys, ys_loop)
    for a, b in zip(jax.tree.leaves(final), jax.tree.leaves(final_loop), strict=True):
        np.testing.assert_array_max_ulp(a, b, maxulp=1)
    assert not np.array_equal(final.layers[0].running_mean, model.layers[0].running_mean)


# -- partition, errors -----------------------------------------------------------------------------


def test_state_is_never_a_parameter():
    bn = stoax.nn.BatchNorm(3)
    params, rest = stoax.partition(bn)
    assert params.running_mean is None and params.running_var is None
    assert rest.running_mean is not None and params.scale is not None
    assert stoax.has_state(stoax.nn.Sequential([bn])) and not stoax.has_state(stoax.nn.Identity())


class _NoApply(stoax.Module):
    bn: stoax.nn.BatchNorm

    def __call__(self, x, *, key=None):
        return self.bn(x)


class _WithApply(stoax.Module):
    bn: stoax.nn.BatchNorm
    head: stoax.nn.Linear

    def apply(self, x, *, key=None):
        h, bn = stoax.apply(self.bn, x)
        return self.head(h), self.replace(bn=bn)

    def __call__(self, x, *, key=None):
        return self.apply(x, key=key)[0]


def test_a_module_holding_state_without_apply_is_refused_with_a_recipe():
    with pytest.raises(stoax.StateError, match=r"_NoApply holds stateful layers \(BatchNorm\)"):
        stoax.apply(_NoApply(stoax.nn.BatchNorm(2)), jnp.ones((3, 2)))
    model = _WithApply(stoax.nn.BatchNorm(2), stoax.nn.Linear(2, 1, key=jax.random.key(0)))
    y, new = stoax.apply(model, _x((3, 2)))
    assert y.shape == (3, 1) and not np.array_equal(new.bn.running_var, model.bn.running_var)


class _BadApply(stoax.Module):
    bn: stoax.nn.BatchNorm

    def apply(self, x, *, key=None):
        return stoax.apply(self.bn, x)  # the child, not the updated module


def test_an_apply_that_returns_something_else_is_refused():
    with pytest.raises(stoax.StateError, match=r"must return \(output, updated _BadApply\)"):
        stoax.apply(_BadApply(stoax.nn.BatchNorm(2)), jnp.ones((3, 2)))


def test_train_step_refuses_a_loss_that_drops_the_state():
    tx = optax.sgd(0.1)
    model = stoax.nn.Sequential(
        [stoax.nn.Linear(2, 3, key=jax.random.key(0)), _NoApply(stoax.nn.BatchNorm(3))]
    )

    def loss(model, batch, *, key):
        return model(batch["x"], key=key).sum(), {}

    step = st.make_train_step(loss, tx, seed=0)
    with pytest.raises(stoax.StateError, match="returned \\(loss, metrics\\) only"):
        step(st.TrainState.create(model, tx), {"x": jnp.ones((4, 2))})


# -- training: the state is kept, checkpointed and resumed exactly --------------------------------


def _data(n=40):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 6)).astype(np.float32) * 2 + 1
    return {"x": x, "y": (x[:, 0] > 1).astype(np.int32)}


def _bn_model():
    k1, k2 = stoax.keys.derive(jax.random.key(0), "a", "b")
    return stoax.nn.Sequential(
        [
            stoax.nn.Linear(6, 8, key=k1),
            stoax.nn.BatchNorm(8, momentum=0.8),
            jax.nn.relu,
            stoax.nn.Dropout(0.2),
            stoax.nn.Linear(8, 2, key=k2),
        ]
    )


TX = optax.adam(1e-2)


def _fit(state, epochs, **kwargs):
    return st.fit(
        state,
        TX,
        st.classification_loss,
        _data(),
        seed=5,
        epochs=epochs,
        batch_size=8,
        eval_data={"train": _data()},
        progress=False,
        **kwargs,
    )


def test_train_step_updates_running_statistics_and_the_optimiser_never_sees_them():
    state = st.TrainState.create(_bn_model(), TX)
    assert state.params.layers[1].running_mean is None  # not a parameter, no Adam moments
    new, _ = st.make_train_step(st.classification_loss, TX, seed=0)(state, _data(8))
    assert not np.array_equal(new.rest.layers[1].running_mean, state.rest.layers[1].running_mean)


def test_resume_with_batchnorm_is_bitwise_the_uninterrupted_run(tmp_path):
    straight, straight_hist = _fit(st.TrainState.create(_bn_model(), TX), epochs=3)
    first, _ = _fit(st.TrainState.create(_bn_model(), TX), epochs=1)
    path = st.save_checkpoint(tmp_path / "bn.safetensors", first)
    restored, _ = st.load_checkpoint(path, st.TrainState.create(_bn_model(), TX))
    _bitwise(restored.rest, first.rest)  # the running statistics are in the checkpoint
    resumed, resumed_hist = _fit(restored, epochs=3)
    _bitwise(resumed, straight)
    assert resumed_hist == straight_hist[1:]
    assert not np.array_equal(straight.rest.layers[1].running_var, np.ones(8, np.float32))
