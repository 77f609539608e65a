"""``stoax.nn.Stack``: a stack run with ``lax.scan`` is bitwise the Python loop over its layers.

Comparisons of a scan with a loop run both sides under ``jax.jit``: op-by-op (eager) execution and
a compiled program can round differently where XLA fuses (the GELU derivative, for one); compiled
on both sides, the scan body and the unrolled loop give identical bits on CPU. Gradients are
compared as pullbacks of a fixed cotangent: in ``jnp.sum(y ** 2)`` the reduction fuses with the
last layer of the unrolled loop (not with the scan's output), and that fusion alone moved the
loss by one ulp while ``y`` and every pullback stayed bitwise equal.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _independence import assert_independent
from _jax_compat import count_eqns

import stoax
from stoax import keys

D = 8
N = 4


def make(key):
    k1, k2 = keys.derive(key, "fc1", "fc2")
    return stoax.nn.Sequential(
        [
            stoax.nn.Linear(D, 2 * D, key=k1),
            jax.nn.gelu,
            stoax.nn.Dropout(0.3),
            stoax.nn.Linear(2 * D, D, key=k2),
            stoax.nn.Dropout(0.2),
        ]
    )


@pytest.fixture(scope="module")
def stack():
    return stoax.nn.Stack.build(make, N, key=jax.random.key(0))


def x_of(seed=1, batch=3):
    return jax.random.normal(jax.random.key(seed), (batch, D))


def loop(stack, x, key):
    """The Python loop a Stack must equal: layer i gets keys.child(key, i)."""
    for i, layer in enumerate(stack):
        x = layer(x, key=keys.child(key, i))
    return x


run_loop = jax.jit(loop)
# Both sides in one compiled program (one compile per stack structure).
stack_and_loop = jax.jit(lambda s, x, k: (s(x, key=k), loop(s, x, k)))


def assert_trees_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb, strict=True):
        np.testing.assert_array_equal(u, v)


def test_build_equals_layers_built_in_a_loop(stack):
    for i in range(N):
        assert stack[i] == make(keys.init_child(jax.random.key(0), i))
    assert stack[-1] == stack[N - 1]


@jax.jit
def outputs_and_vjps(s, x, ct):
    """Output and pullback (parameters and input, for the cotangent ``ct``) of the stack and of
    the loop, same key. A pullback rather than the gradient of a scalar loss: a reduction after
    the last layer fuses with it in the loop program only, and that fused reduction (not the
    stack) may round differently."""
    y, pull = jax.vjp(lambda s, x: s(x, key=jax.random.key(7)), s, x)
    y_loop, pull_loop = jax.vjp(lambda s, x: loop(s, x, jax.random.key(7)), s, x)
    return (y, pull(ct)), (y_loop, pull_loop(ct))


def test_stack_equals_python_loop_bitwise_with_and_without_remat(stack):
    x = x_of()
    ct = jax.random.normal(jax.random.key(8), x.shape)
    results = {}
    assert stack.remat is stoax.transforms.recompute_elementwise  # the default policy
    for remat in (stoax.transforms.recompute_elementwise, False, True):
        by_stack, by_loop = outputs_and_vjps(stack.replace(remat=remat), x, ct)
        assert_trees_equal(by_stack, by_loop)
        assert (by_stack[0] == 0).any()  # dropout is on
        results[remat] = by_stack
    # rematerialisation changes nothing: same masks, same gradients
    assert_trees_equal(results[False], results[True])
    assert_trees_equal(results[False], results[stoax.transforms.recompute_elementwise])


def test_each_layer_draws_an_independent_mask():
    # A block that records its own keep-mask in row t of the carry: the stack's per-layer masks.
    class Record(stoax.Module):
        drop: stoax.nn.Dropout

        def __call__(self, carry, *, key=None):
            t, masks = carry
            mask = self.drop(jnp.ones(masks.shape[1]), key=key) > 0
            return t + 1, masks.at[t].set(mask)

    n_layers, n = 8, 20_000
    stack = stoax.nn.Stack(Record(stoax.nn.Dropout(0.5)), length=n_layers)
    _, masks = jax.jit(lambda s, k: s((0, jnp.zeros((n_layers, n), bool)), key=k))(
        stack, jax.random.key(11)
    )
    assert_independent(np.asarray(masks), keep=0.5)


def test_traced_training_flag_is_shared_not_scanned(stack):
    traced = stoax.set_mode(stack, jnp.asarray(True))
    assert traced.layers.layers[2].training.shape == ()  # one flag for all layers
    assert "training" not in " ".join(traced.stacked)
    assert traced[1].layers[2].training.shape == ()

    f = jax.jit(lambda s, flag, x, k: stoax.set_mode(s, flag)(x, key=k))
    x = x_of()
    trained, looped = stack_and_loop(stack, x, jax.random.key(2))
    np.testing.assert_array_equal(trained, looped)
    np.testing.assert_array_equal(f(stack, jnp.asarray(True), x, jax.random.key(2)), trained)
    evaluated = f(stack, jnp.asarray(False), x, jax.random.key(2))
    np.testing.assert_array_equal(evaluated, run_loop(stoax.eval_mode(stack), x, None))
    assert not (trained == evaluated).all()


def test_traced_rate_added_later_is_shared(stack):
    s = stoax.map_modules(
        lambda m: m.replace(rate=jnp.asarray(0.5)) if isinstance(m, stoax.nn.Dropout) else m, stack
    )
    assert s.layers.layers[2].rate.shape == ()
    y_stack, y_loop = stack_and_loop(s, x_of(), jax.random.key(4))
    np.testing.assert_array_equal(y_stack, y_loop)


def test_vmap_and_grad_around_a_stack(stack):
    xs = jax.random.normal(jax.random.key(8), (5, 2, D))
    ks = jax.vmap(lambda i: keys.child(jax.random.key(9), i))(jnp.arange(5))
    ys = jax.jit(jax.vmap(lambda x, k: stack(x, key=k)))(xs, ks)
    for b in range(5):
        np.testing.assert_array_equal(
            ys[b], run_loop(stack, xs[b], keys.child(jax.random.key(9), b))
        )
    params, rest = stoax.partition(stack)
    grads = jax.jit(jax.grad(lambda p, x, k: stoax.combine(p, rest)(x, key=k).sum()))(
        params, xs[0], jax.random.key(1)
    )
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert grads.layers.layers[0].weight.shape == (N, D, 2 * D)


def test_indexing_len_iter_slice_and_repr(stack):
    assert len(stack) == N
    assert len(list(stack)) == N
    assert stack[1].layers[0].weight.shape == (D, 2 * D)
    sub = stack[1:3]
    assert isinstance(sub, stoax.nn.Stack) and len(sub) == 2
    assert sub[0] == stack[1]
    text = repr(stack)
    assert text.startswith(f"Stack({N} x Sequential(") and f"f32[{D},{2 * D}]" in text
    assert "remat=True" in repr(stack.replace(remat=True))
    with pytest.raises(IndexError):
        stack[N]
    with pytest.raises(TypeError):
        stack["0"]


def test_from_layers_equals_build(stack):
    rebuilt = stoax.nn.Stack.from_layers(list(stack))
    assert rebuilt == stack


def test_errors_say_what_to_do(stack):
    blocks = [make(jax.random.key(0)), stoax.nn.Sequential([stoax.nn.Dropout(0.1)])]
    with pytest.raises(ValueError, match="must share them"):
        stoax.nn.Stack.from_layers(blocks)
    # An edit runs the constructor's checks: refused at the edit, not at the next call.
    with pytest.raises(ValueError, match=r"leading axis must have size 4.*broadcast_to"):
        stoax.replace_at(stack, "layers.layers[0].bias", jnp.zeros(2 * D))
    widen = stoax.nn.Stack.build(
        lambda k: stoax.nn.Linear(D, 2 * D, key=k), 2, key=jax.random.key(0)
    )
    with pytest.raises(ValueError, match="must return what it takes"):
        widen(x_of())
    with pytest.raises(stoax.nn.MissingKeyError):
        stack(x_of())


def test_program_size_does_not_grow_with_depth():
    def program(depth):
        # an abstract stack: shapes only, nothing is computed
        s = jax.eval_shape(lambda k: stoax.nn.Stack.build(make, depth, key=k), jax.random.key(0))
        jaxpr = jax.make_jaxpr(lambda s, x, k: jax.grad(lambda s: s(x, key=k).sum())(s))(
            s, x_of(), jax.random.key(1)
        )
        return count_eqns(jaxpr.jaxpr)

    assert program(2) == program(16)
