"""Dropout masks of recurrent networks, read off exactly and checked with the binomial bound of
``tests/_independence.py`` (z = 6: a false failure below 1e-7 per test; fixed seeds).

Variational masks: identical at every time step; pairwise independent across sequences (forward
passes), examples, layers and directions. Per-step masks: independent across time steps.

The masks are observed through cells whose weights make them visible: an "identity" Elman cell
(input kernel I, recurrent kernel 0, linear activation) outputs its dropped input, so its output
at step t is ``x_t * mask_t / keep``; a "counter" cell (input kernel 0, bias 1, recurrent kernel
I) computes ``h_t = 1 + dropped(h_{t-1})``, so ``h_t != 1`` exactly where the recurrent mask of
step t keeps (``h_{t-1} >= 1``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _independence import Z, assert_independent

import stoax
from stoax import keys

B, T, N = 64, 4, 128  # 8192 mask elements per step
RATE = 0.5
KEEP = 1 - RATE


def _linear(x):
    return x


def identity_rnn(**rates):
    cell = stoax.nn.SimpleCell(N, N, _linear, key=jax.random.key(0))
    cell = cell.replace(input_kernel=jnp.eye(N), recurrent_kernel=jnp.zeros((N, N)))
    return stoax.nn.RNN(cell, **rates)


def counter_rnn(**rates):
    cell = stoax.nn.SimpleCell(N, N, _linear, key=jax.random.key(0))
    cell = cell.replace(
        input_kernel=jnp.zeros((N, N)), recurrent_kernel=jnp.eye(N), bias=jnp.ones(N)
    )
    return stoax.nn.RNN(cell, **rates)


ONES = jnp.ones((B, T, N))


def masks_of(ys):
    """(B, T, N) outputs -> (T, B, N) keep-masks."""
    return np.moveaxis(np.asarray(ys) != 0, 1, 0)


def recurrent_masks_of(hs):
    """Counter-cell states (B, T, N) -> keep-masks of steps 1..T-1, (T-1, B, N)."""
    return np.moveaxis(np.asarray(hs)[:, 1:] != 1, 1, 0)


def assert_same_at_every_step(masks):
    for t in range(1, len(masks)):
        np.testing.assert_array_equal(masks[t], masks[0])


def assert_examples_independent(mask):
    """(B, N) mask: its two halves of examples as two masks."""
    assert_independent(mask.reshape(2, -1), KEEP)


def test_variational_masks_are_fixed_in_time_and_independent_across_sequences_and_examples():
    paths = {
        "input": (identity_rnn(dropout=RATE), ONES, masks_of),
        "output": (identity_rnn(output_dropout=RATE), ONES, masks_of),
        "recurrent": (counter_rnn(recurrent_dropout=RATE), 0 * ONES, recurrent_masks_of),
    }
    firsts = []
    for rnn, x, read in paths.values():
        seq = [read(rnn(x, key=stoax.step_key(0, step))) for step in range(2)]
        for masks in seq:
            assert_same_at_every_step(masks)
            assert_examples_independent(masks[0])
        assert_independent(np.stack([seq[0][0], seq[1][0]]), KEEP)  # two sequences
        firsts.append(seq[0][0])
    assert_independent(np.stack(firsts), KEEP)  # the three paths of one RNN


def test_per_step_masks_are_independent_across_steps():
    for rnn, x, read in [
        (identity_rnn(dropout=RATE, dropout_mode="per_step"), ONES, masks_of),
        (identity_rnn(output_dropout=RATE, dropout_mode="none"), ONES, masks_of),
        (
            counter_rnn(recurrent_dropout=RATE, dropout_mode="per_step"),
            0 * ONES,
            recurrent_masks_of,
        ),
    ]:
        masks = read(rnn(x, key=jax.random.key(3)))
        assert_independent(masks, KEEP)


def test_variational_masks_differ_across_directions_and_layers():
    rnn = identity_rnn(dropout=RATE)
    out = stoax.nn.Bidirectional(rnn, rnn)(ONES, key=jax.random.key(4))
    forward, backward = masks_of(out[..., :N]), masks_of(out[..., N:])
    assert_same_at_every_step(forward)
    assert_same_at_every_step(backward)
    assert_independent(np.stack([forward[0], backward[0]]), KEEP)

    # Two layers: the second sees the first's dropped output, so an element survives both
    # with probability keep**2 if the layers' masks are independent (keep if they were the
    # same). Layer 0's own mask is observed by running it alone with its key, child(key, 0).
    key = jax.random.key(5)
    both = masks_of(stoax.nn.StackedRNN([rnn, rnn])(ONES, key=key))[0]
    first = masks_of(rnn(ONES, key=keys.child(key, 0)))[0]
    assert not (both & ~first).any()
    n, q = both.size, KEEP**2
    assert abs(both.mean() - q) < Z * np.sqrt(q * (1 - q) / n), both.mean()
    stack = stoax.nn.Stack.from_layers([rnn, rnn])
    np.testing.assert_array_equal(masks_of(stack(ONES, key=key))[0], both)
