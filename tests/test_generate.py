"""Generation with a KV cache: cached logits equal the full prefix's at every step, and the
promises of ``stoax.inference.generate`` -- same key same text, batch invariance, resume equals
uninterrupted, a stop per example -- with the auditor finding nothing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax import keys
from stoax.inference import Sampler, example_keys, generate

V, P, N = 13, 6, 64  # vocabulary, prompt length, new tokens


@pytest.fixture(scope="module")
def lm():
    model = stoax.nn.TransformerEncoder(
        V,
        V,
        features=16,
        num_heads=2,
        num_layers=2,
        max_len=P + N,
        causal=True,
        key=jax.random.key(0),
    )
    return stoax.eval_mode(model)


def prompts(seed, batch=8):
    return jax.random.randint(jax.random.key(seed), (batch, P), 0, V)


SAMPLER = Sampler(temperature=1.3)  # flat: many distinct tokens, so the tests can tell apart


def test_cached_logits_equal_full_prefix_at_every_step(lm):
    out = generate(lm, prompts(1), key=jax.random.key(2), max_new_tokens=N, sampler=SAMPLER)
    seq = jnp.concatenate([prompts(1), out.tokens], axis=1)  # (8, P + N)

    @jax.jit
    def cached_logits(lm, seq):
        cache = lm.init_cache((seq.shape[0],))
        first, cache = lm.decode(seq[:, :P], cache)  # prefill, then one token per step

        def step(cache, token):
            logits, cache = lm.decode(token[:, None], cache)
            return cache, logits[:, 0]

        _, rest = jax.lax.scan(step, cache, seq[:, P:].T)
        return jnp.concatenate([first, rest.transpose(1, 0, 2)], axis=1)

    cached = cached_logits(lm, seq)  # logits after each of the P + N tokens
    full = lm(seq)  # causal: position p of the full run is the prefix seq[:, :p+1]
    np.testing.assert_allclose(cached, full, rtol=1e-5, atol=1e-5)
    p = P + 17  # and a prefix run on its own
    np.testing.assert_allclose(cached[:, p - 1], lm(seq[:, :p])[:, -1], rtol=1e-5, atol=1e-5)
    assert len(lm.blocks) == 2 and cached.shape == (8, P + N, V)


def test_cached_and_uncached_generation_agree(lm):
    k = jax.random.key(3)
    cached = generate(lm, prompts(1), key=k, max_new_tokens=N, sampler=SAMPLER)
    uncached = generate(lm, prompts(1), key=k, max_new_tokens=N, sampler=SAMPLER, use_cache=False)
    np.testing.assert_array_equal(cached.tokens, uncached.tokens)
    assert cached.state.cached and not uncached.state.cached


def test_same_key_same_tokens_different_key_different(lm):
    run = [
        generate(lm, prompts(1), key=jax.random.key(s), max_new_tokens=N, sampler=SAMPLER).tokens
        for s in (4, 4, 5)
    ]
    np.testing.assert_array_equal(run[0], run[1])
    differ = (np.asarray(run[0]) != np.asarray(run[2])).mean(axis=1)
    assert (differ > 0.3).all(), differ  # every example changes, not one token somewhere


def test_each_step_and_example_draws_with_its_own_key(lm):
    """Token p of example i is drawn with child(child(key, i), p): reproduce it by hand."""
    key = jax.random.key(6)
    out = generate(lm, prompts(1), key=key, max_new_tokens=N, sampler=SAMPLER)
    logits = lm(jnp.concatenate([prompts(1), out.tokens], axis=1))
    for i, t in [(0, 0), (0, 1), (7, 0), (7, 40), (3, N - 1)]:
        k = keys.child(keys.child(jax.random.key(6), i), P + t)
        expected = jax.random.categorical(k, SAMPLER.process(logits[i, P + t - 1]))
        assert int(out.tokens[i, t]) == int(expected), (i, t)


def ks(seed, batch=8):
    """Fresh per-example keys (a new array each call: the same keys, never the same array
    consumed twice)."""
    return example_keys(jax.random.key(seed), batch)


def test_batch_invariance(lm):
    """Example i's tokens: alone, in a batch of 8, in a batch of 8 with other neighbours."""
    batch = generate(lm, prompts(1), key=ks(7), max_new_tokens=N, sampler=SAMPLER).tokens
    others = prompts(2)
    for i in (0, 3, 7):
        alone = generate(
            lm, prompts(1)[i : i + 1], key=ks(7)[i : i + 1], max_new_tokens=N, sampler=SAMPLER
        ).tokens
        np.testing.assert_array_equal(alone[0], batch[i])
        mixed = generate(
            lm,
            others.at[i].set(prompts(1)[i]),
            key=ks(8).at[i].set(ks(7)[i]),
            max_new_tokens=N,
            sampler=SAMPLER,
        ).tokens
        np.testing.assert_array_equal(mixed[i], batch[i])
    # One key for the batch: example i keeps its key in a larger batch.
    eight = generate(lm, prompts(1), key=jax.random.key(9), max_new_tokens=N, sampler=SAMPLER)
    sixteen = generate(
        lm,
        jnp.concatenate([prompts(1), prompts(2)]),
        key=jax.random.key(9),
        max_new_tokens=N,
        sampler=SAMPLER,
    )
    np.testing.assert_array_equal(sixteen.tokens[:8], eight.tokens)


