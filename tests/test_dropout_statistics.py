"""Statistics of the stochastic layers, with fixed seeds and tolerances from the binomial bound.

Tolerances. A mask element is dropped with probability p, independently. Over n elements the
fraction dropped has mean p and standard deviation sqrt(p(1-p)/n) (binomial). We accept 6 standard
deviations: a correct implementation fails with probability about 2e-9 per check, and with the
seeds fixed the tests are deterministic anyway; a biased threshold (e.g. off by 1/256 from float
rounding) or a shared mask is many bounds away at n = 10**6.

Correlation. For two independent 0/1 masks of n elements, the sample (Pearson) correlation r has
mean 0 and standard deviation 1/sqrt(n) (asymptotically normal); we accept |r| <= 6/sqrt(n).
Two layers sharing a key would give r = 1; keys that differ only slightly but feed a correlated
generator would show up as |r| far above 0.006 at n = 10**6.

Mean of the output. For an input constant c, an output element is c/(1-p) with probability 1-p
and 0 otherwise: mean c, variance c**2 p/(1-p). The sample mean of n elements therefore has
standard deviation c sqrt(p/((1-p) n)); we accept 6 of them.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax import keys
from stoax.nn import Dropout, DropPath, Sequential

N = 10**6
SIGMAS = 6


def binomial_bound(p: float, n: int) -> float:
    return SIGMAS * math.sqrt(p * (1 - p) / n)


def correlation(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg", "unsafe_rbg"])
def test_fraction_dropped_matches_the_rate(impl):
    rates = (0.1, 0.5, 0.9)
    key = jax.random.key(0, impl=impl)

    @jax.jit
    def fractions(key):
        ks = keys.derive(key, *[str(r) for r in rates])
        return [
            jnp.mean(Dropout(r)(jnp.ones(N), key=k) == 0) for r, k in zip(rates, ks, strict=True)
        ]

    for rate, fraction in zip(rates, jax.device_get(fractions(key)), strict=True):
        assert abs(float(fraction) - rate) <= binomial_bound(rate, N), (impl, rate, fraction)


def test_traced_rate_fraction_matches_the_rate():
    rates = jnp.asarray([0.1, 0.5, 0.9])
    member_keys = jax.random.split(jax.random.key(1), 3)
    fractions = jax.jit(jax.vmap(lambda rate, k: jnp.mean(Dropout(rate)(jnp.ones(N), key=k) == 0)))(
        rates, member_keys
    )
    for rate, fraction in zip(rates.tolist(), fractions.tolist(), strict=True):
        assert abs(fraction - rate) <= binomial_bound(rate, N), (rate, fraction)


def _kept(layer, key, shape=(N,)):
    return layer(jnp.ones(shape), key=key) != 0


def test_masks_of_two_layers_in_one_forward_pass_are_uncorrelated():
    model = Sequential([Dropout(0.5), Dropout(0.5)])
    key = jax.random.key(2)

    @jax.jit
    def run(key):
        x = jnp.ones(N)
        out = model(x, key=key)
        # The keys Sequential gives its layers: child(key, position).
        m0 = _kept(model[0], keys.child(key, 0))
        m1 = _kept(model[1], keys.child(key, 1))
        return out, m0, m1

    out, m0, m1 = jax.device_get(run(key))
    np.testing.assert_array_equal(out != 0, m0 & m1)  # these are the masks of the forward pass
    assert abs(correlation(m0, m1)) <= SIGMAS / math.sqrt(N)


def test_masks_of_two_successive_steps_are_uncorrelated():
    drop = Dropout(0.5)
    step = jax.jit(lambda s: _kept(drop, stoax.step_key(0, s)))
    assert abs(correlation(step(0), step(1))) <= SIGMAS / math.sqrt(N)


def test_masks_of_two_vmapped_members_are_uncorrelated():
    drop = Dropout(0.5)

    @jax.jit
    def members(key):  # an ensemble of 2: each member's key derived by its index
        return jax.vmap(lambda i: _kept(drop, keys.child(key, i)))(jnp.arange(2))

    m = jax.device_get(members(jax.random.key(3)))
    assert abs(correlation(m[0], m[1])) <= SIGMAS / math.sqrt(N)


def test_masks_of_scan_steps_are_uncorrelated():
    drop = Dropout(0.5)
    n = N // 4

    @jax.jit
    def run(key):  # a time loop: step t gets child(key, t)
        return jax.lax.scan(
            lambda _, t: (None, _kept(drop, keys.child(key, t), (n,))), None, jnp.arange(4)
        )[1]

    m = jax.device_get(run(jax.random.key(4)))
    for i in range(4):
        for j in range(i):
            assert abs(correlation(m[i], m[j])) <= SIGMAS / math.sqrt(n), (i, j)


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_mean_of_the_output_equals_the_input(rate):
    c = 3.0
    ys = jax.jit(lambda k: Dropout(rate)(jnp.full((N,), c), key=k))(jax.random.key(5))
    mean = float(np.asarray(ys, np.float64).mean())
    assert abs(mean - c) <= SIGMAS * c * math.sqrt(rate / ((1 - rate) * N)), mean


def test_drop_path_fraction_and_mean():
    # One draw per example: n = batch examples, each an independent Bernoulli.
    rate, batch = 0.3, 200_000
    x = jnp.full((batch, 4), 2.0)
    y = np.asarray(jax.jit(lambda k: DropPath(rate)(x, key=k))(jax.random.key(6)), np.float64)
    dropped = (y[:, 0] == 0).mean()
    assert abs(dropped - rate) <= binomial_bound(rate, batch)
    assert abs(y.mean() - 2.0) <= SIGMAS * 2.0 * math.sqrt(rate / ((1 - rate) * batch))
