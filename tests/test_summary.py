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
    model = stoax.nn.TransformerEncoder(
        vocab_size=10, out_features=3, features=8, num_heads=2, num_layers=2, max_len=4,
        key=jax.random.key(0),
    )  # fmt: skip
    table = stoax.tabulate(stoax.eval_mode(model), jnp.zeros((1, 4), jnp.int32))
    lines = table.splitlines()
    assert lines[0].split() == ["path", "type", "output", "params", "bytes"]
    total = stoax.count_params(model)
    assert total == sum(x.size for x in jax.tree.leaves(stoax.partition(model)[0]))
    assert lines[2].split()[:3] == ["(model)", "TransformerEncoder", "float32[1,"]
    assert lines[2].split()[-3] == str(total)
    assert any(line.startswith("head ") and "float32[1, 4, 3]" in line for line in lines)
    assert lines[-1] == f"total: {total} parameters, {total * 4 / 1024:.1f} KiB"
