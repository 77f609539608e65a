"""Mixed precision: parameters stored in one dtype, the forward pass computed in another.

A layer's ``dtype=`` is its *parameter* dtype. The *computation* dtype is chosen where the
model is called: ``stoax.cast(model, jnp.bfloat16)(x, key=key)`` inside the loss runs every
layer in bfloat16 while the optimiser keeps float32 parameters -- the gradient of the cast
brings bfloat16 gradients back to float32. LayerNorm/RMSNorm compute their statistics and
attention its softmax in float32 whatever the input dtype, and dropout keeps its exact drop
probability (an integer threshold on random bits, whatever the dtype).
"""

from __future__ import annotations

from typing import Any, TypeVar

import jax
import jax.numpy as jnp

from stoax._module import is_array

__all__ = ["cast"]

T = TypeVar("T")


def cast(tree: T, dtype: jnp.dtype) -> T:
    """A copy of ``tree`` (a model, or any pytree) with every floating array cast to ``dtype``.

    Integer and boolean arrays and keys are left alone. Differentiable: called on float32
    parameters inside a loss, it gives float32 gradients.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> model = stoax.nn.Linear(4, 2, key=jax.random.key(0))
        >>> stoax.cast(model, jnp.bfloat16).weight.dtype
        dtype(bfloat16)
        >>> stoax.cast(model, jnp.bfloat16)(jnp.ones(4, jnp.bfloat16)).dtype
        dtype(bfloat16)
    """
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"stoax.cast: dtype must be a floating dtype, got {dtype}.")

    def one(x: Any) -> Any:
        if is_array(x) and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x).astype(dtype)
        return x

    return jax.tree.map(one, tree)
