"""Weights ported from Flax (linen, NNX) and Equinox layers give stoax layers the same outputs."""

from __future__ import annotations

import equinox as eqx
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import stoax
from stoax.interop.porting import from_equinox, from_flax


def _k():
    return jax.random.key(0)


TOL = {"rtol": 1e-5, "atol": 1e-6}  # float32: the same math, summed in another order


def _x(*shape):
    return jax.random.normal(jax.random.key(42), shape)


def _ours(kind):
    k = jax.random.key(9)  # different initial weights: the port must overwrite all of them
    return {
        "linear": lambda: stoax.nn.Linear(6, 4, key=k),
        "conv": lambda: stoax.nn.Conv(3, 5, (3, 3), padding="VALID", key=k),
        "layernorm": lambda: stoax.nn.LayerNorm(6),
        "embedding": lambda: stoax.nn.Embedding(10, 6, key=k),
        "attention": lambda: stoax.nn.MultiHeadAttention(8, 2, key=k),
    }[kind]()


def _input(kind):
    if kind == "conv":
        return _x(2, 7, 7, 3)
    if kind == "embedding":
        return jnp.array([[1, 2, 9], [0, 3, 3]])
    return _x(2, 5, 8) if kind == "attention" else _x(2, 6)


KINDS = ["linear", "conv", "layernorm", "embedding", "attention"]


@pytest.mark.parametrize("kind", KINDS)
def test_from_linen(kind):
    theirs = {
        "linear": linen.Dense(4),
        "conv": linen.Conv(5, (3, 3), padding="VALID"),
        "layernorm": linen.LayerNorm(),
        "embedding": linen.Embed(10, 6),
        "attention": linen.MultiHeadDotProductAttention(num_heads=2, qkv_features=8),
    }[kind]
    x = _input(kind)
    variables = theirs.init(_k(), x)
    ours = from_flax(_ours(kind), variables["params"])
    np.testing.assert_allclose(ours(x), theirs.apply(variables, x), **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_from_nnx(kind):
    r = nnx.Rngs(0)
    theirs = {
        "linear": lambda: nnx.Linear(6, 4, rngs=r),
        "conv": lambda: nnx.Conv(3, 5, (3, 3), padding="VALID", rngs=r),
        "layernorm": lambda: nnx.LayerNorm(6, epsilon=1e-3, rngs=r),
        "embedding": lambda: nnx.Embed(10, 6, rngs=r),
        "attention": lambda: nnx.MultiHeadAttention(2, 8, decode=False, rngs=r),
    }[kind]()
    x = _input(kind)
    ours = from_flax(_ours(kind), theirs)
    np.testing.assert_allclose(ours(x), theirs(x), **TOL)


@pytest.mark.parametrize("kind", KINDS)
def test_from_equinox(kind):
    theirs = {
        "linear": lambda: eqx.nn.Linear(6, 4, key=_k()),
        "conv": lambda: eqx.nn.Conv2d(3, 5, 3, key=_k()),
        "layernorm": lambda: eqx.nn.LayerNorm(6),
        "embedding": lambda: eqx.nn.Embedding(10, 6, key=_k()),
        "attention": lambda: eqx.nn.MultiheadAttention(2, 8, use_query_bias=True,
                                                       use_key_bias=True, use_value_bias=True,
                                                       use_output_bias=True, key=_k()),
    }[kind]()  # fmt: skip
    if kind == "layernorm":  # non-trivial scale and bias
        theirs = eqx.tree_at(lambda m: (m.weight, m.bias), theirs, (_x(6) + 2, _x(6)))
    x = _input(kind)
    ours = from_equinox(_ours(kind), theirs)
    if kind == "conv":  # Equinox: one example, channels first
        expected = jax.vmap(lambda im: jnp.moveaxis(theirs(jnp.moveaxis(im, -1, 0)), 0, -1))(x)
    elif kind == "embedding":
        expected = jax.vmap(jax.vmap(theirs))(x)
    elif kind == "attention":
        expected = jax.vmap(lambda s: theirs(s, s, s))(x)
    else:
        expected = jax.vmap(theirs)(x)
    np.testing.assert_allclose(ours(x), expected, **TOL)


def test_a_mismatch_names_the_layer_and_both_shapes():
    with pytest.raises(ValueError, match=r"Linear.weight.*\(6, 3\).*\(6, 4\)"):
        from_flax(_ours("linear"), nnx.Linear(6, 3, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="has no bias"):
        from_equinox(stoax.nn.Linear(6, 4, use_bias=False, key=_k()), eqx.nn.Linear(6, 4, key=_k()))
    with pytest.raises(ValueError, match="no 'kernel'"):
        from_flax(_ours("linear"), {"Dense_0": {"kernel": jnp.ones((6, 4))}})
    with pytest.raises(TypeError, match="no conversion for Dropout"):
        from_flax(stoax.nn.Dropout(0.1), {})
