"""stoax modules inside NNX and Equinox models, and Equinox layers inside stoax containers."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import stoax
from stoax import keys
from stoax.interop.nnx import params


def _block(key):
    return stoax.nn.Sequential([stoax.nn.Linear(8, 8, key=key), jax.nn.relu, stoax.nn.Dropout(0.1)])


class NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.inp = nnx.Linear(4, 8, rngs=rngs)
        self.body = stoax.nn.Stack.build(_block, 3, key=jax.random.key(0))  # no nnx.data
        self.head = nnx.Linear(8, 1, rngs=rngs)

    def __call__(self, x, key):
        return self.head(self.body(self.inp(x), key=key))


def test_an_nnx_model_holding_a_stoax_stack_trains_with_nnx_jit():
    model = NNXModel(nnx.Rngs(0))
    wrt = params(model)
    trainable, _ = nnx.state(model, wrt, ...)
    shapes = {p[-1]: v.shape for p, v in nnx.to_flat_state(trainable) if p[0] == "body"}
    assert shapes == {"weight": (3, 8, 8), "bias": (3, 8)}  # stoax's params, not its rates
    opt = nnx.Optimizer(model, optax.adam(3e-2), wrt=wrt)
    x = jax.random.normal(jax.random.key(1), (16, 4))
    y = jnp.sum(x, axis=1, keepdims=True)

    @nnx.jit
    def step(model, opt, key):
        loss = lambda m: ((m(x, key) - y) ** 2).mean()
        value, grads = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, wrt))(model)
        opt.update(model, grads)
        return value

    before = model.body.layers.layers[0].weight
    losses = [float(step(model, opt, stoax.step_key(0, i))) for i in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    assert isinstance(model.body, stoax.nn.Stack)  # updated in place, still a stoax Stack
    assert not np.allclose(model.body.layers.layers[0].weight, before)
    # The updated module is a consistent pytree (its cached flattening follows the update).
    weight = model.body.layers.layers[0].weight
    assert any(leaf is weight for leaf in jax.tree.leaves(model.body))


def test_an_equinox_model_holding_a_stoax_transformer_trains_with_filter_jit():
    class Model(eqx.Module):
        encoder: stoax.nn.TransformerEncoder
        scale: jax.Array

        def __call__(self, tokens, key):
            return self.scale * self.encoder(tokens, key=key)

    encoder = stoax.nn.TransformerEncoder(
        vocab_size=16, out_features=16, features=16, num_heads=2, num_layers=1, max_len=8,
        dropout=0.1, key=jax.random.key(0),
    )  # fmt: skip
    model = Model(encoder, jnp.ones(()))
    opt = optax.adam(1e-2)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    tokens = jax.random.randint(jax.random.key(1), (4, 8), 0, 16)

    @eqx.filter_jit
    def step(model, opt_state, key):
        def loss(m):
            logits = m(tokens, key)
            return optax.softmax_cross_entropy_with_integer_labels(logits, tokens).mean()

        value, grads = eqx.filter_value_and_grad(loss)(model)
        updates, opt_state = opt.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, value

    losses = []
    for i in range(15):
        model, opt_state, value = step(model, opt_state, stoax.step_key(0, i))
        losses.append(float(value))
    assert losses[-1] < 0.7 * losses[0]
    # stoax's modes reach inside the Equinox model: evaluation needs no key.
    evaluated = stoax.eval_mode(model)
    assert evaluated.encoder.embed_dropout.training is False
    assert evaluated(tokens, None).shape == (4, 8, 16)


def test_a_stoax_sequential_gives_an_equinox_dropout_a_key_and_its_mode():
    drop = eqx.nn.Dropout(0.5)
    model = stoax.nn.Sequential([jax.nn.relu, drop, eqx.nn.Linear(8, 8, key=jax.random.key(0))])
    x = jnp.ones(8)
    key = jax.random.key(1)
    expected = model.layers[2](drop(x, key=keys.child(key, 1)))  # key derived by position
    np.testing.assert_array_equal(model(x, key=jax.random.key(1)), expected)
    assert (model(x, key=jax.random.key(2)) != expected).any()  # another key, another mask
    with pytest.raises(RuntimeError, match="key"):  # Equinox's own error: training needs a key
        model(x)
    evaluated = stoax.eval_mode(model)
    assert evaluated.layers[1].inference is True
    np.testing.assert_array_equal(evaluated(x), model.layers[2](x))
    assert stoax.train_mode(evaluated).layers[1].inference is False
    # p stays a Python float inside stoax's container under plain jax.jit (seed S3).
    seen = []
    jax.jit(lambda m, x, k: seen.append(type(m.layers[1].p)) or m(x, key=k))(
        model, x, jax.random.key(3)
    )
    assert seen == [float]


def test_set_mode_reaches_equinox_layers_in_an_equinox_model():
    model = eqx.nn.Sequential([eqx.nn.Linear(2, 2, key=jax.random.key(0)), eqx.nn.Dropout(0.3)])
    assert stoax.eval_mode(model).layers[1].inference is True
    assert stoax.train_mode(stoax.eval_mode(model)).layers[1].inference is False


def test_a_traced_mode_reaches_stoax_interop_equinox_dropout_in_a_stoax_container():
    from stoax.interop.equinox import Dropout

    model = stoax.nn.Sequential([Dropout(0.5), stoax.nn.Dropout(0.5)])
    x = jnp.ones(32)

    def body(carry, inp):
        flag, k = inp
        return carry, stoax.set_mode(model, flag)(x, key=k)

    flags = jnp.asarray([False, True])
    _, ys = jax.lax.scan(body, 0, (flags, jax.random.split(jax.random.key(0), 2)))
    np.testing.assert_array_equal(ys[0], x)  # evaluation: both layers are the identity
    assert (ys[1] == 0).any() and (ys[1] == 4).any()  # training: both layers drop and scale
