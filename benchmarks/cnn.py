"""A small ResNet-style training step with BatchNorm and spatial dropout: stoax vs Flax NNX vs
Equinox, in ONE process.

    python benchmarks/cnn.py [--reps N] [--batch B] [--side S] [--width W]

The network (the same in every library): a 3x3 stem conv (3 -> W) with BatchNorm and ReLU; two
stages of two residual blocks (``conv3x3-BN-ReLU-conv3x3-BN`` + shortcut, ReLU, then spatial
dropout 0.1 -- whole channels per example), the second stage at 2W channels with a stride-2
first block and a 1x1 projection shortcut; global average pooling; a linear classifier to 10
classes. Convolutions have no bias (BatchNorm follows). Adam, softmax cross-entropy. One
training step updates the parameters, the optimiser state and BatchNorm's running statistics.

* stoax: ``stoax.apply`` under plain ``jax.jit``; spatial dropout is
  ``Dropout(0.1, broadcast_dims=(-3, -2))``; the key is ``stoax.step_key(seed, step)``.
* Flax NNX: ``nnx.split`` / ``nnx.merge`` around plain ``jax.jit`` (the NNX performance
  recipe), ``nnx.Optimizer``, ``nnx.Dropout(broadcast_dims=(1, 2))`` with an ``nnx.Rngs``
  stream.
* Equinox: ``eqx.nn.Conv2d`` / ``eqx.nn.BatchNorm(axis_name="batch", mode="ema")`` on one
  (channels-first) example, vmapped over the batch with that axis name, ``eqx.nn.State``; spatial
  dropout by hand (``jax.random.bernoulli`` on ``(C, 1, 1)`` per example; Equinox's Dropout has
  no ``broadcast_dims``); ``eqx.filter_jit``-free: ``eqx.partition`` + ``jax.jit``.

Reported: the median step time over ``--reps`` interleaved rounds (each round times one step of
every library, so a change of machine load hits all alike) and XLA's temporary memory of the
compiled step (``jitted.lower(...).compile().memory_analysis().temp_size_in_bytes``), with
ratios to stoax.
"""

from __future__ import annotations

import argparse
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import stoax

PARSER = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
PARSER.add_argument("--reps", type=int, default=7, help="timed rounds (median)")
PARSER.add_argument("--batch", type=int, default=32)
PARSER.add_argument("--side", type=int, default=16, help="image height = width")
PARSER.add_argument("--width", type=int, default=16, help="channels of the first stage")
ARGS = PARSER.parse_args()

RATE, MOMENTUM, CLASSES, LR = 0.1, 0.9, 10, 1e-3
TX = optax.adam(LR)


def loss_of(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


# -- stoax -------------------------------------------------------------------------------------


class StoaxBlock(stoax.Module):
    conv1: stoax.nn.Conv
    bn1: stoax.nn.BatchNorm
    conv2: stoax.nn.Conv
    bn2: stoax.nn.BatchNorm
    shortcut: stoax.Module  # Identity or a 1x1 Conv
    drop: stoax.nn.Dropout

    @classmethod
    def make(cls, cin, cout, stride, key):
        k1, k2, k3 = stoax.keys.derive(key, "conv1", "conv2", "shortcut")
        conv = lambda a, b, k, s, size=(3, 3): stoax.nn.Conv(
            a, b, size, stride=s, use_bias=False, key=k
        )
        project = cin != cout or stride != 1
        return cls(
            conv(cin, cout, k1, stride),
            stoax.nn.BatchNorm(cout, MOMENTUM),
            conv(cout, cout, k2, 1),
            stoax.nn.BatchNorm(cout, MOMENTUM),
            conv(cin, cout, k3, stride, (1, 1)) if project else stoax.nn.Identity(),
            stoax.nn.Dropout(RATE, broadcast_dims=(-3, -2)),
        )

    def apply(self, x, *, key=None):
        h, bn1 = stoax.apply(self.bn1, self.conv1(x))
        h, bn2 = stoax.apply(self.bn2, self.conv2(jax.nn.relu(h)))
        y = self.drop(jax.nn.relu(h + self.shortcut(x)), key=key)
        return y, self.replace(bn1=bn1, bn2=bn2)

    def __call__(self, x, *, key=None):
        return self.apply(x, key=key)[0]


def stoax_model(key):
    w = ARGS.width
    ks = stoax.keys.derive(key, "stem", "b1", "b2", "b3", "b4", "head")
    return stoax.nn.Sequential(
        [
            stoax.nn.Conv(3, w, (3, 3), use_bias=False, key=ks[0]),
            stoax.nn.BatchNorm(w, MOMENTUM),
            jax.nn.relu,
            StoaxBlock.make(w, w, 1, ks[1]),
            StoaxBlock.make(w, w, 1, ks[2]),
            StoaxBlock.make(w, 2 * w, 2, ks[3]),
            StoaxBlock.make(2 * w, 2 * w, 1, ks[4]),
            stoax.nn.GlobalAvgPool(),
            stoax.nn.Linear(2 * w, CLASSES, key=ks[5]),
        ]
    )


def stoax_setup(x, labels):
    model = stoax_model(jax.random.key(0))
    params, rest = stoax.partition(model)
    state = (params, rest, TX.init(params), jnp.zeros((), jnp.int32))

    @jax.jit
    def step(state, x, labels):
        params, rest, opt_state, t = state
        key = stoax.step_key(0, t)

        def loss(params):
            logits, model = stoax.apply(stoax.combine(params, rest), x, key=key)
            return loss_of(logits, labels), model

        (value, model), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = TX.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, stoax.partition(model)[1], opt_state, t + 1), value

    return step, state


