"""The perturbed maximizer, perturbed maximum and Fenchel-Young loss against closed forms.

Tolerances: every Monte-Carlo quantity is compared with `Z_SCORE` standard
errors of its estimator. The standard error is either exact (Bernoulli
frequencies: sqrt(p(1−p)/n); the maximum of Gumbels: σπ/sqrt(6n)) or measured
from independent replicas (the example is repeated N times in the batch, each
row gets its own noise, and the spread of the N row estimates gives the
standard error of their mean). With 5 standard errors a correct estimator
fails a comparison with probability below 1e-6; the seeds are fixed.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp

Z_SCORE = 5.0
EULER = 0.5772156649015329


def _replicated_grad(op, theta, g, rows):
    """Per-row VJP estimates for `theta` repeated `rows` times: `[rows, d]`."""
    theta_rows = tf.tile(tf.constant(theta[None], tf.float64), [rows, 1])
    with tf.GradientTape() as tape:
        tape.watch(theta_rows)
        y = op(theta_rows)
        value = tf.reduce_sum(y * tf.constant(g[None], tf.float64))
    return tape.gradient(value, theta_rows).numpy(), y.numpy()


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def _softmax_vjp(theta, sigma, g):
    p = _softmax(theta / sigma)
    return p * (g - np.dot(p, g)) / sigma


def _assert_mean_close(estimates, expected, what):
    mean = estimates.mean(0)
    stderr = estimates.std(0, ddof=1) / math.sqrt(len(estimates))
    np.testing.assert_array_less(np.abs(mean - expected), Z_SCORE * stderr + 1e-12, err_msg=what)


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_gumbel_perturbed_argmax_is_softmax(sigma):
    theta = np.array([0.3, 1.2, -0.4, 0.8])
    num_samples = 200_000
    op = tp.perturbed("argmax", num_samples=num_samples, sigma=sigma, noise="gumbel", seed=11)
    got = op(tf.constant(theta[None], tf.float64)).numpy()[0]
    p = _softmax(theta / sigma)
    stderr = np.sqrt(p * (1 - p) / num_samples)  # Bernoulli frequency
    np.testing.assert_array_less(np.abs(got - p), Z_SCORE * stderr)


@pytest.mark.parametrize("control_variate", [True, False])
def test_gumbel_perturbed_argmax_vjp_is_softmax_vjp(control_variate):
    theta, sigma = np.array([0.3, 1.2, -0.4, 0.8]), 0.7
    g = np.array([1.0, -2.0, 0.5, 3.0])
    op = tp.perturbed("argmax", num_samples=100, sigma=sigma, noise="gumbel",
                      control_variate=control_variate, seed=3)
    grads, _ = _replicated_grad(op, theta, g, rows=4000)
    _assert_mean_close(grads, _softmax_vjp(theta, sigma, g), "VJP vs softmax VJP")


def test_normal_perturbed_argmax_two_classes_is_gaussian_cdf():
    # With d = 2: ŷ_1 = Φ(Δ/(σ√2)), dŷ_1/dθ_1 = φ(Δ/(σ√2))/(σ√2), Δ = θ_1 − θ_2.
    theta, sigma = np.array([0.4, -0.1]), 0.8
    s = sigma * math.sqrt(2)
    delta = theta[0] - theta[1]
    p1 = 0.5 * (1 + math.erf(delta / s / math.sqrt(2)))
    density = math.exp(-0.5 * (delta / s) ** 2) / math.sqrt(2 * math.pi) / s
    op = tp.perturbed("argmax", num_samples=200, sigma=sigma, noise="normal", seed=5)
    grads, y = _replicated_grad(op, theta, np.array([1.0, 0.0]), rows=4000)
    mean_p1 = y[:, 0].mean()  # a frequency over rows × M = 800 000 independent draws
    assert abs(mean_p1 - p1) < Z_SCORE * math.sqrt(p1 * (1 - p1) / (y.shape[0] * 200))
    _assert_mean_close(grads, np.array([density, -density]), "Normal d=2 Jacobian")


@pytest.mark.parametrize("sigma", [0.5, 2.0])
def test_gumbel_perturbed_max_is_logsumexp(sigma):
    theta = np.array([[0.3, 1.2, -0.4, 0.8], [2.0, 0.0, 0.0, -3.0]])
    num_samples = 100_000
    op = tp.perturbed_max("argmax", num_samples=num_samples, sigma=sigma, noise="gumbel", seed=7)
    got = op(tf.constant(theta)).numpy()
    expected = sigma * np.log(np.exp(theta / sigma).sum(-1)) + sigma * EULER
    stderr = sigma * math.pi / math.sqrt(6 * num_samples)  # max of Gumbels is Gumbel
    np.testing.assert_array_less(np.abs(got - expected), Z_SCORE * stderr)


def test_perturbed_max_gradient_is_the_perturbed_argmax_with_the_same_noise():
    theta = tf.constant(np.random.default_rng(0).normal(size=(3, 6)), tf.float32)
    seed = tf.constant([4, 2], tf.int32)
    fmax = tp.perturbed_max("ranks", num_samples=50, sigma=0.5)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        value = tf.reduce_sum(fmax(theta, seed=seed))
    grad = tape.gradient(value, theta)
    y_hat = tp.perturbed("ranks", num_samples=50, sigma=0.5)(theta, seed=seed)
    np.testing.assert_allclose(grad.numpy(), y_hat.numpy(), rtol=1e-6)


def test_fenchel_young_loss_with_gumbel_noise_has_softmax_gradient_and_true_value():
    theta = np.array([[0.3, 1.2, -0.4, 0.8]])
    y = np.array([[0.0, 0.0, 1.0, 0.0]])
    sigma, num_samples = 0.6, 100_000
    theta_t = tf.constant(theta)
    with tf.GradientTape() as tape:
        tape.watch(theta_t)
        loss = tp.fenchel_young_loss(tf.constant(y), theta_t, "argmax", num_samples=num_samples,
                                     sigma=sigma, noise="gumbel", seed=1)
    grad = tape.gradient(loss, theta_t).numpy()[0]
    p = _softmax(theta[0] / sigma)
    np.testing.assert_array_less(np.abs(grad - (p - y[0])), Z_SCORE * np.sqrt(p * (1 - p) / num_samples))
    expected = sigma * np.log(np.exp(theta[0] / sigma).sum()) + sigma * EULER - theta[0] @ y[0]
    stderr = sigma * math.pi / math.sqrt(6 * num_samples)
    assert abs(loss.numpy()[0] - expected) < Z_SCORE * stderr


def test_small_sigma_gives_the_hard_solver():
    # Gaps between scores are ≥ 0.05 = 500 σ: a flip would need a 250-σ normal draw.
    theta = tf.constant(np.random.default_rng(2).permutation(20)[None] * 0.05, tf.float32)
    for name in ("argmax", "ranks"):
        soft = tp.perturbed(name, num_samples=20, sigma=1e-4, seed=0)(theta)
        np.testing.assert_array_equal(soft.numpy(), tp.solvers.get_solver(name)(theta).numpy())
    soft = tp.perturbed("top_k", num_samples=20, sigma=1e-4, seed=0, solver_kwargs={"k": 5})(theta)
    np.testing.assert_array_equal(soft.numpy(), tp.solvers.top_k(theta, 5).numpy())


def _paired_errors(theta, sigma, g, num_samples, variants):
    """Squared VJP errors per row for each control variate, with common random numbers."""
    exact = _softmax_vjp(theta, sigma, g)
    errors = {}
    for cv in variants:
        op = tp.perturbed("argmax", num_samples=num_samples, sigma=sigma, noise="gumbel",
                          control_variate=cv, seed=9)
        grads, _ = _replicated_grad(op, theta, g, rows=4000)
        errors[cv] = ((grads - exact) ** 2).sum(-1)
    return errors


def _assert_lower(errors_low, errors_high):
    # Paired test on the same noise: the mean reduction exceeds 5 standard errors.
    diff = errors_high - errors_low
    assert diff.mean() > Z_SCORE * diff.std(ddof=1) / math.sqrt(len(diff)), (errors_low.mean(), errors_high.mean())


def test_leave_one_out_control_variate_lowers_the_jacobian_error():
    # An upstream gradient with a common offset (Σ_i ∂ŷ_i = 0, so the exact VJP
    # ignores it) is where the raw estimator suffers and the baseline helps.
    theta, sigma = np.array([0.3, 1.2, -0.4, 0.8]), 0.5
    g = np.array([1.0, -2.0, 0.5, 3.0]) + 4.0
    errors = _paired_errors(theta, sigma, g, 10, [False, "leave_one_out"])
    _assert_lower(errors["leave_one_out"], errors[False])


def test_hard_control_variate_lowers_the_jacobian_error_when_sigma_is_small():
    # σ small next to the gaps: most perturbed solutions equal y*(θ), so
    # ⟨y_m − y*(θ), g⟩ is mostly 0.
    theta, sigma = np.array([0.3, 1.2, -0.4, 0.8]), 0.1
    g = np.array([1.0, -2.0, 0.5, 3.0])
    errors = _paired_errors(theta, sigma, g, 10, [False, "hard"])
    _assert_lower(errors["hard"], errors[False])


def test_multiplicative_gradient_matches_finite_differences_with_common_random_numbers():
    # Each of the `rows` copies of θ gets its own noise, and the same noise on
    # both sides of every difference (same seed, same batch position).
    theta, sigma, h = np.array([1.0, 1.3, 0.8]), 0.5, 0.01
    g = np.array([1.0, -1.0, 2.0])
    rows, num_samples = 400, 4000
    op = tp.perturbed("argmax", num_samples=num_samples, sigma=sigma, perturbation="multiplicative", seed=17)

    def value(t):  # ⟨ŷ(t), g⟩ per row
        return tf.reduce_sum(op(tf.tile(tf.constant(t[None]), [rows, 1])) * g, axis=-1).numpy()

    fd = np.stack([(value(theta + h * e) - value(theta - h * e)) / (2 * h) for e in np.eye(3)], -1)
    mc, _ = _replicated_grad(op, theta, g, rows=rows)
    diff = mc - fd
    stderr = diff.std(0, ddof=1) / math.sqrt(rows)
    # Central differences add an O(h²) bias, far below the standard error here.
    np.testing.assert_array_less(np.abs(diff.mean(0)), Z_SCORE * stderr)


def test_multiplicative_fenchel_young_loss_is_one_homogeneous():
    # θ' = θ ⊙ exp(εZ − ε²/2): scaling θ by a power of two scales every perturbed cost,
    # the perturbed minimum and ⟨θ, y⟩ exactly, with the same noise (same seed).
    rng = np.random.default_rng(4)
    costs = tf.constant(rng.uniform(0.5, 5.0, (6, 5, 5)), tf.float64)
    paths = tp.solvers.shortest_path(tf.constant(rng.uniform(0.5, 5.0, (6, 5, 5)), tf.float64))

    def loss(c):
        return tp.fenchel_young_loss(paths, c, "shortest_path", num_samples=7, sigma=0.5, seed=3).numpy()

    base = loss(costs)
    assert np.all(base > 0.0)  # the labels are not the solutions of these costs
    for alpha in (0.25, 8.0):
        np.testing.assert_allclose(loss(alpha * costs), alpha * base, rtol=1e-12)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64, tf.float16, tf.bfloat16])
def test_uniform_noise_stays_open_at_the_extreme_bit_patterns(dtype):
    # All-zero and all-one philox words are the two ends of the bit range: the centre
    # of the top bin is not representable in float32/float64 and must not round to 1.
    words = tf.constant([[0, 0xFFFFFFFF, 0x80000000]] * 2, tf.uint32)
    u = tp.noise.uniform_from_bits(words, dtype).numpy().astype(np.float64)
    assert np.all(u > 0.0) and np.all(u < 1.0), u
    gumbel = -np.log(-np.log(u))
    assert np.all(np.isfinite(gumbel)), gumbel
    np.testing.assert_allclose(u[2], 0.5, rtol=2.0**-7)  # the middle word maps to the middle
