"""Implicit MLE against its definition: hand-computed differences, the noise it documents, and a closed form.

The layer's contract (config, `.keras`, export, seeds, mixed precision, XLA fit) is
in tests/test_layer_contract.py; here the maths.
"""

import math

import numpy as np
import pytest
import references
import tensorflow as tf

import tf_perturbed as tp


def _top_k(theta, k):
    """0/1 indicators of the k largest entries per row (continuous θ: no ties), NumPy."""
    out = np.zeros_like(theta)
    np.put_along_axis(out, np.argsort(-theta, axis=-1)[..., :k], 1.0, axis=-1)
    return out


def _gradient(fn, theta, g, **kwargs):
    theta = tf.constant(theta)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        y = fn(theta, **kwargs)
        value = tf.reduce_sum(y * g)
    return y.numpy(), tape.gradient(value, theta).numpy()


@pytest.mark.parametrize("two_sided", [False, True])
@pytest.mark.parametrize("rescale", [True, False])
def test_without_noise_the_gradient_is_the_difference_towards_the_target(two_sided, rescale):
    rng = np.random.default_rng(0)
    theta, g, lam = rng.normal(size=(64, 6)), rng.normal(size=(64, 6)), 0.8
    fn = tp.implicit_mle("top_k", lambda_=lam, sigma=0.0, two_sided=two_sided, rescale=rescale,
                         solver_kwargs={"k": 2})
    y, grad = _gradient(fn, theta, g)
    np.testing.assert_array_equal(y, _top_k(theta, 2))
    if two_sided:
        expected = (_top_k(theta + lam * g, 2) - _top_k(theta - lam * g, 2)) / 2
    else:
        expected = _top_k(theta, 2) - _top_k(theta - lam * g, 2)
    np.testing.assert_allclose(grad, expected / lam if rescale else expected, rtol=1e-12)
    assert np.abs(grad).max() > 0


def test_normalised_step_is_relative_to_the_largest_upstream_entry():
    rng = np.random.default_rng(1)
    theta, g, lam = rng.normal(size=(32, 6)), rng.normal(size=(32, 6)) * 1e-3, 0.5
    a = np.abs(g).max(-1, keepdims=True)
    fn = tp.implicit_mle("top_k", lambda_=lam, sigma=0.0, normalize="max_abs", solver_kwargs={"k": 3})
    _, grad = _gradient(fn, theta, g)
    np.testing.assert_allclose(grad, a * (_top_k(theta, 3) - _top_k(theta - lam * g / a, 3)) / lam, rtol=1e-12)
    assert np.abs(grad).max() > 0


def test_minimising_shortest_paths_move_towards_cheaper_costs_clipped_to_the_domain():
    # Costs c: target c + λg (clipped at 0), ∂L/∂c ≈ (y*(max(c + λg, 0)) − y*(c))/λ; paths
    # checked against the textbook Dijkstra's costs.
    rng = np.random.default_rng(2)
    costs, g, lam = rng.uniform(0.2, 2.0, size=(16, 5, 5)), rng.normal(size=(16, 5, 5)), 1.5
    fn = tp.implicit_mle("shortest_path", lambda_=lam, sigma=0.0)
    y, grad = _gradient(fn, costs, g)
    target = np.maximum(costs + lam * g, 0.0)
    assert np.any(costs + lam * g < 0)  # the clip is exercised
    y_target = tp.solvers.shortest_path(tf.constant(target)).numpy()
    np.testing.assert_allclose((y * costs).sum((1, 2)), [references.dijkstra(c) for c in costs], rtol=1e-12)
    np.testing.assert_allclose((y_target * target).sum((1, 2)), [references.dijkstra(c) for c in target],
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad, (y_target - y) / lam, rtol=1e-12)
    assert np.abs(grad).max() > 0


def test_with_noise_the_op_is_the_documented_mean_over_sum_of_gamma_draws():
    # S = 3 draws of the public SumOfGamma(k=2) noise with the op's seed: the forward pass is
    # the mean of the perturbed top-2 states, the gradient the mean of the differences.
    rng = np.random.default_rng(3)
    theta, g, lam, tau, samples = rng.normal(size=(8, 6)), rng.normal(size=(8, 6)), 2.0, 0.5, 3
    seed = tf.constant([5, 6])
    fn = tp.implicit_mle("top_k", lambda_=lam, sigma=tau, num_samples=samples, solver_kwargs={"k": 2})
    y, grad = _gradient(fn, theta, g, seed=seed)
    gamma = tp.noise.SumOfGamma(k=2).sample([samples, *theta.shape], seed, tf.float64).numpy()
    noisy = theta + tau * gamma  # [S, 8, 6]
    np.testing.assert_allclose(y, _top_k(noisy, 2).mean(0), rtol=1e-12)
    np.testing.assert_allclose(grad, (_top_k(noisy, 2) - _top_k(noisy - lam * g, 2)).mean(0) / lam, rtol=1e-12)
    assert not np.array_equal(y, _top_k(theta, 2))  # the noise moved some states


