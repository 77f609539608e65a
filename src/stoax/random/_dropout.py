"""The dropout primitive: masks from raw random bits compared with an integer threshold.

**Exactness.** An element is kept when a uniform ``uint32`` draw is at least
``round(rate * 2**32)``, so the drop probability is exact to the granularity ``2**-32``: no float
conversion, no float rounding at 0 or 1 (``rate=0`` keeps everything, ``rate=1`` drops
everything). A traced ``rate`` (a JAX array) is a float32 whose threshold is
``floor(rate * 2**32)``: the same ``2**-32`` step, on a float32 rate.

**Bits.** The bits are exactly ``jax.random.bits(key, mask_shape, jnp.uint32)`` for every PRNG
implementation (threefry2x32, rbg, unsafe_rbg, ...), so a mask can be reproduced outside stoax.
For threefry2x32 keys (the default), stoax evaluates the same Threefry-2x32 hash on the same
counters as JAX's partitionable implementation, but as straight-line array code rather than
JAX's CPU lowering (a 5-step ``while`` loop that materialises two ``uint32`` arrays of the mask's
size): XLA then fuses the hash, the comparison and the select into one pass over ``x``, with no
bits or mask ever stored. Bitwise equal to ``jax.random.bits``; tested.

Narrower draws (``jax.random.bits`` with ``uint8``/``uint16``) are *not* offered: with JAX's
partitionable threefry every element still costs one full Threefry-2x32 evaluation, truncated, so
``uint8`` is no faster and only coarser (``2**-8``: rate 0.1 would become 26/256 = 0.1016).

**Memory (``regenerate_mask``).** By default the primitive is a ``jax.custom_jvp`` whose tangent
is a linear map with its own transpose (``lax.custom_linear_solve``): its only residuals are
the key's raw words (and a traced rate), and the transpose -- the backward pass --
regenerates the mask from the key, tied to the incoming cotangent, so XLA can neither store the
mask nor merge the two generations back into one stored buffer. Being a ``custom_jvp``, it
supports forward mode too (``jax.jvp``, ``jax.jacfwd``, ``jax.hessian``). The gradient with
respect to a traced rate is the true one, plain autodiff's with the same mask (computing it keeps
``x`` and the mask for the backward pass, only when the rate is differentiated), to every order.
For PRNGs whose draw is an unfusible ``RngBitGenerator`` (rbg, unsafe_rbg) regenerating would
run every draw twice -- on CPU that made a Transformer step 1.5x slower -- so there the residual
is the mask itself, packed to one bit per element (1/32 of a float32 mask). Switch it off for a
call
(``regenerate_mask=False``) or globally (:func:`set_regenerate_mask`) to get plain autodiff (the
mask is then a residual, unless XLA fuses it away).

The dropout *output* is a residual of whatever consumes it next when that op needs its input
for its own gradient (a matmul: ``dW = dropped_x^T @ g``). :func:`dropout_then` makes dropout and
that op one differentiated unit: it keeps only the *pre*-dropout input (which the op before
usually stores anyway -- the softmax output for attention) and the key, and regenerates the
dropped input in the backward pass. Use it for attention probabilities (``probs @ v``) and for a
dropout that feeds a Linear (``stoax.nn.MLP`` and ``Sequential`` do so for every ``Dropout``
followed by a ``Linear`` or ``Conv``). Its backward pass is a ``jax.custom_vjp``; forward mode
(``jax.jvp``/``jax.jacfwd``) tracing it computes the unfused :func:`dropout` then the op.

**Invalid rates.** A Python rate outside [0, 1] (or NaN) raises a ``ValueError``; so does a
concrete array rate. A *traced* rate cannot raise inside ``jax.jit``: when it is outside [0, 1]
or NaN the whole output (and its gradient) is NaN -- never a plausible answer.

**Narrow dtypes.** ``x * 1/(1-rate)`` is computed in float32 for bf16/f16 inputs and rounded
once: a scale that float16 cannot hold (rate 0.99999) does not become ``inf``, and zeros stay
zeros.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeGuard

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.custom_derivatives import SymbolicZero

from stoax._strength import check_strength

__all__ = [
    "dropout",
    "dropout_then",
    "get_regenerate_mask",
    "keep_mask",
    "random_bits",
    "set_regenerate_mask",
]

_SCALE = 2**32
_REGENERATE_MASK = True


def set_regenerate_mask(enabled: bool) -> bool:
    """Set the default of ``regenerate_mask`` for :func:`dropout` / :func:`dropout_then`.

    ``True`` (the default): the mask is regenerated from the key in the backward pass
    (``jax.custom_vjp``), never stored (for rbg/unsafe_rbg keys: stored packed to 1 bit per
    element). ``False``: plain autodiff of the same forward computation. Returns the previous
    setting. Read at trace time and not part of ``jax.jit``'s cache key: a jitted function
    already traced keeps the setting it was traced with; wrap it in a new ``jax.jit`` (or pass
    ``regenerate_mask=`` per call) to switch.

    Example:
        >>> import stoax
        >>> previous = stoax.random.set_regenerate_mask(False)
        >>> _ = stoax.random.set_regenerate_mask(previous)
        >>> stoax.random.get_regenerate_mask()
        True
    """
    global _REGENERATE_MASK
    previous = _REGENERATE_MASK
    _REGENERATE_MASK = bool(enabled)
    return previous


def get_regenerate_mask() -> bool:
    """The current default of ``regenerate_mask`` (see :func:`set_regenerate_mask`)."""
    return _REGENERATE_MASK


# --------------------------------------------------------------------------------------------
# Random bits: jax.random.bits(key, shape, uint32), with a fusible threefry2x32 path.
# --------------------------------------------------------------------------------------------

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 block cipher (20 rounds), written as straight-line array code.

    ``lax`` ops rather than ``jnp`` operators: ``jnp``'s ``+``/``^`` are small jitted functions,
    and the ~100 of them per hash dominated the time to trace a deep model.
    """
    add, xor, shl, shr = lax.add, lax.bitwise_xor, lax.shift_left, lax.shift_right_logical
    ks = (k1, k2, xor(xor(k1, k2), np.uint32(0x1BD11BDA)))
    x1 = add(x1, ks[0])
    x2 = add(x2, ks[1])
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = add(x1, x2)
            x2 = lax.bitwise_or(shl(x2, np.uint32(r)), shr(x2, np.uint32(32 - r)))
            x2 = xor(x1, x2)
        x1 = add(x1, ks[(i + 1) % 3])
        x2 = add(add(x2, ks[(i + 2) % 3]), np.uint32(i + 1))
    return x1, x2


