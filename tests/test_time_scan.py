"""``stoax.scan``: step ``t`` gets ``keys.child(key, t)``; the scan is bitwise the Python loop over
time, with and without remat, forwards and in reverse; a traced train/eval flag works.
Both sides of each comparison run under ``jax.jit``.

Inputs carry a batch axis. With an unbatched vector input the weight gradient of each step is an
outer product, which XLA turns into a multiply and fuses with the accumulation of the gradient
over steps; on CPU that fused multiply-add rounds once (FMA) inside the scan body and differently
in the unrolled loop, so the shared weight's gradient moved by one ulp (all other leaves, and every
forward value, stayed bitwise equal). With a batch the weight gradient is a true dot and the two
agree bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _independence import assert_independent

import stoax
from stoax import keys

T, B, D = 6, 3, 5


class Cell(stoax.Module):
    """A small RNN cell with dropout on its input."""

    linear: stoax.nn.Linear
    drop: stoax.nn.Dropout

    def __call__(self, h, x, *, key=None):
        h = jnp.tanh(self.linear(jnp.concatenate([h, self.drop(x, key=key)], -1)))
        return h, h.sum()


@pytest.fixture(scope="module")
def cell():
    return Cell(stoax.nn.Linear(2 * D, D, key=jax.random.key(0)), stoax.nn.Dropout(0.3))


def loop(f, h, xs, key, reverse=False):
    """The Python loop a scan must equal: step t gets keys.child(key, t)."""
    ys = [None] * len(xs)
    for t in reversed(range(len(xs))) if reverse else range(len(xs)):
        h, ys[t] = f(h, xs[t], key=keys.child(key, t))
    return h, jnp.stack(ys)


@jax.jit
def scan_and_loop(cell, h, xs, key):
    out = {}
    for reverse in (False, True):
        for remat in (False, True):
            out[f"{reverse}-{remat}"] = stoax.scan(
                cell, h, xs, key=key, reverse=reverse, remat=remat
            )
        out[f"{reverse}-loop"] = loop(cell, h, xs, key, reverse=reverse)
    return out


def test_scan_equals_python_loop_bitwise(cell):
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    out = scan_and_loop(cell, jnp.zeros((B, D)), xs, jax.random.key(2))
    for reverse in (False, True):
        for remat in (False, True):
            for a, b in zip(out[f"{reverse}-{remat}"], out[f"{reverse}-loop"], strict=True):
                np.testing.assert_array_equal(a, b)
    assert not np.array_equal(out["False-False"][1], out["True-False"][1])


def test_gradients_equal_python_loop_bitwise(cell):
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    h0 = jnp.zeros((B, D))

    @jax.jit
    def grads(cell, xs, key):
        def by_scan(cell, xs, remat):
            return stoax.scan(cell, h0, xs, key=key, remat=remat)[1].sum()

        return (
            jax.grad(by_scan, (0, 1))(cell, xs, False),
            jax.grad(by_scan, (0, 1))(cell, xs, True),
            jax.grad(lambda c, xs: loop(c, h0, xs, key)[1].sum(), (0, 1))(cell, xs),
        )

    plain, remat, looped = grads(cell, xs, jax.random.key(3))
    for a, b, c in zip(*map(jax.tree.leaves, (plain, remat, looped)), strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, c)


def test_each_step_draws_an_independent_mask():
    steps, n = 8, 20_000
    drop = stoax.nn.Dropout(0.5)

    def step(carry, _, *, key):
        return carry, drop(jnp.ones(n), key=key) > 0

    _, masks = jax.jit(lambda k: stoax.scan(step, 0, length=steps, key=k))(jax.random.key(4))
    assert_independent(np.asarray(masks), keep=0.5)


def test_traced_training_flag(cell):
    xs = jax.random.normal(jax.random.key(1), (T, B, D))
    h0 = jnp.zeros((B, D))

    @jax.jit
    def rollout(cell, flag, key):
        return stoax.scan(cell, h0, xs, key=key, training=flag)

    @jax.jit
    def rollout_closure(cell, flag, key):  # a closure: the caller sets the mode
        model = stoax.set_mode(cell, flag)
        return stoax.scan(lambda h, x, *, key: model(h, x, key=key), h0, xs, key=key)

    trained = jax.jit(lambda c, k: loop(c, h0, xs, k))(cell, jax.random.key(5))
    evaluated = jax.jit(lambda c: loop(stoax.eval_mode(c), h0, xs, None))(cell)
    for run in (rollout, rollout_closure):
        for a, b in zip(run(cell, jnp.asarray(True), jax.random.key(5)), trained, strict=True):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(run(cell, jnp.asarray(False), jax.random.key(5)), evaluated, strict=True):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(trained[1], evaluated[1])


def test_partial_step_evaluation_and_errors(cell):
    xs = jnp.ones((T, B, D))
    step = jax.tree_util.Partial(lambda c, h, x, *, key: c(h, x, key=key), cell)
    h, ys = stoax.scan(step, jnp.zeros((B, D)), xs, key=None, training=False)  # no key needed
    assert ys.shape == (T,)
    with pytest.raises(stoax.nn.MissingKeyError):
        stoax.scan(cell, jnp.zeros((B, D)), xs, key=None)
    with pytest.raises(TypeError, match="holds no stochastic layer"):
        stoax.scan(lambda h, x, *, key: (h, x), 0.0, xs, key=None, training=True)
    with pytest.raises(ValueError, match="length="):
        stoax.scan(lambda h, x, *, key: (h, x), 0.0, key=None)
