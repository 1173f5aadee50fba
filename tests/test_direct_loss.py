"""Direct loss minimization: estimator against closed forms, escape, signs, and the layer.

Tolerances. With Gumbel noise, y₀ = argmax(θ + σγ) is distributed as
softmax(θ/σ), and at a finite step the loss-perturbed solution is distributed
as softmax((θ + ε_r ℓ)/σ) (ε_r the raw step). So the mean of the direct
estimate over the noise is known exactly at every ε:
    m_ε = (softmax((θ + ε_r ℓ)/σ) − softmax(θ/σ)) / ε_r
and its limit ε → 0 is the exact gradient of E[ℓ(y₀)] = Σ_i softmax(θ/σ)_i ℓ_i.
Each test draws N noise vectors in one batched call (one row per draw), takes
the sample mean and its standard error std/sqrt(N) per coordinate, and asserts
|mean − m_ε| ≤ 5 SE; with the exact gradient the allowance is 5 SE + |m_ε − ∇|
(the O(ε) bias, computed in closed form). A correct estimator fails one
coordinate with probability < 6e-7; the seeds are fixed.

The layer's contract (config, seeds, `.keras`, export, fit with XLA, mixed precision,
bad arguments) is tests/test_layer_contract.py; here, its own estimator maths.

Runtime: 28 tests, about 10 s of CPU on 2 shared cores (4 s of it importing TensorFlow).
"""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp

Z_SCORE = 5.0


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _logsumexp(x):
    m = x.max(-1)
    return m + np.log(np.exp(x - m[..., None]).sum(-1))


def _expected_loss_gradients(theta, sigma, loss):
    """Exact ∇θ and d/dσ of Σ_i softmax(θ/σ)_i ℓ_i."""
    p = _softmax(theta / sigma)
    jac_loss = p * (loss - p @ loss)  # (diag p − ppᵀ) ℓ
    return jac_loss / sigma, -(jac_loss @ theta) / sigma**2


def _finite_step_means(theta, sigma, loss, raw_epsilon):
    """Exact means of the direct estimates (θ and σ) at the raw step ε_r.

    θ: (softmax((θ + ε_r ℓ)/σ) − softmax(θ/σ))/ε_r.  σ: E⟨γ, y*(θ' + σγ)⟩ is
    ∂σ of the perturbed max σ·lse(θ'/σ) (+ σ·Euler), i.e.
    lse(θ'/σ) − ⟨softmax(θ'/σ), θ'/σ⟩ (+ Euler, which cancels in the difference).
    """

    def d_sigma(t):
        return _logsumexp(t / sigma) - _softmax(t / sigma) @ (t / sigma)

    shifted = theta + raw_epsilon * loss
    grad_theta = (_softmax(shifted / sigma) - _softmax(theta / sigma)) / raw_epsilon
    grad_sigma = (d_sigma(shifted) - d_sigma(theta)) / raw_epsilon
    return grad_theta, grad_sigma


THETA = np.array([0.4, -0.3, 0.9, 0.1, -0.8])
LOSS = np.array([0.3, -0.5, 1.0, 0.2, -0.1])  # max |ℓ| = 1: with "max_abs", ε_r = ε


def _direct_estimates(sigma, epsilon, num_draws, seed):
    """Per-draw direct estimates of ∇θ and ∂σ of ⟨ℓ, y*(θ + σγ)⟩: `[N, d]`, `[N]`."""
    op = tp.direct_loss_gradient("argmax", epsilon=epsilon)
    gumbel = tp.noise.get_noise("gumbel").sample([num_draws, THETA.size], tf.constant([seed, 3]), tf.float64)
    theta = tf.constant(np.tile(THETA, (num_draws, 1)))  # [N, d]
    sigma_rows = tf.constant(np.full((num_draws, 1), sigma))  # [N, 1]: one σ per draw
    with tf.GradientTape() as tape:
        tape.watch([theta, sigma_rows])
        y = op(theta + sigma_rows * gumbel)
        loss = tf.reduce_sum(y * LOSS)  # sum over draws: g = ℓ for each row
    grad_theta, grad_sigma = tape.gradient(loss, [theta, sigma_rows])
    return grad_theta.numpy(), grad_sigma.numpy()[:, 0]


def _mean_and_stderr(x):
    return x.mean(0), x.std(0, ddof=1) / math.sqrt(len(x))


