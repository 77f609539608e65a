"""``Stack``: ``n`` layers of one block stored with a leading layer axis and run with ``lax.scan``.

Why a stack and not a Python list of layers: the scan body is traced and compiled once, so the
compile time and the program size do not grow with depth; and with ``remat=True`` only the
activations between layers are kept for the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from stoax import keys
from stoax._edit import map_modules
from stoax._errors import locate_layer_errors
from stoax._module import Module, field
from stoax._state import apply, updates_state
from stoax.transforms._remat import checkpoint_step, recompute_elementwise
from stoax.transforms._stacked import Copies, check_remat, check_unroll, split

__all__ = ["Stack"]


class Stack(Copies):
    """``n`` layers of one block, applied in order with ``lax.scan``.

    Every array of the block carries a leading axis of size ``n`` (layer ``i`` is slice ``i``);
    static fields (sizes, Python-float rates, activations) are shared by all layers. Layer ``i``
    is called with ``key=stoax.keys.child(key, i)`` -- the key a Python loop over the layers
    would give it -- so a stack is bitwise the loop ``for i, layer in enumerate(stack)``.

    Build one with :meth:`build` (a vmapped constructor: layer ``i`` is initialised with
    ``stoax.keys.init_child(key, i)``) or :meth:`from_layers` (existing blocks of one structure).
    ``stack[i]`` is layer ``i`` as a plain block; ``len(stack)`` is ``n``.

    Which arrays carry the layer axis is recorded when the stack is built. Arrays that appear
    later -- the scalar flag of ``stoax.set_mode(stack, jnp.asarray(True))``, a rate replaced by
    a scalar array -- are shared by every layer, not scanned over.

    Args:
        layers: one block whose arrays all have the leading layer axis.
        remat: what each layer keeps for the backward pass (``jax.checkpoint`` around the
            scan step). The default, :func:`~stoax.transforms.recompute_elementwise`, stores
            the outputs of matmuls, reductions and the like and recomputes elementwise ones --
            what XLA keeps for the same layers unrolled; without it (``remat=False``) the scan
            stores every elementwise intermediate of every layer in stacked buffers (2.2x the
            temporary memory in ``benchmarks/run.py``'s Transformer). ``True`` keeps only the
            activations between layers; any ``jax.checkpoint_policies`` policy is accepted.
            Outputs, gradients and dropout masks are the same whatever the choice.
        unroll: passed to ``lax.scan``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> def make(key):
        ...     return stoax.nn.Sequential(
        ...         [stoax.nn.Linear(8, 8, key=key), jax.nn.relu, stoax.nn.Dropout(0.1)]
        ...     )
        >>> stack = stoax.nn.Stack.build(make, 12, key=jax.random.key(0))
        >>> len(stack), stack[0].layers[0].weight.shape
        (12, (8, 8))
        >>> y = stack(jnp.ones((2, 8)), key=jax.random.key(1))
        >>> y.shape
        (2, 8)
        >>> stoax.eval_mode(stack)(jnp.ones((2, 8))).shape  # evaluation: no key needed
        (2, 8)
    """

    layers: Module
    length: int
    remat: bool | Callable[..., bool] = recompute_elementwise
    unroll: int | bool = 1
    stacked: frozenset[str] = field(default=frozenset(), repr=False)

    _block_field, _count_field, _noun, _from_name = "layers", "length", "layer", "from_layers"

    def __init__(
        self,
        layers: Module,
        length: int | None = None,
        remat: bool | Callable[..., bool] = recompute_elementwise,
        unroll: int | bool = 1,
        stacked: frozenset[str] | None = None,
    ):
        self._init_copies(layers, length, stacked)
        self.remat = remat
        self.unroll = unroll

    def __check_init__(self) -> None:
        self.remat = check_remat(self.remat, "Stack")
        self.unroll = check_unroll(self.unroll, "Stack")
        super().__check_init__()

    @classmethod
    def build(
        cls,
        make: Callable[[jax.Array], Module],
        n: int,
        *,
        key: jax.Array,
        remat: bool | Callable[..., bool] = recompute_elementwise,
        unroll: int | bool = 1,
    ) -> Stack:
        """``n`` layers built by ``make(key)`` under ``jax.vmap``; layer ``i`` gets the init key
        ``stoax.keys.init_child(key, i)``. ``make`` runs once (traced), so it must not branch on its
        key; static choices are shared by all layers."""
        return cls._built(make, n, key, remat=remat, unroll=unroll)

    @classmethod
    def from_layers(
        cls,
        layers: Sequence[Module],
        *,
        remat: bool | Callable[..., bool] = recompute_elementwise,
        unroll: int | bool = 1,
    ) -> Stack:
        """A stack of existing blocks, which must share their structure and static fields."""
        return cls._from_blocks(layers, remat=remat, unroll=unroll)

    def _repr_options(self) -> list[tuple[str, Any]]:
        return [
            (name, value)
            for name, value, default in (
                ("remat", self.remat, recompute_elementwise),
                ("unroll", self.unroll, 1),
            )
            if value is not default
        ]

    def __call__(self, x: Any, *, key: jax.Array | None = None, **kwargs: Any) -> Any:
        """Apply the layers in order.

        Args:
            x: the first layer's input.
            key: layer ``i`` gets ``child(key, i)``; needed in training mode when the block is
                stochastic.
            **kwargs: other call options (an attention ``mask``, ...), given to every layer."""
        parts = split(self.layers, self.stacked, self.length, "Stack")

        def step(carry: Any, xs: tuple[jax.Array, list[Any]]) -> tuple[Any, None]:
            i, leaves = xs
            layer = parts.rebuild(leaves)
            return layer(carry, key=keys.child(key, i), **kwargs), None

        self._check_carry(parts, x, key, kwargs)
        index = jnp.arange(self.length)
        y, _ = jax.lax.scan(self._checkpoint(step), x, (index, parts.stacked), unroll=self.unroll)
        return y

    def _checkpoint(self, step: Callable[..., Any]) -> Callable[..., Any]:
        unrolled = self.unroll is True or self.unroll >= self.length
        return checkpoint_step(step, self.remat, unrolled=unrolled)

    @locate_layer_errors
    def apply(self, x: Any, *, key: jax.Array | None = None, **kwargs: Any) -> tuple[Any, Stack]:
        """``(y, updated Stack)``: layer ``i`` runs through :func:`stoax.apply` with the key
        ``__call__`` gives it, and its updated state (BatchNorm's running statistics) comes back
        as slice ``i`` -- one state per layer, bitwise the Python loop over the layers."""
        if not updates_state(self.layers):  # stateless, or evaluation mode: nothing to thread
            return self(x, key=key, **kwargs), self
        parts = split(self.layers, self.stacked, self.length, "Stack")

        def step(carry: Any, xs: tuple[jax.Array, list[Any]]) -> tuple[Any, list[Any]]:
            i, leaves = xs
            y, layer = apply(parts.rebuild(leaves), carry, key=keys.child(key, i), **kwargs)
            return y, parts.stacked_of(layer, "Stack")

        self._check_carry(parts, x, key, kwargs)
        index = jnp.arange(self.length)
        y, stacked = jax.lax.scan(
            self._checkpoint(step), x, (index, parts.stacked), unroll=self.unroll
        )
        return y, self.replace(layers=parts.rebuild(stacked))

    def decode(
        self, x: Any, cache: Any, *, key: jax.Array | None = None, **kwargs: Any
    ) -> tuple[Any, Any]:
        """Apply the layers in order, each with its own cache: layer ``i`` runs
        ``layer.decode(x, cache_i, key=stoax.keys.child(key, i), **kwargs)`` and returns
        ``(x, cache_i)`` -- the keys of ``__call__``, so it is the Python loop over the layers.

        ``cache`` holds one cache per layer, in either layout:

        - a **tuple** (or list) of ``len(stack)`` caches: the layers run one after the other
          in the program (the weights stay stacked). Each step of a decode loop then writes
          every cache in place -- the fast layout, and the one
          ``TransformerEncoder.init_cache`` makes;
        - one pytree whose arrays carry a **leading layer axis**: one ``lax.scan`` over the
          layers, as ``__call__`` (a program that does not grow with depth), but every step
          slices and restacks the caches (slower per token: ``benchmarks/README.md``).

        The updated caches come back in the layout they came in.

        Example:
            >>> import jax, jax.numpy as jnp, stoax
            >>> def make(k):
            ...     return stoax.nn.TransformerBlock(8, 2, dropout=0.0, attention_dropout=0.0,
            ...                                      causal=True, key=k)
            >>> stack = stoax.nn.Stack.build(make, 3, key=jax.random.key(0))
            >>> caches = tuple(layer.attn.init_cache((2,), 6) for layer in stack)
            >>> y, caches = stack.decode(jnp.ones((2, 4, 8)), caches)
            >>> stacked = jax.tree.map(lambda *a: jnp.stack(a), *(l.attn.init_cache((2,), 6)
            ...                                                  for l in stack))
            >>> y2, stacked = stack.decode(jnp.ones((2, 4, 8)), stacked)
            >>> bool(jnp.allclose(y, y2, atol=1e-6)), stacked.index.tolist()
            (True, [[4, 4], [4, 4], [4, 4]])
        """
        parts = split(self.layers, self.stacked, self.length, "Stack")
        if isinstance(cache, tuple | list):
            if len(cache) != self.length:
                raise ValueError(
                    f"Stack.decode: got {len(cache)} caches for a stack of {self.length} layers; "
                    "pass one per layer."
                )
            new = []
            for i, layer_cache in enumerate(cache):
                layer = parts.index(i)
                x, layer_cache = layer.decode(x, layer_cache, key=keys.child(key, i), **kwargs)
                new.append(layer_cache)
            return x, type(cache)(new)
        for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
            if jnp.ndim(leaf) == 0 or jnp.shape(leaf)[0] != self.length:
                raise ValueError(
                    f"Stack.decode: a stacked cache holds one entry per layer, so every array in "
                    f"it needs a leading axis of size {self.length}; the one at "
                    f"{jax.tree_util.keystr(path)} has shape {jnp.shape(leaf)}. (Or pass a tuple "
                    "of per-layer caches.)"
                )

        def step(carry: Any, xs: tuple[jax.Array, list[Any], Any]) -> tuple[Any, Any]:
            i, leaves, layer_cache = xs
            layer = parts.rebuild(leaves)
            return layer.decode(carry, layer_cache, key=keys.child(key, i), **kwargs)

        index = jnp.arange(self.length)
        return jax.lax.scan(step, x, (index, parts.stacked, cache), unroll=self.unroll)

    def _check_carry(self, parts: Any, x: Any, key: Any, kwargs: dict[str, Any]) -> None:
        """A layer must map x to the same shapes and dtypes: say so before lax.scan does.
        (Abstract evaluation only: nothing is computed.)"""

        def first_layer(leaves: list[Any], x: Any, key: Any) -> Any:
            layer = parts.rebuild([leaf[0] for leaf in leaves])
            return layer(x, key=keys.child(key, 0), **kwargs)

        out = jax.eval_shape(first_layer, parts.stacked, x, key)
        spec = jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), x)
        out_spec = jax.tree.map(lambda a: (a.shape, a.dtype), out)
        if spec != out_spec:
            raise ValueError(
                f"Stack: each layer must return what it takes (the output of layer i is the "
                f"input of layer i+1), but {type(self.layers).__name__} maps {spec} to "
                f"{out_spec}. Put shape-changing layers before or after the Stack (e.g. in a "
                "Sequential)."
            )


class Unstacked(Module):
    """The layers of a :class:`Stack` as separate blocks, run one after the other with the
    stack's keys (layer ``i`` gets ``stoax.keys.child(key, i)``): what a decode loop holds, so
    that every step reads each layer's weights directly instead of slicing them out of the
    stacked arrays (XLA does not hoist those slices out of a ``while`` loop; see
    ``benchmarks/README.md``). Made by :func:`unstack`; callers never build it themselves."""

    layers: tuple[Module, ...]

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def __call__(self, x: Any, *, key: jax.Array | None = None, **kwargs: Any) -> Any:
        for i, layer in enumerate(self.layers):
            x = layer(x, key=keys.child(key, i), **kwargs)
        return x

    def decode(
        self, x: Any, cache: Any, *, key: jax.Array | None = None, **kwargs: Any
    ) -> tuple[Any, Any]:
        """As :meth:`Stack.decode`: a tuple of per-layer caches, or one stacked on a layer
        axis (sliced per layer, and restacked)."""
        stacked = not isinstance(cache, tuple | list)
        caches = (
            [jax.tree.map(lambda a, i=i: a[i], cache) for i in range(len(self.layers))]
            if stacked
            else cache
        )
        if len(caches) != len(self.layers):
            raise ValueError(
                f"decode: got {len(caches)} caches for {len(self.layers)} layers; pass one per "
                "layer."
            )
        new = []
        layer: Any  # a layer with a decode method (an attention block)
        for i, (layer, layer_cache) in enumerate(zip(self.layers, caches, strict=True)):
            x, layer_cache = layer.decode(x, layer_cache, key=keys.child(key, i), **kwargs)
            new.append(layer_cache)
        if stacked:
            return x, jax.tree.map(lambda *a: jnp.stack(a), *new)
        return x, type(cache)(new)


def unstack(model: Any) -> Any:
    """``model`` with every :class:`Stack` in it replaced by its :class:`Unstacked` layers:
    the same weights, and layer ``i`` gets the key it gets in the stack, ``child(key, i)``."""
    return map_modules(lambda m: Unstacked(tuple(m)) if isinstance(m, Stack) else m, model)
