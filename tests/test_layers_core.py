"""Core layers: Embedding, LayerNorm, RMSNorm, Conv, MLP -- shapes, dtypes, numerics against
direct jnp / lax / NumPy references, initialisers, key derivation and error messages.

Speed: random draws compile slowly outside ``jax.jit`` (threefry, once per shape). Tests of the
numerics give layers random NumPy parameters (:func:`random_params`, which traces the constructor
with ``jax.eval_shape`` and compiles nothing); tests of the initialisers build under ``jax.jit``.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax.nn import MLP, Conv, Dropout, Embedding, LayerNorm, RMSNorm

RNG = np.random.default_rng(0)


def _normal(*shape, scale=1.0):
    return (scale * RNG.standard_normal(shape)).astype(np.float32)


def build(cls, *args, seed=0, **kwargs):
    """``cls(*args, key=key(seed), **kwargs)``, built under ``jax.jit`` (one compilation)."""
    return jax.jit(lambda key: cls(*args, key=key, **kwargs))(jax.random.key(seed))


def random_params(cls, *args, **kwargs):
    """``cls(*args, **kwargs)`` with standard-normal NumPy arrays in place of its parameters."""
    shaped = jax.eval_shape(lambda key: cls(*args, key=key, **kwargs), jax.random.key(0))
    return jax.tree.map(lambda s: _normal(*s.shape).astype(s.dtype), shaped)


# --- Embedding ---------------------------------------------------------------------------------


def test_embedding_looks_up_rows_and_attends_with_the_transposed_table():
    emb = random_params(Embedding, 10, 4)
    w = emb.weight
    assert (emb.num_embeddings, emb.features) == (10, 4)
    ids = np.array([[1, 2, 9], [0, 0, 3]])
    out = jax.jit(emb)(ids)
    assert out.shape == (2, 3, 4) and out.dtype == jnp.float32
    np.testing.assert_array_equal(out, w[ids])
    np.testing.assert_array_equal(emb(ids.astype(np.uint8)), w[ids])
    np.testing.assert_array_equal(emb([3, 4]), w[3:5])  # a list of ints is fine

    x = _normal(2, 4)
    np.testing.assert_allclose(jax.jit(emb.attend)(x), x @ w.T, rtol=1e-5, atol=1e-5)
    assert emb.attend(x).shape == (2, 10)


def test_embedding_init_is_standard_normal_and_dtype_is_kept():
    w = np.asarray(build(Embedding, 1000, 64, seed=1).weight)
    assert w.shape == (1000, 64)
    assert abs(w.mean()) < 0.02 and abs(w.std() - 1.0) < 0.02
    emb = random_params(Embedding, 5, 3, dtype=jnp.bfloat16)
    assert emb.weight.dtype == jnp.bfloat16 and emb(np.array([0, 4])).dtype == jnp.bfloat16


def test_embedding_gradient_accumulates_per_id():
    emb = random_params(Embedding, 4, 2)
    grads = jax.jit(jax.grad(lambda e: jnp.sum(e(np.array([0, 0, 2])))))(emb)
    np.testing.assert_array_equal(grads.weight, [[2, 2], [0, 0], [1, 1], [0, 0]])


def test_embedding_errors():
    emb = random_params(Embedding, 10, 4)
    with pytest.raises(
        TypeError, match=r"^Embedding\(weight=f32\[10,4\]\): ids must be an integer.*float32"
    ):
        emb(np.array([1.0, 2.0], np.float32))
    with pytest.raises(TypeError, match="integer"):
        emb(np.array([True, False]))
    with pytest.raises(TypeError, match="integer"):
        jax.jit(emb)(np.array([1.0]))  # also when traced
    with pytest.raises(IndexError, match=r"in \[0, num_embeddings = 10\), got -1 \.\. 10"):
        emb(np.array([-1, 10]))
    traced = jax.jit(emb)(np.array([-1, 10, 2], np.int8))  # unchecked under jit: NaN, no wrap
    assert np.isnan(traced[:2]).all() and not np.isnan(traced[2]).any()
    with pytest.raises(ValueError, match=r"attend: the input's last axis must have size 4"):
        emb.attend(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="Embedding: features must be a positive int"):
        Embedding(10, 0, key=jax.random.key(1))


# --- LayerNorm and RMSNorm ---------------------------------------------------------------------


def _layer_norm_ref(x, scale, bias, eps):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def _rms_norm_ref(x, scale, eps):
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * scale


def test_layer_norm_matches_the_formula_over_the_last_axis():
    x = _normal(2, 3, 5, scale=3.0) + 2.0
    fresh = LayerNorm(5, eps=1e-3)
    np.testing.assert_array_equal(fresh.scale, np.ones(5))  # initialisation
    np.testing.assert_array_equal(fresh.bias, np.zeros(5))
    norm = fresh.replace(scale=_normal(5), bias=_normal(5))
    out = jax.jit(norm)(x, key=None)
    assert out.shape == x.shape and out.dtype == jnp.float32
    ref = _layer_norm_ref(x, norm.scale, norm.bias, 1e-3)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)

    plain = LayerNorm(5, use_scale=False, use_bias=False)
    assert plain.scale is None and plain.bias is None and jax.tree.leaves(plain) == []
    y = np.asarray(plain(x))
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-4)
    assert repr(plain) == "LayerNorm(features=5, eps=1e-06, scale=None, bias=None)"


def test_rms_norm_matches_the_formula():
    x = _normal(4, 6, scale=2.0)
    fresh = RMSNorm(6, eps=1e-4)
    np.testing.assert_array_equal(fresh.scale, np.ones(6))
    norm = fresh.replace(scale=_normal(6))
    out = jax.jit(norm)(x)
    np.testing.assert_allclose(out, _rms_norm_ref(x, norm.scale, 1e-4), rtol=1e-5, atol=1e-5)
    assert repr(RMSNorm(6)) == "RMSNorm(features=6, eps=1e-06, scale=f32[6])"


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_norms_return_the_input_dtype(dtype):
    x = jnp.asarray(_normal(3, 8, scale=4.0)).astype(dtype)
    ref_x = np.asarray(x.astype(jnp.float32))
    tol = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 2e-3}[dtype]
    ln, rms = jax.jit(lambda x: (LayerNorm(8)(x), RMSNorm(8)(x)))(x)
    assert ln.dtype == dtype and rms.dtype == dtype
    ln_ref, rms_ref = _layer_norm_ref(ref_x, 1, 0, 1e-6), _rms_norm_ref(ref_x, 1, 1e-6)
    np.testing.assert_allclose(np.float32(ln), ln_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(np.float32(rms), rms_ref, rtol=tol, atol=tol)


def test_norm_statistics_are_computed_in_float32():
    # Squares of these values overflow float16 (max 65504): float16 statistics would give inf/0.
    x = np.array([[0.0, 300.0, -300.0, 150.0]], np.float16)
    ln, rms = LayerNorm(4)(x), RMSNorm(4)(x)
    assert ln.dtype == rms.dtype == jnp.float16
    np.testing.assert_allclose(np.float32(ln), _layer_norm_ref(x, 1, 0, 1e-6), rtol=2e-3)
    np.testing.assert_allclose(np.float32(rms), _rms_norm_ref(x, 1, 1e-6), rtol=2e-3)


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
def test_norm_errors(cls):
    norm = cls(4)
    name = cls.__name__
    with pytest.raises(
        ValueError,
        match=rf"^{name}\(features=4, .*\): .*size features = 4; got input shape \(2, 5\)",
    ):
        norm(np.ones((2, 5), np.float32))
    with pytest.raises(ValueError, match="got input shape"):
        norm(np.ones((), np.float32))
    with pytest.raises(TypeError, match=rf"^{name}\(.*\): input must be a floating-point"):
        norm(np.ones((2, 4), np.int32))
    with pytest.raises(ValueError, match=rf"{name}: features must be a positive int"):
        cls(0)


# --- Conv --------------------------------------------------------------------------------------


def _conv1d_ref(x, w, b, stride, dilation, padding, groups=1):
    """Direct NumPy loops: x (L, Cin), w (K, Cin // groups, Cout), padding (low, high)."""
    x = np.pad(np.asarray(x, np.float64), (padding, (0, 0)))
    w = np.asarray(w, np.float64)
    k, cin_g, cout = w.shape
    cout_g = cout // groups
    n_out = (x.shape[0] - ((k - 1) * dilation + 1)) // stride + 1
    y = np.zeros((n_out, cout))
    for i in range(n_out):
        for t in range(k):
            row = x[i * stride + t * dilation]
            for g in range(groups):
                out = slice(g * cout_g, (g + 1) * cout_g)
                y[i, out] += row[g * cin_g : (g + 1) * cin_g] @ w[t, :, out]
    return y + b


@pytest.mark.parametrize(
    "stride, dilation, padding, pads, groups",
    [
        (1, 1, "VALID", (0, 0), 1),
        (2, 1, [(1, 2)], (1, 2), 1),
        (1, 2, 2, (2, 2), 1),
        (2, 2, "valid", (0, 0), 2),
        (1, 1, "SAME", (1, 1), 2),
    ],
)
def test_conv1d_matches_a_numpy_loop(stride, dilation, padding, pads, groups):
    conv = random_params(
        Conv, 4, 6, 3, stride=stride, dilation=dilation, padding=padding, groups=groups
    )
    assert conv.weight.shape == (3, 4 // groups, 6) and conv.kernel_size == (3,)
    x = _normal(11, 4)
    ref = _conv1d_ref(x, conv.weight, conv.bias, stride, dilation, pads, groups)
    np.testing.assert_allclose(jax.jit(conv)(x), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "stride, dilation, padding", [(1, 1, "SAME"), (2, 1, "SAME"), (1, 2, "VALID")]
)
def test_conv2d_matches_lax_conv_in_nchw(stride, dilation, padding):
    conv = random_params(
        Conv, 3, 5, (3, 2), stride=stride, dilation=dilation, padding=padding, use_bias=False
    )
    assert conv.bias is None and conv.kernel_size == (3, 2)
    x = _normal(2, 9, 8, 3)
    ref = jax.lax.conv_general_dilated(
        x.transpose(0, 3, 1, 2),
        conv.weight.transpose(3, 2, 0, 1),  # HWIO -> OIHW
        (stride, stride),
        padding,
        rhs_dilation=(dilation, dilation),
    ).transpose(0, 2, 3, 1)
    out = jax.jit(conv)(x)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    if padding == "SAME":
        assert out.shape == (2, -(-9 // stride), -(-8 // stride), 5)


def test_conv_accepts_any_batch_dims_and_explicit_padding():
    conv = random_params(Conv, 2, 3, (3, 3), padding=1)
    assert conv.padding == ((1, 1), (1, 1))
    x = _normal(2, 3, 5, 5, 2)
    f = jax.jit(conv)
    out = f(x)
    assert out.shape == (2, 3, 5, 5, 3)
    np.testing.assert_allclose(out[1, 2], f(x[1, 2]), rtol=1e-6, atol=1e-6)  # unbatched
    same = conv.replace(padding="SAME")  # for an odd kernel and stride 1, SAME pads 1 each side
    np.testing.assert_allclose(out, jax.jit(same)(x), rtol=1e-6, atol=1e-6)


def test_conv_init_is_lecun_normal_over_fan_in():
    make = lambda k1, k2: [Conv(16, 32, (3, 3), groups=g, key=k) for g, k in ((1, k1), (4, k2))]
    convs = jax.jit(make)(jax.random.key(1), jax.random.key(2))
    for conv, groups, fan_in in zip(convs, (1, 4), (9 * 16, 9 * 4), strict=True):
        assert conv.weight.shape == (3, 3, 16 // groups, 32)
        assert (conv.in_channels, conv.out_channels, conv.groups) == (16, 32, groups)
        w = np.asarray(conv.weight)
        assert abs(w.std() * np.sqrt(fan_in) - 1.0) < 0.1
        assert np.abs(w).max() <= 2 * np.sqrt(1 / fan_in) / 0.8796  # truncated at 2 stddev
        np.testing.assert_array_equal(conv.bias, np.zeros(32))


def test_conv_dtypes():
    x = np.ones((1, 6, 6, 2))
    for dtype in (jnp.bfloat16, jnp.float16):
        conv = random_params(Conv, 2, 4, (3, 3), dtype=dtype)
        assert conv.weight.dtype == dtype and conv(x.astype(dtype)).dtype == dtype
    conv = random_params(Conv, 2, 4, 3)  # float32 weights and a bf16 input: promoted
    assert conv(jnp.ones((5, 2), jnp.bfloat16)).dtype == jnp.float32


def test_conv_errors():
    conv = random_params(Conv, 3, 8, (3, 3))
    expected = (
        r"Conv.*\(\.\.\., H, W, C\) with C = 3 \(8 output channels, kernel \(3, 3\)\), "
        r"got shape \(2, 5, 5, 4\)"
    )
    with pytest.raises(ValueError, match=expected):
        conv(np.ones((2, 5, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W, C\)"):
        conv(np.ones((5, 3), np.float32))  # a 2-D conv needs two spatial axes
    with pytest.raises(ValueError, match=r"\(\.\.\., length, C\)"):
        random_params(Conv, 3, 8, 3)(np.ones((3,), np.float32))
    with pytest.raises(TypeError, match="Conv: input must be a floating-point"):
        conv(np.ones((5, 5, 3), np.int32))
    key = jax.random.key(2)  # every error below is raised before the key is used
    with pytest.raises(ValueError, match=r"divisible by groups \(2\)"):
        Conv(3, 8, 3, groups=2, key=key)
    with pytest.raises(ValueError, match=r"kernel_size must be an int .* or a tuple of 1 to 3"):
        Conv(3, 8, (1, 2, 3, 4), key=key)
    with pytest.raises(ValueError, match="padding must be one of"):
        Conv(3, 8, 3, padding="FULL", key=key)
    with pytest.raises(ValueError, match=r"padding must be .* 2 entries"):
        Conv(3, 8, (3, 3), padding=((1, 2, 3), 1), key=key)
    with pytest.raises(ValueError, match=r"padding must be .* 1 entries"):
        Conv(3, 8, 3, padding=(1, 2), key=key)  # one (low, high) pair is written [(1, 2)]
    with pytest.raises(ValueError, match=r"stride must be an int or a sequence of 2 ints"):
        Conv(3, 8, (3, 3), stride=(1, 1, 1), key=key)
    with pytest.raises(ValueError, match="stride must be a positive int"):
        Conv(3, 8, 3, stride=0, key=key)


# --- MLP ---------------------------------------------------------------------------------------


def test_mlp_signature_is_pinned():
    params = inspect.signature(MLP).parameters
    assert list(params)[:7] == [
        "in_features",
        "out_features",
        "hidden",
        "activation",
        "dropout",
        "use_bias",
        "key",
    ]
    defaults = {n: p.default for n, p in params.items()}
    assert defaults["hidden"] == (64, 64) and defaults["activation"] is jax.nn.gelu
    assert defaults["dropout"] == 0.0 and defaults["use_bias"] is True
    assert defaults["key"] is inspect.Parameter.empty
    assert params["key"].kind is inspect.Parameter.KEYWORD_ONLY


def _manual_mlp(mlp, x, drop_keys=None):
    for i, layer in enumerate(mlp.layers[:-1]):
        x = mlp.activation(x @ layer.weight + layer.bias)
        if drop_keys is not None:
            x = Dropout(mlp.dropouts[i].rate)(x, key=drop_keys[i])
    return x @ mlp.layers[-1].weight + mlp.layers[-1].bias


def test_mlp_structure_init_and_evaluation_forward():
    mlp = build(MLP, 4, 3)
    assert [lin.weight.shape for lin in mlp.layers] == [(4, 64), (64, 64), (64, 3)]
    assert [d.rate for d in mlp.dropouts] == [0.0, 0.0] and mlp.activation is jax.nn.gelu
    assert len(jax.tree.leaves(mlp)) == 6  # the activation and the rates are static
    w0 = np.asarray(mlp.layers[0].weight)  # each Linear: LeCun-normal weight, zero bias
    assert 0.2 < w0.std() < 0.8 and not np.array_equal(w0[:, :3], mlp.layers[2].weight[:4])
    np.testing.assert_array_equal(mlp.layers[1].bias, np.zeros(64))
    x = _normal(5, 4)
    out = jax.jit(mlp)(x)  # dropout 0: no key needed, even in training mode
    assert out.shape == (5, 3)
    np.testing.assert_allclose(out, _manual_mlp(mlp, x), rtol=1e-5, atol=1e-5)

    tiny = random_params(MLP, 2, 1, hidden=(), activation=jnp.tanh, use_bias=False)
    assert len(tiny.layers) == 1 and tiny.dropouts == () and tiny.layers[0].bias is None
    np.testing.assert_allclose(tiny(np.ones(2)), tiny.layers[0].weight.sum(0), rtol=1e-6)


def test_mlp_dropout_keys_are_derived_per_layer():
    mlp = random_params(MLP, 4, 2, hidden=(32, 32), dropout=0.5)
    x = _normal(3, 4)
    key = jax.random.key(1)
    f = jax.jit(lambda m, x, k: m(x, key=k))
    out = f(mlp, x, key)
    drop_keys = stoax.keys.derive(stoax.keys.child(key, "dropouts"), 0, 1)
    manual = jax.jit(_manual_mlp)(mlp, x, drop_keys)
    np.testing.assert_allclose(out, manual, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out, f(mlp, x, jax.random.key(1)))  # reproducible
    assert not np.allclose(out, f(mlp, x, jax.random.key(2)))  # fresh key, fresh masks

    # The two hidden layers draw different masks.
    drop_keys = stoax.keys.derive(stoax.keys.child(key, "dropouts"), 0, 1)
    masks = jax.jit(lambda ks: [Dropout(0.5)(jnp.ones(32), key=k) for k in ks])(drop_keys)
    assert not np.array_equal(masks[0], masks[1])

    with pytest.raises(stoax.nn.MissingKeyError, match="without a key"):
        mlp(x)
    evaluated = stoax.eval_mode(mlp)
    assert [d.training for d in evaluated.dropouts] == [False, False]
    np.testing.assert_allclose(jax.jit(evaluated)(x), _manual_mlp(mlp, x), rtol=1e-5, atol=1e-5)


def test_mlp_array_dropout_rate_is_a_non_trainable_leaf():
    mlp = random_params(MLP, 3, 2, hidden=(4,), dropout=jnp.asarray(0.2))
    params, rest = stoax.partition(mlp)
    assert params.dropouts[0].rate is None and rest.dropouts[0].rate is not None


def test_mlp_dtype_and_custom_activation():
    mlp = random_params(MLP, 3, 2, hidden=(4,), activation=lambda v: v * 2, dtype=jnp.bfloat16)
    assert jax.jit(mlp)(jnp.ones((2, 3), jnp.bfloat16)).dtype == jnp.bfloat16


def test_mlp_errors():
    key = jax.random.key(0)  # every error below is raised before the key is used
    with pytest.raises(TypeError, match=r"MLP: hidden must be a sequence of layer sizes"):
        MLP(3, 2, hidden=64, key=key)
    with pytest.raises(ValueError, match="MLP: hidden must be a positive int"):
        MLP(3, 2, hidden=(8, 0), key=key)
    with pytest.raises(TypeError, match="MLP: activation must be a callable"):
        MLP(3, 2, activation="relu", key=key)
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        MLP(3, 2, dropout=1.5, key=key)
    with pytest.raises(
        ValueError,
        match=r"^MLP\.layers\[0\] \(Linear\(weight=f32\[3,64\], bias=f32\[64\]\)\): "
        r"input's last axis has size 4, expected in_features = 3",
    ):
        random_params(MLP, 3, 2)(np.ones(4, np.float32))
