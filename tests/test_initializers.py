"""Initialisers as constructor arguments (``kernel_init``/``bias_init``, ``embedding_init``):
any ``jax.nn.initializers`` function, the defaults stated in the docstrings, one init key each,
and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax import keys

KEY = jax.random.key(0)
ONES, ZEROS = jax.nn.initializers.ones, jax.nn.initializers.zeros


def _data(a):
    return np.asarray(a)


def test_linear_defaults_are_lecun_normal_and_zeros_from_their_init_keys():
    layer = stoax.nn.Linear(5, 3, key=KEY)
    k_weight = keys.init_child(KEY, "weight")
    expected = jax.nn.initializers.lecun_normal()(k_weight, (5, 3), jnp.float32)
    np.testing.assert_array_equal(_data(layer.weight), _data(expected))
    np.testing.assert_array_equal(_data(layer.bias), np.zeros(3, np.float32))


def test_linear_takes_any_jax_initializer_and_each_has_its_own_key():
    normal = jax.nn.initializers.normal(0.5)
    layer = stoax.nn.Linear(4, 6, key=KEY, kernel_init=ONES, bias_init=normal)
    np.testing.assert_array_equal(_data(layer.weight), np.ones((4, 6), np.float32))
    expected_bias = normal(keys.init_child(KEY, "bias"), (6,), jnp.float32)
    np.testing.assert_array_equal(_data(layer.bias), _data(expected_bias))
    # replacing the bias initialiser leaves the weights as they were
    default = stoax.nn.Linear(4, 6, key=KEY)
    other = stoax.nn.Linear(4, 6, key=KEY, bias_init=normal)
    np.testing.assert_array_equal(_data(default.weight), _data(other.weight))
    assert stoax.nn.Linear(4, 6, key=KEY, use_bias=False, bias_init=normal).bias is None


def test_conv_and_conv_transpose_take_initializers():
    conv = stoax.nn.Conv(2, 4, (3, 3), key=KEY, kernel_init=ONES, bias_init=ONES)
    assert conv.weight.shape == (3, 3, 2, 4) and bool((conv.weight == 1).all())
    assert bool((conv.bias == 1).all())
    # the default's fan-in is prod(kernel) * in_channels, as Flax's Conv
    big = stoax.nn.Conv(16, 64, (3, 3), key=KEY)
    assert abs(float(jnp.var(big.weight)) * 3 * 3 * 16 - 1.0) < 0.1
    up = stoax.nn.ConvTranspose(2, 4, (2, 2), key=KEY, kernel_init=ZEROS, bias_init=ONES)
    assert bool((up.weight == 0).all()) and bool((up.bias == 1).all())
    y = up(jnp.ones((1, 3, 3, 2)))
    np.testing.assert_array_equal(_data(y), np.ones((1, 3, 3, 4), np.float32))


def test_embedding_default_is_standard_normal_and_flax_scaling_is_one_argument():
    emb = stoax.nn.Embedding(7, 4, key=jax.random.key(1))  # the key itself draws the table
    expected = jax.random.normal(jax.random.key(1), (7, 4))
    np.testing.assert_array_equal(_data(emb.weight), _data(expected))
    flax_like = jax.nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)
    big = stoax.nn.Embedding(2000, 64, key=jax.random.key(2), embedding_init=flax_like)
    assert abs(float(jnp.var(big.weight)) * 64 - 1.0) < 0.1  # variance 1 / features


def test_containers_pass_initializers_to_their_linears():
    mlp = stoax.nn.MLP(3, 2, hidden=(4,), key=KEY, kernel_init=ONES, bias_init=ONES)
    assert all(bool((layer.weight == 1).all()) for layer in mlp.layers)
    assert all(bool((layer.bias == 1).all()) for layer in mlp.layers)
    attn = stoax.nn.MultiHeadAttention(8, 2, key=KEY, kernel_init=ZEROS)
    for proj in (attn.query_proj, attn.key_proj, attn.value_proj, attn.out_proj):
        assert bool((proj.weight == 0).all())
    np.testing.assert_array_equal(_data(attn(jnp.ones((3, 8)))), np.zeros((3, 8), np.float32))


def test_bad_initializers_are_refused_with_the_layer_and_argument():
    with pytest.raises(TypeError, match=r"Linear: kernel_init must be an initialiser"):
        stoax.nn.Linear(3, 2, key=KEY, kernel_init="lecun")
    with pytest.raises(TypeError, match=r"Embedding: embedding_init must be an initialiser"):
        stoax.nn.Embedding(3, 2, key=jax.random.key(3), embedding_init=0.1)

    def wrong_shape(key, shape, dtype):
        return jnp.zeros((1,), dtype)

    with pytest.raises(ValueError, match=r"Conv: bias_init returned an array of shape \(1,\)"):
        stoax.nn.Conv(2, 3, 3, key=KEY, bias_init=wrong_shape)


def test_initializers_are_keyword_only():
    with pytest.raises(TypeError):
        stoax.nn.Linear(3, 2, True, KEY, jnp.float32, ONES)  # type: ignore[misc]
