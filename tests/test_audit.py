"""``stoax.audit``: each seed scenario's randomness bug, in the library it was reported against and
in plain JAX, is found with the right kind at the right line; the fixed versions and correct code
(stoax, plain JAX, Flax, Equinox) give no finding; a 24-layer training step audits fast.

Buggy lines carry a ``# BUG:<name>`` comment; :func:`line` finds them, so the tests pin the exact
file and line number a finding points at.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import optax
import pytest

import stoax
from stoax.audit import AuditError


def _optional(name: str):
    """A peer library, or None where it is not installed (the plain-JAX tests still run)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


eqx = _optional("equinox")
linen = _optional("flax.linen")
nnx = _optional("flax.nnx")
hk = _optional("haiku")
needs_eqx = pytest.mark.skipif(eqx is None, reason="equinox is not installed")
needs_flax = pytest.mark.skipif(linen is None or nnx is None, reason="flax is not installed")
needs_haiku = pytest.mark.skipif(hk is None, reason="dm-haiku is not installed")

HERE = __file__
with open(HERE) as _fh:
    _SOURCE = _fh.read().splitlines()


def line(tag: str) -> int:
    """The line number of the line marked ``# BUG:<tag>`` in this file."""
    marker = f"# BUG:{tag}"
    hits = [i + 1 for i, text in enumerate(_SOURCE) if text.rstrip().endswith(marker)]
    assert len(hits) == 1, (tag, hits)
    return hits[0]


def only(report, kind):
    """The report's findings, asserting they are all of ``kind``; returns them."""
    assert report.findings, str(report)
    assert {f.kind for f in report.findings} == {kind}, str(report)
    return report.findings


def at(report, kind, tag):
    """Assert a finding of ``kind`` at the line marked ``tag`` in this file."""
    want = line(tag)
    for f in report.of_kind(kind):
        if f.location is not None and f.location.file == HERE and f.location.line == want:
            return f
    raise AssertionError(f"no {kind} at line {want} ({tag}):\n{report}")


X = jnp.ones((4, 8))
KEY = jax.random.key(1)


# ---------------------------------------------------------------------------------------------
# S0: Flax dropout under jit with a key fixed inside the step / captured as a constant


if linen is not None:

    class LinenNet(linen.Module):
        @linen.compact
        def __call__(self, x, train: bool = True):
            x = linen.Dense(8)(x)
            return linen.Dropout(0.5, deterministic=not train)(x)  # BUG:linen_captured


@pytest.fixture(scope="module")
def linen_params():
    return LinenNet().init(jax.random.key(0), X, train=False)


@needs_flax
@pytest.mark.allow_key_reuse
def test_s0_linen_key_fixed_inside_jitted_step(linen_params):
    @jax.jit
    def step(params, x):
        return LinenNet().apply(params, x, rngs={"dropout": jax.random.PRNGKey(0)})  # BUG:linen_s0

    report = stoax.audit(step, linen_params, X)
    only(report, "constant_key")
    f = at(report, "constant_key", "linen_s0")
    assert f.severity == "error" and "PRNGKey" in f.message or "constant" in f.message
    assert not report.ok


@needs_flax
@pytest.mark.allow_key_reuse
def test_s0_linen_key_captured_as_jit_constant(linen_params):
    captured = jax.random.PRNGKey(0)

    @jax.jit
    def step(params, x):
        return LinenNet().apply(params, x, rngs={"dropout": captured})

    report = stoax.audit(step, linen_params, X)
    only(report, "constant_key")
    at(report, "constant_key", "linen_captured")


@needs_flax
def test_s0_linen_fixed_key_per_call_is_clean(linen_params):
    @jax.jit
    def step(params, x, key):
        return LinenNet().apply(params, x, rngs={"dropout": key})

    assert stoax.audit(step, linen_params, X, jax.random.PRNGKey(3)).ok
    assert stoax.audit(step, linen_params, X, jax.random.key(3)).ok


