"""stoax's drop-in Dropout inside the peers' own Transformers (benchmarks/interop.py's models).

Each peer model is built twice, once with the library's ``Dropout`` and once with
``stoax.interop.<library>.Dropout`` -- the model code is the same, only the class it names
changes. Pinned here: the drop statistics (binomial bound) and the gradient of the whole model
for the *same* mask (the peer's ``jax.random.bernoulli`` is replaced by stoax's mask for the same
key, so both models drop the same elements). The memory figures (XLA's temporary memory of a
training step, dropout on vs off, beside the unchanged peers') are in benchmarks/interop.py.

Tolerance of the statistics: a fraction of n independent drops with probability p has standard
deviation sqrt(p(1-p)/n); we accept 6 of them (a correct implementation fails with probability
~2e-9; the seeds are fixed).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import equinox as eqx
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import stoax
from stoax.interop import equinox as s_eqx
from stoax.interop import linen as s_linen
from stoax.interop import nnx as s_nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import interop as peers  # benchmarks/interop.py

TINY = peers.Config(vocab=32, features=16, heads=2, layers=1, seq=8, batch=2)
RATE = 0.25
N = 200_000


def binomial_bound(p: float, n: int) -> float:
    return 6 * math.sqrt(p * (1 - p) / n)


# ---- each Dropout on its own: statistics, conventions ---------------------------------------


def _apply(lib: str, cls, x, key, **kw):
    if lib == "flax linen":
        return cls(RATE, **kw).apply({}, x, deterministic=False, rngs={"dropout": key})
    if lib == "flax nnx":
        return cls(RATE, rngs=nnx.Rngs(dropout=key), **kw)(x)
    return cls(RATE)(x, key=key)


@pytest.mark.parametrize("lib", list(peers.MODELS))
def test_drop_statistics_match_the_peer(lib):
    x = jnp.ones((N,))
    fractions = {}
    for name, cls in (("stoax", peers.stoax_dropout(lib)), ("peer", peers.peer_dropout(lib))):
        y = np.asarray(_apply(lib, cls, x, jax.random.key(7)))
        fractions[name] = float((y == 0).mean())
        kept = y[y != 0]
        np.testing.assert_allclose(kept, 1 / (1 - RATE), rtol=1e-6)  # inverted scaling
    for name, fraction in fractions.items():
        assert abs(fraction - RATE) <= binomial_bound(RATE, N), (lib, name, fraction)


@pytest.mark.parametrize("lib", ["flax linen", "flax nnx"])
def test_broadcast_dims_share_the_mask(lib):
    x = jnp.ones((4000, 6))
    y = np.asarray(
        _apply(lib, peers.stoax_dropout(lib), x, jax.random.key(1), broadcast_dims=(-1,))
    )
    rows = y == 0
    assert (rows.all(axis=1) | ~rows.any(axis=1)).all()  # each row dropped whole or kept whole
    assert abs(rows[:, 0].mean() - RATE) <= binomial_bound(RATE, 4000)


def test_linen_conventions():
    layer = s_linen.Dropout(0.5)
    assert isinstance(layer, linen.Dropout)
    x = jnp.ones(16)
    assert (layer.apply({}, x, deterministic=True) == x).all()  # no key needed
    with pytest.raises(Exception, match="dropout"):  # linen: no 'dropout' rng at apply
        layer.apply({}, x, deterministic=False)
    k = jax.random.key(3)
    a = s_linen.Dropout(0.5, rng_collection="noise").apply(
        {}, x, deterministic=False, rngs={"noise": k}
    )
    b = s_linen.Dropout(0.5).apply({}, x, deterministic=False, rng=stoax.keys.child(k, 0))
    assert a.shape == b.shape == x.shape
    assert (s_linen.Dropout(1.0).apply({}, x, deterministic=False, rngs={"dropout": k}) == 0).all()


def test_nnx_conventions():
    layer = s_nnx.Dropout(0.5, rngs=nnx.Rngs(0))
    assert isinstance(layer, nnx.Dropout)
    x = jnp.ones(64)
    first, second = layer(x), layer(x)  # the layer's stream advances: two masks
    assert not (first == second).all()
    layer.eval()
    assert (layer(x) == x).all()
    assert (nnx.view(s_nnx.Dropout(0.5, rngs=nnx.Rngs(0)), deterministic=True)(x) == x).all()
    with pytest.raises(ValueError, match="rngs"):
        s_nnx.Dropout(0.5)(x)
    y = s_nnx.Dropout(0.5)(x, rngs=jax.random.key(2))  # a key at the call, as in NNX
    assert set(np.unique(np.asarray(y))) <= {0.0, 2.0}


def test_equinox_conventions_and_a_traced_mode():
    drop = s_eqx.Dropout(0.5)
    x = jnp.ones(64)
    assert (eqx.nn.inference_mode(drop).__call__(x) == x).all()  # no key needed
    with pytest.raises(ValueError, match="key"):
        drop(x)
    # Seed S2: a traced mode flag inside lax.scan -- eqx.nn.Dropout raises
    # TracerBoolConversionError there; the drop-in selects without a Python branch.
    flags = jnp.asarray([True, False])
    keys = jax.random.split(jax.random.key(0), 2)

    def body(carry, inp):
        flag, k = inp
        return carry, eqx.tree_at(lambda d: d.inference, drop, flag)(x, key=k)

    _, ys = jax.lax.scan(body, 0, (flags, keys))
    assert (ys[0] == x).all() and (ys[1] == 0).any()
    # Seed S3: plain jax.jit of the layer (p becomes a tracer) works.
    y = jax.jit(lambda d, x, k: d(x, key=k))(drop, x, jax.random.key(1))
    assert set(np.unique(np.asarray(y))) <= {0.0, 2.0}


# ---- the peers' Transformers with only the Dropout changed ----------------------------------


def _stoax_mask_bernoulli(calls):
    def bernoulli(key, p=0.5, shape=None, **_):
        """jax.random.bernoulli(key, keep_prob, shape) answered with stoax's mask for that key."""
        calls.append(shape)
        return stoax.random.keep_mask(key, shape, RATE)

    return bernoulli


@pytest.mark.parametrize("lib", list(peers.MODELS))
def test_gradients_equal_the_peers_for_the_same_mask(lib, monkeypatch):
    tokens = jax.random.randint(jax.random.key(0), (TINY.batch, TINY.seq), 0, TINY.vocab)

    def grad(made):
        loss_fn, params = made
        # the same key value for every model (a fresh array each time: no key reuse)
        return jax.jit(jax.value_and_grad(loss_fn))(params, tokens, jax.random.key(5))

    ours = grad(peers.make(lib, peers.stoax_dropout(lib), TINY, RATE))
    # The mask made explicit: the peer's Dropout draws stoax's mask for the key it is given.
    calls = []
    monkeypatch.setattr(jax.random, "bernoulli", _stoax_mask_bernoulli(calls))
    theirs = grad(peers.make(lib, peers.peer_dropout(lib), TINY, RATE))
    monkeypatch.undo()
    assert len(calls) == 1 + 4 * TINY.layers  # every dropout of the peer model took the mask
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ours[1]), jax.tree.leaves(theirs[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
