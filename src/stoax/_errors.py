"""Errors raised by one layer deep inside a model, located by the modules around it.

A layer raises a :class:`LayerError` about itself; every :class:`~stoax.Module` whose
``__call__`` the error passes through prepends the field that holds the layer, so the user reads
``TransformerEncoder.blocks.layers.attn.dropout`` rather than a bare ``Dropout(rate=0.1)``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any


class LayerError(Exception):
    """An error about ``layer``; ``str()`` starts with where the layer sits in the model.

    ``detail`` is the rest of the message, which follows the layer's name: it starts with its
    own separator (``" is in training mode ..."``, ``": input's last axis ..."``).
    """

    def __init__(self, layer: Any, detail: str):
        super().__init__(layer, detail)
        self.layer = layer
        self.detail = detail
        self.path = ""  # from ``self.root`` down to ``layer``: ".blocks.layers.attn.dropout"
        self.root = layer

    def enter(self, module: Any) -> None:
        """Called by each module the error leaves: extend the path up to ``module``."""
        if module is self.root:
            return
        self.path = _field_path(module, self.root) + self.path
        self.root = module

    def __str__(self) -> str:
        if not self.path:
            return f"{_short_repr(self.layer)}{self.detail}"
        return f"{type(self.root).__name__}{self.path} ({_short_repr(self.layer)}){self.detail}"


def _short_repr(layer: Any) -> str:
    """The layer's repr when it fits on a line (``Dropout(rate=0.1, ...)``), else its class."""
    text = repr(layer)
    return text if "\n" not in text and len(text) <= 100 else type(layer).__name__


class LayerValueError(LayerError, ValueError):
    """A layer was called with an input of the wrong shape or value."""


class LayerTypeError(LayerError, TypeError):
    """A layer was called with an input of the wrong type or dtype."""


class LayerIndexError(LayerError, IndexError):
    """A layer was called with an index out of range (an embedding id)."""


def _field_path(module: Any, child: Any) -> str:
    """``.name``, ``.name[i]`` or ``.name['k']``: the field of ``module`` that holds ``child``.

    By identity first; then by type (a ``Stack`` rebuilds its layer inside ``lax.scan``, so the
    object that raised is a copy of the field's value).
    """
    if not dataclasses.is_dataclass(module):
        return f".<{type(child).__name__}>"
    fields = [(f.name, getattr(module, f.name, None)) for f in dataclasses.fields(module)]
    matchers: tuple[Callable[[Any], bool], ...] = (
        lambda v: v is child,
        lambda v: type(v) is type(child),
    )
    for match in matchers:
        for name, value in fields:
            if match(value):
                return f".{name}"
            if isinstance(value, list | tuple):
                for i, item in enumerate(value):
                    if match(item):
                        return f".{name}[{i}]"
            if isinstance(value, dict):
                for k, item in value.items():
                    if match(item):
                        return f".{name}[{k!r}]"
    return f".<{type(child).__name__}>"


def locate_layer_errors(call: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a module's ``__call__`` so that a :class:`LayerError` passing through it learns
    which field of this module it came from."""

    @functools.wraps(call)
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(self, *args, **kwargs)
        except LayerError as error:
            error.enter(self)
            raise

    __call__._stoax_locates = True  # type: ignore[attr-defined]  # a marker on the function
    return __call__
