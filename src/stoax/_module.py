"""The module system: immutable dataclass pytrees whose field *values* decide their role.

A field holding a JAX array (or a tracer, a NumPy array, a ``jax.ShapeDtypeStruct``) or another
``Module`` is a pytree child. A field holding anything else -- a Python float, an int, a string, a
callable, ``None`` -- is static metadata stored in the tree definition. So plain ``jax.jit``,
``jax.grad``, ``jax.vmap`` and optax see only arrays, and a dropout rate given as a Python float
stays a Python float inside traced code.

One exception, for the annotation's sake: a field annotated ``jax.Array`` (or ``jax.Array |
None``) that is given a Python number (or a list of numbers) holds it as a JAX array, so
``scale: jax.Array = 1.0`` is a parameter that ``jax.grad`` differentiates, not a constant.

Subclassing does two more things (see :class:`Module`): the subclass's own ``__call__`` is
wrapped, so that an error raised by a layer deep inside a model names the layer's path and layers
are named in compiled programs -- the wrapper keeps the ``__call__``'s signature, docstring and
source; and an instance caches its flattening in its ``__dict__``, which is sound because an
instance never changes once built.

Example:
    >>> import jax, jax.numpy as jnp, stoax
    >>> class Scale(stoax.Module):
    ...     weight: jax.Array
    ...     name: str = "scale"
    ...     def __call__(self, x, *, key=None):
    ...         return self.weight * x
    >>> m = Scale(jnp.ones(3))
    >>> jax.tree.leaves(m)
    [Array([1., 1., 1.], dtype=float32)]
    >>> jax.jit(lambda m, x: m(x))(m, jnp.arange(3.0))
    Array([0., 1., 2.], dtype=float32)
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self, TypeVar, dataclass_transform

import jax
import jax.numpy as jnp
import numpy as np

from stoax._errors import locate_layer_errors
from stoax._layer_call import named_scope
from stoax._peers import note_module_type

__all__ = ["FrozenDict", "Module", "field", "is_array", "is_module"]

_FROZEN = "__stoax_frozen__"  # instance flag: set once construction is over
_FLAT = "__stoax_flat__"  # instance cache: (children, aux) -- valid because instances are immutable
_TRAINABLE = "trainable"  # key of the field metadata that marks non-trainable arrays
_CONVERTER = "converter"  # key of the field metadata that holds stoax.field(converter=...)
_CONVERTERS = "__stoax_converters__"  # class attribute: {field name: converter}, set per class
_STATE = "stoax_state"  # field metadata flag: the field's arrays are updated by the forward pass


def is_array(x: Any) -> bool:
    """True for values that are pytree leaves of a module: JAX arrays, tracers, NumPy arrays."""
    return isinstance(x, jax.Array | np.ndarray | np.generic | jax.ShapeDtypeStruct)


def is_module(x: Any) -> bool:
    """True for instances of :class:`Module`."""
    return isinstance(x, Module)


def field(
    *,
    trainable: bool = True,
    converter: Callable[[Any], Any] | None = None,
    default: Any = dataclasses.MISSING,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    **kwargs: Any,
) -> Any:
    """A dataclass field with stoax metadata.

    ``trainable=False`` marks the arrays held by the field as not trainable: buffers, a dropout
    rate given as an array, running statistics. :func:`stoax.partition` never puts them on the
    parameter side, so an optimiser never updates them.

    ``converter`` is applied to every value the field is given at construction: after the
    ``__init__`` (generated or hand-written; the default too) and, in :meth:`Module.replace`
    (so :func:`stoax.replace_at`, :func:`stoax.set_mode`), to the fields that are replaced --
    before ``__check_init__`` sees them. It is not applied when JAX rebuilds a module from its
    leaves (``jax.tree.map``, ``jax.jit``), where a leaf may be a tracer or ``None``. A field
    annotated ``jax.Array`` (or ``jax.Array | None``) needs no converter to turn a Python number
    into an array leaf: see :class:`Module`.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> class Noisy(stoax.Module):
        ...     weight: jax.Array
        ...     scale: jax.Array = stoax.field(
        ...         trainable=False, default_factory=lambda: jnp.ones(()))
        >>> params, rest = stoax.partition(Noisy(jnp.zeros(2)))
        >>> params.scale is None, rest.weight is None
        (True, True)
        >>> class Tagged(stoax.Module):
        ...     tags: tuple = stoax.field(converter=lambda t: tuple(sorted(t)), default=())
        >>> Tagged(["b", "a"]).tags, Tagged().replace(tags={"z", "y"}).tags
        (('a', 'b'), ('y', 'z'))
    """
    if converter is not None and not callable(converter):
        raise TypeError(f"stoax.field: converter must be callable, got {converter!r}.")
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata[_TRAINABLE] = trainable
    if converter is not None:
        metadata[_CONVERTER] = converter
    return dataclasses.field(
        default=default, default_factory=default_factory, metadata=metadata, **kwargs
    )


# Annotations that say "this field is an array": a Python number given to such a field becomes a
# JAX array (a leaf that jax.grad sees), not static metadata. Matched on the annotation's text
# (``from __future__ import annotations`` leaves it a string) or on the type itself.
_ARRAY_ANNOTATIONS = frozenset({"jax.Array", "Array", "jnp.ndarray", "jax.numpy.ndarray"})


def _is_array_annotation(annotation: Any) -> bool:
    """True for ``jax.Array`` and ``jax.Array | None`` (or ``Optional[jax.Array]``); False for
    unions that admit a Python value (``float | jax.Array``: a static rate or a traced one) and
    for ``ArrayLike``, which admits Python numbers by definition."""
    if isinstance(annotation, str):
        parts = [p.strip() for p in annotation.split("|")]
        if len(parts) == 1 and parts[0].startswith(("Optional[", "typing.Optional[")):
            parts = [parts[0][parts[0].index("[") + 1 : -1].strip(), "None"]
        arrays = [p for p in parts if p != "None"]
        return bool(arrays) and all(p in _ARRAY_ANNOTATIONS for p in arrays)
    if annotation is jax.Array:
        return True
    args = typing.get_args(annotation)
    if args and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return bool(rest) and all(a is jax.Array for a in rest)
    return False


def _python_numbers(value: Any) -> bool:
    """A Python number (bool included), or a non-empty list/tuple nest of them."""
    if isinstance(value, bool | int | float | complex):
        return True
    if isinstance(value, list | tuple) and value and not hasattr(value, "_fields"):
        return all(_python_numbers(v) for v in value)
    return False


def _to_array(value: Any) -> Any:
    """The converter of array-annotated fields: Python numbers become a JAX array (a leaf, so
    trainable and differentiated); anything else -- an array, ``None``, a tracer -- is kept.
    The array has JAX's default dtype for the numbers (f32, i32), not a weak type: a parameter's
    dtype must not change at its first optimiser update (which would recompile the step)."""
    if not _python_numbers(value):
        return value
    return jnp.asarray(value, dtype=jnp.asarray(value).dtype)


def _converters(cls: type) -> dict[str, Callable[[Any], Any]]:
    """``{field name: converter}`` of a module class: ``field(converter=...)``, else the array
    conversion for a field annotated ``jax.Array``. Computed once per class."""
    found = cls.__dict__.get(_CONVERTERS)
    if found is None:
        found = {}
        for f in dataclasses.fields(cls):
            if _CONVERTER in f.metadata:
                found[f.name] = f.metadata[_CONVERTER]
            elif _is_array_annotation(f.type):
                found[f.name] = _to_array
        setattr(cls, _CONVERTERS, found)
    return found


class _StaticLeaf:
    """A pytree node with no children that carries one non-array value inside a mixed container.

    A field such as ``{"w": array, "act": jax.nn.relu}`` holds arrays and static values side by
    side: the arrays stay leaves, the static values ride in these nodes' tree definitions.
    """

    __slots__ = ("value",)
    value: Any

    def __init__(self, value: Any):
        self.value = value


jax.tree_util.register_pytree_node(
    _StaticLeaf, lambda s: ((), _Hashable(s.value)), lambda aux, _: _StaticLeaf(aux.value)
)


class _Hashable:
    """Wraps a static value for a tree definition: JAX hashes and compares tree definitions when
    it looks up compiled functions, and lists or dicts in a field must not break that."""

    __slots__ = ("value",)
    value: Any

    def __init__(self, value: Any):
        self.value = value

    def __hash__(self) -> int:
        try:
            return hash((type(self.value), self.value))
        except TypeError:  # unhashable (a list, a dict): equal values still share this hash
            return hash(
                (type(self.value), len(self.value) if hasattr(self.value, "__len__") else 0)
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _Hashable) or type(self.value) is not type(other.value):
            return False
        if self.value is other.value:
            return True
        try:
            return bool(self.value == other.value)
        except Exception:  # values whose == is not a plain bool are only equal to themselves
            return False

    def __repr__(self) -> str:
        return repr(self.value)


def _wrap_statics(value: Any) -> Any:
    return jax.tree.map(
        lambda x: x if is_array(x) or is_module(x) else _StaticLeaf(x), value, is_leaf=is_module
    )


def _unwrap_statics(value: Any) -> Any:
    return jax.tree.map(
        lambda x: x.value if isinstance(x, _StaticLeaf) else x,
        value,
        is_leaf=lambda x: isinstance(x, _StaticLeaf) or is_module(x),
    )


def _holds_arrays(value: Any) -> bool:
    return any(is_array(x) or is_module(x) for x in jax.tree.leaves(value, is_leaf=is_module))


# Roles of a field value in the flattened module.
_CHILD = 0  # an array or a module: the value itself is the child
_MIXED = 1  # a container holding arrays and static values: the child has the statics wrapped


def _flatten(module: Module) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    cached: tuple[tuple[Any, ...], tuple[Any, ...]] | None = module.__dict__.get(_FLAT)
    if cached is not None:
        return cached
    children: list[Any] = []
    child_fields: list[tuple[str, int]] = []
    static_fields: list[tuple[str, _Hashable]] = []
    for f in dataclasses.fields(module):
        value = module.__dict__.get(f.name, dataclasses.MISSING)
        if value is dataclasses.MISSING:
            raise AttributeError(
                f"{type(module).__name__}.{f.name} was never set: its __init__ must assign "
                f"self.{f.name}."
            )
        if is_array(value) or is_module(value):
            child_fields.append((f.name, _CHILD))
            children.append(value)
        elif _holds_arrays(value):
            child_fields.append((f.name, _MIXED))
            children.append(_wrap_statics(value))
        else:
            static_fields.append((f.name, _Hashable(value)))
    flat = (tuple(children), (tuple(child_fields), tuple(static_fields)))
    object.__setattr__(module, _FLAT, flat)
    return flat


def _flatten_with_keys(
    module: Module,
) -> tuple[list[tuple[jax.tree_util.GetAttrKey, Any]], tuple[Any, ...]]:
    children, aux = _flatten(module)
    keys = [jax.tree_util.GetAttrKey(name) for name, _ in aux[0]]
    return list(zip(keys, children, strict=True)), aux


def _unflatten(cls: type[Module], aux: tuple[Any, ...], children: Any) -> Module:
    module = object.__new__(cls)
    child_fields, static_fields = aux
    for (name, role), value in zip(child_fields, children, strict=True):
        object.__setattr__(module, name, _unwrap_statics(value) if role == _MIXED else value)
    for name, wrapped in static_fields:
        object.__setattr__(module, name, wrapped.value)
    object.__setattr__(module, _FLAT, (tuple(children), aux))
    object.__setattr__(module, _FROZEN, True)
    return module


class FrozenDict(Mapping[Any, Any]):
    """A read-only, hashable dict: what a ``dict`` in a static field of a module becomes.

    Example:
        >>> import stoax
        >>> d = stoax.FrozenDict({"a": 1})
        >>> d["a"], d == {"a": 1}, hash(d) == hash(stoax.FrozenDict(a=1))
        (1, True, True)
    """

    __slots__ = ("_data",)
    _data: dict[Any, Any]

    def __init__(self, *args: Any, **kwargs: Any):
        object.__setattr__(self, "_data", dict(*args, **kwargs))

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("FrozenDict is read-only")

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


def _freeze(value: Any) -> Any:
    """A static value with every list, dict and set in it made immutable (tuple, FrozenDict,
    frozenset): a static field is part of the compiled program's cache key, so it must not
    change after a ``jax.jit`` call has seen it."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, tuple):
        items = [_freeze(v) for v in value]
        if all(a is b for a, b in zip(items, value, strict=True)):
            return value
        return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)
    if isinstance(value, dict | FrozenDict):
        entries = {k: _freeze(v) for k, v in value.items()}
        if isinstance(value, FrozenDict) and all(entries[k] is value[k] for k in entries):
            return value
        return FrozenDict(entries)
    if isinstance(value, set):
        return frozenset(value)
    return value


