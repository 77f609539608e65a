"""Samplers: turn next-token logits into tokens -- greedy, or a categorical draw after
temperature, top-k and top-p (nucleus) filtering, one key per example."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from stoax import keys
from stoax._module import Module

__all__ = ["Sampler", "apply_temperature", "top_k_filter", "top_p_filter", "categorical"]


def apply_temperature(logits: jax.Array, temperature: float | jax.Array) -> jax.Array:
    """``logits / temperature``: below 1 sharpens the distribution, above 1 flattens it.

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> stoax.inference.apply_temperature(jnp.array([1.0, 2.0]), 0.5).tolist()
        [2.0, 4.0]
    """
    return logits / jnp.asarray(temperature, logits.dtype)


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
    """Keep the ``k`` largest logits of the last axis (and any tied with the ``k``-th); the
    others become ``-inf``, so a categorical draw never picks them.

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> stoax.inference.top_k_filter(jnp.array([1.0, 3.0, 2.0]), 2).tolist()
        [-inf, 3.0, 2.0]
    """
    if k >= logits.shape[-1]:
        return logits
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    return jnp.where(logits >= kth, logits, -jnp.inf)


def top_p_filter(logits: jax.Array, p: float | jax.Array) -> jax.Array:
    """Nucleus filter: keep the most probable tokens whose probabilities add up to ``p`` -- a
    token is kept when the tokens more probable than it hold less than ``p`` of the mass, so the
    most probable token is always kept (and any tied with the last kept one). The others become
    ``-inf``.

    Example:
        >>> import jax.numpy as jnp, stoax
        >>> logits = jnp.log(jnp.array([0.5, 0.3, 0.15, 0.05]))
        >>> bool(jnp.isinf(stoax.inference.top_p_filter(logits, 0.75)).tolist() ==
        ...      [False, False, True, True])
        True
    """
    probs = jax.nn.softmax(logits, axis=-1)
    ranked = jnp.sort(probs, axis=-1)[..., ::-1]
    before = jnp.cumsum(ranked, axis=-1) - ranked  # the mass of the tokens ranked above
    kept = jnp.sum(before < p, axis=-1, keepdims=True)  # >= 1: `before` of the top is 0
    threshold = jnp.take_along_axis(ranked, kept - 1, axis=-1)
    return jnp.where(probs >= threshold, logits, -jnp.inf)


def categorical(key: jax.Array, logits: jax.Array) -> jax.Array:
    """One draw from ``softmax(logits)`` per row, with one key per row: ``key`` has shape
    ``logits.shape[:-1]`` (an example's draw depends on its own key only). ``-inf`` logits are
    never drawn.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> ks = jax.random.split(jax.random.key(0), 2)
        >>> stoax.inference.categorical(ks, jnp.array([[0.0, -jnp.inf], [-jnp.inf, 0.0]])).tolist()
        [0, 1]
    """
    key = keys.as_key(key, "stoax.inference.categorical")
    if key.shape != logits.shape[:-1]:
        raise ValueError(
            f"stoax.inference.categorical: one key per row: logits of shape {logits.shape} need "
            f"keys of shape {logits.shape[:-1]}, got {key.shape}. Derive them with "
            "stoax.keys.child(key, i) per example (stoax.inference.generate does)."
        )
    flat_keys = key.reshape(-1)
    flat = logits.reshape(-1, logits.shape[-1])
    draws = jax.vmap(lambda k, row: jax.random.categorical(k, row))(flat_keys, flat)
    return draws.reshape(logits.shape[:-1]).astype(jnp.int32)


class Sampler(Module):
    """Logits ``(..., vocab)`` to tokens ``(...,)``: greedy, or a categorical draw from the
    logits after temperature, then top-k, then top-p (the nucleus of the tempered, top-k
    distribution). Compose them by setting the fields; each is off by default.

    Args:
        temperature: divide the logits by it (> 0). A Python float is static; a JAX array is a
            leaf (one compiled program for several temperatures).
        top_k: keep the ``top_k`` most probable tokens (``None``: all).
        top_p: keep the nucleus of probability ``top_p`` in (0, 1] (``None`` or 1: all).
        greedy: take the most probable token; no key, and the other fields do not matter.

    ``sampler(logits, key=keys)`` needs one key per row of logits (shape ``logits.shape[:-1]``),
    so that each example's draw depends only on its own key.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> sampler = stoax.inference.Sampler(temperature=0.8, top_k=2)
        >>> logits = jnp.array([[3.0, 1.0, 2.0], [0.0, 5.0, 0.0]])
        >>> ks = jax.vmap(lambda i: stoax.keys.child(jax.random.key(0), i))(jnp.arange(2))
        >>> sampler(logits, key=ks).shape
        (2,)
        >>> stoax.inference.Sampler(greedy=True)(logits).tolist()
        [0, 1]
    """

    temperature: float | jax.Array = 1.0
    top_k: int | None = None
    top_p: float | jax.Array | None = None
    greedy: bool = False

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not (isinstance(t, int | float) or hasattr(t, "dtype")):
            raise TypeError(f"Sampler: temperature must be a number > 0, got {t!r}.")
        if isinstance(t, int | float):
            if not t > 0 or not np.isfinite(t):
                raise ValueError(
                    f"Sampler: temperature must be a finite number > 0, got {t}. For the most "
                    "probable token use Sampler(greedy=True)."
                )
            self.temperature = float(t)
        k = self.top_k
        if k is not None and (isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1):
            raise ValueError(f"Sampler: top_k must be a positive int or None, got {k!r}.")
        self.top_k = None if k is None else int(k)
        p = self.top_p
        if isinstance(p, bool) or (p is not None and isinstance(p, int | float) and not 0 < p <= 1):
            raise ValueError(f"Sampler: top_p must be in (0, 1] or None, got {p!r}.")
        if isinstance(p, int | float):
            self.top_p = float(p)
        if not isinstance(self.greedy, bool):
            raise TypeError(f"Sampler: greedy must be a Python bool, got {self.greedy!r}.")

    def process(self, logits: jax.Array) -> jax.Array:
        """The logits the categorical draw uses: tempered, then top-k, then top-p filtered
        (``-inf`` outside). ``softmax`` of them is the distribution each token is drawn from."""
        logits = jnp.asarray(logits)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        if not (isinstance(self.temperature, float) and self.temperature == 1.0):
            logits = apply_temperature(logits, self.temperature)
        if self.top_k is not None:
            logits = top_k_filter(logits, self.top_k)
        if self.top_p is not None and not (isinstance(self.top_p, float) and self.top_p == 1.0):
            logits = top_p_filter(logits, self.top_p)
        return logits

    def __call__(self, logits: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """One token id per row of ``logits``: shape ``logits.shape[:-1]``, int32.

        Args:
            logits: ``(..., vocab)``.
            key: the key of the draw; needed unless ``greedy``."""
        if jnp.ndim(logits) < 1:
            raise ValueError(
                f"Sampler: logits need a vocabulary axis, got shape {jnp.shape(logits)}."
            )
        if self.greedy:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        if key is None:
            raise ValueError(
                "Sampler: a categorical draw needs keys, one per row of logits (shape "
                f"{jnp.shape(logits)[:-1]}); pass key=..., or use Sampler(greedy=True)."
            )
        return categorical(key, self.process(logits))
