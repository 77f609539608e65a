"""Layers for convolutional networks against Flax linen (pooling, GroupNorm, InstanceNorm,
ConvTranspose), shape layers, spatial dropout and AlphaDropout, and the digits CNN."""

import flax.linen as fnn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax import keys

F32 = dict(rtol=1e-5, atol=1e-5)


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape) * 2 + 0.5


# -- pooling ---------------------------------------------------------------------------------------

POOL_CASES = [  # window, stride, padding, input shape
    ((2, 2), (2, 2), "VALID", (2, 6, 6, 3)),
    ((3, 3), (2, 2), "SAME", (2, 7, 7, 3)),
    ((3, 2), (1, 1), ((1, 1), (0, 1)), (1, 5, 6, 2)),
    ((3,), (2,), "SAME", (2, 9, 4)),
    ((2,), (1,), "VALID", (3, 8, 2)),
]


@pytest.mark.parametrize("window, stride, padding, shape", POOL_CASES)
def test_max_and_avg_pool_match_flax(window, stride, padding, shape):
    x = _x(shape)
    w = window if len(window) > 1 else window[0]
    got = stoax.nn.MaxPool(w, stride, padding)(x)
    np.testing.assert_array_equal(got, fnn.max_pool(x, window, stride, padding))
    for include in (True, False):
        got = stoax.nn.AvgPool(w, stride, padding, count_include_pad=include)(x)
        want = fnn.avg_pool(x, window, stride, padding, count_include_pad=include)
        np.testing.assert_allclose(got, want, **F32)


def test_pooling_defaults_leading_axes_gradients_and_errors():
    x = _x((3, 2, 4, 4, 5))  # two leading batch axes
    y = stoax.nn.MaxPool((2, 2))(x)  # stride defaults to the window: non-overlapping
    assert y.shape == (3, 2, 2, 2, 5)
    np.testing.assert_array_equal(
        y.reshape(6, 2, 2, 5), fnn.max_pool(x.reshape(6, 4, 4, 5), (2, 2), (2, 2))
    )
    assert stoax.nn.AvgPool(2)(jnp.ones((6, 1))).shape == (3, 1)  # no batch axis at all
    g = jax.grad(lambda x: stoax.nn.MaxPool((2, 2))(x).sum())(x)
    assert float(g.sum()) == y.size  # one winner per window
    np.testing.assert_allclose(stoax.nn.GlobalAvgPool()(x), x.mean(axis=(-3, -2)), **F32)
    assert stoax.nn.GlobalAvgPool(1, keepdims=True)(jnp.ones((2, 7, 3))).shape == (2, 1, 3)
    with pytest.raises(ValueError, match=r"Sequential.layers\[0\].*2 spatial axes"):
        stoax.nn.Sequential([stoax.nn.MaxPool((2, 2))])(jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="MaxPool: padding must be"):
        stoax.nn.MaxPool(2, padding="FULL")
    with pytest.raises(TypeError, match="floating-point"):
        stoax.nn.AvgPool(2)(jnp.ones((4, 1), jnp.int32))


# -- GroupNorm, InstanceNorm ----------------------------------------------------------------------


@pytest.mark.parametrize("groups, shape", [(4, (2, 5, 5, 8)), (1, (3, 6, 4)), (3, (2, 3))])
def test_group_norm_matches_flax(groups, shape):
    x = _x(shape)
    c = shape[-1]
    params = {"scale": jnp.linspace(0.5, 1.5, c), "bias": jnp.linspace(-1, 1, c)}
    want = fnn.GroupNorm(num_groups=groups).apply({"params": params}, x)
    norm = stoax.nn.GroupNorm(groups, c).replace(**params)
    np.testing.assert_allclose(norm(x), want, **F32)
    assert norm(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_instance_norm_matches_flax():
    x = _x((2, 5, 5, 3))
    params = {"scale": jnp.array([1.0, 2.0, 0.5]), "bias": jnp.array([0.0, 1.0, -1.0])}
    want = fnn.InstanceNorm().apply({"params": params}, x)
    norm = stoax.nn.InstanceNorm(3).replace(**params)
    np.testing.assert_allclose(norm(x), want, **F32)
    with pytest.raises(ValueError, match="must divide features"):
        stoax.nn.GroupNorm(3, 8)


# -- ConvTranspose ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kernel, stride, padding, shape",
    [
        ((3, 3), 2, "SAME", (2, 5, 5, 4)),
        ((2, 2), 2, "VALID", (1, 4, 3, 4)),
        (3, 1, "SAME", (2, 7, 4)),
    ],
)
def test_conv_transpose_matches_flax(kernel, stride, padding, shape):
    n = 1 if isinstance(kernel, int) else len(kernel)
    layer = stoax.nn.ConvTranspose(4, 6, kernel, stride, padding, key=jax.random.key(0))
    flax_layer = fnn.ConvTranspose(
        6, kernel if n > 1 else (kernel,), strides=(stride,) * n, padding=padding
    )
    params = {"kernel": layer.weight, "bias": layer.bias + 0.3}
    x = _x(shape)
    want = flax_layer.apply({"params": params}, x)
    np.testing.assert_allclose(layer.replace(bias=params["bias"])(x), want, **F32)
    flax_init = flax_layer.init(jax.random.key(0), x)["params"]["kernel"]
    assert flax_init.shape == layer.weight.shape


