"""The noise distributions against SciPy and closed forms: Gamma draws, sum-of-Gamma, logistic, zero-mean Gumbel.

Statistical checks use fixed seeds. Kolmogorov-Smirnov statistics are compared with
the 1 % critical value 1.63/√n; moments with 5 standard errors estimated from the
same draws.
"""

import math

import numpy as np
import pytest
import scipy.stats as st
import tensorflow as tf

import tf_perturbed as tp

N = 40000
KS_CRITICAL = 1.63 / math.sqrt(N)  # the 1 % level of the one-sample KS test


def _assert_mean(draws, expected, what):
    stderr = draws.std(ddof=1) / math.sqrt(len(draws))
    assert abs(draws.mean() - expected) < 5 * stderr, (what, draws.mean(), expected, stderr)


def _assert_variance(draws, expected, what):
    centred = (draws - draws.mean()) ** 2
    stderr = centred.std(ddof=1) / math.sqrt(len(draws))
    assert abs(centred.mean() - expected) < 5 * stderr, (what, centred.mean(), expected, stderr)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 2.5])
def test_gamma_draws_follow_scipys_gamma_and_compile_with_xla(alpha):
    seed = tf.constant([3, 4])

    def draw(seed):
        return tp.noise.stateless_gamma([N], alpha, seed, tf.float64)

    eager = draw(seed).numpy()
    assert st.kstest(eager, st.gamma(alpha).cdf).statistic < KS_CRITICAL
    xla = tf.function(draw, jit_compile=True)(seed).numpy()  # tf.random.stateless_gamma has no XLA kernel
    np.testing.assert_allclose(xla, eager, rtol=1e-9, atol=1e-12)  # the rounding of ndtri
    np.testing.assert_array_equal(draw(seed).numpy(), eager)  # same seed, same draws
    assert not np.array_equal(draw(tf.constant([3, 5])).numpy(), eager)


@pytest.mark.parametrize("k", [1, 3])
def test_sum_of_gamma_has_the_moments_of_its_truncated_series(k):
    # Z = (Σ_{i≤s} G_i − log s)/κ, G_i ~ Gamma(1/κ, rate i/κ): E[G_i] = 1/i, Var[G_i] = κ/i²,
    # so E[Z] = (H_s − log s)/κ and Var[Z] = Σ_i 1/(κ i²); a sum of κ draws has mean
    # H_s − log s and variance Σ_i 1/i² (the Gumbel's γ and π²/6 as s → ∞).
    s = 10
    harmonic, squares = sum(1 / i for i in range(1, s + 1)), sum(1 / i**2 for i in range(1, s + 1))
    z = tp.noise.SumOfGamma(k=k, num_terms=s).sample([N, k], tf.constant([1, 2]), tf.float64).numpy()
    _assert_mean(z[:, 0], (harmonic - math.log(s)) / k, "one draw")
    _assert_variance(z[:, 0], squares / k, "one draw")
    total = z.sum(1)
    _assert_mean(total, harmonic - math.log(s), "sum of κ")
    _assert_variance(total, squares, "sum of κ")
    # the sum of κ draws is that of s independent Exp(i)/i, shifted: its exact law by simulation in NumPy
    rng = np.random.default_rng(0)
    reference = (rng.exponential(size=(N, s)) / np.arange(1, s + 1)).sum(1) - math.log(s)
    assert st.ks_2samp(total, reference).statistic < 1.63 * math.sqrt(2 / N)


def test_sum_of_gamma_with_many_terms_sums_to_a_gumbel():
    n = N // 2
    total = tp.noise.SumOfGamma(k=2, num_terms=100).sample([n, 2], tf.constant([5, 6]), tf.float64).numpy().sum(1)
    # truncation at s = 100 shifts the mean by ≈ 1/(2s) = 0.005, the CDF by < 0.37 × 0.005 (the
    # Gumbel density is at most 1/e): far below the KS resolution 1.63/√n = 0.012
    assert st.kstest(total, st.gumbel_r.cdf).statistic < 1.63 / math.sqrt(n)


