"""What subclassing ``stoax.Module`` does to a user's ``__call__`` and instance ``__dict__``, as
the ``Module`` docstring promises: the call is wrapped (errors located, layers named) and keeps
its signature, docstring, ``__wrapped__``, source and ``help()``; the flattening is cached."""

from __future__ import annotations

import dataclasses
import inspect
import pydoc

import jax
import jax.numpy as jnp
import pytest

import stoax
from stoax._errors import LayerValueError


class Gain(stoax.Module):
    """Multiplies by a learned gain."""

    gain: jax.Array

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None, scale: float = 1.0):
        """Scale ``x`` by the gain.

        Args:
            x: the input.
            key: unused.
            scale: an extra factor.
        """
        if x.shape[-1] != self.gain.shape[-1]:  # WRAPPING-TEST-MARKER
            raise LayerValueError(self, f": expected {self.gain.shape[-1]} features.")
        return x * self.gain * scale


class Pair(stoax.Module):
    first: Gain
    second: Gain

    def __call__(self, x, *, key=None):
        return self.second(self.first(x))


class Quiet(Gain):
    """Inherits ``Gain.__call__``."""


def _gain(n: int = 3) -> Gain:
    return Gain(jnp.full((n,), 2.0))


def test_call_is_wrapped_and_unwraps_to_the_users_function():
    call = Gain.__call__
    original = inspect.unwrap(call)
    assert original is not call  # really wrapped: the promise below is not vacuous
    assert call.__wrapped__ is not None
    assert "WRAPPING-TEST-MARKER" in inspect.getsource(original)
    # Inherited: wrapped once, in the class that defines it.
    assert Quiet.__call__ is Gain.__call__


def test_call_keeps_name_docstring_and_signature():
    call = Gain.__call__
    assert call.__name__ == "__call__"
    assert call.__qualname__ == "Gain.__call__"
    assert call.__doc__.startswith("Scale ``x`` by the gain.")
    assert str(inspect.signature(call)) == (
        "(self, x: 'jax.Array', *, key: 'jax.Array | None' = None, scale: 'float' = 1.0)"
    )
    assert str(inspect.signature(_gain())) == (
        "(x: 'jax.Array', *, key: 'jax.Array | None' = None, scale: 'float' = 1.0)"
    )
    assert call.__annotations__["scale"] == "float"


def test_getsource_and_help_show_the_users_call():
    assert "WRAPPING-TEST-MARKER" in inspect.getsource(Gain.__call__)
    page = pydoc.render_doc(Gain, renderer=pydoc.plaintext)
    assert "__call__(self, x: 'jax.Array', *, key: 'jax.Array | None' = None, scale" in page
    assert "Scale ``x`` by the gain." in page
    assert "*args" not in page.split("__call__", 1)[1].split("\n", 1)[0]


def test_the_wrapped_call_still_runs_and_locates_errors():
    model = Pair(_gain(), _gain())
    assert model(jnp.ones(3)).tolist() == [4.0, 4.0, 4.0]
    assert _gain()(jnp.ones(3), scale=0.5).tolist() == [1.0, 1.0, 1.0]
    bad = Pair(_gain(), _gain(4))  # the second layer expects 4 features
    with pytest.raises(ValueError, match=r"^Pair\.second \(Gain\(.*\)\): expected 4 features"):
        bad(jnp.ones(3))


def test_the_flattening_is_cached_in_the_instance_dict():
    m = _gain()
    cached = m.__dict__["__stoax_flat__"]  # set at construction
    leaves, treedef = jax.tree.flatten(m)
    assert leaves[0] is cached[0][0]
    assert m.__dict__["__stoax_flat__"] is cached  # flattening again reuses it
    rebuilt = jax.tree.unflatten(treedef, leaves)
    assert "__stoax_flat__" in rebuilt.__dict__ and rebuilt == m
    # Not a field: invisible to repr, equality and replace, which gets its own cache.
    assert [f.name for f in dataclasses.fields(m)] == ["gain"]
    assert "__stoax_flat__" not in repr(m)
    edited = m.replace(gain=jnp.zeros(3))
    assert jax.tree.leaves(edited)[0].tolist() == [0.0, 0.0, 0.0]
    assert edited.__dict__["__stoax_flat__"] is not cached