@needs_flax
@pytest.mark.allow_key_reuse
def test_s0_nnx_rngs_made_inside_the_step():
    model = nnx.Sequential(nnx.Linear(8, 8, rngs=nnx.Rngs(0)), nnx.Dropout(0.5))
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, x):
        m = nnx.merge(graphdef, state)
        return m(x, rngs=nnx.Rngs(dropout=0))  # BUG:nnx_s0

    report = stoax.audit(step, state, X)
    only(report, "constant_key")
    at(report, "constant_key", "nnx_s0")

    @jax.jit
    def fixed(state, x, key):
        m = nnx.merge(graphdef, state)
        return m(x, rngs=nnx.Rngs(dropout=key))

    assert stoax.audit(fixed, state, X, jax.random.key(2)).ok


def _haiku_forward(x):
    x = hk.Linear(8)(x)
    return hk.dropout(hk.next_rng_key(), 0.5, x)


HAIKU_NET = hk.transform(_haiku_forward) if hk is not None else None


@needs_haiku
@pytest.mark.allow_key_reuse
def test_s0_haiku_constant_key_in_apply():
    params = HAIKU_NET.init(jax.random.PRNGKey(1), X)

    @jax.jit
    def step(params, x):
        return HAIKU_NET.apply(params, jax.random.PRNGKey(0), x)  # BUG:haiku_s0

    report = stoax.audit(step, params, X)
    only(report, "constant_key")
    at(report, "constant_key", "haiku_s0")


@needs_haiku
@pytest.mark.allow_key_reuse
def test_haiku_two_views_with_one_key_reuse_it():
    # Two dropout "views" of a batch (R-Drop, consistency losses) from one key: both applies
    # split the same key, so the masks are identical and the difference is exactly zero.
    params = HAIKU_NET.init(jax.random.PRNGKey(1), X)

    def two_views(params, x, key):
        first = HAIKU_NET.apply(params, key, x)
        second = HAIKU_NET.apply(params, key, x)  # BUG:haiku_reuse
        return first - second

    report = stoax.audit(two_views, params, X, jax.random.PRNGKey(2))
    only(report, "reused_key")
    # Both draws are made by the same line of the model (hk.next_rng_key); the finding names
    # the two lines of the user's step that called it with one key.
    finding = at(report, "reused_key", "haiku_reuse")
    assert finding.location.line - 1 in {loc.line for loc in finding.related}, str(report)

    def fixed(params, x, key):
        k1, k2 = jax.random.split(key)
        return HAIKU_NET.apply(params, k1, x) - HAIKU_NET.apply(params, k2, x)

    assert stoax.audit(fixed, params, X, jax.random.PRNGKey(2)).ok


@pytest.mark.allow_key_reuse
def test_s0_plain_jax_constant_key():
    def step(x):
        mask = jax.random.bernoulli(jax.random.key(0), 0.5, x.shape)  # BUG:plain_s0
        return x * mask

    report = stoax.audit(jax.jit(step), X)
    only(report, "constant_key")
    at(report, "constant_key", "plain_s0")
    assert stoax.audit(lambda x, k: x * jax.random.bernoulli(k, 0.5, x.shape), X, KEY).ok


@pytest.mark.allow_key_reuse
@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_s0_plain_jax_key_captured_as_constant(make_key):
    captured = make_key(0)

    @jax.jit
    def step(x):
        return x * jax.random.bernoulli(captured, 0.5, x.shape)  # BUG:plain_captured

    report = stoax.audit(step, X)
    only(report, "constant_key")
    at(report, "constant_key", "plain_captured")


# ---------------------------------------------------------------------------------------------
# S1/S2: a scan whose body uses a key that does not change per step


@needs_eqx
@pytest.mark.allow_key_reuse
def test_s2_equinox_dropout_in_scan_with_closed_over_key():
    drop = eqx.nn.Dropout(0.5)

    def rollout(x, key):
        def body(h, _):
            return drop(h, key=key), None  # BUG:eqx_scan

        return jax.lax.scan(body, x, None, length=5)[0]

    report = stoax.audit(rollout, X, KEY)
    only(report, "loop_invariant_key")
    f = at(report, "loop_invariant_key", "eqx_scan")
    assert "iteration" in f.message and "fold_in" in f.fix

    def fixed(x, key):
        def body(h, i):
            return drop(h, key=jax.random.fold_in(key, i)), None

        return jax.lax.scan(body, x, jnp.arange(5))[0]

    assert stoax.audit(fixed, X, KEY).ok


