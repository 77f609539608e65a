"""MC dropout: ``n`` passes equal the Python loop with the same keys, masks are independent
across passes, and on the digits MLP the predictive entropy rises on noised inputs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _independence import assert_independent

import stoax
from stoax import keys
from stoax.inference import mc_predict, mc_samples


@pytest.fixture(scope="module")
def mlp():
    return stoax.eval_mode(stoax.nn.MLP(6, 4, hidden=(32, 32), dropout=0.3, key=jax.random.key(0)))


def test_passes_equal_the_python_loop_bitwise(mlp):
    """Both sides in one jitted program (as the Stack and Ensemble tests): the passes are
    vmapped / chunked, the loop is written out pass by pass with keys.child(key, i)."""
    x = jax.random.normal(jax.random.key(1), (5, 6))

    @jax.jit
    def both(model, x, key):
        on = stoax.train_mode(model)
        loop = jnp.stack([on(x, key=keys.child(key, i)) for i in range(6)])
        vmapped = mc_samples(model, x, key=key, n=6)
        chunked = mc_samples(model, x, key=key, n=6, chunk_size=4)  # 4 + 2
        return vmapped, chunked, loop

    ys, chunked, loop = both(mlp, x, jax.random.key(2))
    np.testing.assert_array_equal(ys, loop)
    np.testing.assert_array_equal(chunked, loop)
    assert not np.array_equal(ys[0], ys[1])


def test_masks_are_independent_across_passes():
    """Binomial bound (tests/_independence.py): 8 masks of 20_000 elements, keep 0.5."""
    model = stoax.nn.Sequential([stoax.nn.Dropout(0.5)])
    ys = mc_samples(stoax.eval_mode(model), jnp.ones(20_000), key=jax.random.key(3), n=8)
    assert_independent(np.asarray(ys) != 0, keep=0.5)


def test_only_stochastic_layers_are_switched_on(mlp):
    pred = mc_predict(mlp, jnp.ones((3, 6)), key=jax.random.key(4), n=4)
    assert float(pred.mutual_information.max()) > 0  # the passes differ: dropout was on
    np.testing.assert_allclose(pred.probs.sum(-1), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="holds none"):
        mc_samples(
            stoax.nn.Linear(6, 4, key=jax.random.key(0)), jnp.ones(6), key=jax.random.key(0), n=2
        )


def test_audit_finds_nothing_in_mc_predict(mlp):
    def predict(model, x, key):
        return mc_predict(model, x, key=key, n=4).predictive_entropy

    report = stoax.audit(predict, mlp, jnp.ones((3, 6)), jax.random.key(0))
    assert report.ok, report


def test_digits_entropy_rises_on_noised_inputs():
    """Train a small digits MLP (dropout 0.3) for 300 full-batch Adam steps, then compare the
    MC-dropout predictive entropy on the clean test images with the same images plus Gaussian
    noise (std 0.5 on pixels in [0, 1])."""
    from stoax.examples import digits

    train, test = digits.load_data(seed=0)
    model = stoax.nn.MLP(64, 10, hidden=(128,), dropout=0.3, key=jax.random.key(0))
    tx = optax.adam(3e-3)
    params, rest = stoax.partition(model)

    @jax.jit
    def fit(params):
        def step(carry, i):
            params, opt = carry

            def loss(params):
                logits = stoax.combine(params, rest)(train["x"], key=stoax.step_key(0, i))
                return optax.softmax_cross_entropy_with_integer_labels(logits, train["y"]).mean()

            g = jax.grad(loss)(params)
            updates, opt = tx.update(g, opt, params)
            return (optax.apply_updates(params, updates), opt), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), jnp.arange(300))
        return params

    model = stoax.eval_mode(stoax.combine(fit(params), rest))
    accuracy = float((model(test["x"]).argmax(-1) == test["y"]).mean())
    noised = test["x"] + 0.5 * jax.random.normal(jax.random.key(5), test["x"].shape)
    predict = jax.jit(lambda model, x, key: mc_predict(model, x, key=key, n=20))
    clean, noisy = (
        predict(model, test["x"], jax.random.key(6)),
        predict(model, noised, jax.random.key(7)),
    )
    h_clean, h_noisy = (
        float(clean.predictive_entropy.mean()),
        float(noisy.predictive_entropy.mean()),
    )
    mi_clean, mi_noisy = (
        float(clean.mutual_information.mean()),
        float(noisy.mutual_information.mean()),
    )
    print(
        f"\ndigits MLP: test accuracy {accuracy:.3f}; predictive entropy clean {h_clean:.3f} "
        f"noised {h_noisy:.3f} nats; mutual information clean {mi_clean:.4f} noised {mi_noisy:.4f}"
    )
    assert accuracy > 0.9
    assert h_noisy > 2 * h_clean and mi_noisy > mi_clean
