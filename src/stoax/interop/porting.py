"""Weights from Flax (linen params, NNX modules) and Equinox layers into stoax layers.

For the layers stoax has: ``Linear`` (linen/NNX ``Dense``/``Linear``, ``eqx.nn.Linear``),
``Conv`` (``Conv``, ``eqx.nn.Conv``), ``LayerNorm``, ``Embedding`` (``Embed``,
``eqx.nn.Embedding``) and ``MultiHeadAttention`` (linen ``MultiHeadDotProductAttention``, NNX
``MultiHeadAttention``, ``eqx.nn.MultiheadAttention``). Each function takes the stoax layer to
fill (built with the same sizes) and returns a copy holding the peer's weights, converted to
stoax's layout (``(in, out)`` kernels, channels-last convolution kernels, heads merged into the
feature axis); a layer's static settings that change its output (LayerNorm's ``eps``) are copied
too. A weight whose shape does not match raises a ``ValueError`` that names the layer, the
weight and both shapes. Port a whole model layer by layer (see the porting guide in the docs).

Example:
    >>> import jax, jax.numpy as jnp, stoax
    >>> import equinox as eqx
    >>> from stoax.interop.porting import from_equinox
    >>> theirs = eqx.nn.Linear(3, 2, key=jax.random.key(0))
    >>> ours = from_equinox(stoax.nn.Linear(3, 2, key=jax.random.key(1)), theirs)
    >>> bool(jnp.allclose(ours(jnp.ones(3)), theirs(jnp.ones(3))))
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from stoax._module import Module
from stoax.nn import Conv, Embedding, LayerNorm, Linear, MultiHeadAttention

__all__ = ["from_flax", "from_equinox"]


def _fit(layer: Module, name: str, value: Any, source: str) -> jnp.ndarray | None:
    current = getattr(layer, name)
    if value is None or current is None:
        if (value is None) != (current is None):
            have = "has" if current is not None else "has no"
            raise ValueError(
                f"{type(layer).__name__}.{name}: the stoax layer {have} {name} but the {source} "
                f"layer {'has none' if value is None else 'has one'}; build the stoax layer with "
                f"the same use_bias/use_scale setting."
            )
        return None
    value = jnp.asarray(value)
    if value.shape != current.shape:
        raise ValueError(
            f"{type(layer).__name__}.{name}: the {source} weight has shape {value.shape}, the "
            f"stoax layer expects {current.shape}. Build the stoax layer with the same sizes."
        )
    return value.astype(current.dtype)


def _params_of(source: Any) -> Mapping[str, Any]:
    """A linen params dict as is; an NNX module or state as the same nested dict of arrays."""
    if isinstance(source, Mapping) and not hasattr(source, "to_pure_dict"):
        return source.get("params", source)
    from flax import nnx

    state = nnx.state(source, nnx.Param) if isinstance(source, nnx.Module) else source
    return state.to_pure_dict()


def _get(params: Mapping[str, Any], name: str, layer: Module) -> Any:
    if name not in params:
        return None
    return params[name]


def from_flax(layer: Module, source: Any) -> Module:
    """``layer`` with the weights of a Flax layer: a linen params dict (``variables['params']``
    of that layer, or the layer's ``variables``) or an NNX module (or its ``nnx.state``).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> from flax import nnx
        >>> from stoax.interop.porting import from_flax
        >>> theirs = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
        >>> ours = from_flax(stoax.nn.Linear(3, 2, key=jax.random.key(1)), theirs)
        >>> bool(jnp.allclose(ours(jnp.ones(3)), theirs(jnp.ones(3))))
        True
    """
    p = _params_of(source)
    src = "Flax"
    if isinstance(layer, Linear | Conv):
        return layer.replace(
            weight=_fit(layer, "weight", _need(p, "kernel", layer), src),
            bias=_fit(layer, "bias", _get(p, "bias", layer), src),
        )
    if isinstance(layer, LayerNorm):
        eps = getattr(source, "epsilon", None)
        changes = {} if eps is None else {"eps": float(eps)}
        return layer.replace(
            scale=_fit(layer, "scale", _get(p, "scale", layer), src),
            bias=_fit(layer, "bias", _get(p, "bias", layer), src),
            **changes,
        )
    if isinstance(layer, Embedding):
        return layer.replace(weight=_fit(layer, "weight", _need(p, "embedding", layer), src))
    if isinstance(layer, MultiHeadAttention):
        merged = {}
        for ours, theirs in (
            ("query_proj", "query"),
            ("key_proj", "key"),
            ("value_proj", "value"),
        ):
            sub = _need(p, theirs, layer)
            kernel = jnp.asarray(_need(sub, "kernel", layer))  # (in, heads, head_size)
            bias = sub.get("bias")
            merged[ours] = {
                "kernel": kernel.reshape(kernel.shape[0], -1),
                "bias": None if bias is None else jnp.asarray(bias).reshape(-1),
            }
        out = _need(p, "out", layer)
        kernel = jnp.asarray(_need(out, "kernel", layer))  # (heads, head_size, out)
        merged["out_proj"] = {
            "kernel": kernel.reshape(-1, kernel.shape[-1]),
            "bias": out.get("bias"),
        }
        return layer.replace(
            **{name: from_flax(getattr(layer, name), merged[name]) for name in merged}
        )
    raise TypeError(_unsupported(layer))


def from_equinox(layer: Module, source: Any) -> Module:
    """``layer`` with the weights of an Equinox layer (``eqx.nn.Linear``, ``Conv``,
    ``LayerNorm``, ``Embedding``, ``MultiheadAttention``)."""
    src = "Equinox"
    weight = getattr(source, "weight", None)
    bias = getattr(source, "bias", None)
    if isinstance(layer, Linear):
        return layer.replace(
            weight=_fit(layer, "weight", None if weight is None else jnp.asarray(weight).T, src),
            bias=_fit(layer, "bias", bias, src),
        )
    if isinstance(layer, Conv):
        # Equinox: (out, in/groups, *kernel) and a bias (out, 1, ..., 1); stoax: channels-last.
        w = jnp.asarray(weight)
        w = jnp.transpose(w, (*range(2, w.ndim), 1, 0))
        return layer.replace(
            weight=_fit(layer, "weight", w, src),
            bias=_fit(layer, "bias", None if bias is None else jnp.ravel(bias), src),
        )
    if isinstance(layer, LayerNorm):
        return layer.replace(
            scale=_fit(layer, "scale", weight, src),
            bias=_fit(layer, "bias", bias, src),
            eps=float(source.eps),
        )
    if isinstance(layer, Embedding):
        return layer.replace(weight=_fit(layer, "weight", weight, src))
    if isinstance(layer, MultiHeadAttention):
        pairs = {
            "query_proj": source.query_proj,
            "key_proj": source.key_proj,
            "value_proj": source.value_proj,
            "out_proj": source.output_proj,
        }
        return layer.replace(
            **{name: from_equinox(getattr(layer, name), theirs) for name, theirs in pairs.items()}
        )
    raise TypeError(_unsupported(layer))


def _need(params: Mapping[str, Any], name: str, layer: Module) -> Any:
    if not isinstance(params, Mapping) or name not in params:
        found = sorted(params) if isinstance(params, Mapping) else type(params).__name__
        raise ValueError(
            f"{type(layer).__name__}: the Flax parameters have no {name!r} (found {found}). Pass "
            f"the parameters of the matching layer (e.g. params['Dense_0'])."
        )
    return params[name]


def _unsupported(layer: Any) -> str:
    return (
        f"porting: no conversion for {type(layer).__name__}; supported stoax layers: Linear, Conv, "
        "LayerNorm, Embedding, MultiHeadAttention (port containers layer by layer)."
    )
