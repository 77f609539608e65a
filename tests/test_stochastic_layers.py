"""Behaviour of the stochastic layers: Dropout edge cases, DropPath, GaussianNoise,
MultiHeadAttention, eval mode compiling randomness away, and every PRNG implementation."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax import keys
from stoax.nn import (
    Dropout,
    DropPath,
    GaussianNoise,
    Linear,
    MissingKeyError,
    MultiHeadAttention,
    Sequential,
)

IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
FLOATS = (jnp.float32, jnp.bfloat16, jnp.float16)


@pytest.fixture(params=IMPLS)
def impl(request):
    """Run the test with ``jax.random.key(seed)`` making keys of each PRNG implementation."""
    with jax.default_prng_impl(request.param):
        assert str(jax.random.key_impl(jax.random.key(0))) == request.param
        yield request.param


@functools.cache
def build(cls, *args, seed=0, **kwargs):
    """A layer with parameters, initialised under one jit (eager init compiles op by op: slow)."""
    return jax.jit(lambda k: cls(*args, key=k, **kwargs))(jax.random.key(seed, impl="threefry2x32"))


def normal(*shape, seed=0):
    """Test data from NumPy: no JAX compilation for each new shape."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def primitive_names(jaxpr) -> set[str]:
    """Names of every primitive in ``jaxpr``, recursing into sub-jaxprs (jit, scan, custom_vjp)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= primitive_names(inner)
    return names


# ----------------------------------------------------------------------------- Dropout edge cases


def test_dropout_rate_zero_is_identity_and_needs_no_key():
    x = jnp.arange(6.0)
    assert Dropout(0.0)(x) is x


def test_dropout_rate_one_gives_zeros_without_nan_also_in_gradient(impl):
    x = jnp.linspace(-1.0, 1.0, 16)

    @jax.jit
    def run(k_static, k_traced):
        results = []
        for drop, k in ((Dropout(1.0), k_static), (Dropout(jnp.asarray(1.0)), k_traced)):
            results.append(jax.vjp(lambda x, drop=drop, k=k: drop(x, key=k), x))
        return [(y, pullback(jnp.ones_like(y))[0]) for y, pullback in results]

    for y, grad in jax.device_get(run(jax.random.key(0), jax.random.key(1))):
        assert (y == 0).all() and not np.isnan(y).any()
        assert (grad == 0).all() and not np.isnan(grad).any()


def test_dropout_scales_kept_values_by_inverse_keep_probability():
    x = jnp.linspace(1.0, 2.0, 4096)
    rates = (0.25, 0.5, 0.8)
    ks = jax.random.split(jax.random.key(3), 3)
    ys = jax.device_get(
        jax.jit(lambda ks: [Dropout(r)(x, key=k) for r, k in zip(rates, ks, strict=True)])(ks)
    )
    for rate, y in zip(rates, ys, strict=True):
        kept = y != 0
        np.testing.assert_allclose(y[kept], np.asarray(x)[kept] / (1 - rate), rtol=1e-6)
        assert 0 < kept.sum() < x.size


@pytest.mark.parametrize("dtype", FLOATS, ids=lambda d: jnp.dtype(d).name)
def test_stochastic_layers_keep_dtype(dtype):
    layers = (Dropout(0.5), DropPath(0.5), GaussianNoise(0.5), Dropout(jnp.asarray(0.5)))
    x = jnp.ones((8, 4), dtype)

    @jax.jit
    def run(k):
        ks = jax.random.split(k, len(layers))
        train = [layer(x, key=k) for layer, k in zip(layers, ks, strict=True)]
        return train + [stoax.eval_mode(layer)(x) for layer in layers]

    assert all(y.dtype == dtype for y in run(jax.random.key(0)))


@pytest.mark.parametrize("layer", [Dropout(0.5), DropPath(0.5), GaussianNoise(0.5)])
def test_integer_input_refused_clearly(layer):
    with pytest.raises(
        TypeError, match=rf"^{type(layer).__name__}\(.*\): input must be a floating"
    ):
        layer(jnp.ones((2, 3), jnp.int32), key=jax.random.key(0))


@pytest.mark.parametrize("cls", [Dropout, DropPath])
@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), np.asarray([0.2, 1.2], np.float32)])
def test_rate_outside_unit_interval_refused_at_construction(cls, rate):
    with pytest.raises(ValueError, match=f"{cls.__name__}: .*rate.* in \\[0, 1\\]"):
        cls(rate)


@pytest.mark.parametrize("cls", [Dropout, DropPath])
def test_rate_of_wrong_type_refused(cls):
    with pytest.raises(TypeError, match=cls.__name__):
        cls(True)
    with pytest.raises(TypeError, match=cls.__name__):
        cls(np.asarray(1, np.int32))


def test_dropout_broadcast_dims_share_the_mask():
    x = jnp.ones((6, 32, 5))
    drop = Dropout(0.5, broadcast_dims=(0, -1))
    y = np.asarray(jax.jit(lambda k: drop(x, key=k))(jax.random.key(0)))
    assert (y == y[:1, :, :1]).all()  # one value per position of axis 1
    column = y[0, :, 0]
    assert (column == 0).any() and (column == 2).any()


def test_traced_rate_works_under_jit_and_vmaps_over_a_sweep(impl):
    x = jnp.ones(4096)
    rates = jnp.asarray([0.0, 0.25, 0.5, 1.0])
    sweep = jax.vmap(Dropout)(rates)  # one Dropout per rate, built under vmap
    assert stoax.trainable(sweep).rate is False  # a rate array is never trained

    @jax.jit
    def run(single, sweep, key):
        k_single, k_sweep = keys.derive(key, "single", "sweep")
        member_keys = jax.vmap(lambda i: keys.child(k_sweep, i))(jnp.arange(4))
        return single(x, key=k_single), jax.vmap(lambda d, k: d(x, key=k))(sweep, member_keys)

    y, ys = jax.device_get(run(Dropout(jnp.asarray(0.5)), sweep, jax.random.key(0)))
    assert set(np.unique(y).tolist()) == {0.0, 2.0}
    # Binomial bound: 6 standard deviations of a fraction of n = 4096 draws, sqrt(.25/n) <= 0.008.
    dropped = (ys == 0).mean(axis=1)
    np.testing.assert_allclose(dropped, np.asarray(rates), atol=6 * math.sqrt(0.25 / x.size))
    np.testing.assert_allclose(ys[1][ys[1] != 0], 1 / 0.75, rtol=1e-6)


def test_training_mode_without_key_raises_missing_key_error_naming_the_layer():
    for layer in (Dropout(0.5), DropPath(0.5), GaussianNoise(0.1)):
        with pytest.raises(MissingKeyError, match=type(layer).__name__):
            layer(jnp.ones((2, 3)))
        with pytest.raises(MissingKeyError, match=type(layer).__name__):
            stoax.set_mode(layer, jnp.asarray(False))(jnp.ones((2, 3)))  # traced: always a key


# ----------------------------------------------------------------------------- DropPath


def test_drop_path_masks_whole_examples_and_scales():
    x = jnp.ones((256, 3, 5))
    y = np.asarray(jax.jit(lambda k: DropPath(0.25)(x, key=k))(jax.random.key(0)))
    per_example = y.reshape(256, -1)
    assert (per_example == per_example[:, :1]).all()  # mask shape (batch, 1, 1)
    assert set(np.unique(per_example).tolist()) == {0.0, float(np.float32(1 / 0.75))}


def test_drop_path_rules_match_dropout():
    x = jnp.ones((4, 3))
    assert DropPath(0.0)(x) is x  # rate 0: identity, no key
    assert stoax.eval_mode(DropPath(0.9))(x) is x
    y = jax.jit(lambda k: DropPath(1.0)(x, key=k))(jax.random.key(0))
    assert (np.asarray(y) == 0).all()
    with pytest.raises(
        ValueError, match=r"DropPath\(rate=0.5.*\): input must have a leading batch axis"
    ):
        DropPath(0.5)(jnp.ones(()), key=jax.random.key(0))
    traced = DropPath(jnp.asarray(0.5))
    assert isinstance(traced.rate, jax.Array) and stoax.trainable(traced).rate is False


# ----------------------------------------------------------------------------- GaussianNoise


def test_gaussian_noise_adds_noise_of_stddev(impl):
    n, stddev = 100_000, 0.5
    x = jnp.full((n,), 2.0)
    y = jax.jit(lambda k: GaussianNoise(stddev)(x, key=k))(jax.random.key(0))
    noise = np.asarray(y, np.float64) - 2.0
    # Bounds of 6 standard deviations: the sample mean has sd stddev/sqrt(n); the sample variance
    # of a normal has sd stddev**2 * sqrt(2/n).
    assert abs(noise.mean()) <= 6 * stddev / math.sqrt(n)
    assert abs(noise.var() - stddev**2) <= 6 * stddev**2 * math.sqrt(2 / n)


def test_gaussian_noise_eval_identity_zero_stddev_and_validation():
    x = jnp.ones(3)
    assert stoax.eval_mode(GaussianNoise(1.0))(x) is x
    assert GaussianNoise(0.0)(x) is x  # no key needed
    for bad in (-0.1, float("nan"), np.asarray([-1.0], np.float32)):
        with pytest.raises(
            ValueError, match="GaussianNoise: .*stddev must be (a finite number|finite and) >= 0"
        ):
            GaussianNoise(bad)
    for bad in (True, "0.1", np.asarray(1, np.int32)):
        with pytest.raises(TypeError, match="GaussianNoise: stddev"):
            GaussianNoise(bad)
    swept = jax.vmap(GaussianNoise)(jnp.asarray([0.0, 1.0]))
    ks = jax.random.split(jax.random.key(0), 2)
    ys = np.asarray(jax.jit(jax.vmap(lambda m, k: m(x, key=k)))(swept, ks))
    assert (ys[0] == 1).all() and (ys[1] != 1).all()


# ----------------------------------------------------------------------------- traced training flag


def test_traced_training_flag_inside_scan(impl):
    layers = {"dropout": Dropout(0.5), "drop_path": DropPath(0.5), "noise": GaussianNoise(1.0)}
    x = jnp.ones((16, 8))
    flags = jnp.asarray([True, False, True, False])

    def body(_, inputs):
        flag, i = inputs
        step_layers = stoax.set_mode(layers, flag)  # a traced bool: no Python branch on it
        ks = keys.derive(keys.child(jax.random.key(0), i), *layers)
        return None, {n: m(x, key=k) for (n, m), k in zip(step_layers.items(), ks, strict=True)}

    _, out = jax.device_get(jax.jit(lambda: jax.lax.scan(body, None, (flags, jnp.arange(4))))())
    for name, ys in out.items():
        assert (ys[1] == 1).all() and (ys[3] == 1).all(), name  # eval steps: identity
        assert (ys[0] != 1).any() and (ys[2] != 1).any(), name  # train steps: random
        assert (ys[0] != ys[2]).any(), name  # and each step its own randomness


# ----------------------------------------------------------------------------- eval mode


@functools.cache
def _model():
    def make(key):
        k1, k2, k3 = keys.derive(key, "a", "b", "c")
        return Sequential(
            [
                Linear(8, 8, key=k1),
                Dropout(0.3),
                DropPath(0.2),
                GaussianNoise(0.1),
                MultiHeadAttention(8, 2, dropout=0.1, key=k2),
                Dropout(jnp.asarray(0.4)),
                Linear(8, 4, key=k3),
            ]
        )

    return jax.jit(make)(jax.random.key(0, impl="threefry2x32"))


def test_eval_mode_compiles_randomness_away(impl):
    model = _model()
    x = jnp.ones((2, 5, 8))
    forward = lambda m, k: m(x, key=k)
    train = primitive_names(jax.make_jaxpr(forward)(model, jax.random.key(1)))
    assert "random_bits" in train  # the helper sees through jit / custom_vjp
    evaluation = stoax.eval_mode(model)
    jaxpr = jax.make_jaxpr(forward)(evaluation, jax.random.key(1))
    assert "random_bits" not in primitive_names(jaxpr)
    assert "random_bits" not in primitive_names(jax.make_jaxpr(lambda m: m(x))(evaluation))
    traced = stoax.set_mode(model, jnp.asarray(False))  # traced: one program for both modes
    assert "random_bits" in primitive_names(jax.make_jaxpr(forward)(traced, jax.random.key(1)))


# ----------------------------------------------------------------------------- MultiHeadAttention


def _reference_attention(attn, query, context, mask=None):
    """Direct einsum attention from the module's weights, no dropout."""

    def proj(layer, x):
        return x @ layer.weight + layer.bias

    h = attn.num_heads
    q, k, v = (
        proj(attn.query_proj, query),
        proj(attn.key_proj, context),
        proj(attn.value_proj, context),
    )
    split = lambda t: t.reshape(*t.shape[:-1], h, t.shape[-1] // h)
    q, k, v = split(q), split(k), split(v)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    probs = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("...hqk,...khd->...qhd", probs, v)
    return proj(attn.out_proj, out.reshape(*out.shape[:-2], -1))


def test_attention_matches_einsum_reference_with_leading_batch_dims():
    attn = build(MultiHeadAttention, 8, 2, qkv_features=12, out_features=6)
    cross = build(MultiHeadAttention, 8, 2, context_features=5)
    x, context = normal(2, 3, 7, 8), normal(2, 3, 9, 5, seed=1)

    @jax.jit
    def both(attn, cross):  # dropout 0.0: no key needed
        return (
            (attn(x), _reference_attention(attn, x, x)),
            (cross(x, context), _reference_attention(cross, x, context)),
        )

    (out, ref), (out_cross, ref_cross) = both(attn, cross)
    assert out.shape == (2, 3, 7, 6) and out_cross.shape == (2, 3, 7, 8)
    np.testing.assert_allclose(out, ref, atol=1e-5)
    np.testing.assert_allclose(out_cross, ref_cross, atol=1e-5)


def test_attention_mask_and_causal():
    attn = build(MultiHeadAttention, 8, 2)
    causal = attn.replace(causal=True)  # same weights
    x = normal(3, 6, 8)
    padding = jnp.arange(6) < jnp.asarray([6, 4, 2])[:, None]  # (batch, kv_len)
    mask = padding[:, None, None, :]  # broadcast to (batch, heads, q_len, kv_len)
    tril = jnp.tril(jnp.ones((6, 6), bool))
    nothing = jnp.zeros((6, 6), bool)  # no key allowed: zeros before out_proj, and no NaN

    @jax.jit
    def run(attn, causal):
        grad = jax.grad(lambda m: m(x, mask=nothing).sum())(attn)
        return (
            (attn(x, mask=mask), _reference_attention(attn, x, x, mask)),
            (causal(x), attn(x, mask=tril), _reference_attention(attn, x, x, tril)),
            (attn(x, mask=nothing), grad),
        )

    (padded, padded_ref), (c, c_mask, c_ref), (empty, grad) = run(attn, causal)
    np.testing.assert_allclose(padded, padded_ref, atol=1e-5)
    np.testing.assert_allclose(c, c_mask, atol=1e-6)
    np.testing.assert_allclose(c, c_ref, atol=1e-5)
    np.testing.assert_allclose(empty, jnp.broadcast_to(attn.out_proj.bias, empty.shape))
    assert not any(jnp.isnan(g).any() for g in jax.tree.leaves(grad))

    with pytest.raises(TypeError, match="MultiHeadAttention: mask must be a boolean"):
        jax.eval_shape(lambda: attn(x, mask=tril.astype(jnp.float32)))
    with pytest.raises(ValueError, match="does not broadcast"):
        jax.eval_shape(lambda: attn(x, mask=jnp.ones((5, 6), bool)))


def test_attention_under_vmap_and_jit():
    attn = build(MultiHeadAttention, 8, 2).replace(dropout=Dropout(0.5))
    x = normal(4, 5, 8)
    evaluation = stoax.eval_mode(attn)
    ks = jax.random.split(jax.random.key(2), 4)

    @jax.jit
    def run(attn, evaluation, ks):
        train = jax.vmap(lambda x, k: attn(x, key=k))(x, ks)
        return jax.vmap(evaluation)(x), evaluation(x), train

    vmapped, batched, train = run(attn, evaluation, ks)
    np.testing.assert_allclose(vmapped, batched, atol=1e-6)
    assert train.shape == x.shape and not jnp.isnan(train).any()
    assert not np.allclose(train, batched)


def test_attention_probabilities_are_dropped_in_training(impl):
    # One head, value and output projections the identity, context the identity matrix: row q of
    # the output IS the probability row of query q.
    attn = build(MultiHeadAttention, 8, 2).replace(num_heads=1, dropout=Dropout(0.5))
    eye = attn.value_proj.replace(weight=jnp.eye(8), bias=jnp.zeros(8))
    attn = attn.replace(value_proj=eye, out_proj=eye)
    context, query = jnp.eye(8), normal(64, 8, 8)
    key = jax.random.key(3)

    @jax.jit
    def run(attn, key):
        probs = stoax.eval_mode(attn)(query, context)
        dropped = attn(query, context, key=key)
        # The dropout key is derived by name: exactly Dropout(0.5) on the probabilities.
        expected = Dropout(0.5)(probs, key=keys.child(key, "dropout"))
        return probs, dropped, expected

    probs, dropped, expected = run(attn, key)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    kept = dropped != 0
    np.testing.assert_allclose(dropped[kept], 2 * probs[kept], rtol=1e-5)
    frac = float(1 - kept.mean())
    assert abs(frac - 0.5) <= 6 * math.sqrt(0.25 / kept.size)  # binomial bound, 6 sd
    np.testing.assert_allclose(dropped, expected, rtol=1e-5, atol=1e-7)


def test_attention_mode_key_and_construction_rules():
    attn = build(MultiHeadAttention, 8, 2).replace(dropout=Dropout(0.2))
    assert stoax.eval_mode(attn).dropout.training is False
    assert isinstance(stoax.set_mode(attn, jnp.asarray(True)).dropout.training, jax.Array)
    x = jnp.ones((3, 8))
    with pytest.raises(MissingKeyError, match=r"^MultiHeadAttention\.dropout \(Dropout\("):
        jax.eval_shape(lambda: attn(x))
    jax.eval_shape(lambda: stoax.eval_mode(attn)(x))  # no key in evaluation
    with pytest.raises(ValueError, match="multiple of num_heads"):
        MultiHeadAttention(10, 3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="Dropout: rate must be in"):
        jax.eval_shape(lambda: MultiHeadAttention(8, 2, dropout=2.0, key=jax.random.key(0)))
    params, _ = stoax.partition(attn)
    assert params.num_heads == 2 and type(params.dropout.rate) is float


def test_missing_key_error_names_the_field_path_of_the_layer():
    # The error names where the layer sits, through containers, jit and the Stack's lax.scan.
    encoder = stoax.nn.TransformerEncoder(
        10, 10, features=8, num_heads=2, dropout=0.0, key=jax.random.key(0)
    )
    tokens = jnp.zeros((2, 5), jnp.int32)
    with pytest.raises(MissingKeyError) as error:
        jax.jit(lambda m, t: m(t))(encoder, tokens)
    assert str(error.value).startswith("TransformerEncoder.blocks.layers.attn.dropout (Dropout(")
    assert "Pass key=" in str(error.value) and "eval_mode" in str(error.value)

    seq = stoax.nn.Sequential([Linear(3, 3, key=jax.random.key(0)), jnp.tanh, Dropout(0.5)])
    with pytest.raises(MissingKeyError, match=r"^Sequential\.layers\[2\] \(Dropout\(rate=0\.5"):
        seq(jnp.ones(3))
    with pytest.raises(MissingKeyError, match=r"^Dropout\(rate=0\.5.*training mode"):
        Dropout(0.5)(jnp.ones(3))  # a layer on its own is named by itself


def test_alpha_dropout_checks_its_fields_on_replace_too():
    # The one validation path (__check_init__): a bad rate is refused however it arrives.
    layer = stoax.nn.AlphaDropout(0.1)
    with pytest.raises(ValueError, match="AlphaDropout"):
        layer.replace(rate=1.5)
    with pytest.raises(ValueError, match="below 1"):
        layer.replace(rate=1.0)
    with pytest.raises((TypeError, ValueError), match="AlphaDropout"):
        layer.replace(training="yes")
