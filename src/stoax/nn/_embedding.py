"""``Embedding``: a lookup table from integer ids to vectors, usable as a tied output layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stoax import keys
from stoax._errors import LayerIndexError, LayerTypeError, LayerValueError
from stoax._module import Module
from stoax.nn._init import Initializer, check_initializer
from stoax.nn._sizes import positive_int

__all__ = ["Embedding"]

_STANDARD_NORMAL = jax.nn.initializers.normal(1.0)


class Embedding(Module):
    """A table of ``num_embeddings`` vectors of size ``features``: ``embedding(ids)`` looks them up.

    Initialisation: ``weight`` of shape ``(num_embeddings, features)`` drawn by
    ``embedding_init`` from ``key``, by default a normal distribution with standard deviation 1
    (as PyTorch's ``nn.Embedding`` and Equinox do; Flax's ``nn.Embed`` scales it by
    ``1/sqrt(features)``: ``embedding_init=jax.nn.initializers.variance_scaling(1.0, "fan_in",
    "normal", out_axis=0)``). :meth:`attend` multiplies by the transposed
    table, for an output layer tied to the input embedding.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> emb = stoax.nn.Embedding(10, 4, key=jax.random.key(0))
        >>> emb(jnp.array([[1, 2, 3]])).shape
        (1, 3, 4)
        >>> emb.attend(jnp.ones((3, 4))).shape  # logits over the 10 ids
        (3, 10)
    """

    weight: jax.Array

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        key: jax.Array,
        dtype: jnp.dtype = jnp.float32,
        embedding_init: Initializer = _STANDARD_NORMAL,
    ):
        shape = (
            positive_int(num_embeddings, "Embedding", "num_embeddings"),
            positive_int(features, "Embedding", "features"),
        )
        init = check_initializer(embedding_init, "Embedding", "embedding_init")
        self.weight = init(keys.as_key(key, "Embedding(key=...)"), shape, dtype)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[-2]

    @property
    def features(self) -> int:
        return self.weight.shape[-1]

    def __call__(self, ids: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The vectors of ``ids`` (any shape of integers): shape ``ids.shape + (features,)``.

        Concrete ids out of range raise an ``IndexError``; inside ``jax.jit`` they cannot be
        checked and give NaN vectors, negative ids included (they never count from the end).

        Args:
            ids: an integer array of any shape, each in ``[0, num_embeddings)``.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        dtype = getattr(ids, "dtype", None)
        if dtype is None:
            ids = jnp.asarray(ids)
            dtype = ids.dtype
        if not jnp.issubdtype(dtype, jnp.integer):
            raise LayerTypeError(
                self,
                f": ids must be an integer array, got dtype {dtype}. Embedding looks vectors up "
                "by index; cast token ids with .astype(jnp.int32), or use Linear for float inputs.",
            )
        if not isinstance(ids, jax.core.Tracer):
            values = np.asarray(ids)
            if values.size and (values.min() < 0 or values.max() >= self.num_embeddings):
                raise LayerIndexError(
                    self,
                    f": ids must be in [0, num_embeddings = {self.num_embeddings}), got "
                    f"{values.min()} .. {values.max()}.",
                )
        if jnp.issubdtype(dtype, jnp.signedinteger):  # no wrap-around from the end of the table
            ids = jnp.asarray(ids)  # int64 NumPy ids become int32 unless x64 is enabled
            ids = ids.astype(jnp.promote_types(ids.dtype, jnp.int32))
            ids = jnp.where(ids < 0, self.num_embeddings, ids)
        return jnp.take(self.weight, ids, axis=0, mode="fill", fill_value=jnp.nan)

    def attend(self, x: jax.Array) -> jax.Array:
        """``x @ weight.T``: scores of ``x`` (last axis ``features``) against every embedding.

        Used as the output layer of a language model whose weights are tied to its input
        embedding; the result's last axis has size ``num_embeddings``.
        """
        if getattr(x, "ndim", 0) < 1 or x.shape[-1] != self.features:
            raise LayerValueError(
                self,
                f".attend: the input's last axis must have size {self.features} (features), got "
                f"shape {getattr(x, 'shape', type(x).__name__)}.",
            )
        return x @ self.weight.T