def _counters(shape: tuple[int, ...], words: jax.Array) -> jax.Array:
    """The row-major element index as uint32 (valid for fewer than 2**32 elements).

    One iota over the flat index plus a zero that depends on the key's ``words``: inside a
    ``lax.scan`` (a ``Stack`` of layers), counters built from iotas alone are loop-invariant,
    and XLA hoists them out of the loop as a materialised ``uint32`` array of the mask's size
    per dropout site (+4% temporary memory in the scanned Transformer). Tied to the key, which
    changes every iteration, they stay inside the hash's fusion and are never stored.
    """
    if not shape:
        return jnp.zeros((), jnp.uint32) + _zero_tied_to_words(words)
    n = math.prod(shape)
    flat = lax.add(lax.iota(jnp.uint32, n), lax.broadcast(_zero_tied_to_words(words), (n,)))
    return lax.reshape(flat, shape)


def _zero_tied_to_words(words: jax.Array) -> jax.Array:
    """A ``uint32`` scalar zero that XLA cannot prove is zero: it depends on ``words[0]``."""
    as_float = lax.bitcast_convert_type(words[0], jnp.float32)
    return _never(as_float).astype(jnp.uint32)


def _fused_threefry_ok(impl: str, shape: tuple[int, ...]) -> bool:
    flags: Any = jax.config  # its options are dynamic attributes, unknown to type checkers
    return (
        impl == "threefry2x32"
        and bool(flags.jax_threefry_partitionable)
        and math.prod(shape) < _SCALE
    )


# jit(inline=True): the hash is traced once per shape and its cached jaxpr inlined after that,
# which makes tracing a deep model (one hash per dropout, forward and backward) much faster.
@partial(jax.jit, static_argnums=(1,), inline=True)
def _bits_from_words(
    words: jax.Array, shape: tuple[int, ...], tie: jax.Array | None = None
) -> jax.Array:
    """``jax.random.bits`` of a threefry2x32 key given as its raw ``uint32[2]`` words.

    ``tie`` (an array of ``shape``): see :func:`_zeros_tied_to`.
    """
    lo = _counters(shape, words)
    if tie is not None:
        lo = lax.bitwise_xor(lo, _zeros_tied_to(tie, shape))
    # JAX's partitionable threefry hashes the 64-bit index (hi, lo); hi = 0 below 2**32 elements.
    a, b = _threefry2x32(words[0], words[1], lax.full_like(lo, 0), lo)
    return lax.bitwise_xor(a, b)


