"""``MultiHeadAttention``: scaled dot-product attention with dropout on the probabilities."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from stoax import keys
from stoax._errors import LayerTypeError, LayerValueError, locate_layer_errors
from stoax._module import Module
from stoax.nn._dropout import Dropout
from stoax.nn._init import LECUN_NORMAL, ZEROS, Initializer
from stoax.nn._kv_cache import KVCache, write
from stoax.nn._linear import Linear
from stoax.nn._sizes import positive_int

__all__ = ["MultiHeadAttention"]


def _weighted_sum(probs: jax.Array, v: jax.Array) -> jax.Array:
    # (..., heads, q, k) x (..., k, heads, d) -> (..., q, heads, d); a module-level function, so
    # the fused dropout sees the same `fn` on every call.
    return jnp.einsum("...hqk,...khd->...qhd", probs, v)


class MultiHeadAttention(Module):
    """Multi-head scaled dot-product attention.

    ``query`` has shape ``(..., q_len, features)``; ``context`` (keys and values) has shape
    ``(..., kv_len, context_features)`` and defaults to ``query`` (self-attention). Any leading
    batch axes are allowed. The projections ``query_proj``, ``key_proj``, ``value_proj`` and
    ``out_proj`` are :class:`~stoax.nn.Linear` layers; the attention probabilities go through the
    :class:`~stoax.nn.Dropout` field ``dropout``, whose key is ``stoax.keys.child(key,
    "dropout")`` -- so :func:`stoax.set_mode` reaches it, and ``dropout=0.0`` needs no key.

    Args:
        features: size of the last axis of ``query``.
        num_heads: number of heads; must divide ``qkv_features``.
        qkv_features: size of the projected queries/keys/values (default ``features``).
        out_features: size of the output's last axis (default ``features``).
        dropout: probability of dropping an attention probability, in [0, 1].
        use_bias: whether the projections have a bias.
        causal: a query at position ``i`` sees only key positions ``j <= i``.
        context_features: size of the last axis of ``context`` (default ``features``).
        key: the key that initialises the projections.
        kernel_init, bias_init: initialisers of the four projections' weights and biases
            (``jax.nn.initializers``; default LeCun-normal and zeros, as :class:`Linear`).

    Call with ``mask``: a boolean array broadcastable to ``(..., num_heads, q_len, kv_len)``,
    True where a query may attend to a key. A query row with no allowed key outputs zeros
    (before ``out_proj``).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> attn = stoax.nn.MultiHeadAttention(8, 2, dropout=0.1, key=jax.random.key(0))
        >>> x = jnp.ones((3, 5, 8))  # (batch, length, features)
        >>> attn(x, key=jax.random.key(1)).shape
        (3, 5, 8)
        >>> stoax.eval_mode(attn)(x, mask=jnp.tril(jnp.ones((5, 5), bool))).shape
        (3, 5, 8)
    """

    query_proj: Linear
    key_proj: Linear
    value_proj: Linear
    out_proj: Linear
    dropout: Dropout
    num_heads: int
    causal: bool

    def __init__(
        self,
        features: int,
        num_heads: int,
        qkv_features: int | None = None,
        out_features: int | None = None,
        dropout: float | jax.Array = 0.0,
        use_bias: bool = True,
        causal: bool = False,
        context_features: int | None = None,
        *,
        key: jax.Array,
        dtype: jnp.dtype = jnp.float32,
        kernel_init: Initializer = LECUN_NORMAL,
        bias_init: Initializer = ZEROS,
    ):
        where = "MultiHeadAttention"
        features = positive_int(features, where, "features")
        num_heads = positive_int(num_heads, where, "num_heads")
        qkv_features = positive_int(
            features if qkv_features is None else qkv_features, where, "qkv_features"
        )
        out_features = positive_int(
            features if out_features is None else out_features, where, "out_features"
        )
        context_features = positive_int(
            features if context_features is None else context_features, where, "context_features"
        )
        if qkv_features % num_heads:
            raise ValueError(
                f"MultiHeadAttention: qkv_features ({qkv_features}) must be a positive multiple "
                f"of num_heads ({num_heads}); pick qkv_features=num_heads * head_size."
            )
        if not isinstance(causal, bool):
            raise TypeError(f"MultiHeadAttention: causal must be a Python bool, got {causal!r}.")
        k_q, k_k, k_v, k_o = keys.init_derive(
            keys.as_key(key, "MultiHeadAttention"),
            "query_proj",
            "key_proj",
            "value_proj",
            "out_proj",
        )
        inits = {"kernel_init": kernel_init, "bias_init": bias_init}
        self.query_proj = Linear(
            features, qkv_features, use_bias=use_bias, key=k_q, dtype=dtype, **inits
        )
        self.key_proj = Linear(
            context_features, qkv_features, use_bias=use_bias, key=k_k, dtype=dtype, **inits
        )
        self.value_proj = Linear(
            context_features, qkv_features, use_bias=use_bias, key=k_v, dtype=dtype, **inits
        )
        self.out_proj = Linear(
            qkv_features, out_features, use_bias=use_bias, key=k_o, dtype=dtype, **inits
        )
        self.dropout = Dropout(dropout)
        self.num_heads = int(num_heads)
        self.causal = causal

    def _heads(self, x: jax.Array) -> jax.Array:
        # (..., length, qkv_features) -> (..., length, heads, head_size)
        return x.reshape(*x.shape[:-1], self.num_heads, x.shape[-1] // self.num_heads)

    def _check_inputs(self, query: jax.Array, context: jax.Array) -> None:
        for name, x in (("query", query), ("context", context)):
            if jnp.ndim(x) < 2:
                raise LayerValueError(
                    self,
                    f": {name} must have shape (..., length, features), got shape "
                    f"{tuple(jnp.shape(x))}. A single sequence is (length, features); add the "
                    "length axis with x[None, :] for a single position.",
                )
        if query.shape[:-2] != context.shape[:-2]:
            try:
                jnp.broadcast_shapes(query.shape[:-2], context.shape[:-2])
            except ValueError:
                raise LayerValueError(
                    self,
                    f": query {tuple(query.shape)} and context {tuple(context.shape)} have "
                    "batch axes that do not broadcast.",
                ) from None

    def _full_mask(self, mask: jax.Array | None, logits_shape: tuple[int, ...]) -> jax.Array | None:
        q_len, kv_len = logits_shape[-2:]
        if mask is not None:
            if getattr(mask, "dtype", None) != jnp.bool_:
                raise LayerTypeError(
                    self,
                    ": mask must be a boolean array (True = may attend), got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)}. Use mask.astype(bool).",
                )
            target = (self.num_heads, q_len, kv_len)
            tail = mask.shape[-3:]
            bad_tail = any(m not in (1, t) for m, t in zip(tail[::-1], target[::-1], strict=False))
            try:
                fits = jnp.broadcast_shapes(mask.shape, logits_shape) == tuple(logits_shape)
            except ValueError:
                fits = False
            if bad_tail or not fits:
                raise LayerValueError(
                    self,
                    f": mask of shape {mask.shape} does not broadcast to "
                    f"(..., num_heads, q_len, kv_len) = {tuple(logits_shape)} (the batch axes "
                    "of the mask must match the input's, or be 1).",
                )
        if self.causal:
            causal = jnp.arange(q_len)[:, None] >= jnp.arange(kv_len)[None, :]
            mask = causal if mask is None else mask & causal
        return mask

    def __call__(
        self,
        query: jax.Array,
        context: jax.Array | None = None,
        *,
        mask: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> jax.Array:
        """Attention of ``query`` over ``context``: shape ``(..., q_len, out_features)``.

        Args:
            query: ``(..., q_len, features)``.
            context: ``(..., kv_len, context_features)``, the sequence attended to (keys and
                values); ``None`` (the default) attends to ``query`` itself (self-attention). A true
                input, so it may be positional: ``attn(x)``, ``attn(x, memory)``.
            mask: a boolean array broadcastable to ``(..., num_heads, q_len, kv_len)``, True = may
                attend; combined with the causal mask when ``causal``.
            key: the key of the attention dropout; needed in training mode unless ``dropout`` is 0
                (a :class:`~stoax.nn.MissingKeyError` names the layer otherwise), unused in
                evaluation mode."""
        context = query if context is None else context
        self._check_inputs(query, context)
        q = self._heads(self.query_proj(query))
        k = self._heads(self.key_proj(context))
        v = self._heads(self.value_proj(context))
        batch = jnp.broadcast_shapes(q.shape[:-3], k.shape[:-3])
        mask = self._full_mask(mask, (*batch, self.num_heads, q.shape[-3], k.shape[-3]))
        return self._attend(q, k, v, mask, key)

    def _attend(
        self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, key: Any
    ) -> jax.Array:
        """Attention of the projected heads ``q`` over ``k``/``v`` under the final ``mask``,
        then ``out_proj``: the part ``__call__`` and :meth:`decode` share."""
        scale = 1.0 / math.sqrt(q.shape[-1])
        logits = jnp.einsum("...qhd,...khd->...hqk", q * jnp.asarray(scale, q.dtype), k)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        probs = jax.nn.softmax(logits, axis=-1)
        if mask is not None:  # rows with no allowed key: zeros, not a uniform average
            probs = jnp.where(mask, probs, 0.0)
        # Dropout fused with the weighted sum: the backward pass keeps the probabilities (needed
        # by softmax anyway) and the key, not the dropped probabilities.
        out = self.dropout.then(
            _weighted_sum, probs.astype(v.dtype), v, key=keys.child(key, "dropout")
        )
        # No -1 in the reshape: an empty batch (size 0) would make it ambiguous.
        return self.out_proj(out.reshape(*out.shape[:-2], out.shape[-2] * out.shape[-1]))

    # -- decoding with a key/value cache -----------------------------------------------------

    def init_cache(
        self, batch_shape: tuple[int, ...], length: int, *, dtype: jnp.dtype | None = None
    ) -> KVCache:
        """An empty :class:`~stoax.nn.KVCache` for ``length`` positions of a batch of shape
        ``batch_shape`` (``()`` for one unbatched sequence). ``dtype`` defaults to the key
        projection's."""
        batch_shape = tuple(int(b) for b in batch_shape)
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise LayerValueError(self, f": cache length must be a positive int, got {length!r}.")
        qkv = self.key_proj.out_features
        shape = (*batch_shape, length, self.num_heads, qkv // self.num_heads)
        dtype = self.key_proj.weight.dtype if dtype is None else dtype
        zeros = jnp.zeros(shape, dtype)
        return KVCache(k=zeros, v=zeros, index=jnp.zeros(batch_shape, jnp.int32))

    @locate_layer_errors
    def decode(
        self,
        query: jax.Array,
        cache: KVCache,
        *,
        lengths: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """Causal self-attention of ``n`` new positions over everything the cache holds.

        ``query`` has shape ``(*batch, n, features)``; example ``b``'s new positions are
        ``cache.index[b] + 0 .. n-1``. Their keys and values are written there, and position
        ``p`` attends to the cached positions ``<= p`` -- the same result (up to float rounding)
        as calling the layer on the whole prefix. Returns ``(output, cache)``, the cache advanced
        by ``n`` per example, or by ``lengths[b]`` (how many of the ``n`` positions are real in
        a right-padded batch: the padding is written but never attended to, and the next call
        overwrites it). Prefill a prompt with one call, then decode one token per call.

        A position past the end of the cache is not stored, and its output is NaN (a cache too
        short never gives a plausible answer). Dropout on the probabilities works as in
        ``__call__`` (training mode needs ``key``).

        Example:
            >>> import jax, jax.numpy as jnp, stoax
            >>> attn = stoax.nn.MultiHeadAttention(8, 2, causal=True, key=jax.random.key(0))
            >>> x = jax.random.normal(jax.random.key(1), (2, 5, 8))
            >>> cache = attn.init_cache((2,), 5)
            >>> y_prompt, cache = attn.decode(x[:, :4], cache)  # prefill 4 positions
            >>> y_last, cache = attn.decode(x[:, 4:], cache)  # then one more
            >>> bool(jnp.allclose(y_last, attn(x)[:, 4:], atol=1e-5)), cache.index.tolist()
            (True, [5, 5])
        """
        if not self.causal:
            raise LayerValueError(
                self,
                ": decode needs causal attention (position i sees positions <= i); build the "
                "layer with causal=True.",
            )
        if not isinstance(cache, KVCache):
            raise LayerTypeError(
                self, f": cache must be a KVCache (from init_cache), got {type(cache).__name__}."
            )
        batch = tuple(jnp.shape(query)[:-2])
        if jnp.ndim(query) < 2 or batch != cache.index.shape:
            raise LayerValueError(
                self,
                f": query of shape {jnp.shape(query)} does not fit the cache: expected "
                f"(*batch, n, features) with batch = {cache.index.shape}, the cache's batch shape.",
            )
        n = query.shape[-2]
        q = self._heads(self.query_proj(query))
        positions = cache.index[..., None] + jnp.arange(n, dtype=cache.index.dtype)
        k = write(cache.k, self._heads(self.key_proj(query)), positions)
        v = write(cache.v, self._heads(self.value_proj(query)), positions)
        seen = jnp.arange(cache.length) <= positions[..., :, None]  # (*batch, n, length)
        out = self._attend(q, k, v, seen[..., None, :, :], key)
        out = jnp.where((positions < cache.length)[..., None], out, jnp.nan)
        advance = n if lengths is None else jnp.asarray(lengths, cache.index.dtype)
        return out, KVCache(k=k, v=v, index=cache.index + advance)
