"""``BatchNorm``: normalise with batch statistics in training, running averages in evaluation."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from stoax._errors import LayerValueError, locate_layer_errors
from stoax._mode import check_training_flag
from stoax._module import Module
from stoax._state import state_field
from stoax.nn._checks import require_float
from stoax.nn._layer_norm import stats_dtype
from stoax.nn._sizes import positive_int

__all__ = ["BatchNorm"]


class BatchNorm(Module):
    """Batch normalisation: ``(x - mean) / sqrt(var + eps) * scale + bias`` per feature.

    In training mode ``mean`` and ``var`` are the statistics of the batch -- over every axis of
    ``x`` but the feature axes ``axis`` -- and :func:`stoax.apply` returns the layer with its
    running averages moved towards them::

        running_mean <- momentum * running_mean + (1 - momentum) * mean      (same for var)

    In evaluation mode (``stoax.eval_mode``) the running averages normalise and nothing is
    updated; a traced ``training`` flag selects between the two in one program. ``bn(x)`` gives
    the output alone (the update is dropped); ``y, bn = stoax.apply(bn, x)`` also the updated
    layer. Statistics are computed in float32 (wider for float64) and the output has the input's
    dtype. The variance is the biased (population) one, in normalisation and running average
    alike, as in Flax (PyTorch keeps the unbiased one in its running average). Flax's
    ``momentum`` convention: ``0.99`` keeps 99% of the old average (PyTorch's ``momentum=0.1``).

    Args:
        features: size of the feature axis (a tuple for several feature axes).
        momentum: weight of the old running average in each update, in [0, 1).
        eps: added to the variance.
        axis: the feature axis (or axes) of the input; statistics are over all other axes.
        use_scale, use_bias: learn a per-feature ``scale`` (ones) / ``bias`` (zeros).
        axis_name: a named axis (``shard_map``, ``pmap``, ``jax.vmap(axis_name=...)``) over
            which the batch is split: batch statistics are averaged across it with
            ``lax.pmean``, so every device normalises with the statistics of the global batch.
            Not needed under plain ``jax.jit`` with a sharded batch (XLA reduces globally).
        training: ``True``/``False`` (static) or a scalar bool JAX array (traced).

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> bn = stoax.nn.BatchNorm(2, momentum=0.9)
        >>> x = jnp.array([[0.0, 10.0], [2.0, 30.0]])
        >>> y, bn = stoax.apply(bn, x)
        >>> y.round(3).tolist()
        [[-1.0, -1.0], [1.0, 1.0]]
        >>> bn.running_mean.tolist()
        [0.10000000149011612, 2.0]
        >>> stoax.eval_mode(bn)(x).shape   # running averages, no update
        (2, 2)
    """

    scale: jax.Array | None
    bias: jax.Array | None
    running_mean: jax.Array = state_field()
    running_var: jax.Array = state_field()
    momentum: float
    eps: float
    axis: tuple[int, ...]
    axis_name: str | None
    training: bool | jax.Array

    def __init__(
        self,
        features: int | Sequence[int],
        momentum: float = 0.99,
        eps: float = 1e-5,
        axis: int | Sequence[int] = -1,
        use_scale: bool = True,
        use_bias: bool = True,
        axis_name: str | None = None,
        *,
        training: bool | jax.Array = True,
        key: jax.Array | None = None,  # accepted for uniformity: the initialisation is fixed
        dtype: jnp.dtype = jnp.float32,
    ):
        feature_shape = _as_tuple(features, "features")
        sizes = tuple(positive_int(f, "BatchNorm", "features") for f in feature_shape)
        axes = _as_tuple(axis, "axis")
        if len(axes) != len(sizes) or len(set(axes)) != len(axes):
            raise ValueError(
                f"BatchNorm: axis {axis!r} must name one distinct axis per entry of features "
                f"{features!r}."
            )
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(
                f"BatchNorm: momentum must be in [0, 1) (the weight of the old running average, "
                f"Flax's convention: 0.99; PyTorch's momentum=0.1 is 0.9 here), got {momentum}."
            )
        if not float(eps) > 0.0:
            raise ValueError(f"BatchNorm: eps must be > 0, got {eps}.")
        self.scale = jnp.ones(sizes, dtype) if use_scale else None
        self.bias = jnp.zeros(sizes, dtype) if use_bias else None
        self.running_mean = jnp.zeros(sizes, jnp.float32)
        self.running_var = jnp.ones(sizes, jnp.float32)
        self.momentum = momentum
        self.eps = float(eps)
        self.axis = tuple(int(a) for a in axes)
        self.axis_name = axis_name
        self.training = check_training_flag(training, "BatchNorm")

    @property
    def features(self) -> tuple[int, ...]:
        """The sizes of the feature axes, as a tuple (``(C,)`` for one axis)."""
        return tuple(self.running_mean.shape)

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        """The normalised ``x`` (the running averages are not updated: see :meth:`apply`).

        Args:
            x: an array whose feature axes (``axis``) have the sizes ``features``.
            key: unused; accepted so that every layer is called alike (containers pass a key to each
                layer)."""
        return self.apply(x, key=key)[0]

    @locate_layer_errors
    def apply(self, x: jax.Array, *, key: jax.Array | None = None) -> tuple[jax.Array, BatchNorm]:
        """``(y, updated layer)``: in training mode the running averages move towards the batch
        statistics; in evaluation mode the layer comes back unchanged."""
        require_float(x, self)
        feature_axes = self._feature_axes(x)
        reduce = tuple(a for a in range(x.ndim) if a not in feature_axes)
        shape = [x.shape[a] if a in feature_axes else 1 for a in range(x.ndim)]
        h = x.astype(stats_dtype(x.dtype))
        run_mean = self.running_mean.astype(h.dtype)
        run_var = self.running_var.astype(h.dtype)
        if self.training is False:
            return self._normalise(h, run_mean, run_var, shape).astype(x.dtype), self
        if not reduce:
            raise LayerValueError(
                self,
                f": in training mode the batch statistics are taken over the axes other than "
                f"the feature axes {self.axis}, but the input of shape {tuple(x.shape)} has "
                "none. Give it a batch axis, or use stoax.eval_mode for single examples.",
            )
        mean = jnp.mean(h, axis=reduce)
        if self.axis_name is not None:
            mean = jax.lax.pmean(mean, self.axis_name)
        var = jnp.mean(jnp.square(h - mean.reshape(shape)), axis=reduce)
        if self.axis_name is not None:
            var = jax.lax.pmean(var, self.axis_name)
        y = self._normalise(h, mean, var, shape)
        # The barrier keeps XLA from fusing the reductions into the update: fused, a vmapped
        # (Ensemble) update rounds differently from the per-member one, and an ensemble must be
        # bitwise its Python loop. (Vectors of ``features`` values: free.)
        mean_u, var_u = jax.lax.optimization_barrier((mean, var))
        m = self.momentum
        new_mean = (m * run_mean + (1.0 - m) * mean_u).astype(self.running_mean.dtype)
        new_var = (m * run_var + (1.0 - m) * var_u).astype(self.running_var.dtype)
        if self.training is not True:  # traced: one program, selected by the flag
            y = jnp.where(self.training, y, self._normalise(h, run_mean, run_var, shape))
            new_mean = jnp.where(self.training, new_mean, self.running_mean)
            new_var = jnp.where(self.training, new_var, self.running_var)
        return y.astype(x.dtype), self.replace(running_mean=new_mean, running_var=new_var)

    def _normalise(
        self, h: jax.Array, mean: jax.Array, var: jax.Array, shape: list[int]
    ) -> jax.Array:
        mul = jax.lax.rsqrt(var + self.eps)
        if self.scale is not None:
            mul = mul * self.scale.astype(h.dtype)
        y = (h - mean.reshape(shape)) * mul.reshape(shape)
        if self.bias is not None:
            y = y + self.bias.astype(h.dtype).reshape(shape)
        return y

    def _feature_axes(self, x: jax.Array) -> tuple[int, ...]:
        if any(not -x.ndim <= a < x.ndim for a in self.axis):
            raise LayerValueError(
                self,
                f": feature axis {self.axis} is out of range for an input of shape "
                f"{tuple(x.shape)}.",
            )
        axes = tuple(a % x.ndim for a in self.axis)
        got = tuple(x.shape[a] for a in axes)
        if got != self.features:
            raise LayerValueError(
                self,
                f": the feature axis {self.axis} of the input (shape {tuple(x.shape)}) has size "
                f"{got if len(got) > 1 else got[0]}, expected features = "
                f"{self.features if len(got) > 1 else self.features[0]}.",
            )
        return axes


def _as_tuple(value: int | Sequence[int], name: str) -> tuple[int, ...]:
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return (int(value),)
    if (
        isinstance(value, Sequence)
        and value
        and all(isinstance(v, int | np.integer) for v in value)
    ):
        return tuple(int(v) for v in value)
    raise TypeError(f"BatchNorm: {name} must be an int or a tuple of ints, got {value!r}.")
