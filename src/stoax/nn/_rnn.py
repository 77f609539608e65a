"""``RNN``, ``Bidirectional`` and ``StackedRNN``: recurrent cells over time with ``lax.scan``, and
dropout in the three ways practitioners use it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from stoax import keys
from stoax._errors import LayerValueError
from stoax._mode import check_training_flag
from stoax._module import Module, field, same_structure
from stoax.nn._cells import _Cell
from stoax.nn._checks import check_rate, draw_key, require_float
from stoax.nn._dropout import Dropout
from stoax.random import keep_mask
from stoax.transforms._remat import checkpoint_step

__all__ = ["Bidirectional", "DROPOUT_MODES", "RNN", "StackedRNN"]

DROPOUT_MODES = ("variational", "per_step", "none")

# The key names of an RNN's three dropouts: keys.derive(key, *_KEY_NAMES).
_KEY_NAMES = ("input_dropout", "recurrent_dropout", "output_dropout")


class RNN(Module):
    """Run a recurrent ``cell`` over the time axis of a sequence with ``jax.lax.scan``.

    ``rnn(x)`` takes ``x`` of shape ``(*batch, time, in_features)`` (``time_major=True``:
    ``(time, *batch, in_features)``) and returns the outputs ``(*batch, time, hidden)``, and the
    final carry first when ``return_carry``. The input side of the cell (``x @ input_kernel +
    bias``) is one matrix product over all time steps, before the loop; the loop holds only the
    recurrent product and the gates.

    **Dropout** (``dropout`` on the inputs, ``recurrent_dropout`` on the hidden state that feeds
    the recurrence -- one mask shared by all gates -- and ``output_dropout`` on the outputs), in
    one of three modes (``dropout_mode``):

    * ``"variational"`` (Gal & Ghahramani, 2016): one mask per sequence for each of the three,
      the same at every time step, different for every example of the batch. The recurrent
      mask is drawn once, before the loop (``batch x hidden`` booleans), not regenerated per
      step; the input and output masks are :func:`stoax.random.dropout` with the time axis in
      ``broadcast_dims``, which keeps only the key for the backward pass.
    * ``"per_step"``: a fresh mask at every step for each of the three; step ``t`` draws with
      ``stoax.keys.child(k, t)`` (as :func:`stoax.scan` gives its steps). The recurrent mask is
      regenerated from its key in the backward pass (:func:`stoax.random.dropout_then` with the
      recurrent matrix product), never stored per step.
    * ``"none"``: no dropout on the recurrent path (Zaremba et al., 2014): per-step masks on the
      inputs and the outputs only; ``recurrent_dropout`` must be 0.

    The keys: ``k_in, k_rec, k_out = stoax.keys.derive(key, "input_dropout",
    "recurrent_dropout", "output_dropout")``; a variational mask is drawn with ``k_*`` itself
    (shape ``(1, *batch, features)`` for inputs and outputs, ``(*batch, hidden)`` for the
    state), a per-step mask of step ``t`` with ``stoax.keys.child(k_*, t)`` -- ``t`` the index
    into the time axis, also when ``reverse``. ``training`` is a field (Python bool, static; or
    a scalar bool array, traced: one program for both modes, as :func:`stoax.set_mode` sets it).

    **Padding.** ``seq_lengths`` (``(*batch,)`` ints) or ``mask`` (``(*batch, time)`` bools,
    True = a real step): at a padded step the carry is left unchanged and the output is zero,
    so the final carry is that of the last real step -- also with ``reverse=True``, which then
    starts at each sequence's own last step.

    Args:
        cell: an :class:`LSTMCell`, :class:`GRUCell` or :class:`SimpleCell`.
        dropout, recurrent_dropout, output_dropout: rates in [0, 1].
        dropout_mode: ``"variational"`` (default), ``"per_step"`` or ``"none"``.
        reverse: run from the last time step to the first (outputs stay in time order).
        return_carry: return ``(carry, outputs)`` rather than ``outputs``.
        time_major: the time axis is axis 0 rather than ``-2``.
        remat: ``True`` (or a ``jax.checkpoint`` policy) to rematerialise each step in the
            backward pass. Masks are the same with or without it.
        unroll: passed to ``lax.scan``.
        training: train/eval flag.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> cell = stoax.nn.LSTMCell(4, 16, key=jax.random.key(0))
        >>> rnn = stoax.nn.RNN(cell, dropout=0.1, recurrent_dropout=0.25)
        >>> x = jnp.ones((8, 20, 4))                      # (batch, time, features)
        >>> rnn(x, key=jax.random.key(1)).shape
        (8, 20, 16)
        >>> (c, h), ys = stoax.eval_mode(rnn)(x, seq_lengths=jnp.arange(8) + 1,
        ...                                  return_carry=True)
        >>> bool((h[0] == ys[0, 0]).all())              # the last real step of sequence 0
        True
    """

    cell: _Cell
    dropout: float | jax.Array = field(trainable=False, default=0.0)
    recurrent_dropout: float | jax.Array = field(trainable=False, default=0.0)
    output_dropout: float | jax.Array = field(trainable=False, default=0.0)
    dropout_mode: str = "variational"
    reverse: bool = False
    return_carry: bool = False
    time_major: bool = False
    remat: bool | Callable[..., Any] = False
    unroll: int | bool = 1
    training: bool | jax.Array = True

    def __init__(
        self,
        cell: _Cell,
        dropout: float | jax.Array = 0.0,
        recurrent_dropout: float | jax.Array = 0.0,
        output_dropout: float | jax.Array = 0.0,
        dropout_mode: str = "variational",
        reverse: bool = False,
        return_carry: bool = False,
        time_major: bool = False,
        remat: bool | Callable[..., Any] = False,
        unroll: int | bool = 1,
        *,
        training: bool | jax.Array = True,
    ):
        if not isinstance(cell, _Cell):
            raise TypeError(
                "RNN: cell must be a stoax.nn.LSTMCell, GRUCell or SimpleCell, got "
                f"{type(cell).__name__}. For another step function use stoax.scan."
            )
        if dropout_mode not in DROPOUT_MODES:
            raise ValueError(
                f"RNN: dropout_mode must be one of {DROPOUT_MODES}, got {dropout_mode!r}."
            )
        self.cell = cell
        self.dropout = check_rate(dropout, "RNN (dropout)")
        self.recurrent_dropout = check_rate(recurrent_dropout, "RNN (recurrent_dropout)")
        self.output_dropout = check_rate(output_dropout, "RNN (output_dropout)")
        if dropout_mode == "none" and not _is_zero(self.recurrent_dropout):
            raise ValueError(
                f"RNN: dropout_mode='none' means no dropout on the recurrent path, but "
                f"recurrent_dropout={self.recurrent_dropout}. Set recurrent_dropout=0, or choose "
                "dropout_mode='variational' (one mask per sequence) or 'per_step'."
            )
        self.dropout_mode = dropout_mode
        self.reverse = bool(reverse)
        self.return_carry = bool(return_carry)
        self.time_major = bool(time_major)
        self.remat = remat
        self.unroll = unroll
        self.training = check_training_flag(training, "RNN")

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        initial_carry: Any = None,
        seq_lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
        return_carry: bool | None = None,
    ) -> Any:
        """The outputs ``(*batch, time, hidden)``; ``(final carry, outputs)`` when ``return_carry``.

        Args:
            x: ``(*batch, time, in_features)``; ``(time, *batch, in_features)`` when ``time_major``.
            key: the key of the dropouts, split by ``derive(key, "input_dropout",
                "recurrent_dropout", "output_dropout")``; needed in training mode unless every rate
                is 0 (a :class:`~stoax.nn.MissingKeyError` names the layer otherwise), unused in
                evaluation mode.
            initial_carry: the cell's carry before the first step (an LSTM's ``(c, h)``); ``None``
                (the default) starts from zeros.
            seq_lengths: ``(*batch,)`` ints, the real length of each sequence; the steps after it
                are padding.
            mask: ``(*batch, time)`` bools, True = a real step (instead of ``seq_lengths``).
            return_carry: ``True``/``False`` for this call; ``None`` (the default) uses the field
                ``return_carry``."""
        require_float(x, self)
        if jnp.ndim(x) < 2:
            raise LayerValueError(
                self,
                f": expected a sequence of shape (*batch, time, features), got shape "
                f"{jnp.shape(x)}.",
            )
        cell = self.cell
        xs = x if self.time_major else jnp.moveaxis(x, -2, 0)  # (time, *batch, features)
        batch = xs.shape[1:-1]
        if xs.shape[-1] != cell.in_features:
            raise LayerValueError(
                self,
                f": input's last axis has size {xs.shape[-1]}, expected the cell's in_features "
                f"= {cell.in_features} (input shape {x.shape}).",
            )
        valid = self._valid_steps(xs.shape[0], batch, seq_lengths, mask)
        carry = self._initial_carry(initial_carry, batch, x.dtype)
        active = [self.training is not False and not _is_zero(r) for r in self._rates()]
        if any(active):
            key = draw_key(self, key)
        k_in, k_rec, k_out = keys.derive(key, *_KEY_NAMES) if any(active) else (None,) * 3

        xw = self._project_inputs(xs, k_in, active[0])
        step = self._step(k_rec, active[1] and self.dropout_mode != "none", batch, xs.dtype)
        unrolled = self.unroll is True or self.unroll >= xs.shape[0]
        step = checkpoint_step(step, self.remat, unrolled=unrolled)
        t = jnp.arange(xs.shape[0])
        carry, ys = jax.lax.scan(
            step, carry, (t, xw, valid), reverse=self.reverse, unroll=self.unroll
        )
        if active[2]:
            ys = self._drop_sequence(ys, self.output_dropout, k_out)
        ys = ys if self.time_major else jnp.moveaxis(ys, 0, -2)
        wants_carry = self.return_carry if return_carry is None else return_carry
        return (carry, ys) if wants_carry else ys

    # -- pieces of a forward pass ---------------------------------------------------------------

    def _rates(self) -> tuple[Any, Any, Any]:
        return self.dropout, self.recurrent_dropout, self.output_dropout

    def _dropout_layer(self, rate: Any, broadcast_dims: tuple[int, ...] = ()) -> Dropout:
        return Dropout(rate, broadcast_dims, training=self.training)

    def _drop_sequence(self, xs: jax.Array, rate: Any, key: jax.Array | None) -> jax.Array:
        """Dropout on a time-major sequence: one mask for all steps (variational) or step ``t``
        with ``child(key, t)`` (per step)."""
        if self.dropout_mode == "variational":
            return self._dropout_layer(rate, (0,))(xs, key=key)
        drop = self._dropout_layer(rate)
        t = jnp.arange(xs.shape[0])
        return jax.vmap(lambda x_t, t: drop(x_t, key=keys.child(key, t)))(xs, t)

    def _project_inputs(self, xs: jax.Array, key: jax.Array | None, active: bool) -> jax.Array:
        """``dropped(xs) @ input_kernel + bias`` for all steps: one matrix product."""
        cell = self.cell
        if not active:
            return cell.project_input(xs)
        if self.dropout_mode == "variational":
            # dropout_then: the backward pass keeps xs and the key, not the dropped xs.
            drop = self._dropout_layer(self.dropout, (0,))
            return drop.then(_affine, xs, cell.input_kernel, cell.bias, key=key)
        return cell.project_input(self._drop_sequence(xs, self.dropout, key))

    def _step(
        self, key: jax.Array | None, active: bool, batch: tuple[int, ...], dtype: Any
    ) -> Callable[..., Any]:
        """The scan body: recurrent product (with recurrent dropout), gates, padding."""
        cell = self.cell
        kernel = cell.recurrent_kernel
        rate = self.recurrent_dropout
        if active and self.dropout_mode == "variational":
            assert key is not None  # active: __call__ drew a key (draw_key)
            # One mask per sequence, drawn once: batch x hidden, not stored per step.
            kept = keep_mask(key, (*batch, cell.hidden_features), rate)
            scale = jnp.where(kept, _inverse_keep(rate, dtype), jnp.zeros((), dtype))
            if self.training is not True:
                scale = jnp.where(self.training, scale, jnp.ones((), dtype))

            def recurrent(h: jax.Array, t: jax.Array) -> jax.Array:
                return (h * scale) @ kernel

        elif active:  # per step: regenerated from child(key, t) in the backward pass
            drop = self._dropout_layer(rate)

            def recurrent(h: jax.Array, t: jax.Array) -> jax.Array:
                return drop.then(jnp.matmul, h, kernel, key=keys.child(key, t))

        else:

            def recurrent(h: jax.Array, t: jax.Array) -> jax.Array:
                return h @ kernel

        def step(carry: Any, inputs: tuple[jax.Array, jax.Array, Any]) -> tuple[Any, jax.Array]:
            t, xw, valid = inputs
            new_carry, y = cell.update(carry, xw, recurrent(cell.hidden(carry), t))
            if valid is not None:
                keep = valid[..., None]
                new_carry = jax.tree.map(
                    lambda new, old: jnp.where(keep, new, old), new_carry, carry
                )
                y = jnp.where(keep, y, jnp.zeros((), y.dtype))
            return new_carry, y

        return step

    def _valid_steps(
        self, length: int, batch: tuple[int, ...], seq_lengths: Any, mask: Any
    ) -> jax.Array | None:
        """``(time, *batch)`` booleans (True = a real step), or None when nothing is padded."""
        if seq_lengths is not None and mask is not None:
            raise LayerValueError(self, ": pass seq_lengths or mask, not both.")
        if seq_lengths is not None:
            seq_lengths = jnp.asarray(seq_lengths)
            if seq_lengths.shape != batch or not jnp.issubdtype(seq_lengths.dtype, jnp.integer):
                raise LayerValueError(
                    self,
                    f": seq_lengths must be integers of the batch shape {batch}, got "
                    f"{seq_lengths.dtype} of shape {seq_lengths.shape}.",
                )
            return jnp.arange(length).reshape((length,) + (1,) * len(batch)) < seq_lengths
        if mask is not None:
            mask = jnp.asarray(mask)
            expected = (length, *batch) if self.time_major else (*batch, length)
            if mask.shape != expected or mask.dtype != jnp.bool_:
                raise LayerValueError(
                    self,
                    f": mask must be booleans of shape {expected} (True = a real step), got "
                    f"{mask.dtype} of shape {mask.shape}.",
                )
            return mask if self.time_major else jnp.moveaxis(mask, -1, 0)
        return None

    def _initial_carry(self, initial_carry: Any, batch: tuple[int, ...], dtype: Any) -> Any:
        zeros = self.cell.initial_carry(batch, dtype)
        if initial_carry is None:
            return zeros
        want = jax.tree.map(jnp.shape, zeros)
        got = jax.tree.map(jnp.shape, initial_carry)
        same = same_structure(jax.tree.structure(zeros), jax.tree.structure(initial_carry))
        if not same or want != got:
            raise LayerValueError(
                self,
                f": initial_carry must have the structure and shapes of "
                f"cell.initial_carry({batch}), {want}; got {got}.",
            )
        return initial_carry


def _affine(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    return x @ kernel + bias


def _inverse_keep(rate: Any, dtype: Any) -> jax.Array:
    if isinstance(rate, float):
        return jnp.asarray(0.0 if rate >= 1 else 1.0 / (1.0 - rate), dtype)
    rate = jnp.asarray(rate, jnp.float32)
    return jnp.where(rate < 1, 1.0 / jnp.maximum(1.0 - rate, 1e-30), 0.0).astype(dtype)


def _is_zero(rate: Any) -> bool:
    return isinstance(rate, float) and rate == 0.0


def _concat(forward: jax.Array, backward: jax.Array) -> jax.Array:
    return jnp.concatenate([forward, backward], axis=-1)


class Bidirectional(Module):
    """A forward and a backward :class:`RNN` over the same sequence, outputs merged.

    The backward RNN runs with ``reverse=True`` (set here if it is not): each sequence is read
    from its last real step to its first, and its outputs stay in time order. The keys:
    ``stoax.keys.derive(key, "forward", "backward")``, so the two directions draw different
    masks. ``merge(forward_outputs, backward_outputs)`` defaults to concatenation on the
    feature axis. ``return_carry`` gives ``((forward_carry, backward_carry), outputs)``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> k1, k2 = jax.random.split(jax.random.key(0))
        >>> bi = stoax.nn.Bidirectional(
        ...     stoax.nn.RNN(stoax.nn.GRUCell(4, 8, key=k1), dropout=0.1),
        ...     stoax.nn.RNN(stoax.nn.GRUCell(4, 8, key=k2), dropout=0.1))
        >>> bi(jnp.ones((2, 5, 4)), key=jax.random.key(1)).shape
        (2, 5, 16)
    """

    forward: RNN
    backward: RNN
    merge: Callable[[jax.Array, jax.Array], Any] = _concat
    return_carry: bool = False

    def __init__(
        self,
        forward: RNN,
        backward: RNN,
        merge: Callable[[jax.Array, jax.Array], Any] = _concat,
        return_carry: bool = False,
    ):
        for name, rnn in (("forward", forward), ("backward", backward)):
            if not isinstance(rnn, RNN):
                raise TypeError(
                    f"Bidirectional: {name} must be a stoax.nn.RNN, got {type(rnn).__name__}."
                )
        if forward.time_major != backward.time_major:
            raise ValueError("Bidirectional: forward and backward must agree on time_major.")
        self.forward = forward if not forward.reverse else forward.replace(reverse=False)
        self.backward = backward if backward.reverse else backward.replace(reverse=True)
        self.merge = merge
        self.return_carry = bool(return_carry)

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        initial_carry: Any = None,
        seq_lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
        return_carry: bool | None = None,
    ) -> Any:
        """The merged outputs of both directions; ``((forward carry, backward carry), outputs)``
        when ``return_carry``.

        Args:
            x: ``(*batch, time, in_features)``, as for :class:`RNN`.
            key: split into the two directions' keys, ``derive(key, "forward", "backward")``; needed
                in training mode when either has dropout.
            initial_carry: ``(forward carry, backward carry)``, or ``None`` for zeros.
            seq_lengths: ``(*batch,)`` ints, the real length of each sequence.
            mask: ``(*batch, time)`` bools, True = a real step (instead of ``seq_lengths``).
            return_carry: ``True``/``False`` for this call; ``None`` uses the field."""
        k_f, k_b = keys.derive(key, "forward", "backward")
        c_f, c_b = (None, None) if initial_carry is None else initial_carry
        pad = {"seq_lengths": seq_lengths, "mask": mask}
        carry_f, y_f = self.forward(x, key=k_f, initial_carry=c_f, return_carry=True, **pad)
        carry_b, y_b = self.backward(x, key=k_b, initial_carry=c_b, return_carry=True, **pad)
        y = self.merge(y_f, y_b)
        wants_carry = self.return_carry if return_carry is None else return_carry
        return ((carry_f, carry_b), y) if wants_carry else y


class StackedRNN(Module):
    """Recurrent layers (:class:`RNN` or :class:`Bidirectional`) applied in order: a
    multi-layer RNN. Layer ``i`` gets ``stoax.keys.child(key, i)`` -- different masks in every
    layer -- and the same ``seq_lengths``/``mask``; ``return_carry`` gives the tuple of every
    layer's final carry. Layers may differ in width (the first takes the input's features).

    For layers of one shape, :class:`~stoax.nn.Stack` runs them in one ``lax.scan`` over depth
    (``Stack.build(lambda k: RNN(LSTMCell(h, h, key=k)), n, key=...)``), which passes
    ``seq_lengths=`` to every layer too.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> ks = jax.random.split(jax.random.key(0), 2)
        >>> deep = stoax.nn.StackedRNN([
        ...     stoax.nn.RNN(stoax.nn.LSTMCell(4, 16, key=ks[0]), dropout=0.2),
        ...     stoax.nn.RNN(stoax.nn.LSTMCell(16, 16, key=ks[1]), dropout=0.2)])
        >>> deep(jnp.ones((3, 7, 4)), key=jax.random.key(1)).shape
        (3, 7, 16)
    """

    layers: tuple[Module, ...]
    return_carry: bool = False

    def __init__(self, layers: Sequence[Module], return_carry: bool = False):
        layers = tuple(layers)
        if not layers:
            raise ValueError("StackedRNN: give at least one layer.")
        for i, layer in enumerate(layers):
            if not isinstance(layer, RNN | Bidirectional):
                raise TypeError(
                    f"StackedRNN: layer {i} must be an RNN or a Bidirectional, got "
                    f"{type(layer).__name__}."
                )
        self.layers = layers
        self.return_carry = bool(return_carry)

    def __len__(self) -> int:
        return len(self.layers)

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        seq_lengths: jax.Array | None = None,
        mask: jax.Array | None = None,
        return_carry: bool | None = None,
    ) -> Any:
        """The last layer's outputs; ``(tuple of every layer's final carry, outputs)`` when
        ``return_carry``.

        Args:
            x: ``(*batch, time, in_features)``, the first layer's input.
            key: layer ``i`` gets ``child(key, i)``; needed in training mode when a layer has
                dropout.
            seq_lengths: ``(*batch,)`` ints, the real length of each sequence, for every layer.
            mask: ``(*batch, time)`` bools, True = a real step (instead of ``seq_lengths``).
            return_carry: ``True``/``False`` for this call; ``None`` uses the field."""
        carries = []
        for i, layer in enumerate(self.layers):
            if not jnp.shape(x)[-1:] == (_in_features(layer),):
                raise LayerValueError(
                    self,
                    f": layer {i} takes {_in_features(layer)} features, but gets an input of "
                    f"shape {jnp.shape(x)}.",
                )
            carry, x = layer(
                x,
                key=keys.child(key, i),
                seq_lengths=seq_lengths,
                mask=mask,
                return_carry=True,
            )
            carries.append(carry)
        wants_carry = self.return_carry if return_carry is None else return_carry
        return (tuple(carries), x) if wants_carry else x


def _in_features(layer: Module) -> int:
    rnn: Any = layer.forward if isinstance(layer, Bidirectional) else layer
    return rnn.cell.in_features
