"""Independence check for dropout masks, with a tolerance derived from the binomial bound.

Derivation. Let ``a`` and ``b`` be two boolean keep-masks of ``n`` elements, each element kept
with probability ``p`` (exact to 2**-32 in stoax's primitive). If the masks are independent, the
number of positions kept by both, ``K = sum(a & b)``, is Binomial(n, q) with ``q = p**2``: mean
``n q``, standard deviation ``sqrt(n q (1 - q))``. The fraction ``K / n`` therefore has standard
deviation ``sigma = sqrt(q (1 - q) / n)``, and by the normal approximation to the binomial
(accurate here: ``n q`` is in the thousands) ``P(|K/n - q| > z sigma)`` is about ``2 Phi(-z)``.
With ``z = 6`` that is 2e-9 per pair; over at most 28 pairs in a test (8 masks), the union bound
keeps a false failure below 6e-8. The same bound with ``q = p`` checks each mask's own keep rate.
The seeds are fixed, so the tests are deterministic; the bound says they are not tuned to pass.

What it catches: two masks drawn from the same key agree everywhere, ``K/n = p = 0.5`` instead of
``q = 0.25`` -- 80 sigma away for ``n = 20_000``; two masks from keys that differ only in a way
the generator ignores would show the same. A constant shift of the keep rate by 0.02 shows up as
well (the marginal check: sigma = 0.0035).
"""

from __future__ import annotations

import itertools

import numpy as np

Z = 6.0


def assert_independent(masks: np.ndarray, keep: float) -> None:
    """``masks``: (copies, n) booleans, each element True with probability ``keep``."""
    masks = np.asarray(masks, bool).reshape(len(masks), -1)
    n = masks.shape[1]
    sigma_1 = np.sqrt(keep * (1 - keep) / n)
    for i, m in enumerate(masks):
        assert abs(m.mean() - keep) < Z * sigma_1, (i, m.mean(), keep, sigma_1)
    q = keep * keep
    sigma_2 = np.sqrt(q * (1 - q) / n)
    for i, j in itertools.combinations(range(len(masks)), 2):
        both = (masks[i] & masks[j]).mean()
        assert abs(both - q) < Z * sigma_2, (i, j, both, q, sigma_2)