def thaw(value: Any) -> Any:
    """The inverse of :func:`_freeze` for FrozenDicts (JAX wants plain dicts, e.g. in
    ``jax.vmap``'s ``in_axes``)."""
    if isinstance(value, FrozenDict):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(thaw(v) for v in value)
    return value


def _finish(module: Module, changed: Iterable[str] | None = None) -> None:
    """The end of every construction -- ``__init__`` and :meth:`Module.replace`: convert the
    fields given a value (all after ``__init__``; the ``changed`` ones after ``replace``), run
    the class's ``__check_init__``, freeze static containers, freeze the instance."""
    converters = _converters(type(module))
    for name in converters if changed is None else changed:
        convert = converters.get(name)
        value = module.__dict__.get(name, dataclasses.MISSING)
        if convert is not None and value is not dataclasses.MISSING:
            object.__setattr__(module, name, convert(value))
    check = getattr(module, "__check_init__", None)
    if check is not None:
        check()
    for f in dataclasses.fields(module):
        value = module.__dict__.get(f.name, dataclasses.MISSING)
        if value is dataclasses.MISSING or is_array(value) or is_module(value):
            continue
        if not _holds_arrays(value):
            frozen = _freeze(value)
            if frozen is not value:
                object.__setattr__(module, f.name, frozen)
    object.__setattr__(module, _FROZEN, True)
    _flatten(module)  # fail at construction, not at the first jit, if a field was never set