@pytest.mark.allow_key_reuse
def test_s1_plain_jax_scan_and_fori_loop_invariant_keys():
    def scan_bad(x, key):
        def body(h, _):
            return h * jax.random.bernoulli(key, 0.9, h.shape), None  # BUG:scan_bad

        return jax.lax.scan(body, x, None, length=3)[0]

    at(stoax.audit(scan_bad, X, KEY), "loop_invariant_key", "scan_bad")

    def carried_unchanged(x, key):
        def body(c, _):
            h, k = c
            return (h * jax.random.bernoulli(k, 0.9, h.shape), k), None  # BUG:carry_same

        return jax.lax.scan(body, (x, key), None, length=3)[0]

    at(stoax.audit(carried_unchanged, X, KEY), "loop_invariant_key", "carry_same")

    def fori_bad(x, key):
        def body(i, h):
            return h * jax.random.bernoulli(key, 0.9, h.shape)  # BUG:fori_bad

        return jax.lax.fori_loop(0, 3, body, x)

    at(stoax.audit(fori_bad, X, KEY), "loop_invariant_key", "fori_bad")

    def while_bad(x, key):
        def body(c):
            i, h = c
            return i + 1, h * jax.random.bernoulli(key, 0.9, h.shape)  # BUG:while_bad

        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, x))[1]

    at(stoax.audit(while_bad, X, KEY), "loop_invariant_key", "while_bad")


def test_loops_with_keys_that_change_per_step_are_clean():
    def fold_per_step(x, key):
        def body(h, i):
            return h * jax.random.bernoulli(jax.random.fold_in(key, i), 0.9, h.shape), None

        return jax.lax.scan(body, x, jnp.arange(3))[0]

    def split_carry(x, key):
        def body(c, _):
            h, k = c
            k, sub = jax.random.split(k)
            return (h * jax.random.bernoulli(sub, 0.9, h.shape), k), None

        return jax.lax.scan(body, (x, key), None, length=3)[0]

    def scan_over_keys(x, key):
        def body(h, k):
            return h * jax.random.bernoulli(k, 0.9, h.shape), None

        return jax.lax.scan(body, x, jax.random.split(key, 3))[0]

    def fori_fold(x, key):
        return jax.lax.fori_loop(
            0, 3, lambda i, h: h * jax.random.bernoulli(jax.random.fold_in(key, i), 0.9, h.shape), x
        )

    for fn in (fold_per_step, split_carry, scan_over_keys, fori_fold):
        assert stoax.audit(fn, X, KEY).ok, fn.__name__
        assert stoax.audit(fn, X, jax.random.PRNGKey(1)).ok, fn.__name__


# ---------------------------------------------------------------------------------------------
# reuse


@pytest.mark.allow_key_reuse
def test_same_key_for_two_dropout_masks():
    drop = stoax.nn.Dropout(0.5)

    def f(x, key):
        h = drop(x, key=key)
        return drop(h * 2, key=key)  # BUG:two_masks

    report = stoax.audit(f, X, KEY)
    only(report, "reused_key")
    at(report, "reused_key", "two_masks")

    def fixed(x, key):
        k1, k2 = stoax.keys.derive(key, "drop1", "drop2")
        return drop(drop(x, key=k1) * 2, key=k2)

    assert stoax.audit(fixed, X, KEY).ok


@needs_eqx
@pytest.mark.allow_key_reuse
def test_equinox_same_key_for_two_dropouts():
    drop = eqx.nn.Dropout(0.5)

    def f(x, key):
        return drop(drop(x, key=key), key=key)  # BUG:eqx_two

    at(stoax.audit(f, X, KEY), "reused_key", "eqx_two")


@pytest.mark.allow_key_reuse
@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])
def test_normal_and_split_on_the_same_key(make_key):
    def f(x, k):
        noise = jax.random.normal(k, x.shape)
        k1, k2 = jax.random.split(k)  # BUG:normal_split
        return x + noise + jax.random.normal(k1, x.shape), k2

    report = stoax.audit(f, X, make_key(0))
    only(report, "reused_key")
    f0 = at(report, "reused_key", "normal_split")
    assert f0.related  # points at the first use too

    def fixed(x, k):
        k, sub = jax.random.split(k)
        k1, k2 = jax.random.split(k)
        return x + jax.random.normal(sub, x.shape) + jax.random.normal(k1, x.shape), k2

    assert stoax.audit(fixed, X, make_key(0)).ok