@pytest.mark.parametrize("sigma", [0.6, 1.0])
@pytest.mark.parametrize("epsilon", [0.3, -0.3])
def test_direct_estimate_matches_the_gradient_of_the_expected_loss(sigma, epsilon):
    grad_theta, grad_sigma = _direct_estimates(sigma, epsilon, num_draws=100_000, seed=7)
    exact_theta, exact_sigma = _expected_loss_gradients(THETA, sigma, LOSS)
    step_theta, step_sigma = _finite_step_means(THETA, sigma, LOSS, epsilon)
    for got, step, exact, what in (
        (grad_theta, step_theta, exact_theta, "theta"),
        (grad_sigma, step_sigma, exact_sigma, "sigma"),
    ):
        mean, stderr = _mean_and_stderr(got)
        assert np.all(stderr > 0), what  # the estimate is random, not constant
        np.testing.assert_array_less(np.abs(mean - step), Z_SCORE * stderr, err_msg=what)
        bias = np.abs(step - exact)  # O(ε), closed form
        np.testing.assert_array_less(np.abs(mean - exact), Z_SCORE * stderr + bias, err_msg=what)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bias_shrinks_with_epsilon(sign):
    sigma = 1.0
    exact_theta, _ = _expected_loss_gradients(THETA, sigma, LOSS)
    errors = {}
    for magnitude in (2.0, 0.15):
        grad_theta, _ = _direct_estimates(sigma, sign * magnitude, num_draws=100_000, seed=8)
        mean, stderr = _mean_and_stderr(grad_theta)
        errors[magnitude] = (np.abs(mean - exact_theta), stderr)
    large_error, large_stderr = errors[2.0]
    small_error, small_stderr = errors[0.15]
    # At |ε| = 2 the bias is far outside the noise; at 0.15 the estimate is within
    # the noise plus the (small) closed-form bias, and the total error is lower.
    assert np.max(large_error / large_stderr) > 2 * Z_SCORE
    step_theta, _ = _finite_step_means(THETA, sigma, LOSS, sign * 0.15)
    np.testing.assert_array_less(small_error, Z_SCORE * small_stderr + np.abs(step_theta - exact_theta))
    assert np.linalg.norm(small_error) < 0.5 * np.linalg.norm(large_error)


def test_categorical_estimate_matches_softmax_gradient_per_variable():
    # n = 2 categorical variables with K = 4 categories, N draws: scores [N, 2, 4].
    theta = np.array([[0.2, -0.4, 0.7, 0.0], [1.0, 0.5, -0.5, 0.1]])
    loss = np.array([[0.5, 1.5, -0.2, 0.3], [2.0, 0.0, 1.0, 0.4]])
    epsilon, num_draws = -0.2, 100_000
    gumbel = tp.noise.get_noise("gumbel").sample([num_draws, 2, 4], tf.constant([5, 5]), tf.float64)
    theta_rows = np.broadcast_to(theta, (num_draws, 2, 4))
    grad = tp.direct_categorical_gradient(
        theta_rows, gumbel, np.broadcast_to(loss, (num_draws, 2, 4)), epsilon
    )
    mean, stderr = _mean_and_stderr(grad.numpy())
    p = _softmax(theta)
    exact = p * (loss - (p * loss).sum(-1, keepdims=True))  # σ = 1: (diag p − ppᵀ) ℓ per variable
    step = (_softmax(theta + epsilon * loss) - p) / epsilon
    np.testing.assert_array_less(np.abs(mean - step), Z_SCORE * stderr)
    np.testing.assert_array_less(np.abs(mean - exact), Z_SCORE * stderr + np.abs(step - exact))


def test_categorical_sign_convention_on_one_draw():
    # z₀ = argmax(θ + γ) = 0; towards-best (ε < 0) moves to the lowest-loss category 2.
    theta, gumbel = tf.constant([[2.0, 1.0, 1.5]]), tf.zeros([1, 3])
    loss = tf.constant([[1.0, 0.5, 0.0]])
    best = tp.direct_categorical_gradient(theta, gumbel, loss, epsilon=-1.0)
    np.testing.assert_allclose(best.numpy(), [[1.0, 0.0, -1.0]])  # (e₂ − e₀)/(−1)
    worst = tp.direct_categorical_gradient(theta, gumbel, loss, epsilon=1.0)
    np.testing.assert_allclose(worst.numpy(), [[0.0, 0.0, 0.0]])  # argmax(θ + ℓ) stays 0
    with pytest.raises(ValueError, match="loss_per_category"):
        tp.direct_categorical_gradient(theta, gumbel, tf.zeros([1, 4]), epsilon=1.0)
    with pytest.raises(ValueError, match="epsilon=0"):
        tp.direct_categorical_gradient(theta, gumbel, loss, epsilon=0)



