"""``Ensemble``: ``k`` members of one architecture stored with a leading axis, run with
``jax.vmap``, each member with its own key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from stoax import keys
from stoax._errors import locate_layer_errors
from stoax._module import Module, field, thaw
from stoax._state import apply, updates_state
from stoax.transforms._stacked import Copies, split

__all__ = ["Ensemble"]

InAxes = int | None | Sequence[Any] | dict[Any, Any]


class Ensemble(Copies):
    """``k`` independently initialised members of one architecture, evaluated with ``jax.vmap``.

    Member ``m`` is called with ``key=stoax.keys.child(key, m)``, so its dropout masks are its own
    and the ensemble is bitwise the Python loop over ``ensemble[m]``. Outputs are stacked on a
    new leading axis of size ``k``.

    Args:
        members: one module whose arrays all have the leading member axis.
        in_axes: how the input is given: ``None`` (default) -- every member sees the same ``x``;
            ``0`` -- ``x`` has a leading axis of size ``k`` and member ``m`` sees ``x[m]``
            (bootstrapped data, per-member observations). Any ``jax.vmap`` ``in_axes`` spec for
            ``x`` is accepted.

    ``ensemble[m]`` is member ``m`` as a plain module, ``ensemble[a:b]`` a smaller ensemble.
    As with :class:`~stoax.nn.Stack`, arrays that appear after construction (the scalar flag
    of ``stoax.set_mode(ensemble, jnp.asarray(True))``) are shared by all members.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> def make(key):
        ...     return stoax.nn.Sequential([stoax.nn.Linear(3, 1, key=key), stoax.nn.Dropout(0.2)])
        >>> ens = stoax.nn.Ensemble.build(make, 5, key=jax.random.key(0))
        >>> ens(jnp.ones((7, 3)), key=jax.random.key(1)).shape  # same input for all members
        (5, 7, 1)
        >>> per_member = ens.replace(in_axes=0)
        >>> per_member(jnp.ones((5, 7, 3)), key=jax.random.key(2)).shape
        (5, 7, 1)
    """

    members: Module
    size: int
    in_axes: Any = None
    stacked: frozenset[str] = field(default=frozenset(), repr=False)

    _block_field, _count_field, _noun, _from_name = "members", "size", "member", "from_members"

    def __init__(
        self,
        members: Module,
        size: int | None = None,
        in_axes: InAxes = None,
        stacked: frozenset[str] | None = None,
    ):
        self._init_copies(members, size, stacked)
        self.in_axes = _hashable(in_axes)

    @classmethod
    def build(
        cls, make: Callable[[jax.Array], Module], k: int, *, key: jax.Array, in_axes: InAxes = None
    ) -> Ensemble:
        """``k`` members built by ``make(key)`` under ``jax.vmap``; member ``m`` is initialised
        with ``stoax.keys.init_child(key, m)``."""
        return cls._built(make, k, key, in_axes=in_axes)

    @classmethod
    def from_members(cls, members: Sequence[Module], *, in_axes: InAxes = None) -> Ensemble:
        """An ensemble of existing modules, which must share structure and static fields."""
        return cls._from_blocks(members, in_axes=in_axes)

    def _repr_options(self) -> list[tuple[str, Any]]:
        return [] if self.in_axes is None else [("in_axes", self.in_axes)]

    def __call__(self, x: Any, *, key: jax.Array | None = None, **kwargs: Any) -> Any:
        """Every member's output, stacked on a new leading axis.

        Args:
            x: the input, shared by every member or split along ``in_axes``.
            key: member ``m`` gets ``child(key, m)``; needed in training mode when the members are
                stochastic.
            **kwargs: other call options, given to every member unbatched."""
        parts = split(self.members, self.stacked, self.size, "Ensemble")

        def member(m: jax.Array, leaves: list[Any], x: Any) -> Any:
            return parts.rebuild(leaves)(x, key=keys.child(key, m), **kwargs)

        in_axes = thaw(self.in_axes)
        self._check_input(x, in_axes)
        return jax.vmap(member, in_axes=(0, 0, in_axes))(jnp.arange(self.size), parts.stacked, x)

    def _check_input(self, x: Any, in_axes: Any) -> None:
        """Every axis of ``x`` mapped by ``in_axes`` must have one slice per member."""
        if in_axes is None:
            return
        bad: list[str] = []

        def check(prefix: Any, axis: Any, sub: Any) -> None:
            if axis is None:
                return
            for path, leaf in jax.tree_util.tree_flatten_with_path(sub)[0]:
                shape = jnp.shape(leaf)
                if not -len(shape) <= axis < len(shape) or shape[axis] != self.size:
                    where = jax.tree_util.keystr((*prefix, *path))
                    bad.append(f"x{where} of shape {tuple(shape)} (axis {axis})")

        try:
            jax.tree_util.tree_map_with_path(check, in_axes, x, is_leaf=lambda a: a is None)
        except (ValueError, TypeError):
            return  # in_axes is not a prefix of x: jax.vmap says so
        if bad:
            raise ValueError(
                f"Ensemble of {self.size} members with in_axes={self.in_axes!r}: each mapped "
                f"axis of the input holds one slice per member, so it must have size "
                f"{self.size}; got {', '.join(bad)}. Pass in_axes=None to give every member "
                "the same input."
            )

    @locate_layer_errors
    def apply(self, x: Any, *, key: jax.Array | None = None, **kwargs: Any) -> tuple[Any, Ensemble]:
        """``(outputs, updated Ensemble)``: member ``m`` runs through :func:`stoax.apply` with
        the key ``__call__`` gives it and keeps its own state (BatchNorm statistics of the data
        it saw) -- bitwise the Python loop over the members."""
        if not updates_state(self.members):  # stateless, or evaluation mode: nothing to thread
            return self(x, key=key, **kwargs), self
        parts = split(self.members, self.stacked, self.size, "Ensemble")

        def member(m: jax.Array, leaves: list[Any], x: Any) -> tuple[Any, list[Any]]:
            y, new = apply(parts.rebuild(leaves), x, key=keys.child(key, m), **kwargs)
            return y, parts.stacked_of(new, "Ensemble")

        in_axes = thaw(self.in_axes)
        self._check_input(x, in_axes)
        y, stacked = jax.vmap(member, in_axes=(0, 0, in_axes))(
            jnp.arange(self.size), parts.stacked, x
        )
        return y, self.replace(members=parts.rebuild(stacked))


def _hashable(in_axes: Any) -> Any:
    """``in_axes`` is static metadata: lists become tuples so it can be hashed."""
    if isinstance(in_axes, list):
        return tuple(_hashable(a) for a in in_axes)
    return in_axes