@pytest.mark.allow_key_reuse
def test_fold_in_same_constant_twice_is_reuse_different_constants_are_not():
    def bad(x, k):
        a = jax.random.normal(jax.random.fold_in(k, 7), x.shape)
        b = jax.random.normal(jax.random.fold_in(k, 7), x.shape)  # BUG:fold_same
        return a + b

    at(stoax.audit(bad, X, KEY), "reused_key", "fold_same")

    def good(x, k):
        a = jax.random.normal(jax.random.fold_in(k, 7), x.shape)
        return a + jax.random.normal(jax.random.fold_in(k, 8), x.shape)

    assert stoax.audit(good, X, KEY).ok


@pytest.mark.allow_key_reuse
def test_reuse_through_nested_jit_and_cond_branches():
    @jax.jit
    def noise(k, x):
        return jax.random.normal(k, x.shape)  # BUG:jit_twice

    def bad(x, k):
        return noise(k, x) + noise(k, x)

    at(stoax.audit(bad, X, KEY), "reused_key", "jit_twice")

    def branches(x, k, flag):
        # one draw per branch: only one branch runs, so not reuse
        return jax.lax.cond(
            flag,
            lambda: jax.random.normal(k, x.shape),
            lambda: jax.random.uniform(k, x.shape),
        )

    assert stoax.audit(branches, X, KEY, jnp.bool_(True)).ok


# ---------------------------------------------------------------------------------------------
# vmap: an ensemble with one unbatched key


@pytest.mark.allow_key_reuse
def test_ensemble_vmapped_with_one_key_shares_the_mask():
    keys = jax.random.split(jax.random.key(0), 3)
    ensemble = jax.vmap(lambda k: stoax.nn.Linear(8, 8, key=k))(keys)
    drop = stoax.nn.Dropout(0.5)

    def forward(models, x, key):
        def member(m):
            return drop(m(x), key=key)  # BUG:vmap_shared

        return jax.vmap(member)(models)

    report = stoax.audit(forward, ensemble, X, KEY)
    only(report, "vmap_shared_key")
    f = at(report, "vmap_shared_key", "vmap_shared")
    assert f.severity == "warning"

    def fixed(models, x, key):
        return jax.vmap(lambda m, k: drop(m(x), key=k))(models, jax.random.split(key, 3))

    assert stoax.audit(fixed, ensemble, X, KEY).ok

    def declared(models, x, key):
        def member(m):
            with stoax.audit.shared():
                return drop(m(x), key=key)

        return jax.vmap(member)(models)

    assert stoax.audit(declared, ensemble, X, KEY).ok


@pytest.mark.allow_key_reuse
def test_plain_jax_vmap_shared_mask():
    def f(xs, key):
        def member(x):
            mask = jax.random.bernoulli(key, 0.5, x.shape)  # BUG:vmap_plain
            return x * mask

        return jax.vmap(member)(xs)

    at(stoax.audit(f, X, KEY), "vmap_shared_key", "vmap_plain")


# ---------------------------------------------------------------------------------------------
# no false positives on correct code


def _stoax_mlp(depth: int, width: int = 32):
    keys = jax.random.split(jax.random.key(0), depth)
    layers = []
    for k in keys:
        layers += [stoax.nn.Linear(width, width, key=k), jax.nn.relu, stoax.nn.Dropout(0.1)]
    return stoax.nn.Sequential(layers)


