"""``generate``: sample tokens from a causal language model, a key per token and per example."""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stoax import keys
from stoax._module import Module, is_module
from stoax.inference._sampling import Sampler
from stoax.nn._checks import MissingKeyError
from stoax.transforms._stack import unstack

__all__ = ["DecodeState", "Generation", "generate", "example_keys"]


class DecodeState(Module):
    """Where a generation stopped: pass it to :func:`generate` in place of a prompt to go on.

    Fields:
        cache: the model's cache (``model.init_cache``), or with ``use_cache=False`` the token
            buffer ``(batch, capacity)`` the model reads whole at every step.
        next_logits: ``(batch, vocab)``, the logits of the next token of each example.
        positions: ``(batch,)`` int32, the position the next token of each example takes.
        done: ``(batch,)`` bool, the examples that have emitted ``end_token``.
        capacity: how many positions the cache (or buffer) holds.
        cached: whether ``cache`` is the model's cache.
    """

    cache: Any
    next_logits: jax.Array
    positions: jax.Array
    done: jax.Array
    capacity: int
    cached: bool


class Generation(Module):
    """The result of :func:`generate`.

    Fields:
        tokens: ``(batch, max_new_tokens)`` int32, the new tokens; after an example's
            ``end_token`` (included) and after an early stop, ``pad_token``.
        lengths: ``(batch,)`` int32, how many tokens each example generated (its end token
            included).
        state: the :class:`DecodeState` to continue from.
    """

    tokens: jax.Array
    lengths: jax.Array
    state: DecodeState


def example_keys(key: jax.Array, batch: int) -> jax.Array:
    """The keys of examples ``0 .. batch-1``: example ``i`` gets ``stoax.keys.child(key, i)``,
    whatever the batch size -- so example ``i`` of a batch of 8 and of a batch of 16 draw alike.

    Example:
        >>> import jax, stoax
        >>> stoax.inference.example_keys(jax.random.key(0), 8).shape
        (8,)
    """
    key = keys.as_key(key, "stoax.inference.example_keys")
    return jax.vmap(lambda i: keys.child(key, i))(jnp.arange(batch, dtype=jnp.uint32))


def supports_cache(model: Any) -> bool:
    """Whether ``model`` follows the cache protocol (``init_cache`` and ``decode``)."""
    return callable(getattr(model, "init_cache", None)) and callable(getattr(model, "decode", None))