@jax.custom_jvp
def _consumed_words(key: jax.Array) -> jax.Array:
    # The key's raw words. The custom_jvp wrapper is opaque to jax_debug_key_reuse, which
    # therefore counts this call as consuming ``key`` -- as jax.random.bits would.
    return jax.random.key_data(key)


@_consumed_words.defjvp
def _consumed_words_jvp(primals, tangents):
    out = _consumed_words(*primals)
    return out, np.zeros(out.shape, jax.dtypes.float0)


def _bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    if _fused_threefry_ok(str(jax.random.key_impl(key)), shape):
        return _bits_from_words(_consumed_words(key), shape)
    return jax.random.bits(key, shape, jnp.uint32)


def _zeros_tied_to(a: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``uint32`` zeros of ``shape`` that XLA cannot prove are zeros: they depend on ``a``.

    XLA:CPU drops ``optimization_barrier`` before common-subexpression elimination, so a barrier
    alone does not keep the backward regeneration apart from the forward draw (XLA merges them
    and stores the bits between the passes). ``isnan(v) & isfinite(v)`` is false for every
    float ``v`` but not provably so to XLA: XOR-ing it into the counters ties the regeneration to
    ``a`` (the cotangent), so it runs in the backward pass and is never merged with the forward
    draw. Elementwise, so it fuses into the hash and, under sharding, needs no communication:
    each shard reads its own block of ``a``. Axes where ``shape`` is 1 (``broadcast_dims``) are
    sliced at index 0.
    """
    if a.shape != shape:
        a = a[tuple(slice(0, 1) if n == 1 else slice(None) for n in shape)]
    if not jnp.issubdtype(a.dtype, jnp.floating):
        return jnp.zeros(shape, jnp.uint32)
    return _never(a).astype(jnp.uint32)


def _never(a: jax.Array) -> jax.Array:
    """``isnan(a) & isfinite(a)``: False everywhere, but not provably so to XLA."""
    return jnp.isnan(a) & jnp.isfinite(a)


def _never_along(g: Any, shape: tuple[int, ...]) -> jax.Array:
    """False, broadcastable to ``shape``, computed from ``g`` (a cotangent of another shape).

    When ``g`` has ``shape``'s leading axes (a Linear's output), its first column is read, which
    keeps a batch-sharded ``g`` local. Otherwise (attention probabilities, whose ``fn`` output
    has other axes) nothing is tied: a single element of ``g`` would be on one device only, and
    reading it everywhere costs an all-gather and an all-reduce on a tensor-parallel mesh
    (``tests/test_multiprocess.py`` counts them). (``g`` a pytree: its first non-empty floating
    leaf.)"""
    leaves = [
        a
        for a in jax.tree.leaves(g)
        if hasattr(a, "dtype") and a.size and jnp.issubdtype(a.dtype, jnp.floating)
    ]
    if not leaves:
        return jnp.zeros((), jnp.bool_)
    g = leaves[0]
    if g.ndim == len(shape) and g.ndim and g.shape[:-1] == shape[:-1]:
        return _never(g[..., :1])
    return jnp.zeros((), jnp.bool_)


def _tie(words: jax.Array, a: jax.Array) -> jax.Array:
    """``words``, made to depend on one element of ``a`` without changing its value: the
    scalar form of :func:`_zeros_tied_to`, for draws that take only a key."""
    if a.size and jnp.issubdtype(a.dtype, jnp.floating):
        words = words ^ _never(jnp.ravel(a)[0]).astype(words.dtype)
    return words


def _as_key(key: Any) -> jax.Array:
    from stoax.keys import as_key

    key = as_key(key, "stoax.random.dropout")
    if key.shape != ():
        raise ValueError(
            f"stoax.random.dropout: expected a single key, got a key array of shape {key.shape}. "
            "For one mask per example, jax.vmap over the keys."
        )
    return key


def random_bits(key: jax.Array, shape: Sequence[int]) -> jax.Array:
    """Uniform ``uint32`` bits of ``shape``: exactly ``jax.random.bits(key, shape, jnp.uint32)``.

    For threefry2x32 keys this is computed as fusible straight-line code (see the module
    docstring), several times faster than ``jax.random.bits`` on CPU and never materialised when
    its consumer is elementwise.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> key = jax.random.key(0)
        >>> bool((stoax.random.random_bits(key, (3, 5)) == jax.random.bits(key, (3, 5))).all())
        True
    """
    return _random_bits(_as_key(key), tuple(int(d) for d in shape))


@partial(jax.jit, static_argnums=(1,), inline=True)
def _random_bits(key, shape):
    return _bits(key, shape)


# --------------------------------------------------------------------------------------------
# Thresholds, masks, scales
# --------------------------------------------------------------------------------------------


def _is_static(rate: Any) -> TypeGuard[float]:
    return isinstance(rate, int | float) and not isinstance(rate, bool)


def _invalid(rate: jax.Array) -> jax.Array:
    """A traced rate outside [0, 1], or NaN (every comparison with NaN is False)."""
    return ~((rate >= 0) & (rate <= 1))


def _mask_from_bits(bits: jax.Array, rate: float | jax.Array) -> jax.Array:
    if _is_static(rate):
        threshold = round(rate * _SCALE)
        if threshold >= _SCALE:
            return jnp.zeros(bits.shape, jnp.bool_)
        return bits >= jnp.uint32(threshold)
    rate = jnp.asarray(rate, jnp.float32)
    # float32 cannot hold 2**32 - 1; clip below it and treat rate >= 1 apart. An invalid rate
    # keeps everything, so that its NaN scale reaches every element (see _scale).
    cutoff = jnp.clip(rate * np.float32(_SCALE), 0, np.float32(_SCALE - 256)).astype(jnp.uint32)
    return ((bits >= cutoff) & (rate < 1)) | _invalid(rate)


def _scale(rate: float | jax.Array, dtype) -> jax.Array:
    if _is_static(rate):
        return jnp.asarray(0.0 if rate >= 1 else 1.0 / (1.0 - rate), dtype)
    rate = jnp.asarray(rate, jnp.float32)
    scale = jnp.where(rate < 1, 1.0 / jnp.maximum(1.0 - rate, np.finfo(np.float32).tiny), 0.0)
    return jnp.where(_invalid(rate), np.float32(np.nan), scale).astype(dtype)


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 for bf16/f16 (their range cannot hold 1/(1-rate) near rate 1), else ``dtype``."""
    return jnp.promote_types(dtype, jnp.float32)


