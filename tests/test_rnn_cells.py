"""Recurrent cells against the peers: Flax NNX's LSTMCell/GRUCell/SimpleCell and Equinox's
LSTMCell/GRUCell, given the same weights (copied across), over a few time steps: outputs, final
carry and gradients (with respect to the inputs, the initial carry and every weight) agree to
float32 tolerance."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import stoax

B, T, F, H = 3, 4, 5, 6
TOL = {"rtol": 2e-5, "atol": 2e-6}


def _random_weights(cell, key):
    """Non-zero biases too, so that their placement is checked."""
    leaves, tree = jax.tree.flatten(cell)
    ks = jax.random.split(key, len(leaves))
    new = [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(ks, leaves, strict=True)]
    return jax.tree.unflatten(tree, new)


def _inputs():
    xs = jax.random.normal(jax.random.key(10), (T, B, F))
    weights = jax.random.normal(jax.random.key(11), (T, B, H))  # a loss that weighs every output
    return xs, weights


def _ours_loss(cell, carry, xs, weights):
    total = 0.0
    for t in range(T):
        carry, y = cell(carry, xs[t])
        total = total + (y * weights[t]).sum()
    return total, carry


@jax.jit
def _ours_grad(cell, carry, xs, weights):
    return jax.value_and_grad(
        lambda c, h, x: _ours_loss(c, h, x, weights), argnums=(0, 1, 2), has_aux=True
    )(cell, carry, xs)


def _gates(w, n):
    return [w[..., g * H : (g + 1) * H] for g in range(n)]


# -- Flax NNX ------------------------------------------------------------------------------------


def _nnx_lstm(ours):
    cell = nnx.LSTMCell(F, H, rngs=nnx.Rngs(0))
    ii, if_, ig, io = _gates(ours.input_kernel, 4)
    hi, hf, hg, ho = _gates(ours.recurrent_kernel, 4)
    bi, bf, bg, bo = _gates(ours.bias, 4)
    for layer, k in ((cell.ii, ii), (cell.if_, if_), (cell.ig, ig), (cell.io, io)):
        layer.kernel[...] = k
    for layer, k, b in ((cell.hi, hi, bi), (cell.hf, hf, bf), (cell.hg, hg, bg), (cell.ho, ho, bo)):
        layer.kernel[...] = k
        layer.bias[...] = b
    return cell


def _nnx_gru(ours):
    cell = nnx.GRUCell(F, H, rngs=nnx.Rngs(0))
    cell.dense_i.kernel[...] = ours.input_kernel
    cell.dense_i.bias[...] = ours.bias
    cell.dense_h.kernel[...] = ours.recurrent_kernel
    return cell


def _nnx_simple(ours):
    cell = nnx.SimpleCell(F, H, rngs=nnx.Rngs(0))
    cell.dense_i.kernel[...] = ours.input_kernel
    cell.dense_i.bias[...] = ours.bias
    cell.dense_h.kernel[...] = ours.recurrent_kernel
    return cell


def _nnx_kernels(name, grads):
    """The gradient of the NNX cell's weights, laid out as ours (input, recurrent, bias)."""
    if name == "lstm":
        ins = [grads[n]["kernel"][...] for n in ("ii", "if_", "ig", "io")]
        recs = [grads[n]["kernel"][...] for n in ("hi", "hf", "hg", "ho")]
        biases = [grads[n]["bias"][...] for n in ("hi", "hf", "hg", "ho")]
        return jnp.concatenate(ins, -1), jnp.concatenate(recs, -1), jnp.concatenate(biases, -1)
    return (
        grads["dense_i"]["kernel"][...],
        grads["dense_h"]["kernel"][...],
        grads["dense_i"]["bias"][...],
    )


@pytest.mark.parametrize(
    ("name", "make", "to_nnx"),
    [
        ("lstm", stoax.nn.LSTMCell, _nnx_lstm),
        ("gru", stoax.nn.GRUCell, _nnx_gru),
        ("simple", stoax.nn.SimpleCell, _nnx_simple),
    ],
)
def test_cells_equal_flax_nnx(name, make, to_nnx):
    ours = _random_weights(make(F, H, key=jax.random.key(0)), jax.random.key(1))
    if name == "gru":  # Flax NNX's GRU has no b_hn: compare with ours at zero
        ours = ours.replace(recurrent_bias=jnp.zeros(H))
    theirs = to_nnx(ours)
    xs, weights = _inputs()
    carry0 = _random_weights(ours.initial_carry((B,)), jax.random.key(2))

    def their_loss(cell, carry, xs):
        total = 0.0
        for t in range(T):
            carry, y = cell(carry, xs[t])
            total = total + (y * weights[t]).sum()
        return total, carry

    (l_ours, c_ours), g_ours = _ours_grad(ours, carry0, xs, weights)
    their_grad = nnx.jit(nnx.value_and_grad(their_loss, argnums=(0, 1, 2), has_aux=True))
    (l_theirs, c_theirs), g_theirs = their_grad(theirs, carry0, xs)
    np.testing.assert_allclose(l_ours, l_theirs, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), c_ours, c_theirs)
    for a, b in zip(g_ours[1:], g_theirs[1:], strict=True):  # d carry0, d xs
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), a, b)
    mine = (g_ours[0].input_kernel, g_ours[0].recurrent_kernel, g_ours[0].bias)
    for a, b in zip(mine, _nnx_kernels(name, g_theirs[0]), strict=True):
        np.testing.assert_allclose(a, b, **TOL)