# -- Flax NNX ------------------------------------------------------------------------------------


class NnxBlock(nnx.Module):
    def __init__(self, cin, cout, stride, rngs):
        conv = lambda a, b, s, size=(3, 3): nnx.Conv(
            a, b, size, strides=s, use_bias=False, rngs=rngs
        )
        self.conv1 = conv(cin, cout, stride)
        self.bn1 = nnx.BatchNorm(cout, momentum=MOMENTUM, rngs=rngs)
        self.conv2 = conv(cout, cout, 1)
        self.bn2 = nnx.BatchNorm(cout, momentum=MOMENTUM, rngs=rngs)
        self.project = cin != cout or stride != 1
        self.shortcut = conv(cin, cout, stride, (1, 1)) if self.project else None
        self.drop = nnx.Dropout(RATE, broadcast_dims=(1, 2), rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return self.drop(nnx.relu(h + (self.shortcut(x) if self.project else x)))


class NnxNet(nnx.Module):
    def __init__(self, rngs):
        w = ARGS.width
        self.stem = nnx.Conv(3, w, (3, 3), use_bias=False, rngs=rngs)
        self.bn = nnx.BatchNorm(w, momentum=MOMENTUM, rngs=rngs)
        self.blocks = nnx.List(
            [
                NnxBlock(w, w, 1, rngs),
                NnxBlock(w, w, 1, rngs),
                NnxBlock(w, 2 * w, 2, rngs),
                NnxBlock(2 * w, 2 * w, 1, rngs),
            ]
        )
        self.head = nnx.Linear(2 * w, CLASSES, rngs=rngs)

    def __call__(self, x):
        h = nnx.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(axis=(1, 2)))


def nnx_setup(x, labels):
    model = NnxNet(nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, TX, wrt=nnx.Param)
    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def step(state, x, labels):
        model, optimizer = nnx.merge(graphdef, state)

        def loss(model):
            return loss_of(model(x), labels)

        value, grads = nnx.value_and_grad(loss)(model)
        optimizer.update(model, grads)
        return nnx.split((model, optimizer))[1], value

    return step, state


# -- Equinox -------------------------------------------------------------------------------------


class EqxBlock(eqx.Module):
    conv1: eqx.nn.Conv2d
    bn1: eqx.nn.BatchNorm
    conv2: eqx.nn.Conv2d
    bn2: eqx.nn.BatchNorm
    shortcut: eqx.nn.Conv2d | None

    def __init__(self, cin, cout, stride, key):
        k1, k2, k3 = jax.random.split(key, 3)
        bn = lambda c: eqx.nn.BatchNorm(c, "batch", momentum=MOMENTUM, mode="ema")
        self.conv1 = eqx.nn.Conv2d(cin, cout, 3, stride, 1, use_bias=False, key=k1)
        self.bn1 = bn(cout)
        self.conv2 = eqx.nn.Conv2d(cout, cout, 3, 1, 1, use_bias=False, key=k2)
        self.bn2 = bn(cout)
        project = cin != cout or stride != 1
        self.shortcut = (
            eqx.nn.Conv2d(cin, cout, 1, stride, 0, use_bias=False, key=k3) if project else None
        )

    def __call__(self, x, state, key):  # x: (C, H, W), one example
        h, state = self.bn1(self.conv1(x), state)
        h, state = self.bn2(self.conv2(jax.nn.relu(h)), state)
        y = jax.nn.relu(h + (x if self.shortcut is None else self.shortcut(x)))
        keep = jax.random.bernoulli(key, 1 - RATE, (y.shape[0], 1, 1))  # whole channels
        return jnp.where(keep, y / (1 - RATE), 0.0), state


