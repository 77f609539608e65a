"""``KVCache``: the keys and values a causal attention layer has seen, carried as a value."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from stoax._module import Module

__all__ = ["KVCache"]


class KVCache(Module):
    """The projected keys and values of the positions written so far, and where each example is.

    A cache is a value (a pytree of arrays): :meth:`MultiHeadAttention.decode
    <stoax.nn.MultiHeadAttention.decode>` takes one and returns the next, nothing is mutated, so
    it goes through ``jax.jit``, ``lax.scan`` and ``lax.while_loop`` as any other carry.

    Fields:
        k: projected keys, shape ``(*batch, length, num_heads, head_size)``.
        v: projected values, same shape.
        index: ``int32`` of shape ``batch``: how many positions each example has written; the
            next token of example ``b`` goes to position ``index[b]``.

    A :class:`~stoax.nn.Stack` of attention layers keeps one cache per layer: every array then
    carries a leading layer axis (``TransformerEncoder.init_cache`` builds it).

    Example:
        >>> import jax, stoax
        >>> attn = stoax.nn.MultiHeadAttention(8, 2, causal=True, key=jax.random.key(0))
        >>> cache = attn.init_cache((3,), 16)
        >>> cache.k.shape, cache.index.tolist(), cache.length
        ((3, 16, 2, 4), [0, 0, 0], 16)
    """

    k: jax.Array
    v: jax.Array
    index: jax.Array

    @property
    def length(self) -> int:
        """The number of positions the cache holds."""
        return self.k.shape[-3]


def write(buffer: jax.Array, new: jax.Array, positions: jax.Array) -> jax.Array:
    """``buffer[b, positions[b, j]] = new[b, j]`` for every example ``b`` (any leading batch
    axes); positions past the end of the buffer are dropped, never clamped onto the last slot."""
    batch = positions.shape[:-1]
    length, rest = buffer.shape[len(batch)], buffer.shape[len(batch) + 1 :]
    flat = buffer.reshape(-1, length, *rest)
    rows = jnp.arange(flat.shape[0])[:, None]
    flat = flat.at[rows, positions.reshape(flat.shape[0], -1)].set(
        new.reshape(flat.shape[0], -1, *rest).astype(buffer.dtype), mode="drop"
    )
    return flat.reshape(buffer.shape)
