"""``Dropout`` for Equinox: a drop-in for ``equinox.nn.Dropout`` with stoax's lean backward pass.

Same signature (``Dropout(p=0.5, inference=False)``, ``__call__(x, *, key=None,
inference=None)``), same conventions (``p`` and ``inference`` are fields, toggled by
``equinox.nn.inference_mode`` or ``eqx.tree_at``) and the same statistics: each element is
zeroed with probability ``p`` and the others scaled by ``1/(1-p)``. What changes:

* the backward pass regenerates the mask from the key (:func:`stoax.random.dropout`): dropout
  adds almost nothing to training memory, where ``equinox.nn.Dropout`` stores its mask;
* ``inference`` may be a JAX bool (traced inside ``jax.lax.scan``/``jax.lax.cond``: one
  program for both modes, no ``TracerBoolConversionError``);
* ``p`` may be traced (plain ``jax.jit`` of the whole model, or a vmapped sweep of rates).

The masks differ from ``equinox.nn.Dropout``'s for the same key (stoax compares random bits
with an integer threshold, exact to ``2**-32``; Equinox draws ``jax.random.bernoulli``); their
distribution is the same.

Example:
    >>> import jax, jax.numpy as jnp
    >>> from stoax.interop.equinox import Dropout
    >>> drop = Dropout(0.5)
    >>> y = drop(jnp.ones(8), key=jax.random.key(0))
    >>> sorted(set(y.tolist()))
    [0.0, 2.0]
    >>> drop(jnp.ones(3), inference=True).tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax

from stoax.interop._lean import lean_dropout

__all__ = ["Dropout"]


class Dropout(eqx.Module):
    """Inverted dropout with Equinox's signature and stoax's lean backward pass.

    Args:
        p: the fraction of entries set to zero (on average), in [0, 1]. A Python float, or a
            JAX array (traced: a sweep over rates can be vmapped).
        inference: ``True`` to skip dropout. A Python bool, or a scalar bool JAX array (traced).
            Toggled by ``equinox.nn.inference_mode`` and by ``stoax.set_mode`` when the layer
            sits inside a stoax container.
        deterministic: deprecated alternative to ``inference`` (as in Equinox).
    """

    p: float | jax.Array
    inference: bool | jax.Array

    def __init__(
        self,
        p: float | jax.Array = 0.5,
        inference: bool | jax.Array = False,
        *,
        deterministic: bool | None = None,
    ):
        if deterministic is not None:
            warnings.warn(
                "Dropout(deterministic=...) is deprecated in favour of Dropout(inference=...)",
                stacklevel=2,
            )
            inference = deterministic
        self.p = p
        self.inference = inference

    @property
    def deterministic(self) -> bool | jax.Array:
        return self.inference

    @jax.named_scope("stoax.interop.equinox.Dropout")
    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> jax.Array:
        """Drop the elements of ``x``; ``key`` is needed unless ``inference`` is ``True``.

        ``inference`` (or the deprecated ``deterministic``) given here takes priority over the
        field.
        """
        if deterministic is not None:
            warnings.warn(
                "Dropout()(deterministic=...) is deprecated in favour of Dropout()(inference=...)",
                stacklevel=2,
            )
            inference = deterministic
        if inference is None:
            inference = self.inference
        return lean_dropout(
            x,
            self.p,  # no gradient flows to a traced p (as Equinox's stop_gradient)
            key,
            skip=inference,
            where="stoax.interop.equinox.Dropout",
            how_to_key="call it as dropout(x, key=key), or with inference=True for evaluation.",
        )
