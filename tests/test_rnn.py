"""``RNN``: bitwise the Python loop over time steps with the same keys (each dropout mode, with
and without ``jax.checkpoint``, forward and gradient); padded steps; a traced train flag; the
auditor; errors. Both sides of each comparison run under ``jax.jit``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax import keys
from stoax.random import dropout, keep_mask

B, T, F, H = 3, 6, 4, 5
RATES = {"dropout": 0.3, "recurrent_dropout": 0.4, "output_dropout": 0.2}


def make_rnn(mode, cell="lstm", **kwargs):
    make = {"lstm": stoax.nn.LSTMCell, "gru": stoax.nn.GRUCell, "simple": stoax.nn.SimpleCell}
    rates = dict(RATES, recurrent_dropout=0.0) if mode == "none" else RATES
    return stoax.nn.RNN(
        make[cell](F, H, key=jax.random.key(0)), **rates, dropout_mode=mode, **kwargs
    )


def _scaled(x, kept, rate):
    return jnp.where(kept, x * (1.0 / (1.0 - rate)), 0.0)


def loop(rnn, x, key):
    """The RNN written as a Python loop over time, from its documented key rules: k_in, k_rec,
    k_out = derive(key, "input_dropout", "recurrent_dropout", "output_dropout"); variational
    masks drawn once with k_*, per-step masks of step t with child(k_*, t). As in the RNN, the
    input side of the cell is one product over all (dropped) time steps: a weight's gradient is
    then summed in the same order (a sum over steps in another order differs in the last bit)."""
    cell, mode = rnn.cell, rnn.dropout_mode
    p_in, p_rec, p_out = rnn.dropout, rnn.recurrent_dropout, rnn.output_dropout
    if rnn.training is False:
        mode = "eval"
    k_in, k_rec, k_out = keys.derive(key, "input_dropout", "recurrent_dropout", "output_dropout")
    batch = x.shape[:-2]
    if mode == "variational":
        m_in = keep_mask(k_in, (*batch, F), p_in)
        m_rec = keep_mask(k_rec, (*batch, H), p_rec)
        m_out = keep_mask(k_out, (*batch, H), p_out)
    dropped = []
    for t in range(T):
        x_t = x[..., t, :]
        if mode == "variational":
            x_t = _scaled(x_t, m_in, p_in)
        elif mode != "eval":
            x_t = dropout(x_t, p_in, keys.child(k_in, t))
        dropped.append(x_t)
    xw = cell.project_input(jnp.stack(dropped))  # (time, *batch, gates * hidden)
    carry = cell.initial_carry(batch)
    ys = [None] * T
    for t in reversed(range(T)) if rnn.reverse else range(T):
        h = cell.hidden(carry)
        if mode == "variational":
            h = _scaled(h, m_rec, p_rec)
        elif mode == "per_step":
            h = dropout(h, p_rec, keys.child(k_rec, t))
        carry, y = cell.update(carry, xw[t], h @ cell.recurrent_kernel)
        if mode == "variational":
            y = _scaled(y, m_out, p_out)
        elif mode != "eval":
            y = dropout(y, p_out, keys.child(k_out, t))
        ys[t] = y
    return carry, jnp.stack(ys, axis=-2)


def _assert_trees_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("mode", ["variational", "per_step", "none"])
def test_rnn_equals_python_loop_bitwise(mode):
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    key = jax.random.key(2)
    rnn = make_rnn(mode, return_carry=True)
    backward = rnn.replace(reverse=True)

    @jax.jit
    def both(x, key):
        return {
            "rnn": rnn(x, key=key),
            "remat": rnn.replace(remat=True)(x, key=key),
            "loop": loop(rnn, x, key),
            "reverse": backward(x, key=key),
            "reverse-remat": backward.replace(remat=True)(x, key=key),
            "reverse-loop": loop(backward, x, key),
        }

    out = both(x, key)
    for name, reference in [
        ("rnn", "loop"),
        ("remat", "loop"),
        ("reverse", "reverse-loop"),
        ("reverse-remat", "reverse-loop"),
    ]:
        _assert_trees_equal(out[name], out[reference])
    assert not np.array_equal(out["rnn"][1], out["reverse"][1])


@pytest.mark.parametrize(
    ("mode", "cell"), [("variational", "simple"), ("per_step", "simple"), ("variational", "lstm")]
)
def test_gradients_equal_python_loop(mode, cell):
    """Gradients of the RNN, with and without remat, against the loop's. Bitwise for the Elman
    cell. For LSTM/GRU the scan and the unrolled loop differ in the last bit of some gradients
    even *without* dropout (evaluation mode, no key): XLA:CPU fuses the gates' backward
    differently in a loop body and in straight-line code (a multiply-add contracted to one FMA
    in one and not the other), so there the check is float32 rounding (rtol 1e-6) -- a mask
    or key that differed would move them by whole units."""
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    key = jax.random.key(2)
    w = jax.random.normal(jax.random.key(3), (B, T, H))

    @jax.jit
    def grads(rnn, x):
        def by_rnn(rnn, x, remat):
            return (rnn.replace(remat=remat)(x, key=key) * w).sum()

        def by_loop(rnn, x):
            return (loop(rnn, x, key)[1] * w).sum()

        g = jax.grad(by_rnn, argnums=(0, 1))
        return g(rnn, x, False), g(rnn, x, True), jax.grad(by_loop, argnums=(0, 1))(rnn, x)

    plain, remat, looped = grads(make_rnn(mode, cell=cell), x)
    for got in (plain, remat):
        if cell == "simple":
            _assert_trees_equal(got, looped)
        else:
            jax.tree.map(
                lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), got, looped
            )


def test_cells_run_and_eval_mode_needs_no_key():
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    for cell in ("lstm", "gru", "simple"):
        rnn = make_rnn("variational", cell=cell)
        assert rnn(x, key=jax.random.key(0)).shape == (B, T, H)
        carry, ys = stoax.eval_mode(rnn)(x, return_carry=True)
        # evaluation is the cell run as it is, without dropout
        ref_carry, ref_ys = loop(stoax.eval_mode(rnn).replace(dropout_mode="none"), x, None)
        np.testing.assert_allclose(ys, ref_ys, rtol=1e-6, atol=1e-6)


def test_padded_steps_leave_carry_and_loss_unchanged():
    """Each sequence of a batch padded with garbage on the time axis gets the carry, outputs and
    loss of the batch cut to its own length (same key: same masks for its real steps), with
    dropout, forwards and backwards; the garbage gets no gradient."""
    key = jax.random.key(5)
    lengths = (2, 4, 2)  # two distinct lengths: each cut batch is one more compiled program
    x = jax.random.normal(jax.random.key(1), (B, T + 3, F)) * 100  # padding: large garbage
    w = jax.random.normal(jax.random.key(3), (B, T + 3, H))

    @jax.jit
    def run(rnn, x, lengths):
        def loss(x):
            carry, ys = rnn(x, key=key, seq_lengths=lengths)
            return (ys * w[:, : x.shape[1]]).sum(axis=(1, 2)).sum(), (carry, ys)

        (_, (carry, ys)), dx = jax.value_and_grad(loss, has_aux=True)(x)
        return carry, ys, dx

    for mode, reverse in (("variational", True), ("per_step", False)):
        rnn = make_rnn(mode, reverse=reverse, return_carry=True)
        carry, ys, dx = run(rnn, x, jnp.array(lengths))
        cut = {n: run(rnn, x[:, :n], jnp.full(B, n)) for n in set(lengths)}
        for b, n in enumerate(lengths):
            cut_carry, cut_ys, cut_dx = cut[n]
            jax.tree.map(
                lambda a, c, b=b: np.testing.assert_array_equal(a[b], c[b]), carry, cut_carry
            )
            np.testing.assert_array_equal(ys[b, :n], cut_ys[b])
            np.testing.assert_array_equal(dx[b, :n], cut_dx[b])
            assert not ys[b, n:].any() and not dx[b, n:].any()


def test_traced_train_flag_inside_and_around_the_time_loop():
    """Seed S2 with an RNN: one compiled rollout whose train/eval flag is a traced bool, inside
    an outer lax.scan and around the RNN's own; equal to the two static modes."""
    rnn = make_rnn("variational")
    x = jax.random.normal(jax.random.key(1), (4, B, T, F))

    @jax.jit
    def rollout(flag, key):
        model = stoax.set_mode(rnn, flag)
        return stoax.scan(lambda c, x_t, *, key: (c, model(x_t, key=key)), 0, x, key=key)[1]

    key = jax.random.key(7)
    trained = rollout(jnp.asarray(True), key)
    evaluated = rollout(jnp.asarray(False), key)
    static_train = stoax.scan(lambda c, x_t, *, key: (c, rnn(x_t, key=key)), 0, x, key=key)[1]
    np.testing.assert_array_equal(trained, static_train)
    np.testing.assert_allclose(evaluated, jax.vmap(stoax.eval_mode(rnn))(x), rtol=1e-6, atol=1e-6)
    assert rollout._cache_size() == 1


