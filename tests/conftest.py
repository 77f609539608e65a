"""Test-wide settings.

Every test runs with ``jax_debug_key_reuse`` enabled, so a key consumed twice anywhere in stoax
fails the suite. Tests that reuse keys on purpose (the auditor reproducing users' bugs) opt out
with ``@pytest.mark.allow_key_reuse``.

``STOAX_TEST_PRNG_IMPL`` (threefry2x32, rbg, unsafe_rbg) runs the whole suite with another default
PRNG implementation.
"""

import os

import jax
import pytest

jax.config.update("jax_default_prng_impl", os.environ.get("STOAX_TEST_PRNG_IMPL", "threefry2x32"))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "allow_key_reuse: run without jax_debug_key_reuse (the test reuses keys on purpose)",
    )
    config.addinivalue_line(
        "markers", "slow: a long end-to-end test (still run in CI; -m 'not slow' skips it)"
    )


@pytest.fixture(autouse=True)
def _debug_key_reuse(request):
    enabled = request.node.get_closest_marker("allow_key_reuse") is None
    with jax.debug_key_reuse(enabled):
        yield
