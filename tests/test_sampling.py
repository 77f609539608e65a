"""The samplers draw from the distribution they promise: ``softmax(logits / T)`` restricted to
the top-k / nucleus and renormalised, checked with a chi-square test; tokens outside are never
drawn.

Significance. Each configuration draws M = 20_000 tokens with fixed keys and compares the counts
with the expected distribution (computed here in NumPy, independently of stoax) by Pearson's
chi-square test; it passes when the p-value exceeds ALPHA = 1e-3. Over the 5 configurations a
correct sampler fails by chance with probability below 5e-3 -- and never, since the seeds are
fixed: the significance says the tolerance was not tuned to pass. Power: the same counts tested
against the distribution without the temperature / filter are rejected (p < 1e-12).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from stoax.inference import Sampler, example_keys, top_k_filter, top_p_filter

ALPHA = 1e-3
M = 20_000
LOGITS = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, 0.3, 0.8, -2.0], np.float32)


def expected(temperature=1.0, top_k=None, top_p=None):
    """softmax(logits / T), restricted by top-k then top-p, renormalised (NumPy)."""
    z = LOGITS.astype(np.float64) / temperature
    q = np.exp(z - z.max())
    q /= q.sum()
    order = np.argsort(-q, kind="stable")
    keep = np.zeros_like(q, bool)
    keep[order[: top_k or len(q)]] = True
    q = np.where(keep, q, 0.0)
    q /= q.sum()
    if top_p is not None:
        mass_before = np.cumsum(q[order]) - q[order]
        nucleus = np.zeros_like(keep)
        nucleus[order[mass_before < top_p]] = True
        q = np.where(nucleus, q, 0.0)
        q /= q.sum()
    return q


def draw(sampler, seed):
    logits = jnp.broadcast_to(jnp.asarray(LOGITS), (M, LOGITS.size))
    # logits as an argument, not a closed-over constant: XLA would constant-fold the filters
    tokens = jax.jit(lambda lg, k: sampler(lg, key=k))(
        logits, example_keys(jax.random.key(seed), M)
    )
    return np.bincount(np.asarray(tokens), minlength=LOGITS.size)


def chi_square_p(counts, q):
    support = q > 0
    e = M * q[support]
    stat = (((counts[support] - e) ** 2) / e).sum()
    return stats.chi2.sf(stat, df=support.sum() - 1)


CONFIGS = [
    dict(temperature=1.0),
    dict(temperature=0.5),
    dict(top_k=4),
    dict(top_p=0.7),
    dict(temperature=1.5, top_k=6, top_p=0.9),
]


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
)
def test_frequencies_match_the_restricted_softmax(config):
    counts = draw(Sampler(**config), seed=len(CONFIGS) + sum(map(hash, config)) % 1000)
    q = expected(**config)
    assert counts[q == 0].sum() == 0, (counts, q)  # outside the top-k / nucleus: never
    p_value = chi_square_p(counts, q)
    assert p_value > ALPHA, (config, counts, M * q, p_value)
    # Power: the distribution without this configuration is rejected outright.
    if config != dict(temperature=1.0):
        wrong = expected()
        assert counts[wrong == 0].sum() > 0 or chi_square_p(counts, wrong) < 1e-12


def test_filters_keep_what_they_promise():
    logits = jnp.asarray(LOGITS)
    assert int(jnp.isfinite(top_k_filter(logits, 3)).sum()) == 3
    assert int(jnp.isfinite(top_p_filter(logits, 1e-6)).sum()) == 1  # the top token, always
    assert int(jnp.isfinite(top_p_filter(logits, 1.0)).sum()) == LOGITS.size
    ties = jnp.array([1.0, 1.0, 0.0])
    assert jnp.isfinite(top_k_filter(ties, 1)).tolist() == [True, True, False]  # ties kept
    counts = draw(Sampler(top_p=1e-6), seed=1)
    assert counts[int(LOGITS.argmax())] == M  # a nucleus of one token is greedy


def test_sampler_checks_its_settings_and_keys():
    for bad in (dict(temperature=0.0), dict(top_k=0), dict(top_p=1.5), dict(top_p=0.0)):
        with pytest.raises(ValueError):
            Sampler(**bad)
    with pytest.raises(ValueError, match="greedy"):
        Sampler(temperature=0.0)
    logits = jnp.zeros((4, 5))
    with pytest.raises(ValueError, match="one key per row"):
        Sampler()(logits, key=jax.random.key(0))
    with pytest.raises(ValueError, match="needs keys"):
        Sampler()(logits)
    assert Sampler(greedy=True)(jnp.eye(3)).tolist() == [0, 1, 2]