@pytest.mark.parametrize("normalize", ["none", "max_abs"])
def test_categorical_epsilon_may_be_a_tensor_in_a_compiled_step(normalize):
    # An annealed ε lives in a variable; one compiled function serves every value.
    theta = tf.constant([[2.0, 1.0, 1.5], [0.0, 0.3, 0.1]])
    gumbel = tf.constant([[0.0, 0.2, -0.1], [0.4, 0.0, 0.2]])
    loss = tf.constant([[1.0, 0.5, 0.0], [0.2, 3.0, -1.0]])
    epsilon = tf.Variable(-1.0)
    step = tf.function(
        lambda: tp.direct_categorical_gradient(theta, gumbel, loss, epsilon, normalize=normalize),
        jit_compile=True,
    )
    for value in (-1.0, -0.3, 0.05, 2.0):
        epsilon.assign(value)
        expected = tp.direct_categorical_gradient(theta, gumbel, loss, value, normalize=normalize)
        np.testing.assert_allclose(step().numpy(), expected.numpy(), rtol=1e-6)
    assert step.experimental_get_tracing_count() == 1
    with pytest.raises(tf.errors.InvalidArgumentError, match="epsilon"):
        tp.direct_categorical_gradient(theta, gumbel, loss, tf.constant(0.0))
    with pytest.raises(ValueError, match="epsilon.shape"):
        tp.direct_categorical_gradient(theta, gumbel, loss, tf.constant([1.0, 2.0]))

# Escape. Example 0: θ = [1, 0], g = [−1, 1], ε₀ = 0.1: θ + εg = [1 − ε, ε] flips when
# ε > 0.5, i.e. after k = 17 growths (0.1·1.1^16 = 0.4595, 0.1·1.1^17 = 0.5054).
# Example 1 flips at once, example 2 has g = 0.
ESCAPE_THETA = np.array([[1.0, 0.0], [0.05, 0.0], [1.0, 0.0]], np.float32)
ESCAPE_G = np.array([[-1.0, 1.0], [-1.0, 1.0], [0.0, 0.0]], np.float32)


def _escape_gradient(max_growth_steps, jit_compile=False, solver="argmax"):
    op = tp.direct_loss_gradient(solver, epsilon=0.1, epsilon_growth=1.1, max_growth_steps=max_growth_steps)

    def grad(theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = tf.reduce_sum(op(theta) * ESCAPE_G)
        return tape.gradient(loss, theta)

    if jit_compile:
        grad = tf.function(grad, jit_compile=True)
    return grad(tf.constant(ESCAPE_THETA)).numpy()


@pytest.mark.parametrize("jit_compile", [False, True])
def test_epsilon_escape_grows_per_example_and_is_bounded(jit_compile):
    flip = np.array([-1.0, 1.0])  # y_ε − y₀ = e₁ − e₀
    got = _escape_gradient(17, jit_compile)
    np.testing.assert_allclose(got[0], flip / (0.1 * 1.1**17), rtol=1e-5)
    np.testing.assert_allclose(got[1], flip / 0.1, rtol=1e-6)
    np.testing.assert_array_equal(got[2], [0.0, 0.0])
    bounded = _escape_gradient(16, jit_compile)  # one growth short: still stuck
    np.testing.assert_array_equal(bounded[0], [0.0, 0.0])
    np.testing.assert_allclose(bounded[1], flip / 0.1, rtol=1e-6)


def test_escape_off_by_default_and_zero_upstream_gradient_does_not_loop():
    calls = []

    def counting_argmax(theta):
        calls.append(1)  # eager: one append per solve
        return tp.solvers.argmax(theta)

    no_escape = tp.direct_loss_gradient("argmax", epsilon=0.1)
    theta = tf.constant(ESCAPE_THETA)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        loss = tf.reduce_sum(no_escape(theta) * ESCAPE_G)
    np.testing.assert_array_equal(tape.gradient(loss, theta).numpy()[0], [0.0, 0.0])

    op = tp.direct_loss_gradient(counting_argmax, epsilon=0.1, epsilon_growth=1.1, max_growth_steps=5)
    for g, expected_calls in ((np.zeros_like(ESCAPE_G), 2), (ESCAPE_G[:1].repeat(3, 0), 2 + 5)):
        calls.clear()
        with tf.GradientTape() as tape:
            tape.watch(theta)
            loss = tf.reduce_sum(op(theta) * g)
        grad = tape.gradient(loss, theta).numpy()
        assert len(calls) == expected_calls  # forward + first solve (+ at most 5 retries)
        assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad[0], [0.0, 0.0])  # 0.1·1.1^5 < 0.5: still stuck