_T = TypeVar("_T")


class _ModuleMeta(type):
    """Freezes an instance once its ``__init__`` (generated or hand-written) has returned."""

    # (typed as returning an instance of the class: checkers then type a construction by the
    # class's __init__)
    def __call__(cls: type[_T], *args: Any, **kwargs: Any) -> _T:
        note_module_type(cls)  # known to Flax NNX when it is loaded (stoax/_peers.py)

        klass: Any = cls  # a class of modules (checkers would type cls as the metaclass)
        module = klass.__new__(klass)
        object.__setattr__(module, _FROZEN, False)
        module.__init__(*args, **kwargs)
        _finish(module)
        return module

    @property
    def __signature__(cls) -> inspect.Signature | None:
        # The signature of the class is its __init__'s (less self), not (*args, **kwargs) of
        # __call__ above: for inspect.signature, help() and editors. A property of the
        # metaclass, so instances (callable layers) keep their __call__ signature.
        try:
            klass: Any = cls
            sig = inspect.signature(klass.__init__)
        except (TypeError, ValueError):
            return None
        return sig.replace(parameters=list(sig.parameters.values())[1:])


# (Defined here, not in stoax/_state.py, to be a field specifier of Module for type checkers.)
def state_field(**kwargs: Any) -> Any:
    """A field whose arrays are *state*: not trainable (:func:`stoax.partition` keeps them out of
    the optimiser's way) and updated by the layer's ``apply``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> class Counter(stoax.Module):
        ...     count: jax.Array = stoax.state_field(default_factory=lambda: jnp.zeros((), int))
        ...     def apply(self, x, *, key=None):
        ...         return x, self.replace(count=self.count + 1)
        ...     def __call__(self, x, *, key=None):
        ...         return self.apply(x, key=key)[0]
        >>> _, c = stoax.apply(Counter(), jnp.ones(2))
        >>> int(c.count), stoax.partition(c)[0].count is None
        (1, True)
    """
    metadata = dict(kwargs.pop("metadata", None) or {})
    metadata[_STATE] = True
    return field(trainable=False, metadata=metadata, **kwargs)


