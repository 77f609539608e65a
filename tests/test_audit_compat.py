"""Every JAX-internal touch point of the auditor (``stoax.audit._compat``) works on the installed
JAX, and a missing one raises an ``AuditError`` naming the JAX version instead of a clean report."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

import stoax
from stoax.audit import AuditError, _compat


def _eqns(fn, *args):
    return jax.make_jaxpr(fn)(*args).jaxpr.eqns


def test_jaxpr_layouts_of_scan_while_cond_and_random_primitives():
    key = jax.random.key(0)
    (scan,) = [
        e
        for e in _eqns(lambda c: jax.lax.scan(lambda c, x: (c + x, x), c, jnp.ones(3)), 0.0)
        if e.primitive.name == "scan"
    ]
    lay = _compat.scan_layout(scan.params)
    assert (lay.num_consts, lay.num_carry, lay.reverse, lay.length) == (0, 1, False, 3)
    (wh,) = [
        e
        for e in _eqns(lambda c: jax.lax.while_loop(lambda c: c < 3, lambda c: c + 1, c), 0)
        if e.primitive.name == "while"
    ]
    wl = _compat.while_layout(wh.params)
    assert (wl.cond_nconsts, wl.body_nconsts) == (0, 0)
    (cond,) = _eqns(lambda p, x: jax.lax.cond(p, lambda: x, lambda: -x), True, 1.0)[-1:]
    assert len(_compat.cond_branches(cond.params)) == 2
    (split,) = _eqns(lambda k: jax.random.split(k, 3), key)
    assert _compat.random_shape(split.params, "random_split") == (3,)
    with pytest.raises(AuditError, match=jax.__version__):
        _compat.scan_layout({})


def test_traceback_lines_name_the_users_line():
    def f(x):
        return jnp.sin(x)  # the line

    (eqn,) = _eqns(f, 1.0)
    lines = _compat.traceback_lines(eqn.source_info.traceback)
    mine = [ln for code, ln in lines if code.co_filename == __file__]
    assert mine and mine[0] == f.__code__.co_firstlineno + 1


def test_name_stack_scopes_see_named_scopes_and_the_transpose():
    def f(x):
        with jax.named_scope("outer"):
            return jnp.sin(x)

    (eqn,) = _eqns(f, 1.0)
    assert "outer" in [s.name for s in _compat.name_stack_scopes(eqn.source_info.name_stack)]
    eqns = _eqns(jax.grad(lambda x: jnp.sin(x) * 2.0), 1.0)
    scopes = [_compat.name_stack_scopes(e.source_info.name_stack) for e in eqns]
    assert any(s.is_transform and s.name == "transpose" for ss in scopes for s in ss)


def test_jit_static_args_and_key_impls():
    f = jax.jit(lambda x, n: x * n, static_argnums=1)
    assert _compat.jit_static_args(f) == ((1,), ("n",))
    assert _compat.jit_static_args(lambda x: x) is None
    assert _compat.key_impl_name(jax.random.key(0).dtype) == "threefry2x32"
    assert _compat.key_impl_name(jnp.float32) is None
    assert (
        _compat.splits_are_fold_ins(jax.random.key(0).dtype)
        == jax.config.jax_threefry_partitionable
    )
    assert not _compat.splits_are_fold_ins(jax.random.key(0, impl="unsafe_rbg").dtype)


def test_batch_trace_and_retrace_context():
    cls = _compat.batch_trace_class()
    assert all(callable(getattr(cls, n)) for n in (*_compat.CUSTOM_CALLS, "process_primitive"))
    with _compat.retrace_inner_jits(), _compat.key_reuse_checks_off():
        assert _compat.current_name_stack() is not None


def test_a_broken_internal_raises_an_audit_error_not_a_clean_report(monkeypatch):
    def broken():  # the vmap check's rules hit an internal that changed shape
        raise AttributeError("'SourceInfo' object has no attribute 'name_stack'")

    monkeypatch.setattr(_compat, "current_name_stack", broken)

    def f(xs, key):
        return jax.vmap(lambda x: x * jax.random.bernoulli(key, 0.5, x.shape))(xs)

    with pytest.raises(AuditError, match=f"jax {jax.__version__}"):
        stoax.audit(f, jnp.ones((3, 2)), jax.random.key(0))


def test_a_missing_internal_is_named(monkeypatch):
    monkeypatch.setattr(
        _compat,
        "_source_info_util",
        lambda: (_ for _ in ()).throw(_compat.unsupported("jax._src.source_info_util is gone")),
    )
    with pytest.raises(AuditError, match="source_info_util"):
        _compat.current_traceback()
