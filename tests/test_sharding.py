"""Sharding: masks are the same on every mesh, and random numbers add no communication.

Multi-device code needs ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX starts,
and the rest of the suite runs on one device, so every test here runs a script from
``tests/sharding_cases/`` in a subprocess (8 simulated CPU devices) and reads its JSON output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CASES = Path(__file__).parent / "sharding_cases"
MESHES = ("1", "8", "4x2")  # one device, an (8,) data mesh, a (4, 2) data x model mesh


def run_case(script: str, *args: str, env: dict[str, str] | None = None) -> dict:
    full_env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    full_env.pop("XLA_FLAGS", None)  # the script sets its own
    proc = subprocess.run(
        [sys.executable, str(CASES / script), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def equivalence() -> dict:
    return run_case("mlp_step.py", "equivalence")


def test_masks_are_bitwise_the_same_on_every_mesh(equivalence):
    assert equivalence["threefry_partitionable"]
    digests = {equivalence[m]["mask"] for m in MESHES}
    assert len(digests) == 1, equivalence
    assert 0.4 < equivalence["1"]["keep_fraction"] < 0.6  # a real rate-0.5 mask, not all-ones


def test_loss_and_gradients_are_bitwise_the_same_on_every_mesh(equivalence):
    # Exact-arithmetic data and weights: reduction order cannot change a bit, so any difference
    # between meshes would come from the masks (dropout's forward and its regenerated backward).
    exact = [equivalence[m]["exact"] for m in MESHES]
    assert all(e == exact[0] for e in exact), exact


def test_float_losses_agree_across_meshes_over_training_steps(equivalence):
    # Ordinary floats: a mesh sums partial results in another order (all-reduce), so losses may
    # differ in the last bits -- as they do without dropout. A different mask would move the loss
    # by percents, not by 1e-6.
    ref = equivalence["1"]["float"]["losses"]
    for m in MESHES[1:]:
        losses = equivalence[m]["float"]["losses"]
        assert losses == pytest.approx(ref, rel=1e-5), (m, losses, ref)
    assert len(set(ref)) == len(ref)  # three different steps: keys change with the step


def test_random_numbers_add_no_collectives():
    # The draw itself (forward, and backward by plain autodiff) is shard-local.
    out = run_case("mlp_step.py", "collectives", "--plain-autodiff")
    assert out["threefry_partitionable"] and out["warnings"] == []
    for mesh in ("8", "4x2"):
        assert out[f"{mesh}/on"] == out[f"{mesh}/off"], out
    assert out["8/on"]["all-reduce"] >= 1  # the data-parallel gradient sum: sharding is real
    assert out["4x2/on"]["all-reduce"] > out["8/on"]["all-reduce"]  # plus tensor parallelism


def test_mask_regeneration_adds_no_collectives():
    out = run_case("mlp_step.py", "collectives")  # the default: mask regenerated in backward
    for mesh in ("8", "4x2"):
        assert out[f"{mesh}/on"] == out[f"{mesh}/off"], out


def test_counting_sees_rng_communication_when_threefry_is_not_partitionable():
    # The counter is not blind: with jax_threefry_partitionable off, the same step gathers its
    # random bits, and stoax.sharding warns about it.
    out = run_case("mlp_step.py", "collectives", env={"JAX_THREEFRY_PARTITIONABLE": "0"})
    assert not out["threefry_partitionable"]
    for mesh in ("8", "4x2"):
        on, off = out[f"{mesh}/on"], out[f"{mesh}/off"]
        assert sum(on.values()) > sum(off.values()), out
    assert any("jax_threefry_partitionable is False" in w for w in out["warnings"])


def test_shard_map_with_example_keys_matches_one_device():
    out = run_case("mlp_step.py", "shard_map")
    for mesh in ("8", "4x2"):
        good, shared = out[mesh]["example_keys"], out[mesh]["shared_key"]
        # keys by global example index: masks and (exact) losses as on one device
        assert good["mask"] == out["1"]["mask"] and good["losses"] == out["1"]["losses"]
        assert not good["shards_repeat"]
        # the pitfall: the same key on every shard repeats the masks shard after shard
        assert shared["shards_repeat"] and shared["mask"] != out["1"]["mask"]


def _has_audit() -> bool:
    try:
        from stoax.audit import audit  # noqa: F401
    except ImportError:
        return False
    return True


needs_audit = pytest.mark.skipif(not _has_audit(), reason="stoax.audit is not in the package yet")


@pytest.fixture(scope="module")
def audit_sharded() -> dict:
    return run_case("audit_sharded.py")


@needs_audit
def test_audit_has_no_false_positive_on_sharded_steps(audit_sharded):
    assert audit_sharded["jit_sharded_step"] == [], audit_sharded  # jit with (4, 2) shardings
    assert audit_sharded["shard_map_step"] == [], audit_sharded  # shard_map + example_keys


@needs_audit
def test_audit_catches_a_constant_key_in_sharded_functions(audit_sharded):
    assert audit_sharded["jit_sharded_constant_key"] == ["constant_key"], audit_sharded
    assert audit_sharded["shard_map_constant_key"] == ["constant_key"], audit_sharded


@needs_audit
def test_audit_catches_a_constant_key_in_stoax_dropout_under_shard_map(audit_sharded):
    assert audit_sharded["shard_map_constant_key_stoax"] == ["constant_key"], audit_sharded