# -- Equinox -------------------------------------------------------------------------------------


def _eqx_lstm(ours):
    cell = eqx.nn.LSTMCell(F, H, key=jax.random.key(0))
    cell = eqx.tree_at(lambda c: c.weight_ih, cell, ours.input_kernel.T)
    cell = eqx.tree_at(lambda c: c.weight_hh, cell, ours.recurrent_kernel.T)
    return eqx.tree_at(lambda c: c.bias, cell, ours.bias)


def _eqx_gru(ours):
    cell = eqx.nn.GRUCell(F, H, key=jax.random.key(0))
    cell = eqx.tree_at(lambda c: c.weight_ih, cell, ours.input_kernel.T)
    cell = eqx.tree_at(lambda c: c.weight_hh, cell, ours.recurrent_kernel.T)
    cell = eqx.tree_at(lambda c: c.bias, cell, ours.bias)
    return eqx.tree_at(lambda c: c.bias_n, cell, ours.recurrent_bias)


@pytest.mark.parametrize(
    ("name", "make", "to_eqx"),
    [("lstm", stoax.nn.LSTMCell, _eqx_lstm), ("gru", stoax.nn.GRUCell, _eqx_gru)],
)
def test_cells_equal_equinox(name, make, to_eqx):
    ours = _random_weights(make(F, H, key=jax.random.key(0)), jax.random.key(1))
    theirs = to_eqx(ours)
    xs, weights = _inputs()
    carry0 = _random_weights(ours.initial_carry((B,)), jax.random.key(2))
    # Equinox's LSTM carry is (h, c), ours (c, h); its cells take one example: vmap the batch.
    swap = (lambda c: (c[1], c[0])) if name == "lstm" else (lambda c: c)

    def their_loss(cell, carry, xs):
        carry = swap(carry)
        total = 0.0
        for t in range(T):
            carry = jax.vmap(cell)(xs[t], carry)
            y = carry[0] if name == "lstm" else carry
            total = total + (y * weights[t]).sum()
        return total, swap(carry)

    (l_ours, c_ours), g_ours = _ours_grad(ours, carry0, xs, weights)
    their_grad = eqx.filter_jit(jax.value_and_grad(their_loss, argnums=(0, 1, 2), has_aux=True))
    (l_theirs, c_theirs), g_theirs = their_grad(theirs, carry0, xs)
    np.testing.assert_allclose(l_ours, l_theirs, **TOL)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), c_ours, c_theirs)
    for a, b in zip(g_ours[1:], g_theirs[1:], strict=True):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, **TOL), a, b)
    pairs = [
        (g_ours[0].input_kernel, g_theirs[0].weight_ih.T),
        (g_ours[0].recurrent_kernel, g_theirs[0].weight_hh.T),
        (g_ours[0].bias, g_theirs[0].bias),
    ]
    if name == "gru":
        pairs.append((g_ours[0].recurrent_bias, g_theirs[0].bias_n))
    for a, b in pairs:
        np.testing.assert_allclose(a, b, **TOL)


def test_initialisation_follows_flax():
    cell = stoax.nn.LSTMCell(F, H, key=jax.random.key(0))
    assert cell.input_kernel.shape == (F, 4 * H) and cell.recurrent_kernel.shape == (H, 4 * H)
    for g in range(4):  # each gate's recurrent block is orthogonal, as Flax draws it
        block = cell.recurrent_kernel[:, g * H : (g + 1) * H]
        np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-5)
    assert not cell.bias.any()
    big = stoax.nn.LSTMCell(400, 8, key=jax.random.key(1))
    # LeCun normal: variance 1/in_features (a 10% band is > 10 sigma for 12800 draws).
    assert abs(float(big.input_kernel.var()) * 400 - 1) < 0.1


def test_bad_input_names_the_cell():
    cell = stoax.nn.GRUCell(F, H, key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"GRUCell.*in_features = 5"):
        cell(cell.initial_carry((B,)), jnp.ones((B, F + 1)))
    with pytest.raises(ValueError, match="hidden_features must be a positive int"):
        stoax.nn.LSTMCell(F, 0, key=jax.random.key(0))
