"""``GaussianNoise``: additive zero-mean Gaussian noise in training mode, identity in evaluation."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from stoax._mode import check_training_flag
from stoax._module import Module, field
from stoax.nn._checks import by_mode, draw_key, is_identity

__all__ = ["GaussianNoise"]


def _check_stddev(stddev: Any) -> float | jax.Array:
    if isinstance(stddev, bool):
        raise TypeError(f"GaussianNoise: stddev must be a number >= 0, got the bool {stddev}.")
    if isinstance(stddev, int | float | np.integer | np.floating):
        stddev = float(stddev)
        if not 0.0 <= stddev < math.inf:  # also refuses NaN
            raise ValueError(
                f"GaussianNoise: stddev must be a finite number >= 0 (the noise's standard "
                f"deviation), got {stddev}."
            )
        return stddev
    if hasattr(stddev, "dtype"):
        if not jnp.issubdtype(stddev.dtype, jnp.floating):
            raise TypeError(
                f"GaussianNoise: stddev must be a floating array, got dtype {stddev.dtype}."
            )
        if not isinstance(stddev, jax.core.Tracer):
            values = np.asarray(stddev)
            if values.size and not ((values >= 0) & np.isfinite(values)).all():
                raise ValueError(
                    f"GaussianNoise: every stddev must be finite and >= 0, got "
                    f"{np.nanmin(values)} .. {np.nanmax(values)}"
                    f"{' and NaN' if np.isnan(values).any() else ''}."
                )
        return stddev
    raise TypeError(
        f"GaussianNoise: stddev must be a float or a JAX array, got {type(stddev).__name__}."
    )


class GaussianNoise(Module):
    """Add ``stddev * N(0, 1)`` noise to every element in training mode; identity in evaluation.

    The noise is drawn in the input's dtype (f32, bf16, f16 kept). ``stddev`` is a Python float
    (static) or a JAX array (a non-trainable leaf, so a sweep can be vmapped); ``training`` a
    Python bool (static) or a scalar bool JAX array (traced). A key is needed in training mode
    unless ``stddev == 0``.

    Example:
        >>> import jax, jax.numpy as jnp, stoax
        >>> noise = stoax.nn.GaussianNoise(0.1)
        >>> noise(jnp.zeros(3), key=jax.random.key(0)).shape
        (3,)
        >>> stoax.eval_mode(noise)(jnp.zeros(3)).tolist()
        [0.0, 0.0, 0.0]
    """

    stddev: float | jax.Array = field(trainable=False)
    training: bool | jax.Array = field(default=True, kw_only=True)

    def __check_init__(self) -> None:
        self.stddev = _check_stddev(self.stddev)
        self.training = check_training_flag(self.training, "GaussianNoise")

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None) -> jax.Array:
        if is_identity(self, x, self.stddev):
            return x
        noise = jax.random.normal(draw_key(self, key), jnp.shape(x), x.dtype)
        return by_mode(self, x + jnp.asarray(self.stddev, x.dtype) * noise, x)