def check_broadcast_dims(broadcast_dims: Any, where: str) -> tuple[int, ...]:
    """``broadcast_dims`` as a tuple of ints: a sequence of ints, or one int (one axis).

    Floats, strings, bools and repeated axes are refused; the rank is checked at the call
    (:func:`normalize_broadcast_dims`).
    """
    if isinstance(broadcast_dims, int | np.integer) and not isinstance(broadcast_dims, bool):
        broadcast_dims = (broadcast_dims,)
    if isinstance(broadcast_dims, str | bytes) or not isinstance(broadcast_dims, Sequence):
        raise TypeError(
            f"{where}: broadcast_dims must be a tuple of axes (ints) such as (0,) or (-2,), "
            f"got {broadcast_dims!r}."
        )
    dims = []
    for d in broadcast_dims:
        if isinstance(d, bool | np.bool_) or not isinstance(d, int | np.integer):
            raise TypeError(
                f"{where}: every axis in broadcast_dims must be an int, got {d!r} in "
                f"{tuple(broadcast_dims)!r}."
            )
        dims.append(int(d))
    if len(set(dims)) != len(dims):
        raise ValueError(f"{where}: broadcast_dims {tuple(dims)} names an axis twice.")
    return tuple(dims)


def broadcast_dims_problem(dims: tuple[int, ...], ndim: int) -> str | None:
    """What is wrong with (checked) ``dims`` on an input of rank ``ndim``, or ``None``."""
    for d in dims:
        if not -ndim <= d < ndim:
            return (
                f"broadcast_dims {dims} names axis {d}, but the input has {ndim} axes "
                f"(valid: {-ndim} .. {ndim - 1})"
            )
    if len({d % ndim for d in dims}) != len(dims):
        return f"broadcast_dims {dims} names one axis twice on a {ndim}-D input"
    return None


def normalize_broadcast_dims(broadcast_dims: Any, ndim: int, where: str) -> tuple[int, ...]:
    """The axes of ``broadcast_dims`` in ``[0, ndim)`` (negative ones counted from the end):
    an axis out of range or named twice raises a ``ValueError``."""
    dims = check_broadcast_dims(broadcast_dims, where)
    problem = broadcast_dims_problem(dims, ndim)
    if problem:
        raise ValueError(f"{where}: {problem}.")
    return tuple(d % ndim for d in dims)


def _mask_shape(shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in dims else n for i, n in enumerate(shape))


