"""The dtype policy: float32 parameters, bfloat16 computation (``stoax.cast``), dropout in bf16."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import stoax


def test_cast_touches_floating_arrays_only_and_gives_float32_gradients():
    model = stoax.nn.Sequential(
        [stoax.nn.Embedding(8, 4, key=jax.random.key(0)), stoax.nn.Dropout(jnp.asarray(0.1))]
    )
    low = stoax.cast(model, jnp.bfloat16)
    assert low.layers[0].weight.dtype == jnp.bfloat16
    ids = jnp.arange(3)
    grads = jax.grad(lambda m: stoax.cast(m, jnp.bfloat16)(ids, key=jax.random.key(1)).sum())(model)
    assert grads.layers[0].weight.dtype == jnp.float32
    assert stoax.cast({"step": jnp.arange(2)}, jnp.bfloat16)["step"].dtype == jnp.int32
    with pytest.raises(TypeError, match="floating"):
        stoax.cast(model, jnp.int32)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_dropout_in_low_precision_keeps_its_statistics(dtype):
    n, rate = 10**6, 0.1
    y = np.asarray(stoax.nn.Dropout(rate)(jnp.ones(n, dtype), key=jax.random.key(3)), np.float32)
    fraction = (y == 0).mean()
    # binomial bound: 6 standard deviations of the fraction of n independent drops
    assert abs(fraction - rate) <= 6 * math.sqrt(rate * (1 - rate) / n)
    # kept elements: one value, 1/(1-rate) in the dtype's precision
    kept = np.unique(y[y != 0])
    assert len(kept) == 1 and abs(kept[0] - 1 / (1 - rate)) <= 1 / (1 - rate) * 2**-7
    # and the mean stays 1 within the rounding of the dtype and the sampling error
    assert abs(y.mean() - 1.0) <= 6 * math.sqrt(rate / ((1 - rate) * n)) + 2e-3


def test_bf16_training_tracks_float32():
    # A 200-step run of a tiny Transformer (dropout 0.1 everywhere), once in float32 and once
    # with bfloat16 computation (float32 parameters and optimiser): the same keys, the same data.
    # Tolerance: the mean loss over the last 20 steps agrees within 2%, every step within 5%
    # (bf16 keeps 8 bits of mantissa, ~0.4% per rounding, and the runs drift apart slowly;
    # measured with jax 0.10.2 on CPU: 0.01% over the last 20 steps, at most 1.0% at one step).
    vocab, steps = 16, 200
    model = stoax.nn.TransformerEncoder(
        vocab_size=vocab, out_features=vocab, features=16, num_heads=2, num_layers=1,
        max_len=16, dropout=0.1, attention_dropout=0.1, key=jax.random.key(0),
    )  # fmt: skip
    params, rest = stoax.partition(model)
    # a learnable sequence: each token is the previous one plus one (mod vocab)
    start = jax.random.randint(jax.random.key(1), (8, 1), 0, vocab)
    tokens = (start + jnp.arange(16)) % vocab
    opt = optax.adam(3e-3)

    def run(dtype):
        def step(state, key):
            params, opt_state = state

            def loss(p):
                m = stoax.cast(stoax.combine(p, rest), dtype)
                logits = m(tokens, key=key).astype(jnp.float32)
                labels = tokens[:, 1:]
                return optax.softmax_cross_entropy_with_integer_labels(
                    logits[:, :-1], labels
                ).mean()

            value, grads = jax.value_and_grad(loss)(params)
            assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        # the 200 steps as one lax.scan (one compilation); step i's key is stoax.step_key(0, i)
        step_keys = jax.vmap(lambda i: stoax.step_key(0, i))(jnp.arange(steps))
        _, losses = jax.jit(lambda s: jax.lax.scan(step, s, step_keys))((params, opt.init(params)))
        return np.asarray(losses)

    f32, bf16 = run(jnp.float32), run(jnp.bfloat16)
    assert f32[-20:].mean() < 0.5 * f32[:5].mean()  # it learns
    assert abs(bf16[-20:].mean() - f32[-20:].mean()) <= 0.02 * f32[-20:].mean()
    assert (np.abs(bf16 - f32) <= 0.05 * f32).all()