def generate(
    model: Any,
    prompt: jax.Array | DecodeState,
    *,
    key: jax.Array | None,
    max_new_tokens: int,
    sampler: Sampler | None = None,
    end_token: int | None = None,
    pad_token: int = 0,
    prompt_lengths: jax.Array | None = None,
    cache_len: int | None = None,
    use_cache: bool | None = None,
) -> Generation:
    """Sample ``max_new_tokens`` tokens after ``prompt`` from a causal language model.

    ``model`` maps tokens ``(batch, length)`` to next-token logits ``(batch, length, vocab)``
    (e.g. ``stoax.nn.TransformerEncoder(causal=True)`` in evaluation mode). When it follows the
    **cache protocol** -- ``model.init_cache(batch_shape, length)`` returns a cache (any pytree)
    and ``model.decode(tokens, cache, *, lengths=None)`` returns ``(logits, cache)`` for
    ``tokens`` ``(batch, n)`` placed after what the cache holds (``lengths``: how many of the
    ``n`` are real per example) -- the prompt is read once (prefill) and each step feeds one
    token. Otherwise (or with ``use_cache=False``) each step runs the model on the whole token
    buffer. The steps run in one ``lax.while_loop``, which stops early once every example has
    emitted ``end_token``.

    Keys. ``key`` is one key (example ``i`` gets ``stoax.keys.child(key, i)``) or one key per
    example (shape ``(batch,)``); the token at position ``p`` of an example is drawn with
    ``stoax.keys.child(example_key, p)``. So:

    - the same key gives the same tokens, and a different key different ones;
    - **batch invariance**: an example's tokens depend on its prompt and its own key only, not
      on the batch size or the other examples (pass per-example keys to move an example
      between batches; with one key, example ``i`` keeps its key in any batch of more than
      ``i`` examples);
    - **resuming**: ``generate(model, first.state, key=key, max_new_tokens=m)`` continues
      ``first`` exactly as one uninterrupted call would (size the cache for the whole run with
      ``cache_len``).

    Args:
        model: the language model (a pytree of arrays: a stoax module), in evaluation mode.
        prompt: int tokens ``(batch, length)``, right-padded when ``prompt_lengths`` is given;
            or a :class:`DecodeState` to continue from.
        key: see above; ``None`` only with a greedy sampler.
        max_new_tokens: how many tokens to generate per example.
        sampler: a :class:`Sampler` (default: a plain categorical draw at temperature 1).
        end_token: an example stops after emitting it (``None``: never).
        pad_token: written after an example's end token.
        prompt_lengths: ``(batch,)`` the real length of each prompt (default: all of it).
        cache_len: positions the cache holds (default: prompt length + ``max_new_tokens``).
            Fix it (e.g. to the model's ``max_len``) when prompts of several lengths share
            batches: the sums over cached positions then have one length, and an example's
            logits do not even change by rounding with its neighbours' prompt lengths.
        use_cache: ``None`` (use the cache protocol when the model has it), ``True``, ``False``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> lm = stoax.eval_mode(stoax.nn.TransformerEncoder(
        ...     vocab_size=20, out_features=20, features=16, num_heads=2, num_layers=2,
        ...     max_len=32, causal=True, key=jax.random.key(0)))
        >>> prompt = jnp.array([[1, 2, 3], [4, 5, 6]])
        >>> out = stoax.inference.generate(
        ...     lm, prompt, key=jax.random.key(1), max_new_tokens=8,
        ...     sampler=stoax.inference.Sampler(temperature=0.8, top_k=5))
        >>> out.tokens.shape, out.lengths.tolist()
        ((2, 8), [8, 8])
    """
    sampler = Sampler() if sampler is None else sampler
    if not callable(sampler):
        raise TypeError(f"generate: sampler must be a Sampler, got {type(sampler).__name__}.")
    n_new = _count(max_new_tokens, "max_new_tokens")
    if end_token is not None:
        end_token = _count(end_token, "end_token", minimum=0)
    pad_token = _count(pad_token, "pad_token", minimum=0)
    try:
        if isinstance(prompt, DecodeState):
            if prompt_lengths is not None or cache_len is not None or use_cache is not None:
                raise ValueError(
                    "generate: continuing from a DecodeState keeps its cache; prompt_lengths, "
                    "cache_len and use_cache apply to a new prompt only."
                )
            state = prompt
        else:
            state = _start(model, prompt, n_new, prompt_lengths, cache_len, use_cache)
        _check_room(state, n_new)
        ex_keys = _example_keys(key, state.positions.shape[0], sampler)
        return _run(model, state, ex_keys, sampler, n_new, end_token, pad_token)
    except MissingKeyError as error:
        where = f"{type(error.root).__name__}{error.path}"
        raise ValueError(
            f"generate: the model's {where} is in training mode, and generate runs the model "
            "without a key. Pass stoax.eval_mode(model)."
        ) from error


