"""Layer names in HLO (jax.named_scope per layer), stoax.tabulate and stoax.count_params."""

from __future__ import annotations

import jax
import jax.numpy as jnp

import stoax


def test_each_layer_is_a_named_scope_in_the_lowered_program():
    model = stoax.nn.Sequential([stoax.nn.Linear(4, 4, key=jax.random.key(0)), jax.nn.relu])
    text = jax.jit(lambda m, x: m(x)).lower(model, jnp.ones(4)).as_text(debug_info=True)
    assert "Sequential/Linear/dot_general" in text


def test_tabulate_counts_every_layer_and_the_stack():
    model = stoax.nn.Sequential(
        [
            stoax.nn.Linear(2, 8, key=jax.random.key(0)),
            stoax.nn.Stack.build(
                lambda k: stoax.nn.Sequential(
                    [stoax.nn.Linear(8, 8, key=k), stoax.nn.Dropout(0.1)]
                ),
                2,
                key=jax.random.key(1),
            ),
            stoax.nn.Linear(8, 3, key=jax.random.key(2)),
        ]
    )
    table = stoax.tabulate(model, jnp.zeros((1, 4, 2)), key=jax.random.key(3))
    lines = table.splitlines()
    assert lines[0].split() == ["path", "type", "output", "params", "bytes"]
    total = stoax.count_params(model)
    assert total == sum(x.size for x in jax.tree.leaves(stoax.partition(model)[0]))
    assert total == 2 * 8 + 8 + 2 * (8 * 8 + 8) + 8 * 3 + 3
    assert lines[2].split()[:2] == ["(model)", "Sequential"]
    assert lines[2].split()[-3] == str(total)
    rows = {line.split()[0]: line for line in lines[2:-1]}
    assert "float32[1, 4, 3]" in rows["layers[2]"] and rows["layers[2]"].split()[-3] == "27"
    assert "float32[1, 4, 8]" in rows["layers[1]"] and rows["layers[1]"].split()[-3] == "144"
    assert rows["layers[1].layers"].split()[1] == "Sequential"  # inside the scan: no shape
    assert lines[-1] == f"total: {total} parameters, {total * 4} B"