def keep_mask(key: jax.Array, shape: Sequence[int], rate: float | jax.Array) -> jax.Array:
    """A boolean mask of ``shape``: each element True (kept) with probability ``1 - rate``.

    ``jax.random.bits(key, shape, jnp.uint32) >= round(rate * 2**32)``: exact to ``2**-32``.

    Example:
        >>> import jax, stoax
        >>> stoax.random.keep_mask(jax.random.key(0), (4,), 0.0).tolist()
        [True, True, True, True]
    """
    shape = tuple(int(d) for d in shape)
    rate = check_rate(rate, "stoax.random.keep_mask")
    if _is_static(rate):
        return _keep_mask_static(_as_key(key), shape, float(rate))
    return _keep_mask_traced(_as_key(key), shape, rate)


@partial(jax.jit, static_argnums=(1, 2), inline=True)
def _keep_mask_static(key, shape, rate):
    return _mask_from_bits(_bits(key, shape), rate)


@partial(jax.jit, static_argnums=(1,), inline=True)
def _keep_mask_traced(key, shape, rate):
    return _mask_from_bits(_bits(key, shape), rate)


# ``static`` = (python_rate_or_None, impl, mask_shape); ``rate`` is a dummy when static.


def _rate_of(static, rate):
    return static[0] if static[0] is not None else rate


def _scaled(x: jax.Array, rate: float | jax.Array) -> jax.Array:
    """``x / (1 - rate)``, computed in float32 for bf16/f16 and rounded once."""
    compute = _compute_dtype(x.dtype)
    if compute == x.dtype:
        return x * _scale(rate, x.dtype)
    return (x.astype(compute) * _scale(rate, compute)).astype(x.dtype)