def test_batch_invariance_with_prompts_of_other_lengths(lm):
    """Right-padded prompts of several lengths: an example's tokens do not depend on the
    neighbours' lengths (with a fixed cache_len)."""
    prompt = prompts(3)
    lengths = jnp.array([6, 2, 4, 3, 6, 1, 5, 2])
    kw = dict(max_new_tokens=N, sampler=SAMPLER, cache_len=P + N)
    batch = generate(lm, prompt, key=ks(10), prompt_lengths=lengths, **kw).tokens
    for i in (1, 2):
        alone = generate(lm, prompt[i : i + 1, : int(lengths[i])], key=ks(10)[i : i + 1], **kw)
        np.testing.assert_array_equal(alone.tokens[0], batch[i])


def test_resumed_generation_equals_uninterrupted(lm):
    key = jax.random.key(11)
    kw = dict(sampler=SAMPLER, end_token=0, pad_token=V)
    whole = generate(lm, prompts(1), key=key, max_new_tokens=N, **kw)
    first = generate(lm, prompts(1), key=key, max_new_tokens=25, cache_len=P + N, **kw)
    rest = generate(lm, first.state, key=key, max_new_tokens=N - 25, **kw)
    np.testing.assert_array_equal(jnp.concatenate([first.tokens, rest.tokens], 1), whole.tokens)
    np.testing.assert_array_equal(first.lengths + rest.lengths, whole.lengths)
    full = generate(lm, prompts(1), key=key, max_new_tokens=N, sampler=SAMPLER)  # no room left
    with pytest.raises(ValueError, match="cache_len"):  # a cache too short is refused
        generate(lm, full.state, key=jax.random.key(11), max_new_tokens=1)


def test_stop_at_end_token_per_example(lm):
    key = jax.random.key(12)
    free = np.asarray(generate(lm, prompts(1), key=key, max_new_tokens=N, sampler=SAMPLER).tokens)
    end = 0
    assert (free == end).any(axis=1).sum() >= 4  # most examples emit it somewhere
    out = generate(
        lm, prompts(1), key=key, max_new_tokens=N, sampler=SAMPLER, end_token=end, pad_token=V
    )
    tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    for i in range(8):
        hits = np.flatnonzero(free[i] == end)
        n = hits[0] + 1 if hits.size else N
        assert lengths[i] == n
        np.testing.assert_array_equal(tokens[i, :n], free[i, :n])  # same draws up to the stop
        assert (tokens[i, n:] == V).all()  # then padding
    assert (lengths < N).sum() >= 4 and bool(out.state.done.any())


def test_greedy_needs_no_key_and_is_the_argmax(lm):
    out = generate(lm, prompts(1), key=None, max_new_tokens=N, sampler=Sampler(greedy=True))
    seq = jnp.concatenate([prompts(1), out.tokens], axis=1)
    np.testing.assert_array_equal(out.tokens, lm(seq)[:, P - 1 : -1].argmax(-1))
    with pytest.raises(ValueError, match="needs a key"):
        generate(lm, prompts(1), key=None, max_new_tokens=5)


def test_errors_say_what_to_do(lm):
    with pytest.raises(ValueError, match=r"prompt\[None\]"):
        generate(lm, prompts(1)[0], key=jax.random.key(0), max_new_tokens=2)
    with pytest.raises(ValueError, match="one per example"):
        generate(lm, prompts(1), key=jax.random.split(jax.random.key(0), 3), max_new_tokens=2)
    with pytest.raises(ValueError, match="max_len"):
        lm.init_cache((2,), P + N + 1)
    with pytest.raises(ValueError, match="causal=True"):
        attn = stoax.nn.MultiHeadAttention(8, 2, key=jax.random.key(0))
        attn.decode(jnp.ones((1, 1, 8)), attn.init_cache((1,), 4))
    # A position past the cache: NaN, never a plausible output.
    attn = stoax.nn.MultiHeadAttention(8, 2, causal=True, key=jax.random.key(0))
    y, _ = attn.decode(jnp.ones((1, 3, 8)), attn.init_cache((1,), 2))
    assert np.isfinite(y[0, :2]).all() and np.isnan(y[0, 2]).all()


def test_a_model_in_training_mode_is_refused_with_the_fix(lm):
    with pytest.raises(ValueError, match=r"eval_mode\(model\)"):
        generate(stoax.train_mode(lm), prompts(1), key=jax.random.key(0), max_new_tokens=N)


def test_audit_finds_nothing_in_generate(lm):
    def sample(lm, prompt, key):
        return generate(lm, prompt, key=key, max_new_tokens=8, sampler=SAMPLER, end_token=0)

    report = stoax.audit(sample, lm, prompts(1), jax.random.key(0))
    assert report.ok, report
