"""Temporary memory of an MLP training step with dropout on and off: stoax ``MLP``, a stoax
``Sequential`` with ``Dropout`` before each ``Linear``, Equinox's ``MLP`` with ``eqx.nn.Dropout``
and a Flax NNX MLP with ``nnx.Dropout``.

The model of issue 20: 8 Linear layers 1024 wide, tanh, batch 256, dropout 0.1 after each hidden
activation, ``value_and_grad`` of a mean-square loss plus an optax ``adamw`` update, the state
donated. Memory is XLA's compiled ``memory_analysis().temp_size_in_bytes``: exact and
deterministic for one jax/XLA version, so one compilation per variant is enough.

    python benchmarks/mlp_memory.py

What the dropout costs is the on/off ratio. A dropout whose output feeds a Linear makes the
Linear's weight gradient (``dW = dropped^T @ g``) need the *dropped* activation: stored, it is a
second activation per layer next to the tanh output that tanh's own gradient keeps. stoax's
containers run ``Dropout -> Linear`` as one :func:`stoax.random.dropout_then` and keep only the
pre-dropout activation and the key.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import stoax

WIDTH, DEPTH, BATCH, RATE = 1024, 8, 256, 0.1


def _stoax_mlp(rate: float):
    return stoax.nn.MLP(
        WIDTH,
        WIDTH,
        hidden=(WIDTH,) * (DEPTH - 1),
        activation=jnp.tanh,
        dropout=rate,
        key=jax.random.key(0),
    )


def _stoax_sequential(rate: float):
    layers = []
    for i in range(DEPTH):
        layers.append(stoax.nn.Linear(WIDTH, WIDTH, key=jax.random.key(i)))
        if i < DEPTH - 1:
            layers += [jnp.tanh, stoax.nn.Dropout(rate)]
    return stoax.nn.Sequential(layers)


def stoax_loss(build):
    def make(rate: float):
        params, rest = stoax.partition(build(rate))

        def loss(params, x, key):
            return jnp.mean(stoax.combine(params, rest)(x, key=key) ** 2)

        return loss, params

    return make


class _EqxMLP(eqx.Module):
    mlp: eqx.nn.MLP
    drops: tuple

    def __call__(self, x, key):
        # eqx.nn.MLP has no dropout: its layers, with eqx.nn.Dropout after each activation.
        keys = jax.random.split(key, len(self.drops))
        for layer, drop, k in zip(self.mlp.layers[:-1], self.drops, keys, strict=True):
            x = drop(jnp.tanh(layer(x)), key=k)
        return self.mlp.layers[-1](x)


def equinox_loss(rate: float):
    mlp = eqx.nn.MLP(WIDTH, WIDTH, WIDTH, DEPTH - 1, activation=jnp.tanh, key=jax.random.key(0))
    model = _EqxMLP(mlp, tuple(eqx.nn.Dropout(rate) for _ in range(DEPTH - 1)))
    params, rest = eqx.partition(model, eqx.is_array)

    def loss(params, x, key):
        m = eqx.combine(params, rest)
        return jnp.mean(jax.vmap(m, in_axes=(0, None))(x, key) ** 2)

    return loss, params


class _NnxMLP(nnx.Module):
    def __init__(self, rate: float, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(WIDTH, WIDTH, rngs=rngs) for _ in range(DEPTH)])
        self.drop = nnx.Dropout(rate)

    def __call__(self, x, rngs: nnx.Rngs):
        for layer in self.layers[:-1]:
            x = self.drop(jnp.tanh(layer(x)), rngs=rngs)
        return self.layers[-1](x)


def nnx_loss(rate: float):
    graphdef, params = nnx.split(_NnxMLP(rate, nnx.Rngs(0)))

    def loss(params, x, key):
        return jnp.mean(nnx.merge(graphdef, params)(x, nnx.Rngs(dropout=key)) ** 2)

    return loss, params


MODELS = {
    "stoax MLP": stoax_loss(_stoax_mlp),
    "stoax Sequential": stoax_loss(_stoax_sequential),
    "equinox MLP": equinox_loss,
    "flax nnx MLP": nnx_loss,
}


def temp_bytes(make, rate: float, impl: str) -> int:
    """XLA's temporary memory of one compiled ``value_and_grad`` + adamw step."""
    loss, params = make(rate)
    opt = optax.adamw(1e-3)

    def step(state, x, key):
        params, opt_state = state
        value, grads = jax.value_and_grad(loss)(params, x, key)
        updates, opt_state = opt.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), value

    x = jnp.ones((BATCH, WIDTH), jnp.float32)
    lowered = jax.jit(step, donate_argnums=0).lower(
        (params, opt.init(params)), x, jax.random.key(1, impl=impl)
    )
    return lowered.compile().memory_analysis().temp_size_in_bytes


def main() -> None:
    mib = 2**20
    print(
        f"jax {jax.__version__}, {jax.default_backend()}: {DEPTH} x {WIDTH} tanh MLP, batch "
        f"{BATCH}, dropout {RATE}, value_and_grad + adamw; temp memory dropout on / off"
    )
    for impl in ("threefry2x32", "rbg"):
        for name, make in MODELS.items():
            off, on = temp_bytes(make, 0.0, impl), temp_bytes(make, RATE, impl)
            print(
                f"  {impl:12s} {name:17s} off {off / mib:6.1f} MiB  on {on / mib:6.1f} MiB  "
                f"{on / off:.2f}x",
                flush=True,
            )


if __name__ == "__main__":
    main()