def _spread(mask: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A ``broadcast_dims`` mask, smaller than ``shape``, made ready to broadcast into it.

    XLA fuses a cheap elementwise producer into its consumer even when the consumer broadcasts
    it: the hash of a ``(32, 1, 1024)`` mask would run once per element of a
    ``(32, 128, 1024)`` input -- 128 times over, slower than a full mask. Packing the mask to
    bits (a reduction, which XLA does not fuse into its consumer) makes it a small buffer that
    is computed once per mask element; the consumer unpacks a bit, which is cheap. Packed along
    the last axis that is not broadcast, so a sharded mask stays in its shards.
    """
    if mask.shape == tuple(shape):
        return mask
    axes = [i for i, n in enumerate(mask.shape) if n > 1]
    if not axes:
        return mask  # one mask value: nothing to compute per element
    axis = axes[-1]
    packed = jnp.packbits(mask, axis=axis, bitorder="little")
    bits = jnp.unpackbits(packed, axis=axis, count=mask.shape[axis], bitorder="little")
    return bits.astype(jnp.bool_)


def _apply(x: jax.Array, mask: jax.Array, rate: float | jax.Array) -> jax.Array:
    mask = _spread(mask, x.shape)
    return jnp.where(mask, _scaled(x, rate), jnp.zeros((), x.dtype))


def _rate_cotangent(static, x, mask, rate, g) -> jax.Array:
    """The true cotangent of a traced rate, as plain autodiff of :func:`_apply` gives it."""
    if static[0] is not None:  # a Python rate: ``rate`` is a dummy
        return jnp.zeros_like(rate)
    _, vjp = jax.vjp(lambda r: _apply(x, mask, r), rate)
    return vjp(g)[0]


def _plain_dropout(static, x, key, rate):
    """Dropout as plain autodiff sees it (also the primal of the custom_vjps below)."""
    r = _rate_of(static, rate)
    return _apply(x, _mask_from_bits(_bits(key, static[2]), r), r)


# --------------------------------------------------------------------------------------------
# custom_jvp whose tangent is a linear_call: residuals are the key's words (and a traced rate),
# nothing of the mask's size -- or, for key-only draws (rbg), the mask packed to 1 bit per
# element. Forward mode evaluates the linear map; reverse mode runs its custom transpose, which
# regenerates the mask.
# --------------------------------------------------------------------------------------------


@partial(jax.custom_jvp, nondiff_argnums=(0,))
def _dropout_regen(static, x, key, rate):
    return _plain_dropout(static, x, key, rate)


def _pack(mask: jax.Array) -> jax.Array:
    """A boolean mask packed 8 elements to a byte along its last axis (1/32 of a float32).

    Named (``checkpoint_name``) so that a ``jax.checkpoint`` policy that recomputes elementwise
    operations -- :func:`stoax.transforms.recompute_elementwise`, the default of ``Stack`` --
    stores these bytes: unnamed, it would store ``packbits``' last non-elementwise value, the
    bits summed in ``uint32`` before the cast to ``uint8`` (4x the size).
    """
    packed = jnp.packbits(jnp.atleast_1d(mask), axis=-1, bitorder="little")
    return checkpoint_name(packed, PACKED_MASK_NAME)


PACKED_MASK_NAME = "stoax.packed_mask"


def _unpack(packed: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    count = shape[-1] if shape else 1
    bits = jnp.unpackbits(packed, axis=-1, count=count, bitorder="little")
    return bits.reshape(shape).astype(jnp.bool_)


def _forward_mask(static, x, key, r):
    """The forward mask and what the backward pass needs to rebuild it.

    threefry2x32 (fused hash): the key's words -- regenerating costs one fused pass. Key-only
    draws (rbg, unsafe_rbg: ``RngBitGenerator``, which cannot fuse): regenerating would run
    every draw twice, so the mask is kept instead, packed to 1 bit per element.
    """
    words = _consumed_words(key)
    if _fused_threefry_ok(static[1], static[2]):
        return _mask_from_bits(_bits_from_words(words, static[2]), r), words
    # The draw depends on the key alone, so XLA may schedule every layer's draw at the start of
    # the program and keep all the bits alive: tying it to ``x`` makes it run when x is ready.
    tied_key = jax.random.wrap_key_data(_tie(words, x), impl=static[1])
    packed = _pack(_mask_from_bits(jax.random.bits(tied_key, static[2], jnp.uint32), r))
    # The forward output is computed from the packed bytes too: a rematerialised forward pass
    # (a Stack's recompute_elementwise, which stores those bytes) then rebuilds the output from
    # them instead of running RngBitGenerator again.
    return _unpack(packed, static[2]), packed


def _backward_mask(static, kept, r, tie):
    """The forward mask again, from :func:`_forward_mask`'s ``kept``; see _zeros_tied_to."""
    if _fused_threefry_ok(static[1], static[2]):
        return _mask_from_bits(_bits_from_words(kept, static[2], tie), r)
    return _unpack(kept, static[2])


def _select(static, kept, rate, t):
    """The linear map ``t -> where(mask, t, 0)`` (``t`` a tangent or a cotangent), the mask
    rebuilt from ``kept``; its own transpose (the mask is elementwise)."""
    # Separate barriers: one barrier over the tuple ``(kept, t)`` makes GSPMD gather ``t``
    # under sharding. What keeps the regeneration apart from the forward draw on every backend
    # is the elementwise tie to ``t`` (see _zeros_tied_to).
    kept = jax.lax.optimization_barrier(kept)
    t = jax.lax.optimization_barrier(t)
    mask = _spread(_backward_mask(static, kept, _rate_of(static, rate), tie=t), t.shape)
    return jnp.where(mask, t, jnp.zeros((), t.dtype))


def _linear_dropout(static, kept, rate, t):
    """``where(mask, t / (1 - rate), 0)``, linear in ``t``, as JAX can transpose, batch and
    differentiate it. The select is a ``lax.custom_linear_solve`` whose "solve" is the select
    itself (symmetric): its transpose -- the backward pass -- regenerates the mask from
    ``kept`` on the cotangent, and its only residuals are ``kept`` and the rate. The mask has
    no derivative in the rate (a comparison); the scale, which has one, is applied outside with
    plain ops, so higher derivatives in the rate are exact too."""
    fixed_rate = lax.stop_gradient(rate)

    def select(_matvec, t):
        return _select(static, kept, fixed_rate, t)

    selected = lax.custom_linear_solve(lambda t: t, t, select, symmetric=True)
    return _scaled(selected, _rate_of(static, rate))


def _is_zero(t) -> bool:
    return isinstance(t, SymbolicZero)


def _dropout_regen_jvp(static, primals, tangents):
    x, key, rate = primals
    x_dot, _, rate_dot = tangents
    r = _rate_of(static, rate)
    mask, kept = _forward_mask(static, x, key, r)
    y = _apply(x, mask, r)
    y_dot = None
    if not _is_zero(x_dot):
        y_dot = _linear_dropout(static, kept, rate, x_dot)
    if static[0] is None and not _is_zero(rate_dot):
        # d/d rate of where(mask, x * scale(rate), 0), as plain autodiff computes it. Keeps x
        # and the mask for the backward pass: only when the rate itself is differentiated.
        _, by_rate = jax.jvp(lambda rr: _apply(x, mask, rr), (rate,), (rate_dot,))
        y_dot = by_rate if y_dot is None else y_dot + by_rate
    return y, jnp.zeros_like(y) if y_dot is None else y_dot


_dropout_regen.defjvp(_dropout_regen_jvp, symbolic_zeros=True)


def _dropout_regen_fwd(static, x, key, rate):
    """The forward half shared with :func:`dropout_then`'s custom_vjp."""
    r = _rate_of(static, rate)
    mask, kept = _forward_mask(static, x, key, r)
    return _apply(x, mask, r), (kept, rate)


def check_rate(rate: Any, where: str) -> float | jax.Array:
    """A dropout rate: a Python number in [0, 1] (returned as a float), or a floating JAX/NumPy
    array whose concrete values are in [0, 1] (a traced one is checked at run time: NaN output,
    see the module docstring)."""
    return check_strength(
        rate,
        where,
        "rate",
        valid=lambda r: (r >= 0) & (r <= 1),  # False for NaN
        one="in [0, 1]",
        each="in [0, 1]",
        meaning="the probability of dropping",
    )


def _check_input(x: Any, where: str) -> jax.Array:
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        x = jnp.asarray(x)
        dtype = x.dtype
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{where}: x must be a floating-point array (f32, bf16, f16, f64), got {dtype}. "
            "Cast it with .astype(jnp.float32) first."
        )
    return jnp.asarray(x)