def _count(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"generate: {name} must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _example_keys(key: Any, batch: int, sampler: Any) -> jax.Array | None:
    if key is None:
        if getattr(sampler, "greedy", False):
            return None
        raise ValueError(
            "generate: sampling needs a key (key=jax.random.key(seed), or one key per example); "
            "key=None works only with Sampler(greedy=True)."
        )
    key = keys.as_key(key, "generate")
    if key.shape == ():
        return example_keys(key, batch)
    if key.shape != (batch,):
        raise ValueError(
            f"generate: key must be one key (shape ()) or one per example (shape ({batch},)), "
            f"got shape {key.shape}."
        )
    return key


def _start(
    model: Any,
    prompt: Any,
    n_new: int,
    prompt_lengths: Any,
    cache_len: int | None,
    use_cache: bool | None,
) -> DecodeState:
    prompt = jnp.asarray(prompt)
    if prompt.ndim != 2 or not jnp.issubdtype(prompt.dtype, jnp.integer) or not prompt.shape[1]:
        raise ValueError(
            "generate: prompt must be integer tokens of shape (batch, length) with length >= 1, "
            f"got {prompt.dtype} of shape {prompt.shape}. For one sequence use prompt[None]."
        )
    batch, length = prompt.shape
    if prompt_lengths is None:
        lengths = jnp.full((batch,), length, jnp.int32)
    else:
        lengths = jnp.asarray(prompt_lengths)
        if lengths.shape != (batch,) or not jnp.issubdtype(lengths.dtype, jnp.integer):
            raise ValueError(
                f"generate: prompt_lengths must be {batch} ints (one per prompt), got "
                f"{lengths.dtype} of shape {lengths.shape}."
            )
        if not isinstance(lengths, jax.core.Tracer):
            values = np.asarray(lengths)
            if values.min() < 1 or values.max() > length:
                raise ValueError(
                    f"generate: prompt_lengths must be in [1, {length}] (the prompt's width), "
                    f"got {values.min()} .. {values.max()}."
                )
        lengths = lengths.astype(jnp.int32)
    capacity = length + n_new if cache_len is None else _count(cache_len, "cache_len")
    if capacity < length + n_new:
        raise ValueError(
            f"generate: cache_len = {capacity} cannot hold the prompt ({length}) and "
            f"max_new_tokens ({n_new}); pass cache_len >= {length + n_new}."
        )
    if use_cache is None:
        use_cache = supports_cache(model)
    elif use_cache and not supports_cache(model):
        raise TypeError(
            f"generate: use_cache=True, but {type(model).__name__} has no init_cache/decode "
            "(the cache protocol); pass use_cache=False to rerun the model on the whole prefix "
            "at every step."
        )
    if not is_module(model) and not jax.tree.leaves(model):
        raise TypeError(
            f"generate: model must be a pytree of arrays (a stoax module), got "
            f"{type(model).__name__}."
        )
    return _prefill(model, prompt.astype(jnp.int32), lengths, capacity, bool(use_cache))


@functools.partial(jax.jit, static_argnames=("capacity", "cached"))
def _prefill(
    model: Any, prompt: jax.Array, lengths: jax.Array, capacity: int, cached: bool
) -> DecodeState:
    batch = prompt.shape[0]
    if cached:
        cache = model.init_cache((batch,), capacity)
        logits, cache = model.decode(prompt, cache, lengths=lengths)
    else:
        logits = model(prompt)
        cache = jnp.zeros((batch, capacity), jnp.int32).at[:, : prompt.shape[1]].set(prompt)
    _check_logits(logits, prompt.shape)
    last = jnp.take_along_axis(logits, (lengths - 1)[:, None, None], axis=1)[:, 0]
    done = jnp.zeros((batch,), bool)
    return DecodeState(cache, last, lengths, done, capacity=capacity, cached=cached)


def _check_logits(logits: Any, shape: tuple[int, ...]) -> None:
    if jnp.ndim(logits) != 3 or jnp.shape(logits)[:2] != shape:
        raise ValueError(
            f"generate: the model must map tokens {shape} to logits (batch, length, vocab), but "
            f"it returned shape {jnp.shape(logits)}. A Transformer needs causal=True and "
            "pool='none'."
        )


def _check_room(state: DecodeState, n_new: int) -> None:
    if isinstance(state.positions, jax.core.Tracer):
        return
    end = int(np.max(np.asarray(state.positions))) + n_new
    if end > state.capacity:
        raise ValueError(
            f"generate: {n_new} more tokens need positions up to {end}, but the cache holds "
            f"{state.capacity}. Size it for the whole generation with cache_len= in the first "
            "call."
        )


def _step(model: Any, state: DecodeState, tokens: jax.Array) -> tuple[Any, jax.Array]:
    """Feed each example's new token (at its position); the next logits and the cache."""
    if state.cached:
        logits, cache = model.decode(tokens[:, None], state.cache)
        return cache, logits[:, 0]
    rows = jnp.arange(tokens.shape[0])
    buffer = state.cache.at[rows, state.positions].set(tokens)
    return buffer, model(buffer)[rows, state.positions]


@functools.partial(jax.jit, static_argnames=("n_new", "end_token", "pad_token"))
def _run(
    model: Any,
    state: DecodeState,
    ex_keys: jax.Array | None,
    sampler: Any,
    n_new: int,
    end_token: int | None,
    pad_token: int,
) -> Generation:
    # Stacked layers taken apart once, before the loop: each step then reads every layer's
    # weights in place instead of slicing them out of the stacked arrays (same layers, keys).
    model = unstack(model)
    batch = state.positions.shape[0]
    tokens = jnp.full((batch, n_new), pad_token, jnp.int32)
    counts = jnp.zeros((batch,), jnp.int32)

    def cond(carry: tuple[Any, ...]) -> jax.Array:
        t, state, *_ = carry
        return (t < n_new) & ~jnp.all(state.done)

    def body(carry: tuple[Any, ...]) -> tuple[Any, ...]:
        t, state, tokens, counts = carry
        step_keys = (
            None
            if ex_keys is None
            else jax.vmap(lambda k, p: keys.child(k, p))(ex_keys, state.positions)
        )
        new = sampler(state.next_logits, key=step_keys).astype(jnp.int32)
        new = jnp.where(state.done, pad_token, new)
        tokens = tokens.at[:, t].set(new)
        counts = counts + (~state.done).astype(jnp.int32)
        done = state.done if end_token is None else state.done | (new == end_token)
        cache, next_logits = _step(model, state, new)
        state = state.replace(
            cache=cache, next_logits=next_logits, positions=state.positions + 1, done=done
        )
        return t + 1, state, tokens, counts

    _, state, tokens, counts = jax.lax.while_loop(
        cond, body, (jnp.asarray(0, jnp.int32), state, tokens, counts)
    )
    return Generation(tokens=tokens, lengths=counts, state=state)