def _layer_grad_first_example(layer, batch, reduction):
    """B·∂L/∂θ₀ (mean reduction) or ∂L/∂θ₀ (sum) for example 0 in a batch of B."""
    rng = np.random.default_rng(batch)
    theta = rng.normal(size=(batch, 4)).astype(np.float32)
    target = np.eye(4, dtype=np.float32)[rng.integers(0, 4, batch)]
    theta[0], target[0] = [0.3, 0.1, -0.2, 0.0], [0.0, 1.0, 0.0, 0.0]
    loss_fn = keras.losses.MeanSquaredError(reduction=reduction)
    theta = tf.constant(theta)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        loss = loss_fn(target, layer(theta))
    grad = tape.gradient(loss, theta).numpy()[0]
    return grad * batch if reduction == "sum_over_batch_size" else grad


def test_gradient_does_not_depend_on_batch_size_or_reduction():
    # Example 0: y₀ = e₀, target e₁, MSE: g = 2(y₀ − t)/(4B) (mean) or 2(y₀ − t)/4 (sum).
    # max-abs direction e₀ − e₁; θ₀ − 0.5(e₀ − e₁) = [−0.2, 0.6, −0.2, 0]: y_ε = e₁, so
    # B·∂L/∂θ₀ = (2/4)·(e₁ − e₀)/(−0.5) = [1, −1, 0, 0] for every B.
    layer = tp.DirectLossGradient("argmax", epsilon=-0.5)
    expected = np.array([1.0, -1.0, 0.0, 0.0])
    for batch in (1, 7, 64):
        for reduction in ("sum_over_batch_size", "sum"):
            got = _layer_grad_first_example(layer, batch, reduction)
            np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"B={batch}, {reduction}")
    # The raw step ε·g shrinks with B. At B = 1, g = (e₀ − e₁)/2 and θ₀ − 0.25(e₀ − e₁)
    # flips to e₁: ∂L/∂θ₀ = (e₁ − e₀)/(−0.5); at B = 64 the solution no longer moves.
    raw = tp.DirectLossGradient("argmax", epsilon=-0.5, normalize="none")
    raw_expected = np.array([2.0, -2.0, 0.0, 0.0])
    np.testing.assert_allclose(_layer_grad_first_example(raw, 1, "sum_over_batch_size"), raw_expected)
    np.testing.assert_array_equal(_layer_grad_first_example(raw, 64, "sum_over_batch_size"), np.zeros(4))


def _grid_argmin(costs):
    """One-hot of the cheapest cell of each [H, W] grid (a minimising, 2-D solver)."""
    shape = tf.shape(costs)
    flat = tf.reshape(costs, tf.concat([shape[:-2], [-1]], 0))  # [..., H·W]
    return tf.reshape(tp.solvers.argmax(-flat), shape)  # [..., H, W]


tp.solvers.register_solver(
    "test_direct_grid_argmin", _grid_argmin, event_ndims=2, maximize=False, overwrite=True
)


@pytest.mark.parametrize("lam", [0.5, 3.0])
def test_minimising_solver_reproduces_blackbox_differentiation(lam):
    # Vlastelica et al.: ∂L/∂c = (y_λ − y)/λ, y_λ = argmin⟨c + λg, y⟩, here ε = −λ (raw step).
    rng = np.random.default_rng(0)
    costs = rng.uniform(0.0, 2.0, size=(50, 3, 4)).astype(np.float32)
    g = rng.normal(size=(50, 3, 4)).astype(np.float32)
    layer = tp.DirectLossGradient("test_direct_grid_argmin", epsilon=-lam, normalize="none")
    costs_t = tf.constant(costs)
    with tf.GradientTape() as tape:
        tape.watch(costs_t)
        y = layer(costs_t)
        loss = tf.reduce_sum(y * g)
    got = tape.gradient(loss, costs_t).numpy()

    def argmin_grid(c):
        flat = c.reshape(len(c), -1)
        return np.eye(flat.shape[1], dtype=np.float32)[flat.argmin(1)].reshape(c.shape)

    y0 = argmin_grid(costs)
    np.testing.assert_array_equal(y.numpy(), y0)
    expected = (argmin_grid(costs + lam * g) - y0) / lam
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert np.abs(expected).sum() > 0  # some solutions move
    # The same as the maximising rule on θ = −c, with the gradient's sign flipped.
    theta = tf.constant(-costs.reshape(50, 12))
    with tf.GradientTape() as tape:
        tape.watch(theta)
        loss = tf.reduce_sum(
            tp.direct_loss_gradient("argmax", -lam, normalize="none")(theta) * g.reshape(50, 12)
        )
    np.testing.assert_allclose(-tape.gradient(loss, theta).numpy().reshape(50, 3, 4), got, atol=1e-6)