def _prepare(x, rate, key, broadcast_dims, regenerate_mask, where):
    key = _as_key(key)
    dims = normalize_broadcast_dims(broadcast_dims, x.ndim, where)
    mask_shape = _mask_shape(tuple(x.shape), dims)
    regen = _REGENERATE_MASK if regenerate_mask is None else bool(regenerate_mask)
    if _is_static(rate):
        rate = float(rate)
        static_rate, traced_rate = rate, jnp.zeros((), jnp.float32)
    else:
        static_rate, traced_rate = None, jnp.asarray(rate, jnp.float32)
        if traced_rate.shape != ():
            raise ValueError(
                f"{where}: rate must be a scalar, got shape {traced_rate.shape}. "
                "For one rate per example, jax.vmap over the rates."
            )
    static = (static_rate, str(jax.random.key_impl(key)), mask_shape)
    return key, static, traced_rate, regen


def dropout(
    x: jax.Array,
    rate: float | jax.Array,
    key: jax.Array,
    *,
    broadcast_dims: Sequence[int] = (),
    regenerate_mask: bool | None = None,
) -> jax.Array:
    """Zero each element of ``x`` with probability ``rate`` and scale the rest by ``1/(1-rate)``.

    The mask is ``keep_mask(key, mask_shape, rate)``: ``jax.random.bits(key, mask_shape,
    uint32) >= round(rate * 2**32)``, exact to ``2**-32``. ``broadcast_dims`` share one mask value
    along those axes (linen's ``broadcast_dims``; a tuple of axes, or one int). The dtype of ``x``
    is kept; ``rate == 1`` gives zeros (no NaN). ``rate`` is a Python float in [0, 1] (static) or
    a scalar JAX array (traced; outside [0, 1] or NaN gives a NaN output). ``x`` must be a
    floating-point array.

    ``regenerate_mask`` (default: :func:`get_regenerate_mask`, ``True``): the backward pass keeps
    only the key and regenerates the mask (a ``jax.custom_vjp``; for rbg/unsafe_rbg keys it keeps
    the mask packed to 1 bit per element instead); the values of the output and
    of the gradient are bitwise those of plain autodiff (with respect to ``x``; with respect to a
    traced rate, the same math). Forward mode (``jax.jvp``, ``jax.jacfwd``) works either way. To
    keep the *output* out of memory too when the next op is a matmul, use :func:`dropout_then`.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> y = stoax.random.dropout(jnp.ones(8), 0.5, jax.random.key(0))
        >>> sorted(set(y.tolist()))
        [0.0, 2.0]
    """
    where = "stoax.random.dropout"
    x = _check_input(x, where)
    rate = check_rate(rate, where)
    if _is_static(rate) and rate == 0.0:
        check_broadcast_dims(broadcast_dims, where)
        return x
    key, static, traced_rate, regen = _prepare(x, rate, key, broadcast_dims, regenerate_mask, where)
    if _is_static(rate) and rate >= 1.0:
        return jnp.zeros_like(x)
    return _dropout_core(static, regen, x, key, traced_rate)


# jit (inlined when traced): eager calls compile once instead of dispatching ~100 small ops.
@partial(jax.jit, static_argnums=(0, 1), inline=True)
def _dropout_core(static, regen, x, key, traced_rate):
    if regen:
        return _dropout_regen(static, x, key, traced_rate)
    return _plain_dropout(static, x, key, traced_rate)


# --------------------------------------------------------------------------------------------
# dropout_then: dropout fused with the op that consumes it.
# --------------------------------------------------------------------------------------------


@partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _dropout_then_regen(fn, static, x, key, rate, operands):
    return fn(_plain_dropout(static, x, key, rate), *operands)


