"""A pre-norm Transformer: ``TransformerBlock`` and ``TransformerEncoder`` (a sequence model built
on :class:`~stoax.nn.Stack`, usable as a classifier or, with ``causal=True``, a language model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from stoax import keys
from stoax._errors import LayerValueError, locate_layer_errors
from stoax._module import Module
from stoax.nn._attention import MultiHeadAttention
from stoax.nn._drop_path import DropPath
from stoax.nn._dropout import Dropout
from stoax.nn._embedding import Embedding
from stoax.nn._kv_cache import KVCache
from stoax.nn._layer_norm import LayerNorm
from stoax.nn._linear import Linear
from stoax.nn._mlp import MLP
from stoax.transforms import Stack
from stoax.transforms._remat import recompute_elementwise
from stoax.transforms._stacked import check_remat

__all__ = ["TransformerBlock", "TransformerEncoder"]

_POOLS = ("none", "mean", "first", "last")


class TransformerBlock(Module):
    """A pre-norm Transformer block on ``x`` of shape ``(..., length, features)``::

        x = x + attn_drop_path(attn_dropout(attn(attn_norm(x))))
        x = x + mlp_drop_path(mlp_dropout(mlp(mlp_norm(x))))

    Each stochastic sublayer gets ``stoax.keys.child(key, <its field name>)``; attention
    dropout (on the attention probabilities) is inside ``attn``, hidden dropout inside ``mlp``.
    ``drop_path`` (stochastic depth) drops whole examples and so needs a leading batch axis.

    Args:
        features: model width; ``num_heads`` must divide it.
        mlp_ratio: hidden width of the MLP is ``mlp_ratio * features``.
        dropout: residual and MLP-hidden dropout rate.
        attention_dropout: dropout rate on the attention probabilities.
        drop_path: stochastic-depth rate of each residual branch.
        causal: position ``i`` attends only to positions ``<= i``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> block = stoax.nn.TransformerBlock(16, 4, dropout=0.1, key=jax.random.key(0))
        >>> block(jnp.ones((2, 5, 16)), key=jax.random.key(1)).shape
        (2, 5, 16)
    """

    attn_norm: LayerNorm
    attn: MultiHeadAttention
    attn_dropout: Dropout
    attn_drop_path: DropPath
    mlp_norm: LayerNorm
    mlp: MLP
    mlp_dropout: Dropout
    mlp_drop_path: DropPath

    def __init__(
        self,
        features: int,
        num_heads: int,
        mlp_ratio: int = 4,
        dropout: float | jax.Array = 0.1,
        attention_dropout: float | jax.Array = 0.1,
        drop_path: float = 0.0,
        causal: bool = False,
        activation: Callable[[jax.Array], jax.Array] = jax.nn.gelu,
        *,
        key: jax.Array,
        dtype: jnp.dtype = jnp.float32,
    ):
        k_attn, k_mlp = keys.init_derive(keys.as_key(key, "TransformerBlock"), "attn", "mlp")
        self.attn_norm = LayerNorm(features, dtype=dtype)
        self.attn = MultiHeadAttention(
            features, num_heads, dropout=attention_dropout, causal=causal, key=k_attn, dtype=dtype
        )
        self.attn_dropout = Dropout(dropout)
        self.attn_drop_path = DropPath(drop_path)
        self.mlp_norm = LayerNorm(features, dtype=dtype)
        self.mlp = MLP(
            features,
            features,
            hidden=(mlp_ratio * features,),
            activation=activation,
            dropout=dropout,
            key=k_mlp,
            dtype=dtype,
        )
        self.mlp_dropout = Dropout(dropout)
        self.mlp_drop_path = DropPath(drop_path)

    def __call__(
        self, x: jax.Array, *, key: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        """The block's output, same shape as ``x``.

        Args:
            x: ``(..., length, features)``.
            key: the key of the block's dropouts and drop-path; needed in training mode unless every
                rate is 0 (a :class:`~stoax.nn.MissingKeyError` names the layer otherwise).
            mask: a boolean array broadcastable to ``(..., num_heads, length, length)``, True = may
                attend (e.g. a padding mask ``pad[..., None, None, :]``)."""
        y, _ = self._forward(x, key, lambda h, k: (self.attn(h, mask=mask, key=k), None))
        return y

    @locate_layer_errors
    def decode(
        self,
        x: jax.Array,
        cache: KVCache,
        *,
        lengths: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache]:
        """The block on ``n`` new positions ``x`` of shape ``(*batch, n, features)``, its
        attention reading and extending ``cache`` (:meth:`MultiHeadAttention.decode
        <stoax.nn.MultiHeadAttention.decode>`); returns ``(y, cache)``. Needs ``causal=True``."""
        return self._forward(
            x, key, lambda h, k: self.attn.decode(h, cache, lengths=lengths, key=k)
        )

    def _forward(
        self, x: jax.Array, key: jax.Array | None, attend: Callable[..., tuple[jax.Array, Any]]
    ) -> tuple[jax.Array, Any]:
        k = dict(zip(_NAMES, keys.derive(key, *_NAMES), strict=True))
        h, extra = attend(self.attn_norm(x), k["attn"])
        h = self.attn_dropout(h, key=k["attn_dropout"])
        x = x + self.attn_drop_path(h, key=k["attn_drop_path"])
        h = self.mlp(self.mlp_norm(x), key=k["mlp"])
        h = self.mlp_dropout(h, key=k["mlp_dropout"])
        return x + self.mlp_drop_path(h, key=k["mlp_drop_path"]), extra


_NAMES = ("attn", "attn_dropout", "attn_drop_path", "mlp", "mlp_dropout", "mlp_drop_path")


class TransformerEncoder(Module):
    """A sequence model: token embedding + learned positional embedding + dropout, a
    :class:`~stoax.nn.Stack` of :class:`TransformerBlock` (one ``lax.scan``: compile time does
    not grow with depth), a final :class:`~stoax.nn.LayerNorm` and a linear ``head``.

    ``tokens`` are integer ids of shape ``(..., length)`` with ``length <= max_len``.

    - Sequence classifier: ``pool="mean"`` (or ``"first"``, ``"last"``) gives
      ``(..., out_features)``.
    - Language model: ``causal=True, pool="none"`` gives next-token logits ``(..., length,
      out_features)``.

    The keys of a forward pass, all derived from ``key``: ``"embed_dropout"``, then
    ``"blocks"`` (layer ``i`` gets ``child(child(key, "blocks"), i)``). ``mask`` (boolean,
    broadcastable to ``(..., num_heads, length, length)``, True = may attend) goes to every
    attention layer, e.g. a padding mask ``pad[..., None, None, :]``.

    ``remat`` and ``unroll`` go to the :class:`~stoax.nn.Stack` of blocks. The default runs
    the blocks in one ``lax.scan`` (compile time flat in depth) under the checkpoint policy
    :func:`~stoax.transforms.recompute_elementwise`: each layer stores its matmul outputs and
    normalisation statistics and recomputes the elementwise rest in the backward pass -- less
    temporary memory than the same blocks unrolled (``unroll=True``, whose compile time grows
    with depth), and without it (``remat=False``) the scan's stacked residuals take ~2.2x as
    much; figures in ``benchmarks/README.md``. ``remat=jax.checkpoint_policies.
    dots_with_no_batch_dims_saveable`` keeps even less (the attention scores are recomputed
    too). Whatever the choice, layer ``i`` derives its own key (``child(child(key, "blocks"),
    i)``), so every layer draws its own masks, and the masks do not depend on ``remat`` or
    ``unroll``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> lm = stoax.nn.TransformerEncoder(
        ...     vocab_size=30, out_features=30, features=16, num_heads=2, num_layers=3,
        ...     max_len=12, causal=True, key=jax.random.key(0))
        >>> tokens = jnp.zeros((4, 12), jnp.int32)
        >>> lm(tokens, key=jax.random.key(1)).shape
        (4, 12, 30)
        >>> clf = stoax.nn.TransformerEncoder(
        ...     vocab_size=30, out_features=3, features=16, num_heads=2, num_layers=2,
        ...     max_len=12, pool="mean", key=jax.random.key(2))
        >>> stoax.eval_mode(clf)(tokens).shape
        (4, 3)
    """

    embed: Embedding
    pos_embed: jax.Array
    embed_dropout: Dropout
    blocks: Stack
    norm: LayerNorm
    head: Linear
    pool: str

    def __init__(
        self,
        vocab_size: int,
        out_features: int,
        features: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        max_len: int = 128,
        mlp_ratio: int = 4,
        dropout: float | jax.Array = 0.1,
        attention_dropout: float | jax.Array = 0.1,
        drop_path: float = 0.0,
        causal: bool = False,
        pool: str = "none",
        remat: bool | Callable[..., bool] = recompute_elementwise,
        unroll: int | bool = 1,
        *,
        key: jax.Array,
        dtype: jnp.dtype = jnp.float32,
    ):
        if pool not in _POOLS:
            raise ValueError(f"TransformerEncoder: pool must be one of {_POOLS}, got {pool!r}.")
        remat = check_remat(remat, "TransformerEncoder")
        k_embed, k_pos, k_blocks, k_head = keys.init_derive(
            keys.as_key(key, "TransformerEncoder"), "embed", "pos_embed", "blocks", "head"
        )
        self.embed = Embedding(vocab_size, features, key=k_embed, dtype=dtype)
        self.pos_embed = 0.02 * jax.random.normal(k_pos, (max_len, features), dtype)
        self.embed_dropout = Dropout(dropout)

        def make(k: jax.Array) -> TransformerBlock:
            return TransformerBlock(
                features,
                num_heads,
                mlp_ratio=mlp_ratio,
                dropout=dropout,
                attention_dropout=attention_dropout,
                drop_path=drop_path,
                causal=causal,
                key=k,
                dtype=dtype,
            )

        self.blocks = Stack.build(make, num_layers, key=k_blocks, remat=remat, unroll=unroll)
        self.norm = LayerNorm(features, dtype=dtype)
        self.head = Linear(features, out_features, key=k_head, dtype=dtype)
        self.pool = pool

    @property
    def max_len(self) -> int:
        return self.pos_embed.shape[0]

    def __call__(
        self, tokens: jax.Array, *, key: jax.Array | None = None, mask: jax.Array | None = None
    ) -> jax.Array:
        """Logits ``(..., length, out_features)``, or ``(..., out_features)`` with a ``pool``.

        Args:
            tokens: integer ids ``(..., length)``, ``length <= max_len``.
            key: the key of the forward pass (``"embed_dropout"`` and ``"blocks"`` are derived from
                it); needed in training mode unless every rate is 0 (a
                :class:`~stoax.nn.MissingKeyError` names the layer otherwise).
            mask: a boolean array broadcastable to ``(..., num_heads, length, length)``, True = may
                attend, given to every attention layer."""
        length = jnp.shape(tokens)[-1] if jnp.ndim(tokens) else 0
        if jnp.ndim(tokens) < 1 or length > self.max_len:
            raise LayerValueError(
                self,
                f": tokens must have shape (..., length) with length <= max_len = "
                f"{self.max_len}; got shape {jnp.shape(tokens)}. Build the model with a larger "
                "max_len or cut the sequence.",
            )
        k_drop, k_blocks = keys.derive(key, "embed_dropout", "blocks")
        x = self.embed(tokens) + self.pos_embed[:length]
        x = self.embed_dropout(x, key=k_drop)
        x = self.blocks(x, key=k_blocks, mask=mask)
        x = self.norm(x)
        if self.pool == "mean":
            x = x.mean(axis=-2)
        elif self.pool == "first":
            x = x[..., 0, :]
        elif self.pool == "last":
            x = x[..., -1, :]
        return self.head(x)

    # -- decoding with a key/value cache (the protocol of stoax.inference.generate) -----------

    def init_cache(
        self,
        batch_shape: tuple[int, ...],
        length: int | None = None,
        *,
        dtype: jnp.dtype | None = None,
    ) -> tuple[KVCache, ...]:
        """An empty cache for ``length`` positions (default ``max_len``) of a batch of shape
        ``batch_shape``: one :class:`~stoax.nn.KVCache` per layer, in a tuple (the layout
        :meth:`Stack.decode <stoax.nn.Stack.decode>` writes in place)."""
        length = self.max_len if length is None else length
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(
                f"TransformerEncoder.init_cache: length must be a positive int, got {length!r}."
            )
        if length > self.max_len:
            raise ValueError(
                f"TransformerEncoder.init_cache: a cache of {length} positions is longer than "
                f"the model's max_len = {self.max_len} (its positional embedding). Ask for at "
                "most max_len positions, or build the model with a larger max_len."
            )
        first: Any = self.blocks[0]  # a TransformerBlock
        one = first.attn.init_cache(batch_shape, length, dtype=dtype)
        return tuple(jax.tree.map(jnp.zeros_like, one) for _ in range(len(self.blocks)))

    @locate_layer_errors
    def decode(
        self,
        tokens: jax.Array,
        cache: tuple[KVCache, ...],
        *,
        lengths: jax.Array | None = None,
        key: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[KVCache, ...]]:
        """Next-token logits of ``n`` new tokens of shape ``(*batch, n)``, read with ``cache``:
        returns ``(logits (*batch, n, out_features), cache)``.

        Example ``b``'s tokens take positions ``cache.index[b] + 0 .. n-1`` (their positional
        embeddings too); ``lengths`` says how many of the ``n`` are real in a right-padded
        batch (see :meth:`MultiHeadAttention.decode <stoax.nn.MultiHeadAttention.decode>`). The
        logits equal those of ``model(prefix)`` at the same positions, up to float rounding.
        Keys as in ``__call__``: ``"embed_dropout"``, then ``"blocks"``. This and
        :meth:`init_cache` are the cache protocol of :func:`stoax.inference.generate`.

        Example:
            >>> import jax, jax.numpy as jnp, stoax
            >>> lm = stoax.eval_mode(stoax.nn.TransformerEncoder(
            ...     vocab_size=10, out_features=10, features=16, num_heads=2, num_layers=2,
            ...     max_len=8, causal=True, key=jax.random.key(0)))
            >>> tokens = jnp.array([[1, 2, 3, 4]])
            >>> cache = lm.init_cache((1,))
            >>> logits, cache = lm.decode(tokens[:, :3], cache)  # prefill
            >>> last, cache = lm.decode(tokens[:, 3:], cache)  # one more token
            >>> bool(jnp.allclose(last[:, 0], lm(tokens)[:, 3], atol=1e-5))
            True
        """
        if self.pool != "none":
            raise LayerValueError(
                self,
                f": decode gives next-token logits and needs pool='none' (got {self.pool!r}).",
            )
        if not (isinstance(cache, tuple) and cache and isinstance(cache[0], KVCache)):
            raise TypeError(
                "TransformerEncoder.decode: cache must be the tuple of per-layer KVCaches from "
                f"model.init_cache(...), got {type(cache).__name__}."
            )
        n = jnp.shape(tokens)[-1] if jnp.ndim(tokens) else 0
        index = cache[0].index
        positions = index[..., None] + jnp.arange(n, dtype=index.dtype)
        k_drop, k_blocks = keys.derive(key, "embed_dropout", "blocks")
        # A position past max_len gets a NaN embedding: never a silent wrong answer.
        pos = jnp.take(self.pos_embed, positions, axis=0, mode="fill", fill_value=jnp.nan)
        x = self.embed_dropout(self.embed(tokens) + pos, key=k_drop)
        x, cache = self.blocks.decode(x, cache, key=k_blocks, lengths=lengths)
        return self.head(self.norm(x)), cache