@pytest.mark.parametrize("mode", ["variational", "per_step", "none"])
def test_auditor_finds_nothing(mode):
    x = jnp.ones((B, T, F))
    rnn = make_rnn(mode)
    bi = stoax.nn.Bidirectional(rnn, make_rnn(mode))
    for model in (rnn, bi):
        report = stoax.audit(lambda m, x, k: m(x, key=k), model, x, jax.random.key(0))
        assert report.ok, str(report)
        assert report.num_draws > 0


def test_errors_speak_to_the_user():
    rnn = make_rnn("variational")
    with pytest.raises(stoax.nn.MissingKeyError, match="RNN.* is in training mode"):
        rnn(jnp.ones((B, T, F)))
    with pytest.raises(ValueError, match="dropout_mode must be one of"):
        stoax.nn.RNN(rnn.cell, dropout_mode="gal")
    with pytest.raises(ValueError, match="means no dropout on the recurrent path"):
        stoax.nn.RNN(rnn.cell, recurrent_dropout=0.1, dropout_mode="none")
    with pytest.raises(ValueError, match="in_features = 4"):
        rnn(jnp.ones((B, T, F + 1)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="seq_lengths must be integers of the batch shape"):
        rnn(jnp.ones((B, T, F)), key=jax.random.key(0), seq_lengths=jnp.ones(B + 1, int))
    with pytest.raises(ValueError, match="initial_carry must have the structure"):
        rnn(jnp.ones((B, T, F)), key=jax.random.key(0), initial_carry=jnp.zeros((B, H)))
    deep = stoax.nn.StackedRNN([rnn, rnn])
    with pytest.raises(ValueError, match=r"StackedRNN.*layer 1 takes 4 features"):
        deep(jnp.ones((B, T, F)), key=jax.random.key(0))


def test_initial_carry_and_bidirectional_and_stacks():
    x = jax.random.normal(jax.random.key(1), (B, T, F))
    rnn = stoax.eval_mode(make_rnn("variational", return_carry=True))
    carry, ys = rnn(x)
    # a sequence split in two halves: the second half started from the first half's carry
    c1, y1 = rnn(x[:, :3])
    c2, y2 = rnn(x[:, 3:], initial_carry=c1)
    np.testing.assert_allclose(jnp.concatenate([y1, y2], 1), ys, rtol=1e-6, atol=1e-6)
    # time-major input: the same run, axes swapped
    tm_carry, tm_ys = rnn.replace(time_major=True)(jnp.swapaxes(x, 0, 1))
    np.testing.assert_array_equal(jnp.swapaxes(tm_ys, 0, 1), ys)
    # Bidirectional: the backward half is the forward RNN's reversed run
    fwd = stoax.eval_mode(make_rnn("variational"))
    bi = stoax.nn.Bidirectional(fwd, fwd)
    out = bi(x)
    np.testing.assert_array_equal(out[..., :H], fwd(x))
    np.testing.assert_array_equal(out[..., H:], fwd.replace(reverse=True)(x))
    # Stack of equal-width layers and StackedRNN: each layer its own key (checked in the
    # statistics tests), both run with seq_lengths
    cells = [stoax.nn.LSTMCell(H, H, key=jax.random.key(i)) for i in range(2)]
    layers = [stoax.nn.RNN(c, dropout=0.2, recurrent_dropout=0.2) for c in cells]
    stack = stoax.nn.Stack.from_layers(layers)
    deep = stoax.nn.StackedRNN(layers)
    h = jax.random.normal(jax.random.key(2), (B, T, H))
    lengths = jnp.array([T, 3, 1])
    np.testing.assert_allclose(
        stack(h, key=jax.random.key(3), seq_lengths=lengths),
        deep(h, key=jax.random.key(3), seq_lengths=lengths),
        rtol=1e-6,
        atol=1e-6,
    )


@pytest.mark.allow_key_reuse
def test_a_hand_written_loop_with_one_key_per_step_is_still_reported():
    """The RNN's variational masks are drawn once, before the loop: nothing to declare. A
    user's loop that draws with the same key at every step is what the auditor reports."""
    cell = stoax.nn.SimpleCell(F, H, key=jax.random.key(0))

    def my_variational_loop(cell, x, key):
        def step(h, x_t):
            kept = jax.random.bernoulli(key, 0.5, h.shape)  # the same key every step
            return cell(jnp.where(kept, 2 * h, 0.0), x_t)

        return jax.lax.scan(step, cell.initial_carry((B,)), jnp.moveaxis(x, 1, 0))[1]

    report = stoax.audit(my_variational_loop, cell, jnp.ones((B, T, F)), jax.random.key(1))
    assert "loop_invariant_key" in [f.kind for f in report.findings]
