"""Construction and edits share one validation path, static fields are frozen, and the library's
former crashes are errors that name the layer, the argument and what to do."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax.nn import (
    Conv,
    Dropout,
    DropPath,
    Embedding,
    Ensemble,
    GaussianNoise,
    Linear,
    MultiHeadAttention,
    Sequential,
    Stack,
    TransformerBlock,
    TransformerEncoder,
)


def K() -> jax.Array:  # a fresh key per use: the suite runs with jax_debug_key_reuse
    return jax.random.key(0)


# -- item 9: one validation path for construction and edits ----------------------------------


def test_replace_runs_the_constructor_checks():
    with pytest.raises(ValueError, match=r"Dropout: rate must be in \[0, 1\].*got 7.0"):
        Dropout(0.1).replace(rate=7.0)
    with pytest.raises(TypeError, match="Dropout: training must be a Python bool.*got 'no'"):
        Dropout(0.1).replace(training="no")
    with pytest.raises(TypeError, match="broadcast_dims must be a tuple of axes"):
        Dropout(0.1).replace(broadcast_dims="ab")
    with pytest.raises(ValueError, match="GaussianNoise: stddev must be a finite number >= 0"):
        GaussianNoise(0.1).replace(stddev=-1.0)
    model = Sequential([Dropout(0.1), DropPath(0.1)])
    with pytest.raises(ValueError, match=r"DropPath: rate must be in \[0, 1\].*got 2.0"):
        stoax.replace_at(model, "layers[1].rate", 2.0)
    with pytest.raises(TypeError, match="stoax.set_mode: training must be a Python bool"):
        stoax.set_mode(model, jnp.asarray([True, False]))  # not a scalar flag
    with pytest.raises(TypeError, match="Stack: remat must be True, False or a jax.checkpoint"):
        Stack.build(lambda k: Linear(2, 2, key=k), 2, key=K()).replace(remat="yes")
    with pytest.raises(TypeError, match=r"Sequential: layers\[1\] is 3, which is not callable"):
        model.replace(layers=[Dropout(0.1), 3])
    assert Sequential(d for d in [Dropout(0.1)]).layers[0].rate == 0.1  # any iterable
    # Normalisation runs on edits too: a Python int rate becomes a float, an int axis a tuple.
    edited = Dropout(0.1).replace(rate=1, broadcast_dims=0)
    assert edited.rate == 1.0 and type(edited.rate) is float and edited.broadcast_dims == (0,)


def test_check_init_hook_for_user_modules():
    class Positive(stoax.Module):
        scale: float

        def __check_init__(self):
            if not self.scale > 0:
                raise ValueError(f"Positive: scale must be > 0, got {self.scale}")
            self.scale = float(self.scale)

    assert Positive(2).scale == 2.0
    with pytest.raises(ValueError, match="scale must be > 0, got -1"):
        Positive(-1)
    with pytest.raises(ValueError, match="scale must be > 0, got 0"):
        Positive(1).replace(scale=0)
    # Rebuilding from leaves (jax.tree.map, jit) runs no check: holes and tracers are fine.
    assert jax.tree.map(lambda x: x, Positive(3)).scale == 3.0


# -- item 13: containers in static fields are frozen -----------------------------------------


class Configured(stoax.Module):
    config: dict
    sizes: list

    def __call__(self, x):
        return x * self.config["scale"] + len(self.sizes)


def test_static_containers_frozen_so_jit_never_goes_stale():
    config, sizes = {"scale": 2.0, "nested": [1, {"a": [2]}]}, [1, 2]
    m = Configured(config, sizes)
    f = jax.jit(lambda m, x: m(x))
    assert float(f(m, 1.0)) == 4.0
    # The probe: mutating the dict after a jit call gave a stale compiled result.
    config["scale"] = 3.0
    sizes.append(3)
    assert float(f(m, 1.0)) == float(m(1.0)) == 4.0  # the module did not change
    assert float(f(Configured(config, sizes), 1.0)) == 6.0  # a new module, a new program
    assert isinstance(m.config, stoax.FrozenDict) and isinstance(m.sizes, tuple)
    assert m.config["nested"] == (1, stoax.FrozenDict({"a": (2,)}))
    with pytest.raises(TypeError):
        m.config["scale"] = 5.0  # type: ignore[index]
    # Equal modules are equal programs: equal values, equal hashes, one compiled function.
    a, b = Configured({"scale": 1.0}, [1]), Configured({"scale": 1.0}, (1,))
    assert a == b and hash(a) == hash(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    # replace freezes too.
    assert isinstance(a.replace(sizes=[4]).sizes, tuple)


def test_ensemble_in_axes_dict_still_works_after_freezing():
    ens = Ensemble.build(lambda k: Linear(3, 1, key=k), 2, key=K(), in_axes={"a": 0})

    class Wrap(stoax.Module):
        layer: Linear

        def __call__(self, x, *, key=None):
            return self.layer(x["a"])

    ens = Ensemble(Wrap(ens.members), size=2, in_axes={"a": 0})
    assert isinstance(ens.in_axes, stoax.FrozenDict)
    assert ens({"a": jnp.ones((2, 5, 3))}).shape == (2, 5, 1)


# -- item 14: GaussianNoise refuses inf and NaN ----------------------------------------------


@pytest.mark.parametrize("stddev", [float("inf"), float("nan"), np.asarray([1.0, np.inf])])
def test_gaussian_noise_refuses_non_finite_stddev(stddev):
    with pytest.raises(ValueError, match="GaussianNoise: .*stddev must be (a )?finite"):
        GaussianNoise(stddev)


# -- crashes that are now clear errors -------------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_attention_and_transformer_on_an_empty_batch_return_empty_outputs(training):
    # Was a ZeroDivisionError (a reshape with -1 on a zero-size array).
    attn = stoax.set_mode(MultiHeadAttention(8, 2, dropout=0.1, key=K()), training)
    block = stoax.set_mode(TransformerBlock(8, 2, drop_path=0.1, key=K()), training)
    enc = stoax.set_mode(
        TransformerEncoder(10, 3, features=8, num_heads=2, num_layers=1, max_len=4, key=K()),
        training,
    )
    key = jax.random.key(1) if training else None
    assert attn(jnp.ones((0, 5, 8)), key=key).shape == (0, 5, 8)
    assert block(jnp.ones((0, 5, 8)), key=key).shape == (0, 5, 8)
    assert enc(jnp.zeros((0, 4), jnp.int32), key=key).shape == (0, 4, 3)


def test_attention_input_and_mask_checks_name_the_layer():
    model = Sequential([MultiHeadAttention(8, 2, key=K())])
    with pytest.raises(
        ValueError, match=r"Sequential\.layers\[0\].*query must have shape \(\.\.\., length, "
    ):
        model(jnp.ones(8))
    attn = MultiHeadAttention(8, 2, key=K())
    with pytest.raises(
        ValueError,
        match=r"mask of shape \(4, 1, 5, 5\) does not broadcast to.*"
        r"\(3, 2, 5, 5\)",
    ):
        attn(jnp.ones((3, 5, 8)), mask=jnp.ones((4, 1, 5, 5), bool))
    with pytest.raises(ValueError, match="qkv_features must be a positive int, got 0"):
        MultiHeadAttention(8, 2, qkv_features=0, key=K())
    # A mask that broadcasts is still fine.
    assert attn(jnp.ones((3, 5, 8)), mask=jnp.ones((3, 1, 5, 5), bool)).shape == (3, 5, 8)


@pytest.mark.parametrize(
    ("make", "error", "words"),
    [
        (
            lambda: Linear(0, 2, key=K()),
            ValueError,
            "Linear: in_features must be a positive int, got 0",
        ),
        (
            lambda: Linear(3, -1, key=K()),
            ValueError,
            "Linear: out_features must be a positive int, got -1",
        ),
        (lambda: Linear(3, 2, key=None), TypeError, r"Linear\(key=\.\.\.\): got key=None"),
        (
            lambda: Linear(3.5, 2, key=K()),
            ValueError,
            "in_features must be a positive int, got 3.5",
        ),
        (lambda: Conv(3, 4, 3, key=None), TypeError, r"Conv\(key=\.\.\.\): got key=None"),
        (lambda: Embedding(5, 4, key=None), TypeError, r"Embedding\(key=\.\.\.\): got key=None"),
        (
            lambda: Sequential([3]),
            TypeError,
            r"Sequential: layers\[0\] is 3, which is not callable",
        ),
        (lambda: Sequential(Linear(2, 2, key=K())), TypeError, "layers must be a list of layers"),
        (
            lambda: Stack.build(lambda k: Linear(2, 2, key=k), 2, key=K(), remat="yes"),
            TypeError,
            "Stack: remat must be True, False or a jax.checkpoint policy.*got 'yes'",
        ),
        (
            lambda: TransformerEncoder(10, 3, features=8, num_heads=2, remat="yes", key=K()),
            TypeError,
            "TransformerEncoder: remat must be",
        ),
    ],
)
def test_constructors_refuse_bad_arguments(make, error, words):
    with pytest.raises(error, match=words):
        make()


def test_linear_input_checks():
    model = Sequential([Linear(3, 2, key=K())])
    with pytest.raises(ValueError, match=r"Sequential\.layers\[0\].*got a scalar.*x\[None\]"):
        model(jnp.float32(1.0))
    with pytest.raises(TypeError, match=r"Linear\(.*\): input must be an array.*got a list"):
        Linear(3, 2, key=K())([1.0, 2.0, 3.0])


def test_remat_true_or_policy_still_accepted():
    stack = Stack.build(lambda k: Linear(2, 2, key=k), 2, key=K(), remat=True)
    policy = jax.checkpoint_policies.dots_with_no_batch_dims_saveable
    assert stack.replace(remat=policy).remat is policy
    g = jax.grad(lambda s: s(jnp.ones(2)).sum())(stack)
    assert g.layers.weight.shape == (2, 2, 2)


def test_scan_with_a_scalar_leaf_in_xs():
    with pytest.raises(ValueError, match=r"stoax\.scan: .*xs\['b'\] is a scalar"):
        stoax.scan(lambda c, x, key: (c, x), 0.0, {"a": jnp.ones(3), "b": 1.0}, key=None)
    with pytest.raises(TypeError, match="stoax.scan: remat must be"):
        stoax.scan(lambda c, x, key: (c, x), 0.0, jnp.ones(3), key=None, remat="yes")


def test_replace_at_inside_an_array_and_missing_paths():
    lin = Linear(3, 2, key=K())
    model = Sequential([lin, lin])
    with pytest.raises(
        TypeError,
        match=r"path 'layers\[1\]\.weight\[0\]' goes inside the array at 'layers\[1\]\.weight' "
        r"\(shape \(3, 2\)\).*\.at\[\.\.\.\]\.set",
    ):
        stoax.replace_at(model, "layers[1].weight[0]", 0.5)
    with pytest.raises(KeyError, match="has no 'nope'"):
        stoax.replace_at(model, "layers[0].nope", 0.5)
    with pytest.raises(TypeError, match="path must be a str"):
        stoax.replace_at(model, ["layers", 0], 0.5)
    new = stoax.replace_at(model, "layers[1].weight", lin.weight.at[0].set(0.5))
    assert (new.layers[1].weight[0] == 0.5).all()


def test_combine_checks():
    model = Sequential([Linear(3, 2, key=K()), Dropout(jnp.asarray(0.1))])
    params, rest = stoax.partition(model)
    assert stoax.combine(params, rest) == model
    with pytest.raises(
        ValueError,
        match=r"still holes \(None\): \.layers\[0\]\.weight.*"
        r"stoax\.combine\(params, rest\)",
    ):
        stoax.combine(rest)
    with pytest.raises(TypeError, match=r"combine needs the trees to merge"):
        stoax.combine()
    other = stoax.partition(Sequential([Linear(3, 2, key=K())]))[1]
    with pytest.raises(ValueError, match="tree 1 does not have the structure of tree 0"):
        stoax.combine(params, other)
    # Plain pytrees with holes stay allowed (combine is a generic merge there).
    assert stoax.combine({"a": None, "b": 1}, {"a": 2, "b": None}) == {"a": 2, "b": 1}


def test_ensemble_wrong_leading_size():
    ens = Ensemble.build(lambda k: Linear(3, 1, key=k), 5, key=K(), in_axes=0)
    with pytest.raises(
        ValueError,
        match=r"Ensemble of 5 members with in_axes=0: .*must have size 5; got x of shape "
        r"\(4, 7, 3\)",
    ):
        ens(jnp.ones((4, 7, 3)))
    assert ens(jnp.ones((5, 7, 3))).shape == (5, 7, 1)


def test_layer_value_errors_name_the_layer_path():
    conv = Sequential([Conv(3, 4, 3, key=K())])
    with pytest.raises(ValueError, match=r"Sequential\.layers\[0\] \(Conv.*channels-last"):
        conv(jnp.ones((5, 2)))

    class Tied(stoax.Module):
        embed: Embedding

        def __call__(self, x, *, key=None):
            return self.embed.attend(x)

    with pytest.raises(ValueError, match=r"Embedding\(.*\)\.attend: the input's last axis"):
        Tied(Embedding(10, 4, key=K()))(jnp.ones((3, 5)))
    enc = Sequential(
        [TransformerEncoder(10, 3, features=8, num_heads=2, num_layers=1, max_len=4, key=K())]
    )
    with pytest.raises(ValueError, match=r"Sequential\.layers\[0\].*length <= max_len = 4"):
        stoax.eval_mode(enc)(jnp.zeros((2, 6), jnp.int32))
    drop_path = Sequential([DropPath(0.5)])
    with pytest.raises(ValueError, match=r"Sequential\.layers\[0\] \(DropPath\(.*leading batch"):
        drop_path(jnp.ones(()), key=K())