@pytest.mark.parametrize(
    "name, law",
    [("logistic", st.logistic), ("zero_mean_gumbel", st.gumbel_r(loc=-np.euler_gamma))],
)
def test_logistic_and_zero_mean_gumbel_follow_scipy_and_their_grad_log_density_is_minus_its_derivative(name, law):
    noise = tp.noise.get_noise(name)
    z = noise.sample([N], tf.constant([7, 8]), tf.float64).numpy()
    assert st.kstest(z, law.cdf).statistic < KS_CRITICAL
    _assert_mean(z, 0.0, name)
    points = np.linspace(-4.0, 6.0, 41)
    h = 1e-5
    derivative = (law.logpdf(points + h) - law.logpdf(points - h)) / (2 * h)
    got = noise.grad_log_density(tf.constant(points)).numpy()
    np.testing.assert_allclose(got, -derivative, rtol=1e-7, atol=1e-8)


def test_logistic_perturbed_step_is_the_sigmoid_with_its_jacobian():
    # y*(θ) = 1[θ > 0] maximises ⟨y, θ⟩ over {0, 1}^d; with logistic noise of scale ε,
    # E[y*(θ + εZ)] = sigmoid(θ/ε) and its Jacobian is diag(sigmoid'(θ/ε))/ε: the Monte-Carlo
    # Jacobian uses ∇ν(z) = tanh(z/2). Means of 2000 rows × 50 samples, 5 standard errors.
    theta, sigma, rows = np.array([-1.0, -0.2, 0.3, 1.5]), 0.7, 2000
    g = np.array([1.0, -2.0, 0.5, 3.0])
    op = tp.perturbed(lambda t: tf.cast(t > 0, t.dtype), num_samples=50, sigma=sigma, noise="logistic", seed=4)
    batch = tf.constant(np.tile(theta, (rows, 1)))
    with tf.GradientTape() as tape:
        tape.watch(batch)
        y = op(batch)
        value = tf.reduce_sum(y * g)
    grads, y = tape.gradient(value, batch).numpy(), y.numpy()
    p = 1 / (1 + np.exp(-theta / sigma))
    for got, exact in ((y, p), (grads, g * p * (1 - p) / sigma)):
        stderr = got.std(0, ddof=1) / math.sqrt(rows)
        assert np.all(np.abs(got.mean(0) - exact) < 5 * stderr), (got.mean(0), exact, stderr)
        assert np.abs(exact).max() > 10 * stderr.max()  # a zero estimate would fail


def test_zero_mean_gumbel_argmax_is_softmax_with_its_jacobian():
    theta, sigma, rows = np.array([0.3, 1.2, -0.4, 0.8]), 0.5, 2000
    g = np.array([1.0, -2.0, 0.5, 3.0])
    op = tp.perturbed("argmax", num_samples=20, sigma=sigma, noise="zero_mean_gumbel", seed=9)
    batch = tf.constant(np.tile(theta, (rows, 1)))
    with tf.GradientTape() as tape:
        tape.watch(batch)
        value = tf.reduce_sum(op(batch) * g)
    grads = tape.gradient(value, batch).numpy()
    p = np.exp(theta / sigma) / np.exp(theta / sigma).sum()
    exact = p * (g - p @ g) / sigma
    stderr = grads.std(0, ddof=1) / math.sqrt(rows)
    assert np.all(np.abs(grads.mean(0) - exact) < 5 * stderr), (grads.mean(0), exact, stderr)


def test_noise_without_a_density_is_refused_where_the_jacobian_needs_it():
    for make in (lambda: tp.PerturbedArgmax(noise="sum_of_gamma"), lambda: tp.FenchelYoungLoss(noise="sum_of_gamma"),
                 lambda: tp.perturbed("argmax", noise="sum_of_gamma")):
        with pytest.raises(ValueError, match="noise='sum_of_gamma'"):
            make()
    with pytest.raises(NotImplementedError, match="no closed-form density"):
        tp.noise.SumOfGamma().grad_log_density(tf.zeros([2]))
    with pytest.raises(ValueError, match="k=0"):
        tp.noise.SumOfGamma(k=0)
    with pytest.raises(ValueError, match="num_terms=0"):
        tp.noise.SumOfGamma(num_terms=0)
    assert {"normal", "gumbel", "zero_mean_gumbel", "logistic", "sum_of_gamma"} <= set(tp.noise.registered_noises())
    # the estimators that only draw noise take it
    tp.DirectLossGradient("argmax", sigma=1.0, noise="sum_of_gamma")
    tp.LearnedNoiseScale(noise="sum_of_gamma")