# -- shapes ----------------------------------------------------------------------------------------


def test_identity_and_flatten():
    x = _x((2, 3, 4, 5))
    assert stoax.nn.Identity()(x) is x
    np.testing.assert_array_equal(stoax.nn.Flatten()(x), x.reshape(2, 60))
    np.testing.assert_array_equal(stoax.nn.Flatten(1, 2)(x), x.reshape(2, 12, 5))
    with pytest.raises(ValueError, match="do not form a range"):
        stoax.nn.Flatten(3, 1)(x)


# -- spatial dropout (the broadcast_dims recipe) and AlphaDropout ----------------------------------


def test_spatial_dropout_drops_whole_channels_per_example():
    # Dropout(rate, broadcast_dims=(-3, -2)) on (N, H, W, C): one draw per (example, channel).
    drop = stoax.nn.Dropout(0.5, broadcast_dims=(-3, -2))
    y = drop(jnp.ones((64, 4, 4, 32)), key=jax.random.key(0))
    kept = y[:, 0, 0, :] != 0
    np.testing.assert_array_equal(y != 0, jnp.broadcast_to(kept[:, None, None, :], y.shape))
    # 2048 independent (example, channel) draws at p = 0.5: sd of the kept fraction is
    # sqrt(0.25 / 2048) = 0.011; 5 sd = 0.055 bounds a false failure below 1e-6.
    assert abs(float(kept.mean()) - 0.5) < 0.055
    assert not np.array_equal(kept[0], kept[1])  # each example draws its own channels
    np.testing.assert_array_equal(y[kept[:, None, None, :].repeat(4, 1).repeat(4, 2)], 2.0)


def test_alpha_dropout_keeps_mean_and_variance_and_follows_its_formula():
    x = jax.random.normal(jax.random.key(0), (200_000,))
    drop = stoax.nn.AlphaDropout(0.2)
    y = drop(x, key=jax.random.key(1))
    # mean and std of 2e5 samples: standard errors 0.0022 and 0.0016; 0.015 is > 6 of them.
    assert abs(float(y.mean())) < 0.015 and abs(float(y.std()) - 1.0) < 0.015
    alpha, p = -1.7580993408473766, 0.2
    a = ((1 - p) * (1 + p * alpha**2)) ** -0.5
    b = -a * alpha * p
    keep = stoax.random.keep_mask(jax.random.key(1), x.shape, p)
    np.testing.assert_allclose(y, jnp.where(keep, a * x + b, a * alpha + b), **F32)
    assert stoax.eval_mode(drop)(x) is x
    with pytest.raises(stoax.nn.MissingKeyError, match="AlphaDropout"):
        drop(x)
    with pytest.raises(ValueError, match="below 1"):
        stoax.nn.AlphaDropout(1.0)


# -- the digits CNN -----------------------------------------------------------------------------


def test_tiny_digits_cnn_trains_with_batchnorm_state():
    import optax

    from stoax import train as st
    from stoax.examples import digits
    from stoax.examples.digits_cnn import make_cnn

    train, test = digits.load_data(seed=0)
    model = make_cnn(0.1, key=keys.child(jax.random.key(0), "init"), width=8)
    tx = optax.adam(3e-3)
    state, history = st.fit(
        st.TrainState.create(model, tx),
        tx,
        st.classification_loss,
        train,
        seed=0,
        epochs=3,
        batch_size=64,
        eval_data={"test": test},
        progress=False,
    )
    # 3 epochs take the 8-channel CNN from chance (10%) to well above 80% on the held-out
    # test set, evaluated with its running statistics.
    assert history[-1]["test_accuracy"] > 0.8, history
    bn = state.model.layers[2]
    assert isinstance(bn, stoax.nn.BatchNorm) and not np.allclose(bn.running_var, 1.0)
    assert "cnn" in digits.MODELS