def test_max_abs_normalisation_on_a_two_dimensional_solver():
    # Per problem (both event axes): a = max|g| = 4; raw-equivalent step ε/a.
    costs = np.array([[[0.0, 0.5], [1.0, 2.0]]], np.float32)
    g = np.array([[[4.0, 0.0], [-2.0, 0.0]]], np.float32)
    layer = tp.DirectLossGradient("test_direct_grid_argmin", epsilon=-0.6)
    costs_t = tf.constant(costs)
    with tf.GradientTape() as tape:
        tape.watch(costs_t)
        loss = tf.reduce_sum(layer(costs_t) * g)
    # c + 0.6·g/4 = [[0.6, 0.5], [0.7, 2]]: argmin moves from (0,0) to (0,1).
    expected = 4.0 * (np.array([[[0.0, 1.0], [0.0, 0.0]]]) - np.array([[[1.0, 0.0], [0.0, 0.0]]])) / 0.6
    np.testing.assert_allclose(tape.gradient(loss, costs_t).numpy(), expected, rtol=1e-6)


def _nonnegative_grid_argmin(costs):
    tf.debugging.assert_non_negative(costs, message="negative costs")
    return _grid_argmin(costs)


tp.solvers.register_solver(
    "test_direct_nonnegative_grid_argmin",
    _nonnegative_grid_argmin,
    event_ndims=2,
    maximize=False,
    overwrite=True,
)


def test_min_perturbed_value_keeps_loss_perturbed_costs_in_the_solver_domain():
    # c + λ·g/a with λ = 0.5, a = 1: [[0.7, −0.2], [0.5, 2]] leaves the solver's domain;
    # clipped at 0 the argmin moves from (0, 0) to (0, 1): ∂L/∂c = (y_λ − y₀)/λ.
    costs = tf.constant([[[0.2, 0.3], [1.0, 2.0]]])
    g = tf.constant([[[1.0, -1.0], [-1.0, 0.0]]])

    def grad(layer):
        with tf.GradientTape() as tape:
            tape.watch(costs)
            loss = tf.reduce_sum(layer(costs) * g)
        return tape.gradient(loss, costs).numpy()

    clipped = tp.DirectLossGradient(
        "test_direct_nonnegative_grid_argmin", epsilon=-0.5, min_perturbed_value=0.0
    )
    np.testing.assert_allclose(grad(clipped), [[[-2.0, 2.0], [0.0, 0.0]]], rtol=1e-6)
    unclipped = tp.DirectLossGradient("test_direct_nonnegative_grid_argmin", epsilon=-0.5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="negative costs"):
        grad(unclipped)


# ---------------------------------------------------------------- the layer


LAYER_KWARGS = dict(
    solver="top_k",
    solver_kwargs={"k": 2},
    epsilon=-0.7,
    normalize="max_abs",
    epsilon_growth=1.1,
    max_growth_steps=12,
    min_perturbed_value=-10.0,
    sigma=0.5,
    noise="normal",
    seed=3,
)


def test_layer_config_keeps_every_argument():
    # (the round trip, serialisation and the rest of the layer contract: tests/test_layer_contract.py)
    config = tp.DirectLossGradient(**LAYER_KWARGS, name="direct").get_config()
    for key, value in LAYER_KWARGS.items():
        assert config[key] == value, key


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(epsilon=0.0), ValueError, "epsilon=0.0"),
        (dict(epsilon=float("nan")), ValueError, "epsilon=nan"),
        (dict(epsilon="1"), TypeError, "epsilon='1'"),
        (dict(epsilon_growth=1.0), ValueError, "epsilon_growth=1.0"),
        (dict(epsilon_growth=0.5), ValueError, "epsilon_growth=0.5"),
        (dict(max_growth_steps=0), ValueError, "max_growth_steps=0"),
        (dict(min_perturbed_value="0"), TypeError, "min_perturbed_value='0'"),
        (dict(normalize="l3"), ValueError, "normalize='l3'"),
        (dict(solver="sort_permutation"), ValueError, "solver='sort_permutation'"),
    ],
)
def test_layer_rejects_bad_arguments(kwargs, error, pattern):
    arguments = {"solver": "argmax", **kwargs}
    with pytest.raises(error, match=pattern.replace("(", r"\(")):
        tp.DirectLossGradient(**arguments)