class EqxNet(eqx.Module):
    stem: eqx.nn.Conv2d
    bn: eqx.nn.BatchNorm
    blocks: list
    head: eqx.nn.Linear

    def __init__(self, key):
        w = ARGS.width
        ks = jax.random.split(key, 6)
        self.stem = eqx.nn.Conv2d(3, w, 3, 1, 1, use_bias=False, key=ks[0])
        self.bn = eqx.nn.BatchNorm(w, "batch", momentum=MOMENTUM, mode="ema")
        self.blocks = [
            EqxBlock(w, w, 1, ks[1]),
            EqxBlock(w, w, 1, ks[2]),
            EqxBlock(w, 2 * w, 2, ks[3]),
            EqxBlock(2 * w, 2 * w, 1, ks[4]),
        ]
        self.head = eqx.nn.Linear(2 * w, CLASSES, key=ks[5])

    def __call__(self, x, state, key):  # one example, channels first
        h, state = self.bn(self.stem(x), state)
        h = jax.nn.relu(h)
        for block, k in zip(self.blocks, jax.random.split(key, len(self.blocks)), strict=True):
            h, state = block(h, state, k)
        return self.head(h.mean(axis=(1, 2))), state


def eqx_setup(x, labels):
    model, bn_state = eqx.nn.make_with_state(EqxNet)(jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)
    state = (params, bn_state, TX.init(params), jnp.zeros((), jnp.int32))

    @jax.jit
    def step(state, x, labels):
        params, bn_state, opt_state, t = state
        keys = jax.random.split(jax.random.fold_in(jax.random.key(0), t), x.shape[0])

        def loss(params):
            model = eqx.combine(params, static)
            run = jax.vmap(model, in_axes=(0, None, 0), out_axes=(0, None), axis_name="batch")
            logits, new_state = run(jnp.moveaxis(x, -1, 1), bn_state, keys)
            return loss_of(logits, labels), new_state

        (value, bn_state), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = TX.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, bn_state, opt_state, t + 1), value

    return step, state


# -- measure -------------------------------------------------------------------------------------


def main():
    shape = (ARGS.batch, ARGS.side, ARGS.side, 3)
    x = jax.random.normal(jax.random.key(1), shape)
    labels = jax.random.randint(jax.random.key(2), (ARGS.batch,), 0, CLASSES)
    setups = {"stoax": stoax_setup, "Flax NNX": nnx_setup, "Equinox": eqx_setup}
    steps, states, temp = {}, {}, {}
    for name, setup in setups.items():
        step, state = setup(x, labels)
        compiled = step.lower(state, x, labels).compile()
        temp[name] = compiled.memory_analysis().temp_size_in_bytes / 2**20
        state, value = step(state, x, labels)  # warm-up
        jax.block_until_ready(value)
        steps[name], states[name] = step, state
    times = {name: [] for name in setups}
    for _ in range(ARGS.reps):  # interleaved rounds
        for name in setups:
            t0 = time.perf_counter()
            states[name], value = steps[name](states[name], x, labels)
            jax.block_until_ready((states[name], value))
            times[name].append(1e3 * (time.perf_counter() - t0))
    ms = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"ResNet-style step: batch {ARGS.batch}, {ARGS.side}x{ARGS.side}x3, widths "
        f"{ARGS.width}/{2 * ARGS.width}, BatchNorm + spatial dropout {RATE}, adam; "
        f"jax {jax.__version__}, {jax.devices()[0].platform}, median of {ARGS.reps} rounds"
    )
    print(f"{'library':<10} {'ms/step':>9} {'x stoax':>8} {'temp MiB':>9} {'x stoax':>8}")
    for name in setups:
        print(
            f"{name:<10} {ms[name]:9.1f} {ms[name] / ms['stoax']:8.2f} "
            f"{temp[name]:9.2f} {temp[name] / temp['stoax']:8.2f}"
        )


if __name__ == "__main__":
    main()