def _dropout_then_fwd(fn, static, x, key, rate, operands):
    y, (kept, rate) = _dropout_regen_fwd(static, x, key, rate)
    return fn(y, *operands), (x, kept, rate, operands)


def _dropout_then_bwd(fn, static, res, g):
    x, kept, rate, operands = res
    # One barrier per value (a tuple barrier makes GSPMD gather under sharding; see above).
    x, kept, operands, g = jax.tree.map(jax.lax.optimization_barrier, (x, kept, operands, g))
    r = _rate_of(static, rate)
    # Tie the regeneration to ``x`` (elementwise): the forward hash is untied, so the two are
    # never merged into one stored mask. Tie the dropped input to ``g`` too: ``x`` and the key
    # exist from the forward pass on, and without it XLA may regenerate every layer's dropped
    # input early and keep them all alive -- the very buffers this function exists to avoid.
    mask = _spread(_backward_mask(static, kept, r, tie=x), x.shape) & ~_never_along(g, x.shape)
    dropped = _apply(x, mask, r)
    _, vjp = jax.vjp(fn, dropped, *operands)
    d_dropped, *d_operands = vjp(g)
    d_rate = _rate_cotangent(static, x, mask, rate, d_dropped)
    return _apply(d_dropped, mask, r), None, d_rate, tuple(d_operands)


_dropout_then_regen.defvjp(_dropout_then_fwd, _dropout_then_bwd)


def dropout_then(
    fn: Callable[..., jax.Array],
    x: jax.Array,
    *operands: jax.Array,
    rate: float | jax.Array,
    key: jax.Array,
    broadcast_dims: Sequence[int] = (),
    regenerate_mask: bool | None = None,
) -> jax.Array:
    """``fn(dropout(x, rate, key), *operands)`` as one differentiated unit.

    With ``regenerate_mask`` (the default) the backward pass keeps ``x``, ``operands`` and the
    key -- not the mask (for rbg/unsafe_rbg keys: the mask packed to 1 bit per element), and not
    the dropped ``x`` -- and rebuilds the dropped input from them. That backward pass is a
    ``jax.custom_vjp``; when forward mode (``jax.jvp``/``jax.jacfwd``) traces this call, it
    computes :func:`dropout` then ``fn`` instead -- same mask, same values, and forward mode
    stores nothing for a backward pass anyway. Forward mode applied to an already-traced
    function (``jax.jvp(jax.jit(f), ...)``) cannot switch: put ``jax.jit`` outside
    (``jax.jit(jax.jacfwd(f))``) or pass ``regenerate_mask=False``.
    When ``x`` is stored anyway (a softmax output, an activation the previous layer needs), the
    dropout costs no memory at all. ``fn`` is differentiated with ``jax.vjp`` in the backward
    pass: for a linear ``fn`` (matmul, einsum) XLA drops the unused primal recomputation. ``fn``
    must be a pure function of its arguments (close over nothing that is traced).

    Example (attention probabilities, a matmul after dropout):
        >>> import jax, jax.numpy as jnp, stoax
        >>> probs, v = jnp.full((2, 4, 4), 0.25), jnp.ones((2, 4, 8))
        >>> out = stoax.random.dropout_then(
        ...     jnp.matmul, probs, v, rate=0.1, key=jax.random.key(0))
        >>> out.shape
        (2, 4, 8)
    """
    where = "stoax.random.dropout_then"
    x = _check_input(x, where)
    rate = check_rate(rate, where)
    if _is_static(rate) and rate == 0.0:
        check_broadcast_dims(broadcast_dims, where)
        return fn(x, *operands)
    key, static, traced_rate, regen = _prepare(x, rate, key, broadcast_dims, regenerate_mask, where)
    if _is_static(rate) and rate >= 1.0:
        return fn(jnp.zeros_like(x), *operands)
    try:
        return _dropout_then_core(fn, static, regen, x, key, traced_rate, tuple(operands))
    except TypeError as error:
        if "forward-mode" not in str(error) or "custom_vjp" not in str(error):
            raise
    # Forward mode (jax.jvp, jax.jacfwd) reached the custom_vjp while tracing: the same
    # computation as dropout, then fn -- the same mask, and dropout is forward-mode capable.
    return fn(_dropout_core(static, regen, x, key, traced_rate), *operands)


@partial(jax.jit, static_argnums=(0, 1, 2), inline=True)
def _dropout_then_core(fn, static, regen, x, key, traced_rate, operands):
    if regen:
        return _dropout_then_regen(fn, static, x, key, traced_rate, operands)
    return fn(_plain_dropout(static, x, key, traced_rate), *operands)
