"""What a scanned layer keeps for its backward pass.

``lax.scan`` cannot fuse across its loop boundary: every intermediate that JAX's autodiff marks
as a residual of the loop body is written, per iteration, into a stacked buffer -- including the
many elementwise intermediates (``tanh`` of the GELU, ``x - mean`` of a LayerNorm, ``1 - t**2``,
...) that XLA fuses away when the same layers are unrolled. :func:`recompute_elementwise` is the
``jax.checkpoint`` policy that keeps only the values worth storing -- the outputs of matmuls,
convolutions, reductions and the like -- and recomputes every elementwise and layout operation
inside the fused backward kernels, which is what XLA does by itself for unrolled code. It is the
default of :class:`~stoax.nn.Stack`, hence of :class:`~stoax.nn.TransformerEncoder`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

__all__ = ["RECOMPUTED_PRIMITIVES", "recompute_elementwise"]

# Primitives whose outputs are recomputed in the backward pass rather than stored: elementwise
# arithmetic and comparisons, casts, and layout changes (cheap, and XLA fuses them into their
# consumers), and random-bit generation (stoax's promise: masks are regenerated from their key,
# never stored). Everything else -- dot_general, conv, reductions, gathers, sort, collectives,
# custom calls, primitives this list does not know -- is stored.
# fmt: off
RECOMPUTED_PRIMITIVES: frozenset[str] = frozenset([
    # elementwise arithmetic, comparisons, bit operations, casts
    "abs", "acos", "acosh", "add", "add_any", "and", "asin", "asinh", "atan", "atan2", "atanh",
    "bitcast_convert_type", "cbrt", "ceil", "clamp", "clz", "complex", "conj",
    "convert_element_type", "copy", "cos", "cosh", "div", "eq", "erf", "erf_inv", "erfc", "exp",
    "exp2", "expm1", "floor", "ge", "gt", "imag", "integer_pow", "is_finite", "le", "log",
    "log1p", "logistic", "lt", "max", "min", "mul", "ne", "neg", "nextafter", "not", "or",
    "population_count", "pow", "real", "rem", "round", "rsqrt", "select_n",
    "shift_left", "shift_right_arithmetic", "shift_right_logical", "sign", "sin", "sinh", "sqrt",
    "square", "sub", "tan", "tanh", "xor",
    # layout
    "broadcast_in_dim", "concatenate", "dynamic_slice", "iota", "pad", "reshape", "rev", "slice",
    "squeeze", "transpose",
    # random bits: regenerated from their key, never stored
    "random_bits", "rng_bit_generator", "threefry2x32",
])
# fmt: on
"""Names of the primitives whose outputs :func:`recompute_elementwise` recomputes in the
backward pass instead of storing: elementwise arithmetic, comparisons and casts, layout changes,
and random-bit generation. Every other primitive's output is stored -- ``reduce_precision``
included: older JAX versions round every matmul and reduction output with it, and storing the
rounded value is storing the matmul's output."""


def recompute_elementwise(prim: Any, *avals: Any, **params: Any) -> bool:
    """A ``jax.checkpoint`` policy: store every intermediate except the outputs of elementwise,
    layout and random-bit operations (:data:`RECOMPUTED_PRIMITIVES`), which are recomputed in
    the backward pass.

    The default ``remat`` of :class:`~stoax.nn.Stack`: a scanned stack then keeps what an
    unrolled one keeps after XLA's fusion (the matmul outputs and the statistics of each
    normalisation), not every elementwise step of every activation -- in ``benchmarks/run.py``
    the 4-layer Transformer step's temporary memory falls from 767 to 349 MiB (the same layers
    unrolled: 510 MiB).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> def f(w, x):
        ...     return jnp.tanh(x @ w).sum()
        >>> g = jax.checkpoint(f, policy=stoax.transforms.recompute_elementwise)
        >>> w, x = jnp.ones((4, 4)), jnp.ones((2, 4))
        >>> bool(jnp.allclose(jax.grad(g)(w, x), jax.grad(f)(w, x)))
        True
    """
    return prim.name not in RECOMPUTED_PRIMITIVES


def checkpoint_step(
    step: Callable[..., Any], remat: bool | Callable[..., bool], *, unrolled: bool
) -> Callable[..., Any]:
    """``step`` under ``jax.checkpoint`` as ``remat`` asks (``False``: as it is; ``True``: keep
    nothing; a policy: keep what it saves). ``unrolled``: the scan is fully unrolled, so the
    forward and backward passes are one straight-line program and XLA's common-subexpression
    elimination must be kept from merging the recomputation back into the forward pass; inside
    a rolled loop there is nothing to merge with, and ``prevent_cse`` would only add barriers."""
    if remat is False:
        return step
    return jax.checkpoint(step, prevent_cse=unrolled, policy=None if remat is True else remat)