def test_gumbel_argmax_gradient_is_the_exact_difference_of_softmaxes_in_expectation():
    # With standard Gumbel noise of scale τ, E[y*(θ + τγ)] = softmax(θ/τ) for every θ, so the
    # mean of the one-sided estimate is exactly (softmax(θ/τ) − softmax((θ − λg)/τ))/λ, at any λ.
    # Standard errors: |y − y'| ≤ 1 per coordinate with P(y_i ≠ y'_i) ≤ p_i + p'_i, so the
    # estimate's standard deviation is at most √(p_i + p'_i)/λ; 5 of those errors at S draws.
    theta, g, tau, lam, samples = np.array([0.0, 0.5, 1.0, -0.5]), np.array([1.0, 0.0, -1.0, 0.5]), 1.0, 1.0, 40000
    fn = tp.implicit_mle("argmax", lambda_=lam, sigma=tau, num_samples=samples, noise="gumbel")
    y, grad = _gradient(fn, theta[None], g[None], seed=7)

    def softmax(t):
        e = np.exp(t - t.max())
        return e / e.sum()

    p, p_target = softmax(theta / tau), softmax((theta - lam * g) / tau)
    np.testing.assert_array_less(np.abs(y[0] - p), 5 * np.sqrt(p * (1 - p) / samples))
    exact = (p - p_target) / lam
    bound = 5 * np.sqrt((p + p_target) / samples) / lam
    np.testing.assert_array_less(np.abs(grad[0] - exact), bound)
    assert np.abs(exact).max() > 4 * bound.max()  # a zero or sign-flipped gradient would fail


def test_sum_of_gamma_is_bound_to_the_solvers_k_or_to_kappa():
    assert tp.ImplicitMLE("top_k", solver_kwargs={"k": 3}).config.noise.k == 3
    assert tp.ImplicitMLE("top_k", kappa=5, solver_kwargs={"k": 3}).config.noise.k == 5
    assert tp.ImplicitMLE("argmax").config.noise.k == 1
    assert tp.ImplicitMLE("top_k", kappa=5, solver_kwargs={"k": 3}).get_config()["noise"] == "sum_of_gamma"
    with pytest.raises(ValueError, match="kappa=2.0 with noise='gumbel'"):
        tp.ImplicitMLE("argmax", kappa=2, noise="gumbel")


def test_bad_arguments_and_second_derivatives_raise_naming_them():
    for kwargs, error, match in (
        ({"lambda_": 0.0}, ValueError, "lambda_=0.0"),
        ({"lambda_": math.inf}, ValueError, "lambda_=inf"),
        ({"num_samples": 0}, ValueError, "num_samples=0"),
        ({"sigma": -1.0}, ValueError, "sigma=-1.0"),
        ({"two_sided": "yes"}, TypeError, "two_sided='yes'"),
        ({"normalize": "l2"}, ValueError, "normalize='l2'"),
        ({"noise": "cauchy"}, ValueError, "noise='cauchy'"),
    ):
        with pytest.raises(error, match=match):
            tp.ImplicitMLE("argmax", **kwargs)
    with pytest.raises(ValueError, match="^Implicit MLE solves again.*shape of its input.*'sort_permutation'"):
        tp.ImplicitMLE("sort_permutation")
    with pytest.raises(ValueError, match="^Direct loss minimization solves again.*'sort_permutation'"):
        tp.DirectLossGradient("sort_permutation")
    theta = tf.constant([[0.3, 1.0, -0.2]])
    fn = tp.implicit_mle("argmax", sigma=0.0)
    with tf.GradientTape() as outer:
        outer.watch(theta)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            value = tf.reduce_sum(fn(theta) * [[1.0, 2.0, 3.0]])
        first = inner.gradient(value, theta)
    with pytest.raises(Exception, match="implicit-MLE"):
        outer.gradient(first, theta)


def test_layer_learns_top_k_subsets_in_model_fit():
    # End to end: scores linear in features, targets their top-2 sets; a linear model trained
    # through the layer with an MSE on the subsets gets most sets right.
    import keras

    rng = np.random.default_rng(8)
    x = rng.normal(size=(1024, 5)).astype("float32")
    targets = _top_k(x @ rng.normal(size=(5, 8)), 2).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8),
                              tp.ImplicitMLE("top_k", lambda_=1.0, normalize="max_abs", seed=0, solver_kwargs={"k": 2})])
    model.compile(keras.optimizers.Adam(0.05), "mse", jit_compile=True)

    def exact_sets():
        return float(np.mean(np.all(model.predict(x, verbose=0) == targets, axis=1)))

    before = exact_sets()
    model.fit(x, targets, epochs=6, batch_size=64, verbose=0)
    after = exact_sets()
    assert after > 0.8 and after > before + 0.3, (before, after)