def _train_step(model, opt):
    def loss(params, x, key):
        return jnp.mean(model_fn(params)(x, key=key) ** 2)

    def model_fn(params):
        return stoax.combine(params, static)

    params, static = stoax.partition(model)

    @jax.jit
    def step(params, opt_state, x, seed, i):
        key = stoax.step_key(seed, i)
        value, grads = jax.value_and_grad(loss)(params, x, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step, params


def test_stoax_training_step_with_step_key_and_optax_is_clean():
    model = _stoax_mlp(3)
    opt = optax.adam(1e-3)
    step, params = _train_step(model, opt)
    report = stoax.audit(step, params, opt.init(params), jnp.ones((2, 32)), jnp.uint32(0), 5)
    assert report.ok, str(report)
    assert report.num_draws >= 3


def test_plain_jax_split_once_each_half_once_is_clean():
    def f(x, k):
        k1, k2 = jax.random.split(k)
        h = x * jax.random.bernoulli(k1, 0.5, x.shape)
        return h + jax.random.normal(k2, x.shape)

    assert stoax.audit(f, X, KEY).ok
    assert stoax.audit(jax.jit(jax.grad(lambda x, k: f(x, k).sum())), X, KEY).ok


def test_remat_and_custom_vjp_regenerating_the_mask_are_not_reuse():
    @jax.custom_vjp
    def drop(x, key):
        return jnp.where(jax.random.bits(key, x.shape) > jnp.uint32(2**31), x, 0.0)

    def fwd(x, key):
        return drop(x, key), key

    def bwd(key, g):
        return jnp.where(jax.random.bits(key, g.shape) > jnp.uint32(2**31), g, 0.0), None

    drop.defvjp(fwd, bwd)

    def loss(x, key):
        k1, k2 = jax.random.split(key)
        h = drop(x, k1)
        h = jax.checkpoint(lambda h: h * jax.random.bernoulli(k2, 0.5, h.shape))(h)
        return h.sum()

    assert stoax.audit(jax.grad(loss), X, KEY).ok


@needs_flax
def test_flax_linen_with_rng_per_call_and_grad_is_clean(linen_params):
    def loss(params, x, key):
        return LinenNet().apply(params, x, rngs={"dropout": key}).sum()

    step = jax.jit(jax.grad(loss))
    assert stoax.audit(step, linen_params, X, KEY).ok


@needs_eqx
def test_equinox_keys_split_per_layer_is_clean():
    class Net(eqx.Module):
        l1: eqx.nn.Linear
        l2: eqx.nn.Linear
        d1: eqx.nn.Dropout
        d2: eqx.nn.Dropout

        def __call__(self, x, key):
            k1, k2 = jax.random.split(key)
            x = self.d1(jax.nn.relu(self.l1(x)), key=k1)
            return self.d2(self.l2(x), key=k2)

    k1, k2 = jax.random.split(jax.random.key(0))
    net = Net(
        eqx.nn.Linear(8, 8, key=k1),
        eqx.nn.Linear(8, 8, key=k2),
        eqx.nn.Dropout(0.3),
        eqx.nn.Dropout(0.3),
    )

    @eqx.filter_jit
    def step(net, x, key):
        keys = jax.random.split(key, x.shape[0])
        return jax.vmap(net, in_axes=(0, 0))(x, keys)

    assert stoax.audit(step, net, X, KEY).ok


def test_raise_if_findings_and_str():
    report = stoax.audit(lambda x: x * jax.random.normal(jax.random.key(0), x.shape), X)
    text = str(report)
    assert "constant_key" in text and "fix:" in text and f"{HERE}:" in text
    with pytest.raises(AuditError):
        report.raise_if_findings()
    clean = stoax.audit(lambda x, k: x * jax.random.normal(k, x.shape), X, KEY)
    assert clean.raise_if_findings() is clean and "no randomness problems" in str(clean)


def test_every_kind_has_a_doc_with_before_and_after():
    for name, kind in stoax.audit.KINDS.items():
        assert "Before::" in kind.doc and "After::" in kind.doc, name
        assert kind.fix and kind.explanation


# ---------------------------------------------------------------------------------------------
# speed: a 24-layer training step


def _step_and_args(depth):
    opt = optax.adamw(1e-3)
    step, params = _train_step(_stoax_mlp(depth, width=64), opt)
    return step, (params, opt.init(params), jnp.ones((8, 64)), jnp.uint32(0), 3)


def test_a_24_layer_training_step_audits_clean():
    # Correct code at depth gives no false positive; the audit's speed is measured in
    # benchmarks/audit_speed.py, not asserted here.
    step, args = _step_and_args(24)
    report = stoax.audit(step, *args)
    assert report.ok, str(report)
    assert report.num_draws >= 24
