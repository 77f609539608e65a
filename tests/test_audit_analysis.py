"""``stoax.audit`` on the patterns of issue 12: no crash, no false alarm, no miss.

Plain JAX only (this file also runs on the oldest supported JAX, without Flax / Equinox); the
Equinox step returning its model is at the end, skipped when Equinox is missing. Buggy lines carry
a ``# BUG:<name>`` comment; :func:`at` pins the exact line a finding points at.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import stoax
from stoax.audit import AuditReport, Finding

pytestmark = pytest.mark.allow_key_reuse

HERE = __file__
with open(HERE) as _fh:
    _SOURCE = _fh.read().splitlines()

X = jnp.ones((4, 8))
KEY = jax.random.key(1)


def line(tag: str) -> int:
    hits = [i + 1 for i, t in enumerate(_SOURCE) if t.rstrip().endswith(f"# BUG:{tag}")]
    assert len(hits) == 1, (tag, hits)
    return hits[0]


def at(report: AuditReport, kind: str, tag: str) -> Finding:
    want = line(tag)
    for f in report.of_kind(kind):
        if f.location is not None and f.location.file == HERE and f.location.line == want:
            return f
    raise AssertionError(f"no {kind} at line {want} ({tag}):\n{report}")


def clean(fn, *args, **kwargs) -> None:
    report = stoax.audit(fn, *args, **kwargs)
    assert report.ok, str(report)


# ---------------------------------------------------------------------------------------------
# false alarms gone


def test_dead_draws_do_not_count():
    def shapes_only(x, key):
        # a model initialised from a constant key only to read the shapes of its parameters
        w = jax.random.normal(jax.random.key(0), (8, 3))
        _ = jax.random.normal(jax.random.key(0), x.shape)
        return x @ jnp.zeros(w.shape) + jax.random.normal(key, (4, 3))

    clean(shapes_only, X, KEY)

    @jax.jit
    def unused_in_jit(x, key):
        inner = jax.jit(lambda k: jax.random.normal(k, x.shape))(jax.random.key(0))
        del inner
        return x * jax.random.bernoulli(key, 0.5, x.shape)

    clean(unused_in_jit, X, KEY)


def test_a_split_whose_children_are_never_drawn_from_is_not_a_reuse():
    def init_carry(x, key):
        # two zero carries, each made by an initialize_carry(jax.random.key(0)) that splits
        # the key and never draws from the halves (sst2, seq2seq)
        for _ in range(2):
            k1, k2 = jax.random.split(jax.random.key(0))
            del k1, k2
        carry = jnp.zeros_like(x)
        k3, k4 = jax.random.split(key)
        del k4
        return carry + jax.random.normal(k3, x.shape)

    clean(init_carry, X, KEY)

    # a returned split child is used: reusing its parent is still found
    def returned(x, key):
        k, sub = jax.random.split(key)
        return x + jax.random.normal(key, x.shape), k  # BUG:returned_split

    at(stoax.audit(returned, X, KEY), "reused_key", "returned_split")


def test_python_numbers_are_traced_as_jax_jit_traces_them():
    # the ADVI example: the step t is a Python int, PRNGKey(t) is a different key every step
    @jax.jit
    def advi_step(params, t):
        eps = jax.random.normal(jax.random.PRNGKey(t), params.shape)
        return params + 0.1 * eps

    clean(advi_step, jnp.zeros(3), 5)
    clean(lambda params, t: advi_step(params, t), jnp.zeros(3), 5)

    # but a number jax.jit would make static is static: the key is a constant
    def step(params, t):
        return params + jax.random.normal(jax.random.PRNGKey(t), params.shape)  # BUG:static_t

    jitted = jax.jit(step, static_argnums=1)
    at(stoax.audit(jitted, jnp.zeros(3), 5), "constant_key", "static_t")
    by_name = jax.jit(step, static_argnames="t")
    at(stoax.audit(by_name, jnp.zeros(3), t=5), "constant_key", "static_t")


def test_a_number_python_branches_on_is_traced_again_as_static():
    def step(x, key, train):
        if train:
            return x * jax.random.bernoulli(key, 0.5, x.shape)
        return x

    clean(step, X, KEY, True)


def test_scan_over_the_index_of_split_keys_is_not_loop_invariant():
    def f(x, key):
        ks = jax.random.split(key, 5)

        def body(h, i):
            return h + jax.random.normal(ks[i], h.shape), None

        return jax.lax.scan(body, x, jnp.arange(5))[0]

    clean(f, X, KEY)
    clean(f, X, jax.random.PRNGKey(0))


def test_reading_a_keys_raw_data_is_not_a_consumption():
    def f(x, key):
        data = jax.random.key_data(key)
        jax.debug.print("key {}", data)
        valid = data[0] != 0
        return jnp.where(valid, x + jax.random.normal(key, x.shape), x)

    clean(f, X, KEY)


def test_uint32_counters_are_data_not_legacy_keys():
    # per-layer rng streams scanned over (Flax NNX scan over layers): keys and uint32 counters
    def f(x, keys, counts):
        def body(h, kc):
            k, c = kc
            return h + jax.random.normal(jax.random.fold_in(k, c), h.shape), c + 1

        return jax.lax.scan(body, x, (keys, counts))

    clean(f, X, jax.random.split(KEY, 3), jnp.zeros(3, jnp.uint32))


def test_a_model_updated_in_place_keeps_its_draws_live():
    # a Flax NNX step returns only the loss; the updated state is in its arguments
    class Box:
        def __init__(self, w):
            self.w = w

    jax.tree_util.register_pytree_node(Box, lambda b: ((b.w,), None), lambda _, c: Box(*c))

    def step(box, x):
        box.w = box.w + jax.random.normal(jax.random.key(0), box.w.shape)  # BUG:in_place
        return jnp.sum(x)

    at(stoax.audit(step, Box(jnp.zeros(3)), X), "constant_key", "in_place")


def test_outputs_that_are_not_arrays_are_filtered():
    def step(x, key):
        return {"act": jax.nn.relu, "name": "layer", "y": x * jax.random.normal(key, x.shape)}

    clean(step, X, KEY)


# ---------------------------------------------------------------------------------------------
# misses found


def test_key_consumed_and_carried_to_the_next_iteration_blackjax_53():
    # https://github.com/blackjax-devs/blackjax/issues/53
    def sample(x, key):
        def body(carry, _):
            k, h = carry
            _, k_step = jax.random.split(k)  # BUG:carried_split
            h = h + jax.random.normal(k_step, h.shape)  # BUG:carried_consumed
            return (k_step, h), None  # k_step is split again next iteration

        return jax.lax.scan(body, (key, x), None, length=4)[0][1]

    # the split of the next iteration consumes the key the draw of this one consumed
    f = at(stoax.audit(sample, X, KEY), "reused_key", "carried_split")
    assert "next iteration" in f.message
    assert [loc.line for loc in f.related] == [line("carried_consumed")]

    def fixed(x, key):
        def body(carry, _):
            k, h = carry
            k, k_step = jax.random.split(k)
            return (k, h + jax.random.normal(k_step, h.shape)), None

        return jax.lax.scan(body, (key, x), None, length=4)[0][1]

    clean(fixed, X, KEY)

    def while_version(x, key):
        def body(c):
            i, k, h = c
            k2 = jax.random.split(k)[1]  # BUG:while_carried
            return i + 1, k2, h + jax.random.normal(k2, h.shape)

        return jax.lax.while_loop(lambda c: c[0] < 3, body, (0, key, x))[2]

    at(stoax.audit(while_version, X, KEY), "reused_key", "while_carried")


def test_the_same_traced_int32_step_folded_in_twice():
    def f(x, key, s):
        a = jax.random.normal(jax.random.fold_in(key, s), x.shape)
        return a + jax.random.normal(jax.random.fold_in(key, s), x.shape)  # BUG:fold_s_twice

    at(stoax.audit(f, X, KEY, jnp.asarray(3)), "reused_key", "fold_s_twice")
    at(stoax.audit(f, X, KEY, jnp.uint32(3)), "reused_key", "fold_s_twice")

    def computed_twice(x, key, s):
        a = jax.random.normal(jax.random.fold_in(key, s + 1), x.shape)
        return a + jax.random.normal(jax.random.fold_in(key, s + 1), x.shape)  # BUG:s_plus_1

    at(stoax.audit(computed_twice, X, KEY, jnp.asarray(3)), "reused_key", "s_plus_1")
    clean(
        lambda x, key, s: (
            jax.random.normal(jax.random.fold_in(key, s), x.shape)
            + jax.random.normal(jax.random.fold_in(key, s + 1), x.shape)
        ),
        X,
        KEY,
        jnp.asarray(3),
    )

    drop = stoax.nn.Dropout(0.5)

    def g(x, s):
        return drop(x, key=stoax.step_key(0, s)) + drop(x, key=stoax.step_key(0, s))  # BUG:step2

    at(stoax.audit(g, X, jnp.asarray(3)), "reused_key", "step2")
    clean(lambda x, s: drop(x, key=stoax.step_key(0, s)) + drop(x, key=stoax.step_key(1, s)), X, 3)


def test_indexing_one_key_twice():
    def traced_index(x, key, i):
        ks = jax.random.split(key, 4)
        return jax.random.normal(ks[i], x.shape) + jax.random.normal(ks[i], x.shape)  # BUG:ks_i

    at(stoax.audit(traced_index, X, KEY, 1), "reused_key", "ks_i")
    clean(
        lambda x, k, i: jax.random.normal(jax.random.split(k, 4)[i], x.shape), X, KEY, jnp.int32(1)
    )

    def gather(x, key):
        ks = jax.random.split(key, 3)[jnp.array([0, 0])]
        return jax.vmap(lambda k: jax.random.normal(k, x.shape))(ks)  # BUG:gather_repeat

    at(stoax.audit(gather, X, KEY), "reused_key", "gather_repeat")
    clean(
        lambda x, key: jax.vmap(lambda k: jax.random.normal(k, x.shape))(
            jax.random.split(key, 3)[jnp.array([0, 2])]
        ),
        X,
        KEY,
    )


def test_vmap_over_copies_of_one_key():
    def f(xs, key):
        keys = jnp.broadcast_to(key, (xs.shape[0],))
        return jax.vmap(lambda x, k: x * jax.random.bernoulli(k, 0.5, x.shape))(xs, keys)  # BUG:bc

    at(stoax.audit(f, X, KEY), "reused_key", "bc")


def test_fold_in_of_a_value_that_never_changes_in_a_loop():
    def f(x, key):
        def body(i, h):
            k = jax.random.fold_in(key, i * 0)
            return h + jax.random.normal(k, h.shape)  # BUG:carry_times_zero

        return jax.lax.fori_loop(0, 3, body, x)

    at(stoax.audit(f, X, KEY), "loop_invariant_key", "carry_times_zero")


def test_a_key_broadcast_into_the_scanned_inputs():
    def f(x, key):
        keys = jnp.stack([key] * 4)  # an accident: the same key for every step

        def body(h, k):
            return h + jax.random.normal(k, h.shape), None  # BUG:scanned_copies

        return jax.lax.scan(body, x, keys)[0]

    at(stoax.audit(f, X, KEY), "loop_invariant_key", "scanned_copies")

    def declared(x, key):
        def body(h, k):
            with stoax.audit.shared():
                return h + jax.random.normal(k, h.shape), None

        return jax.lax.scan(body, x, jnp.stack([key] * 4))[0]

    clean(declared, X, KEY)


# ---------------------------------------------------------------------------------------------
# key collisions by value


@pytest.mark.skipif(not jax.config.jax_threefry_partitionable, reason="non-partitionable threefry")
def test_split_children_equal_fold_ins_numerically_and_for_the_auditor():
    key = jax.random.key(7)
    for shape in [(3,), (2, 3)]:
        kids = jax.random.split(key, shape).reshape(-1)
        for i in range(kids.shape[0]):
            same = jax.random.key_data(kids[i]) == jax.random.key_data(jax.random.fold_in(key, i))
            assert bool(same.all()), (shape, i)

    def f(x, key):
        a, _ = jax.random.split(key)
        first = jax.random.normal(a, x.shape)
        return first + jax.random.normal(jax.random.fold_in(key, 0), x.shape)  # BUG:split_fold

    at(stoax.audit(f, X, KEY), "reused_key", "split_fold")

    def init_and_train(x):
        # model init and the first training key from one seed, derived by hand
        k_init = jax.random.split(jax.random.key(0))[1]
        w = jax.random.normal(k_init, (8, 8))
        k_step = jax.random.fold_in(jax.random.key(0), 1)
        noise = jax.random.normal(k_step, x.shape)  # BUG:init_train
        return x @ w + noise

    at(stoax.audit(init_and_train, X), "reused_key", "init_train")

    def init_and_train_with_stoax_keys(x):
        # stoax's step keys live in their own domain (issue 13): no collision with the init key
        k_init = jax.random.split(jax.random.key(0))[1]
        w = jax.random.normal(k_init, (8, 8))
        return x @ w + jax.random.normal(stoax.step_key(0, 1), x.shape)

    assert stoax.audit(init_and_train_with_stoax_keys, X).of_kind("reused_key") == []

    def distinct(x, key):
        a, _ = jax.random.split(key)
        return jax.random.normal(a, x.shape) + jax.random.normal(
            jax.random.fold_in(key, 2), x.shape
        )

    clean(distinct, X, KEY)


@pytest.fixture
def classic_threefry():
    """The non-partitionable threefry (JAX's default before 0.5), restored afterwards."""
    before = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", False)
    yield
    jax.config.update("jax_threefry_partitionable", before)


def test_without_partitionable_threefry_split_and_fold_in_differ(classic_threefry):
    key = jax.random.key(7)
    kids = jax.random.split(key, 3)
    for i in range(3):
        same = jax.random.key_data(kids[i]) == jax.random.key_data(jax.random.fold_in(key, i))
        assert not bool(same.all()), i

    def f(x, key):
        a, _ = jax.random.split(key)
        return jax.random.normal(a, x.shape) + jax.random.normal(
            jax.random.fold_in(key, 0), x.shape
        )

    clean(f, X, KEY)


def test_rbg_split_children_equal_fold_ins_too():
    key = jax.random.key(3, impl="rbg")
    kids = jax.random.split(key, 3)
    for i in range(3):
        same = jax.random.key_data(kids[i]) == jax.random.key_data(jax.random.fold_in(key, i))
        assert bool(same.all()) == bool(jax.config.jax_threefry_partitionable)

    def f(x, key):
        a, _ = jax.random.split(key)
        return jax.random.normal(a, x.shape) + jax.random.normal(
            jax.random.fold_in(key, 0), x.shape
        )

    report = stoax.audit(f, X, key)
    assert bool(report.of_kind("reused_key")) == bool(jax.config.jax_threefry_partitionable)


def test_other_prng_implementations_are_not_merged():
    key = jax.random.key(0, impl="unsafe_rbg")
    a = jax.random.split(key, 2)[0]
    assert not bool(
        (jax.random.key_data(a) == jax.random.key_data(jax.random.fold_in(key, 0))).all()
    )

    def f(x, key):
        a, _ = jax.random.split(key)
        return jax.random.normal(a, x.shape) + jax.random.normal(
            jax.random.fold_in(key, 0), x.shape
        )

    clean(f, X, key)


# ---------------------------------------------------------------------------------------------
# declared intent


def test_declared_variational_dropout_loop_gives_no_finding():
    def rnn(h, xs, key):
        def step(h, x):
            with stoax.audit.shared():  # one mask for the whole sequence, on purpose
                mask = jax.random.bernoulli(key, 0.5, h.shape)
            return jnp.tanh(x + h * mask), None

        return jax.lax.scan(step, h, xs)[0]

    clean(rnn, jnp.ones(8), jnp.ones((5, 8)), KEY)

    def undeclared(h, xs, key):
        def step(h, x):
            mask = jax.random.bernoulli(key, 0.5, h.shape)  # BUG:undeclared_vd
            return jnp.tanh(x + h * mask), None

        return jax.lax.scan(step, h, xs)[0]

    at(
        stoax.audit(undeclared, jnp.ones(8), jnp.ones((5, 8)), KEY),
        "loop_invariant_key",
        "undeclared_vd",
    )
    # shared() stays a context manager that changes nothing in the computation
    with stoax.audit.shared():
        assert jax.random.normal(KEY).shape == ()


def test_declared_sharing_does_not_hide_reuse():
    def f(x, key):
        with stoax.audit.shared():
            a = jax.random.normal(key, x.shape)
            return a + jax.random.normal(key, x.shape)  # BUG:shared_reuse

    at(stoax.audit(f, X, KEY), "reused_key", "shared_reuse")


# ---------------------------------------------------------------------------------------------
# the typed shape of stoax.audit


def test_stoax_audit_is_a_typed_callable_whose_attributes_are_the_namespace():
    from stoax.audit import KINDS, Audit, AuditError

    assert isinstance(stoax.audit, Audit)
    assert stoax.audit.AuditReport is AuditReport and stoax.audit.Finding is Finding
    assert stoax.audit.AuditError is AuditError and stoax.audit.KINDS is KINDS
    report = stoax.audit(lambda k: jax.random.normal(k), KEY)
    assert isinstance(report, AuditReport) and report.ok


# ---------------------------------------------------------------------------------------------
# Equinox: a step that returns the updated model


def test_equinox_step_returning_the_model():
    eqx = pytest.importorskip("equinox")

    class Net(eqx.Module):
        layers: list  # a Linear, jax.nn.relu, a Linear: a function among the leaves
        name: str  # a string field
        drop: eqx.nn.Dropout

        def __call__(self, x, key):
            for layer in self.layers:
                x = layer(x)
            return self.drop(x, key=key)

    k1, k2 = jax.random.split(jax.random.key(0))
    net = Net(
        [eqx.nn.Linear(4, 8, key=k1), jax.nn.relu, eqx.nn.Linear(8, 4, key=k2)],
        "mlp",
        eqx.nn.Dropout(0.1),
    )

    def loss(model, x, key):
        return jnp.mean(jax.vmap(model)(x, jax.random.split(key, x.shape[0])) ** 2)

    @eqx.filter_jit
    def step(model, x, key):
        grads = eqx.filter_grad(loss)(model, x, key)
        return eqx.apply_updates(model, jax.tree_util.tree_map(lambda g: -0.1 * g, grads))

    clean(step, net, np.ones((2, 4), np.float32), KEY)

    @eqx.filter_jit
    def bad(model, x, key):
        grads = eqx.filter_grad(loss)(model, x, key)
        model = eqx.apply_updates(model, jax.tree_util.tree_map(lambda g: -0.1 * g, grads))
        return model, loss(model, x, key)  # BUG:eqx_step_reuse

    at(stoax.audit(bad, net, np.ones((2, 4), np.float32), KEY), "reused_key", "eqx_step_reuse")


def test_flax_init_for_shapes_and_a_zero_carry_are_not_findings():
    nn = pytest.importorskip("flax.linen")

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, x, *, decode: bool = False):
            x = nn.Dense(8)(x)
            if decode:
                cache = self.variable("cache", "last", jnp.zeros, x.shape)
                cache.value = x
            return x

    model = Decoder()
    params = model.init(jax.random.key(1), X)["params"]

    def predict_step(params, x):
        # lm1b / wmt: the cache's shapes from an init with a fixed key; the params are dropped
        cache = model.init(jax.random.key(0), x, decode=True)["cache"]
        out, _ = model.apply({"params": params, "cache": cache}, x, decode=True, mutable=["cache"])
        return out

    clean(jax.jit(predict_step), params, X)

    cell = nn.LSTMCell(8)

    def encode(params, xs):
        # sst2 / seq2seq: initialize_carry with a fixed key (twice); the initialiser is zeros
        carry = cell.initialize_carry(jax.random.key(0), xs[:, 0].shape)
        carry, _ = cell.apply(params, carry, xs[:, 0])
        carry2 = cell.initialize_carry(jax.random.key(0), xs[:, 0].shape)
        carry2, _ = cell.apply(params, carry2, xs[:, 1])
        return carry[1] + carry2[1]

    cell_params = cell.init(jax.random.key(2), cell.initialize_carry(KEY, X.shape), X)
    clean(jax.jit(encode), cell_params, X[:, None, :].repeat(2, axis=1))
