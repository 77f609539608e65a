"""Recurrent cells: ``LSTMCell``, ``GRUCell``, ``SimpleCell`` (Elman).

A cell maps ``(carry, x) -> (carry, y)`` for one time step, as Flax's and Equinox's cells do, so it
runs under ``jax.lax.scan`` or :func:`stoax.scan` as it is. :class:`~stoax.nn.RNN` runs it over a
sequence faster: it splits a step into

* ``project_input(x)``: the input side, ``x @ input_kernel + bias`` -- affine in ``x``, so the RNN
  computes it for all time steps in one matrix product before the time loop;
* ``hidden(carry) @ recurrent_kernel``: the recurrent side, the only matrix product left in the
  loop (where recurrent dropout is applied to ``hidden(carry)``);
* ``update(carry, xw, hw)``: the gates, from both projections.

The weights of all gates are stored side by side in one matrix (gate order in the docstrings),
``(in_features, gates * hidden)`` and ``(hidden, gates * hidden)``, so that each side is one
matrix product per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from stoax import keys
from stoax._errors import LayerValueError
from stoax._module import Module
from stoax.nn._sizes import positive_int

__all__ = ["GRUCell", "LSTMCell", "SimpleCell"]

Initializer = Callable[..., jax.Array]

# The peers' (Flax's) default initialisers.
LECUN_NORMAL = jax.nn.initializers.lecun_normal()
ORTHOGONAL = jax.nn.initializers.orthogonal()


def _recurrent_init(
    init: Initializer, key: jax.Array, hidden: int, gates: int, dtype: Any
) -> jax.Array:
    """``gates`` square blocks ``(hidden, hidden)``, each drawn by ``init`` on its own key (Flax
    draws each gate's recurrent kernel separately: an orthogonal matrix per gate)."""
    blocks = [init(keys.init_child(key, g), (hidden, hidden), dtype) for g in range(gates)]
    return jnp.concatenate(blocks, axis=-1)


class _Cell(Module):
    """What the three cells share: weights, sizes, the input projection and input checks."""

    input_kernel: jax.Array
    recurrent_kernel: jax.Array
    bias: jax.Array

    def initial_carry(self, batch_shape: tuple[int, ...] = (), dtype: Any = None) -> Any:
        """The zero carry for inputs of ``batch_shape`` (each cell defines it)."""
        raise NotImplementedError

    def _init_weights(
        self,
        in_features: int,
        hidden_features: int,
        gates: int,
        key: jax.Array,
        dtype: Any,
        kernel_init: Initializer,
        recurrent_kernel_init: Initializer,
        bias_init: Initializer,
    ) -> None:
        name = type(self).__name__
        in_features = positive_int(in_features, name, "in_features")
        hidden_features = positive_int(hidden_features, name, "hidden_features")
        k_in, k_rec, k_bias = keys.init_derive(
            keys.as_key(key, name), "input_kernel", "recurrent_kernel", "bias"
        )
        # Drawn per gate so that each gate's input kernel has the peers' statistics too.
        self.input_kernel = jnp.concatenate(
            [
                kernel_init(keys.init_child(k_in, g), (in_features, hidden_features), dtype)
                for g in range(gates)
            ],
            axis=-1,
        )
        self.recurrent_kernel = _recurrent_init(
            recurrent_kernel_init, k_rec, hidden_features, gates, dtype
        )
        self.bias = bias_init(k_bias, (gates * hidden_features,), dtype)

    @property
    def in_features(self) -> int:
        return self.input_kernel.shape[-2]

    @property
    def hidden_features(self) -> int:
        return self.recurrent_kernel.shape[-2]

    def project_input(self, x: jax.Array) -> jax.Array:
        """The input side of every gate, ``x @ input_kernel + bias``: shape ``(..., gates *
        hidden)``. Affine in ``x``, so it can be computed for all time steps at once."""
        if x.shape[-1] != self.in_features:
            raise LayerValueError(
                self,
                f": input's last axis has size {x.shape[-1]}, expected in_features = "
                f"{self.in_features} (input shape {x.shape}).",
            )
        return x @ self.input_kernel + self.bias

    def _check_hidden(self, h: jax.Array) -> None:
        if jnp.shape(h)[-1:] != (self.hidden_features,):
            raise LayerValueError(
                self,
                f": the carry's hidden state must end in hidden_features = "
                f"{self.hidden_features}, got shape {jnp.shape(h)}. Make it with "
                "initial_carry(batch_shape).",
            )

    def __call__(
        self, carry: Any, x: jax.Array, *, key: jax.Array | None = None
    ) -> tuple[Any, jax.Array]:
        """One time step: ``(carry, x) -> (carry, y)``.

        Args:
            carry: the state after the previous step (``initial_carry(batch_shape)`` at the first).
            x: the input of this step, ``(*batch, in_features)``.
            key: unused; accepted so a cell runs under :func:`stoax.scan` as it is."""
        h = self.hidden(carry)
        self._check_hidden(h)
        return self.update(carry, self.project_input(x), h @ self.recurrent_kernel)

    def hidden(self, carry: Any) -> jax.Array:
        """The hidden state that feeds the recurrence (where recurrent dropout applies)."""
        return carry

    def update(self, carry: Any, xw: jax.Array, hw: jax.Array) -> tuple[Any, jax.Array]:
        raise NotImplementedError


class LSTMCell(_Cell):
    """Long short-term memory cell (Hochreiter & Schmidhuber), the equations of Flax and Equinox::

        i = gate_fn(W_ii x + W_hi h + b_i)        input gate
        f = gate_fn(W_if x + W_hf h + b_f)        forget gate
        g = activation(W_ig x + W_hg h + b_g)     candidate
        o = gate_fn(W_io x + W_ho h + b_o)        output gate
        c' = f * c + i * g
        h' = o * activation(c')

    ``carry = (c, h)`` (Flax's order; Equinox's is ``(h, c)``), output ``h'``. Weights:
    ``input_kernel (in, 4*hidden)`` and ``recurrent_kernel (hidden, 4*hidden)`` with the gates in
    the order ``i, f, g, o`` (as PyTorch and Equinox stack them), one ``bias (4*hidden,)``
    (Flax puts it on the recurrent side, Equinox has one: the sum is the same).

    Initialisation follows Flax: each gate's input kernel LeCun-normal, each gate's recurrent
    kernel orthogonal, bias zero. (Equinox draws all of them uniformly in
    ``+-1/sqrt(hidden)``, as PyTorch does; pass ``kernel_init=`` etc. to get that.)

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> cell = stoax.nn.LSTMCell(3, 8, key=jax.random.key(0))
        >>> carry = cell.initial_carry((2,))
        >>> carry, y = cell(carry, jnp.ones((2, 3)))
        >>> y.shape, carry[0].shape
        ((2, 8), (2, 8))
    """

    gate_fn: Callable[[jax.Array], jax.Array]
    activation: Callable[[jax.Array], jax.Array]

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        gate_fn: Callable[[jax.Array], jax.Array] = jax.nn.sigmoid,
        activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
        *,
        key: jax.Array,
        dtype: Any = jnp.float32,
        kernel_init: Initializer = LECUN_NORMAL,
        recurrent_kernel_init: Initializer = ORTHOGONAL,
        bias_init: Initializer = jax.nn.initializers.zeros,
    ):
        self._init_weights(
            in_features,
            hidden_features,
            4,
            key,
            dtype,
            kernel_init,
            recurrent_kernel_init,
            bias_init,
        )
        self.gate_fn = gate_fn
        self.activation = activation

    def initial_carry(
        self, batch_shape: tuple[int, ...] = (), dtype: Any = None
    ) -> tuple[jax.Array, jax.Array]:
        """Zeros ``(c, h)``, each of shape ``batch_shape + (hidden_features,)``."""
        shape = (*batch_shape, self.hidden_features)
        dtype = self.recurrent_kernel.dtype if dtype is None else dtype
        return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)

    def hidden(self, carry: tuple[jax.Array, jax.Array]) -> jax.Array:
        return carry[1]

    def update(
        self, carry: tuple[jax.Array, jax.Array], xw: jax.Array, hw: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
        """The gates from the input projection ``xw`` and the recurrent one ``hw``."""
        c, _ = carry
        i, f, g, o = jnp.split(xw + hw, 4, axis=-1)
        i, f, o = self.gate_fn(i), self.gate_fn(f), self.gate_fn(o)
        c = f * c + i * self.activation(g)
        h = o * self.activation(c)
        return (c, h), h


class GRUCell(_Cell):
    """Gated recurrent unit (Cho et al.), the equations of Flax, Equinox and PyTorch::

        r = gate_fn(W_ir x + b_r + W_hr h)                 reset gate
        z = gate_fn(W_iz x + b_z + W_hz h)                 update gate
        n = activation(W_in x + b_n + r * (W_hn h + b_hn))  candidate
        h' = (1 - z) * n + z * h

    ``carry = h``, output ``h'``. Weights: ``input_kernel (in, 3*hidden)`` and
    ``recurrent_kernel (hidden, 3*hidden)``, gates in the order ``r, z, n`` (all three peers'),
    ``bias (3*hidden,)`` on the input side and ``recurrent_bias (hidden,)`` = ``b_hn`` inside the
    reset gate (Equinox's ``bias_n``; Flax NNX has none -- it is zero there).

    Initialisation follows Flax: input kernels LeCun-normal, recurrent kernels orthogonal per
    gate, biases zero.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> cell = stoax.nn.GRUCell(3, 8, key=jax.random.key(0))
        >>> h, y = cell(cell.initial_carry((2,)), jnp.ones((2, 3)))
        >>> y.shape
        (2, 8)
    """

    recurrent_bias: jax.Array
    gate_fn: Callable[[jax.Array], jax.Array]
    activation: Callable[[jax.Array], jax.Array]

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        gate_fn: Callable[[jax.Array], jax.Array] = jax.nn.sigmoid,
        activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
        *,
        key: jax.Array,
        dtype: Any = jnp.float32,
        kernel_init: Initializer = LECUN_NORMAL,
        recurrent_kernel_init: Initializer = ORTHOGONAL,
        bias_init: Initializer = jax.nn.initializers.zeros,
    ):
        self._init_weights(
            in_features,
            hidden_features,
            3,
            key,
            dtype,
            kernel_init,
            recurrent_kernel_init,
            bias_init,
        )
        k_bias = keys.init_child(keys.as_key(key, "GRUCell"), "recurrent_bias")
        self.recurrent_bias = bias_init(k_bias, (self.hidden_features,), dtype)
        self.gate_fn = gate_fn
        self.activation = activation

    def initial_carry(self, batch_shape: tuple[int, ...] = (), dtype: Any = None) -> jax.Array:
        """Zeros of shape ``batch_shape + (hidden_features,)``."""
        dtype = self.recurrent_kernel.dtype if dtype is None else dtype
        return jnp.zeros((*batch_shape, self.hidden_features), dtype)

    def update(self, carry: jax.Array, xw: jax.Array, hw: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The gates from the input projection ``xw`` and the recurrent one ``hw``."""
        x_r, x_z, x_n = jnp.split(xw, 3, axis=-1)
        h_r, h_z, h_n = jnp.split(hw, 3, axis=-1)
        r = self.gate_fn(x_r + h_r)
        z = self.gate_fn(x_z + h_z)
        n = self.activation(x_n + r * (h_n + self.recurrent_bias))
        h = (1.0 - z) * n + z * carry
        return h, h


class SimpleCell(_Cell):
    """The Elman cell, Flax's ``SimpleCell``::

        h' = activation(W_i x + b + W_h h)

    ``carry = h``, output ``h'``. Weights ``input_kernel (in, hidden)``, ``recurrent_kernel
    (hidden, hidden)``, ``bias (hidden,)``. Initialisation follows Flax: LeCun-normal input
    kernel, orthogonal recurrent kernel, zero bias. (Equinox has no such cell.)

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> cell = stoax.nn.SimpleCell(3, 8, key=jax.random.key(0))
        >>> h, y = cell(cell.initial_carry(), jnp.ones(3))
        >>> y.shape
        (8,)
    """

    activation: Callable[[jax.Array], jax.Array]

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        activation: Callable[[jax.Array], jax.Array] = jnp.tanh,
        *,
        key: jax.Array,
        dtype: Any = jnp.float32,
        kernel_init: Initializer = LECUN_NORMAL,
        recurrent_kernel_init: Initializer = ORTHOGONAL,
        bias_init: Initializer = jax.nn.initializers.zeros,
    ):
        self._init_weights(
            in_features,
            hidden_features,
            1,
            key,
            dtype,
            kernel_init,
            recurrent_kernel_init,
            bias_init,
        )
        self.activation = activation

    def initial_carry(self, batch_shape: tuple[int, ...] = (), dtype: Any = None) -> jax.Array:
        """Zeros of shape ``batch_shape + (hidden_features,)``."""
        dtype = self.recurrent_kernel.dtype if dtype is None else dtype
        return jnp.zeros((*batch_shape, self.hidden_features), dtype)

    def update(self, carry: jax.Array, xw: jax.Array, hw: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The new state from the input projection ``xw`` and the recurrent one ``hw``."""
        h = self.activation(xw + hw)
        return h, h