@dataclass_transform(field_specifiers=(field, state_field, dataclasses.field))
class Module(metaclass=_ModuleMeta):
    """Base class of stoax modules: an immutable dataclass that is also a pytree.

    Subclasses declare fields as class annotations; a dataclass ``__init__`` is generated unless
    the class writes its own (which assigns ``self.field = ...``; assignment is refused once
    construction is over). Use :meth:`replace` or :func:`stoax.replace_at` to make edited copies.

    **One validation path.** A class may define ``__check_init__(self)``: it runs after every
    construction -- the ``__init__`` and every :meth:`replace` (so :func:`stoax.replace_at`,
    :func:`stoax.set_mode` too) -- and may normalise fields by assigning them (the instance is
    frozen right after it). Rebuilding from a pytree (``jax.tree.map``, ``jax.jit``) runs no
    check. Static fields are frozen: a list becomes a tuple, a dict a :class:`FrozenDict`, a set
    a frozenset -- equal modules always mean equal compiled programs.

    **A field's value decides its role**, with one rule for the annotation: a field annotated
    ``jax.Array`` (also ``jax.Array | None``, ``jnp.ndarray``) that is given a Python number or a
    list of numbers -- ``scale: jax.Array = 1.0`` -- holds ``jnp.asarray(value)``: a leaf, so
    trainable and differentiated, as the annotation says. (Kept as a Python float it would be
    static: ``jax.grad`` would return no gradient for it and an optimiser would never move it.)
    A union that admits a Python value -- ``rate: float | jax.Array`` -- keeps a Python number
    static, as does ``ArrayLike``. For other conversions give the field a
    ``stoax.field(converter=...)``; conversions run before ``__check_init__``, on the values
    given to ``__init__`` and the fields changed by :meth:`replace`.

    **What subclassing does.** A subclass's own ``__call__`` is wrapped, twice: an error about
    a layer (:class:`~stoax.nn.MissingKeyError`, a wrong input shape) passing through the call
    gains the field path of the layer, so it reads ``TransformerEncoder.blocks.layers.attn...``
    rather than a bare ``Dropout(rate=0.1)``; and the call runs inside
    ``jax.named_scope(<class name>)``, which names the layer in HLO dumps and profiles (and lets
    :func:`stoax.tabulate` see each call). The wrappers use ``functools.wraps``: the
    ``__call__`` keeps its name, docstring and annotations, ``__wrapped__`` leads to the function
    you wrote, and ``inspect.signature``, ``inspect.getsource`` and ``help()`` show yours. An
    inherited ``__call__`` is wrapped once, in the class that defines it.

    **Cached flattening.** A module stores its flattened form (children and tree definition) in
    the instance ``__dict__`` (key ``"__stoax_flat__"``) the first time it is flattened --
    construction does it -- so ``jax.jit`` and ``jax.tree`` functions do not walk the fields
    again. This is sound because instances are immutable; write fields only through the
    ``__init__``, :meth:`replace` or :func:`stoax.replace_at`, never through ``__dict__``.

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> class Affine(stoax.Module):
        ...     weight: jax.Array
        ...     bias: jax.Array
        ...     def __call__(self, x, *, key=None):
        ...         return x @ self.weight + self.bias
        >>> m = Affine(jnp.eye(2), jnp.zeros(2))
        >>> m
        Affine(weight=f32[2,2], bias=f32[2])
        >>> m.replace(bias=jnp.ones(2))(jnp.zeros(2))
        Array([1., 1.], dtype=float32)
        >>> class Gain(stoax.Module):
        ...     scale: jax.Array = 1.0  # annotated as an array: becomes a trainable leaf
        ...     def __call__(self, x, *, key=None):
        ...         return self.scale * x
        >>> jax.grad(lambda m: m(3.0))(Gain()).scale
        Array(3., dtype=float32)
    """

    if TYPE_CHECKING:
        # What dataclasses.dataclass sets on each subclass (__init_subclass__).
        __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]

        # A module is called as a layer, ``module(x, *, key=None, ...)``: each subclass defines
        # its own call, which this signature admits, so code typed with ``Module`` may call one.
        def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        call = cls.__dict__.get("__call__")
        if call is not None and not getattr(call, "_stoax_locates", False):
            # errors name the field path of a layer; layer names in HLO and profiles
            wrapped = named_scope(locate_layer_errors(call), cls.__name__)
            cls.__call__ = wrapped  # type: ignore[method-assign]  # the class's own, wrapped
        has_own_init = "__init__" in cls.__dict__
        dataclasses.dataclass(cls, init=not has_own_init, repr=False, eq=False)
        jax.tree_util.register_pytree_with_keys(
            cls,
            _flatten_with_keys,
            lambda aux, children: _unflatten(cls, aux, children),
            flatten_func=_flatten,
        )

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get(_FROZEN, True):
            raise dataclasses.FrozenInstanceError(
                f"cannot assign {type(self).__name__}.{name}: modules are immutable. "
                f"Use module.replace({name}=...) or stoax.replace_at(model, path, value) to get "
                "an edited copy."
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete {type(self).__name__}.{name}")

    def replace(self, **changes: Any) -> Self:
        """A copy of this module with some fields changed (``dataclasses.replace`` for modules,
        also for modules with a hand-written ``__init__``). The changed fields are converted as
        at construction (``stoax.field(converter=...)``, a Python number in a ``jax.Array``
        field), then ``__check_init__`` runs."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(
                f"{type(self).__name__} has no field {sorted(unknown)}; its fields are "
                f"{sorted(names)}."
            )
        module = object.__new__(type(self))
        object.__setattr__(module, _FROZEN, False)
        for name in names:
            object.__setattr__(module, name, changes.get(name, self.__dict__[name]))
        _finish(module, changed=changes)
        return module

    def __repr__(self) -> str:
        from stoax._pretty import pformat

        return pformat(self)

    def __eq__(self, other: object) -> bool:
        """Equal when of the same type, with equal static fields and equal arrays.

        Arrays are compared by value; tracers compare equal only when they are the same object.
        """
        if type(self) is not type(other):
            return NotImplemented
        leaves_a, tree_a = jax.tree.flatten(self)
        leaves_b, tree_b = jax.tree.flatten(other)
        if not same_structure(tree_a, tree_b):
            return False
        return all(_leaf_equal(a, b) for a, b in zip(leaves_a, leaves_b, strict=True))

    def __hash__(self) -> int:
        # Consistent with __eq__: equal modules have equal tree definitions.
        return hash(jax.tree.structure(self))


def _leaf_equal(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, jax.core.Tracer) or isinstance(b, jax.core.Tracer):
        return False
    if isinstance(a, jax.ShapeDtypeStruct) or isinstance(b, jax.ShapeDtypeStruct):
        return a == b
    if jax.dtypes.issubdtype(getattr(a, "dtype", None), jax.dtypes.prng_key):
        if not jax.dtypes.issubdtype(getattr(b, "dtype", None), jax.dtypes.prng_key):
            return False
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    return bool(np.shape(a) == np.shape(b) and np.array_equal(np.asarray(a), np.asarray(b)))


def same_structure(a: Any, b: Any) -> bool:
    """Whether two tree definitions are equal. (jaxlib ships no type stub for ``PyTreeDef``: its
    ``==`` is unknown to type checkers, so comparisons go through this typed function.)"""
    return bool(a == b)


def field_is_trainable(f: dataclasses.Field[Any]) -> bool:
    return bool(f.metadata.get(_TRAINABLE, True))


def field_is_state(f: dataclasses.Field[Any]) -> bool:
    return bool(f.metadata.get(_STATE, False))
