"""The module system as a user relies on it (issue 2): plain JAX transforms and optax on models
holding Python floats and callables, trainable vs. non-trainable arrays, repr, equality, editing,
mixed containers, and the Equinox/Flax pitfalls of seeds S0 and S3.

Speed: random draws compile slowly outside ``jax.jit`` (threefry per shape), so models are built
by jitted constructors of a few fixed shapes, and inputs are NumPy arrays.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stoax
from stoax.nn import MLP, Dropout, Linear, Sequential


class Scaled(stoax.Module):
    """A user module mixing an array, a Python float, a callable and a string."""

    weight: jax.Array
    rate: float = 0.25
    act: object = jax.nn.relu
    name: str = "scaled"

    def __call__(self, x, *, key=None):
        return self.act(x @ self.weight) * self.rate


class Holder(stoax.Module):
    """A module whose fields hold mixed containers."""

    layers: tuple
    table: dict


def _leaves_with_none(tree):
    return jax.tree.leaves(tree, is_leaf=lambda x: x is None)


def _keys(n, seed=0):
    """``n`` keys with no threefry compilation (seeding is cheap, splitting is not)."""
    return jax.vmap(jax.random.key)(jnp.arange(seed, seed + n))


_make_mlp = jax.jit(lambda key: MLP(3, 2, hidden=(5,), dropout=0.5, key=key))
_make_linear = jax.jit(lambda key: Linear(3, 3, key=key))
_make_ensemble = jax.jit(jax.vmap(_make_mlp))


@pytest.fixture(scope="module")
def mlp():
    return _make_mlp(jax.random.key(0))


@pytest.fixture(scope="module")
def ensemble():
    """Three MLPs made by vmapping the constructor over keys 10, 11, 12."""
    return _make_ensemble(_keys(3, seed=10))


X = np.ones((4, 3), np.float32)


# --- plain jax.jit / grad / vmap / optax -------------------------------------------------------


def test_jit_keeps_python_float_and_callable_static():
    model = Scaled(np.ones((3, 2), np.float32))
    seen = {}

    @jax.jit
    def f(m, x):
        seen["rate"], seen["act"], seen["name"] = m.rate, m.act, m.name
        return m(x)

    y = f(model, np.ones(3, np.float32))
    assert type(seen["rate"]) is float and seen["rate"] == 0.25
    assert seen["act"] is jax.nn.relu and seen["name"] == "scaled"
    np.testing.assert_allclose(y, [0.75, 0.75])
    assert jax.tree.leaves(model) == [model.weight]  # the float is no leaf


def test_jit_retraces_on_a_changed_static_float_and_caches_an_equal_one():
    traces = []

    @jax.jit
    def f(m, x):
        traces.append(m.rate)
        return m(x)

    model = Scaled(np.ones((3, 2), np.float32))
    f(model, X)
    f(model.replace(weight=np.zeros((3, 2), np.float32)), X)  # same statics: cached
    y = f(model.replace(rate=0.5), X)  # a new static value: retraced, not stale
    assert traces == [0.25, 0.5]
    np.testing.assert_allclose(y, 1.5)


def test_constructors_can_be_jitted(mlp):
    assert type(mlp) is MLP and mlp.activation is jax.nn.gelu
    assert type(mlp.dropouts[0].rate) is float and mlp.dropouts[0].training is True


def test_grad_wrt_model_is_model_shaped_and_optax_updates_it(mlp):
    opt = optax.adam(1e-2)

    def loss(m):
        return jnp.sum(stoax.eval_mode(m)(X) ** 2)

    @jax.jit
    def step(m, state):
        value, grads = jax.value_and_grad(loss)(m)
        updates, state = opt.update(grads, state, m)
        return optax.apply_updates(m, updates), state, grads, value

    state = opt.init(mlp)
    assert None not in _leaves_with_none(state)  # seed S3: no None for the float rate
    assert state[0].mu.dropouts[0].rate == 0.5  # moments are models with the same statics
    new, state, grads, before = step(mlp, state)
    assert type(grads) is MLP
    assert jax.tree.structure(grads) == jax.tree.structure(mlp)
    assert type(grads.dropouts[0].rate) is float and grads.activation is jax.nn.gelu
    assert type(new) is MLP and type(new.dropouts[0].rate) is float
    assert None not in _leaves_with_none(state)
    assert step(new, state)[3] < before


def test_grad_wrt_partitioned_params_and_optax():
    model = Sequential([_make_linear(jax.random.key(0)), jax.nn.tanh, Dropout(0.2)])
    params, rest = stoax.partition(model)
    opt = optax.sgd(0.1)

    def loss(p, key):
        return jnp.mean(stoax.combine(p, rest)(X, key=key) ** 2)

    @jax.jit
    def step(p, state, key):
        grads = jax.grad(loss)(p, key)
        updates, state = opt.update(grads, state, p)
        return optax.apply_updates(p, updates), grads

    new_params, grads = step(params, opt.init(params), jax.random.key(1))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert type(grads) is Sequential and grads.layers[1] is jax.nn.tanh
    new = stoax.combine(new_params, rest)
    assert type(new) is Sequential and new.layers[2].rate == 0.2
    assert not np.array_equal(new.layers[0].weight, model.layers[0].weight)


def test_vmap_over_constructor_builds_an_ensemble_with_shared_statics(ensemble):
    assert ensemble.layers[0].weight.shape == (3, 3, 5)
    assert ensemble.activation is jax.nn.gelu and ensemble.dropouts[0].rate == 0.5
    out = jax.jit(jax.vmap(lambda m: stoax.eval_mode(m)(X)))(ensemble)
    assert out.shape == (3, 4, 2)
    member = jax.tree.map(lambda a: a[1], ensemble)
    assert member == _make_mlp(jax.random.key(11))
    np.testing.assert_allclose(out[1], jax.jit(stoax.eval_mode(member))(X), rtol=1e-6)


def test_array_hyperparameter_is_a_traced_leaf_and_vmappable_over_a_sweep():
    drop = Dropout(jnp.asarray(0.3))
    assert jax.tree.leaves(drop) == [drop.rate]

    @jax.jit
    def rate_of(m):
        assert isinstance(m.rate, jax.core.Tracer)
        return m.rate * 1

    assert float(rate_of(drop)) == pytest.approx(0.3)

    @jax.jit
    def sweep(rates, keys):
        models = jax.vmap(Dropout)(rates)  # one Dropout per rate, built inside the transform
        assert models.rate.shape == (3,)
        return jax.vmap(lambda m, k: m(jnp.ones(1000), key=k))(models, keys)

    out = sweep(np.array([0.0, 0.5, 1.0], np.float32), _keys(3))
    np.testing.assert_array_equal(out[0], 1.0)  # rate 0 keeps everything
    np.testing.assert_array_equal(out[2], 0.0)  # rate 1 drops everything
    assert 0.4 < float(np.mean(out[1] == 0)) < 0.6


def test_array_hyperparameter_is_not_trainable_and_optimisers_leave_it_alone():
    rate = jnp.asarray(0.1)
    model = Sequential([_make_linear(jax.random.key(0)), Dropout(rate)])
    params, rest = stoax.partition(model)
    assert params.layers[1].rate is None and rest.layers[1].rate is rate
    assert jax.tree.leaves(stoax.trainable(model)) == [True, True, False]

    def loss(m, key):  # a loss that does depend on the rate
        return jnp.sum(m(np.ones(3, np.float32), key=key)) + 10 * m.layers[1].rate

    # Through partition: the optimiser never sees the rate.
    opt = optax.adam(0.5)

    @jax.jit
    def step(p, key):
        grads = jax.grad(lambda p: loss(stoax.combine(p, rest), key))(p)
        updates, _ = opt.update(grads, opt.init(p), p)
        return optax.apply_updates(p, updates)

    new = stoax.combine(step(params, jax.random.key(1)), rest)
    assert new.layers[1].rate is rate
    assert not np.array_equal(new.layers[0].weight, model.layers[0].weight)

    # On the whole model, frozen by label. (A module is callable, so optax would call a
    # module-shaped label tree: pass a function that computes it.)
    labels = lambda m: jax.tree.map(lambda t: "train" if t else "freeze", stoax.trainable(m))
    opt = optax.multi_transform({"train": optax.adam(0.5), "freeze": optax.set_to_zero()}, labels)

    @jax.jit
    def whole_step(m, key):
        grads = jax.grad(loss)(m, key)
        updates, _ = opt.update(grads, opt.init(m), m)
        return optax.apply_updates(m, updates), grads

    new, grads = whole_step(model, jax.random.key(2))
    assert float(grads.layers[1].rate) != 0.0  # the rate does have a gradient...
    assert float(new.layers[1].rate) == pytest.approx(0.1)  # ...that is never applied
    assert not np.array_equal(new.layers[0].weight, model.layers[0].weight)


def test_only_float_arrays_of_trainable_fields_are_trainable():
    class Mixed(stoax.Module):
        weight: jax.Array
        half: jax.Array
        step: jax.Array
        flag: jax.Array
        key: jax.Array
        buffer: jax.Array = stoax.field(trainable=False, default=None)

    m = Mixed(
        np.ones(2, np.float32),
        jnp.ones(2, jnp.bfloat16),
        np.zeros((), np.int32),
        np.asarray(True),
        jax.random.key(0),
        np.zeros(2, np.float32),
    )
    mask = stoax.trainable(m)
    flags = {f.name: getattr(mask, f.name) for f in dataclasses.fields(m)}
    assert flags == dict(weight=True, half=True, step=False, flag=False, key=False, buffer=False)
    params, rest = stoax.partition(m)
    assert [n for n in flags if getattr(params, n) is not None] == ["weight", "half"]
    assert [n for n in flags if getattr(rest, n) is not None] == ["step", "flag", "key", "buffer"]
    assert stoax.combine(params, rest) == m


# --- repr, equality, hashing, immutability, signatures ------------------------------------------


def test_repr_shows_fields_shapes_and_dtypes(mlp):
    m = Scaled(jnp.ones((3, 2), jnp.bfloat16))
    assert repr(m) == "Scaled(weight=bf16[3,2], rate=0.25, act=relu, name='scaled')"
    assert repr(_make_linear(jax.random.key(0))) == "Linear(weight=f32[3,3], bias=f32[3])"
    assert repr(mlp) == (
        "MLP(\n"
        "    layers=(Linear(weight=f32[3,5], bias=f32[5]), Linear(weight=f32[5,2], bias=f32[2])),\n"
        "    dropouts=(Dropout(rate=0.5, broadcast_dims=(), training=True),),\n"
        "    activation=gelu,\n"
        ")"
    )
    odd = Holder((np.zeros(3, np.int32), jax.random.key(2, impl="rbg")), {"a": 1})
    assert repr(odd) == "Holder(layers=(i32[3], key<rbg>[]), table=FrozenDict({'a': 1}))"


def test_equality_and_hash():
    a = _make_linear(jax.random.key(0))
    b = _make_linear(jax.random.key(0))
    assert a is not b and a == b and hash(a) == hash(b)
    assert a != a.replace(bias=a.bias + 1)  # a changed array
    assert a != _make_linear(jax.random.key(1))
    assert Scaled(a.weight) != Scaled(a.weight, rate=0.5)  # a changed static
    assert a != a.replace(bias=np.zeros(4, np.float32))  # a changed shape
    assert a != "Linear"
    assert len({a, b, Scaled(a.weight)}) == 2  # usable in sets and as dict keys
    unhashable_static = Holder((np.ones(1),), {"names": ["x", "y"]})
    assert hash(unhashable_static) == hash(Holder((np.ones(1),), {"names": ["x", "y"]}))
    assert unhashable_static == Holder((np.ones(1),), {"names": ["x", "y"]})


def test_assignment_is_refused_with_a_helpful_message():
    m = Scaled(np.ones((3, 2), np.float32))
    with pytest.raises(dataclasses.FrozenInstanceError, match=r"Scaled\.rate.*replace\(rate="):
        m.rate = 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        del m.weight
    assert m.rate == 0.25


def test_signature_of_a_module_class_is_its_init():
    import inspect

    assert list(inspect.signature(Linear).parameters) == [
        "in_features",
        "out_features",
        "use_bias",
        "key",
        "dtype",
        "kernel_init",
        "bias_init",
    ]
    assert list(inspect.signature(Scaled).parameters) == ["weight", "rate", "act", "name"]
    assert list(inspect.signature(Dropout(0.1)).parameters) == ["x", "key"]  # an instance: call


def test_replace_and_its_errors():
    m = Scaled(np.ones((3, 2), np.float32))
    m2 = m.replace(rate=0.5)
    assert m2.rate == 0.5 and m2.weight is m.weight and m.rate == 0.25
    with pytest.raises(TypeError, match=r"Scaled has no field \['rte'\].*'rate'"):
        m.replace(rte=0.5)
    lin = _make_linear(jax.random.key(0))  # a hand-written __init__
    assert lin.replace(bias=None).bias is None


def test_replace_at_nested_modules_tuples_and_dicts():
    inner = Sequential([Dropout(0.1), Scaled(np.ones((2, 2)))])
    model = Holder((inner, jax.nn.relu), {"w": np.zeros(2), "cfg": {"lr": 0.1}})
    assert stoax.replace_at(model, "layers[0].layers[0].rate", 0.3).layers[0].layers[0].rate == 0.3
    assert stoax.replace_at(model, "layers.0.layers.1.rate", 2.0).layers[0].layers[1].rate == 2.0
    assert stoax.replace_at(model, "layers[1]", jax.nn.tanh).layers[1] is jax.nn.tanh
    edited = stoax.replace_at(model, "table.cfg.lr", 0.01)
    assert edited.table == {"w": model.table["w"], "cfg": {"lr": 0.01}}
    assert model.table["cfg"]["lr"] == 0.1  # the original is untouched
    # A path as jax.tree_util.keystr writes it.
    assert stoax.replace_at(model, ".table['w']", np.ones(2)).table["w"].tolist() == [1.0, 1.0]
    with pytest.raises(KeyError, match=r"'layers\[5\]'.*does not exist"):
        stoax.replace_at(model, "layers[5]", None)
    with pytest.raises(KeyError, match="does not exist"):
        stoax.replace_at(model, "layers[0].nope", None)


def test_map_modules_visits_every_module_innermost_first():
    model = Sequential([Dropout(0.2), Sequential([Dropout(0.4)]), jax.nn.relu])
    visited = []

    def halve(m):
        visited.append(type(m).__name__)
        return m.replace(rate=m.rate / 2) if isinstance(m, Dropout) else m

    new = stoax.map_modules(halve, model)
    assert visited == ["Dropout", "Dropout", "Sequential", "Sequential"]
    assert new.layers[0].rate == 0.1 and new.layers[1].layers[0].rate == 0.2
    assert new.layers[2] is jax.nn.relu and model.layers[0].rate == 0.2


# --- mixed containers --------------------------------------------------------------------------


def test_mixed_containers_round_trip_through_tree_map_jit_and_paths():
    lin = _make_linear(jax.random.key(0))
    model = Holder((lin, jax.nn.relu, "note"), {"w": np.ones(3), "name": "t", "lr": 0.1})
    assert len(jax.tree.leaves(model)) == 3

    doubled = jax.tree.map(lambda a: 2 * a, model)
    assert doubled.layers[1] is jax.nn.relu and doubled.layers[2] == "note"
    assert doubled.table["name"] == "t" and doubled.table["lr"] == 0.1
    np.testing.assert_array_equal(doubled.table["w"], 2.0)

    seen = {}

    @jax.jit
    def f(m):
        seen["lr"], seen["act"] = m.table["lr"], m.layers[1]
        return m

    assert f(model) == model
    assert type(seen["lr"]) is float and seen["act"] is jax.nn.relu

    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(model)[0]]
    assert paths == [".layers[0].weight", ".layers[0].bias", ".table['w']"]
    leaves, treedef = jax.tree.flatten(model)
    assert jax.tree.unflatten(treedef, leaves) == model


# --- the Flax / Equinox pitfalls: seed S3 (and S0) ----------------------------------------------


def test_python_float_dropout_rate_under_jit_vmap_and_optax(mlp, ensemble):
    x = np.ones((8, 3), np.float32)
    rates = []

    @jax.jit
    def forward(m, x, step):
        rates.append(m.dropouts[0].rate)
        return m(x, key=stoax.step_key(0, step))

    a, b = forward(mlp, x, 1), forward(mlp, x, 2)
    assert type(rates[0]) is float and rates[0] == 0.5
    assert not np.array_equal(a, b)  # seed S0: a fresh mask for a fresh key, one compilation
    assert len(rates) == 1
    np.testing.assert_array_equal(a, forward(mlp, x, 1))

    out = jax.jit(jax.vmap(lambda m, k: m(x, key=k)))(ensemble, _keys(3, seed=20))
    assert out.shape == (3, 8, 2) and ensemble.dropouts[0].rate == 0.5

    opt = optax.adamw(1e-3)
    state = opt.init(mlp)
    assert None not in _leaves_with_none(state)

    @jax.jit
    def step(m, state, key):
        grads = jax.grad(lambda m: jnp.sum(m(x, key=key) ** 2))(m)
        updates, state = opt.update(grads, state, m)
        return optax.apply_updates(m, updates), state

    new, state = step(mlp, state, jax.random.key(3))
    assert type(new.dropouts[0].rate) is float and new.dropouts[0].rate == 0.5
    assert None not in _leaves_with_none((state, new))


# --- the role of a Python number in a field annotated jax.Array; stoax.field(converter=...) ------


class Gain(stoax.Module):
    """``scale`` is annotated as an array but defaults to a Python float (issue 19)."""

    scale: jax.Array = 1.0
    bias: jax.Array | None = None
    rate: float | jax.Array = 0.5  # a union that admits a Python float: it stays static

    def __call__(self, x, *, key=None):
        y = self.scale * x
        return y if self.bias is None else y + self.bias


def test_python_float_in_an_array_field_is_a_trainable_leaf_with_a_gradient():
    m = Gain()
    assert isinstance(m.scale, jax.Array) and m.scale.dtype == jnp.float32
    assert not m.scale.weak_type  # a definite dtype: the first optimiser update keeps it
    assert m.bias is None and type(m.rate) is float  # None and the union are left alone
    grads = jax.grad(lambda m: m(3.0))(m)
    assert float(grads.scale) == 3.0  # before issue 19: static, no gradient at all
    params, _ = stoax.partition(m)
    assert params.scale is not None  # the optimiser sees it

    opt = optax.sgd(0.1)
    new = optax.apply_updates(m, opt.update(grads, opt.init(m), m)[0])
    assert float(new.scale) == pytest.approx(0.7) and new.scale.dtype == jnp.float32


def test_array_field_converts_numbers_given_to_init_replace_and_replace_at():
    m = Gain(2, bias=[1.0, 2.0])
    assert m.scale.dtype == jnp.int32 and m.bias.tolist() == [1.0, 2.0]
    assert isinstance(m.replace(scale=0.5).scale, jax.Array)
    edited = stoax.replace_at(Sequential([m]), "layers[0].scale", 4.0)
    assert isinstance(edited.layers[0].scale, jax.Array) and float(edited.layers[0].scale) == 4.0
    # Rebuilding from leaves converts nothing: a tracer or a None hole stays as it is.
    assert jax.tree.map(lambda _: None, m).scale is None
    # vmap over a constructor: the converted leaf is batched like the other arrays.
    stacked = jax.vmap(lambda s: Gain(s, bias=1.0))(jnp.arange(3.0))
    assert stacked.scale.shape == (3,) and stacked.bias.shape == (3,)


def test_field_converter_runs_at_init_and_on_replaced_fields_before_check_init():
    calls = []

    def sorted_tuple(value):
        calls.append(value)
        return tuple(sorted(value))

    class Tags(stoax.Module):
        tags: tuple = stoax.field(converter=sorted_tuple, default=())
        weight: jax.Array = stoax.field(converter=lambda w: jnp.asarray(w) * 2, default=1.0)

        def __check_init__(self):
            assert isinstance(self.tags, tuple)  # __check_init__ sees the converted value

    t = Tags(["b", "a"])
    assert t.tags == ("a", "b") and float(t.weight) == 2.0  # the default is converted too
    calls.clear()
    t2 = t.replace(tags={"z", "y"})
    assert t2.tags == ("y", "z") and calls == [{"z", "y"}]  # only the replaced field
    assert float(t2.weight) == 2.0  # not converted again (no doubling)
    assert jax.tree.map(lambda w: w, t2) == t2  # rebuilt from leaves: no conversion

    class Own(stoax.Module):  # a hand-written __init__ gets the same conversion
        tags: tuple = stoax.field(converter=sorted_tuple)

        def __init__(self, *names):
            self.tags = list(names)

    assert Own("q", "p").tags == ("p", "q")
    with pytest.raises(TypeError, match="converter must be callable"):
        stoax.field(converter=3)
