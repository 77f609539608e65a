"""How long ``stoax.audit`` takes on a 24-layer Transformer training step.

Two programs, both a full adamw training step (loss, gradients, optimiser update) with dropout
0.1 on embeddings, attention probabilities, residual branches and the MLP:

* ``stack``: ``stoax.nn.TransformerEncoder`` -- its 24 blocks run in one ``lax.scan``, so the
  jaxpr holds one block and the auditor follows the key through the scan body;
* ``unrolled``: the same 24 ``TransformerBlock`` s applied in a Python loop -- 24 copies of the
  block in the jaxpr, the worst case for an auditor (what a Flax/Equinox model without ``scan``
  looks like).

Each repeat builds the program afresh (a new jitted step, so nothing is reused from an earlier
trace) and audits it; the time includes tracing to a jaxpr, which is what a user waits for.
Prints the first audit in the process ("first s", which also pays JAX's one-time start-up
costs) and the median of ``--repeats`` audits ("median s"), with the number of equations and
random draws, and checks that every report is clean.

    python benchmarks/audit_speed.py [--layers 24] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp
import optax

import stoax

VOCAB, FEATURES, HEADS, SEQ, BATCH = 256, 128, 4, 64, 8


def training_step(forward, model):
    """A jitted adamw step over the trainable half of ``model``; returns it and its arguments."""
    params, rest = stoax.partition(model)
    opt = optax.adamw(1e-3)

    @jax.jit
    def step(params, opt_state, tokens, step_index):
        key = stoax.step_key(0, step_index)

        def loss(p):
            logits = forward(stoax.combine(p, rest), tokens, key)
            labels = tokens[:, 1:]
            return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], labels).mean()

        value, grads = jax.value_and_grad(loss)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    tokens = jnp.zeros((BATCH, SEQ), jnp.int32)
    return step, (params, opt.init(params), tokens, jnp.uint32(0))


def stack_program(layers: int):
    model = stoax.nn.TransformerEncoder(
        vocab_size=VOCAB,
        out_features=VOCAB,
        features=FEATURES,
        num_heads=HEADS,
        num_layers=layers,
        max_len=SEQ,
        causal=True,
        key=jax.random.key(0),
    )
    return training_step(lambda m, tokens, key: m(tokens, key=key), model)


def unrolled_program(layers: int):
    block_keys = stoax.keys.derive(jax.random.key(0), *range(layers))
    model = stoax.nn.Sequential(
        [
            stoax.nn.Embedding(VOCAB, FEATURES, key=jax.random.key(1)),
            stoax.nn.Dropout(0.1),
            *(stoax.nn.TransformerBlock(FEATURES, HEADS, causal=True, key=k) for k in block_keys),
            stoax.nn.LayerNorm(FEATURES),
            stoax.nn.Linear(FEATURES, VOCAB, key=jax.random.key(2)),
        ]
    )
    return training_step(lambda m, tokens, key: m(tokens, key=key), model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}; median of {args.repeats}")
    print(
        f"{'program':10s} {'layers':>6s} {'equations':>10s} {'draws':>6s} "
        f"{'first s':>8s} {'median s':>9s}"
    )
    for name, build in (("stack", stack_program), ("unrolled", unrolled_program)):
        reports = []
        for _ in range(args.repeats):
            report = stoax.audit(*_flatten(build(args.layers)))
            if not report.ok:
                raise SystemExit(f"unexpected findings on correct code:\n{report}")
            reports.append(report)
        seconds = statistics.median(r.seconds for r in reports)
        print(
            f"{name:10s} {args.layers:6d} {report.num_equations:10d} {report.num_draws:6d} "
            f"{reports[0].seconds:8.2f} {seconds:9.2f}"
        )


def _flatten(program):
    step, step_args = program
    return (step, *step_args)


if __name__ == "__main__":
    main()
