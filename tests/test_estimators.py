"""The estimators against the truth: closed forms, exact recomputations and finite differences.

Regression tests for the four defects of the core (float32 sums over samples, callables
with fewer output axes, negative costs, second derivatives), and estimator tests that
assert the truth for every solver:

- Exact recomputation. The ops draw their noise with `Noise.sample([M, *θ.shape], seed)`;
  the tests draw the same noise through the public API and recompute the Monte-Carlo
  formula in float64 (the estimate itself, not its expectation), so the only allowed
  difference is float32 rounding.
- Finite differences of the fixed-seed value. With the noise fixed, the Monte-Carlo
  perturbed maximum (1/M) Σ_m max_y ⟨y, θ'_m⟩ is piecewise linear in θ, so float64
  central differences along random directions equal its gradient to ~1e-8 (unless a
  step crosses a kink, which a step of 1e-6 almost never does; the seeds are fixed).
- Statistics. A Monte-Carlo estimate is compared with a closed form (or a large-M
  finite difference with common random numbers) within 5 standard errors, measured
  from independent replicas (each row of a batch gets its own noise) or exact for
  Bernoulli frequencies; a correct estimator fails with probability < 1e-6 per check.
"""

import math

import keras
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
import tensorflow as tf

import tf_perturbed as tp

Z_SCORE = 5.0
EULER = 0.5772156649015329
THETA = np.array([[-0.6, 1.9, -0.2, 1.7, -1.0], [-0.6, 1.0, -0.2, 1.8, -1.0]], np.float32)
MODES = {
    "eager": lambda f: f,
    "graph": lambda f: tf.function(f),
    "xla": lambda f: tf.function(f, jit_compile=True),
}


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _noise(name, shape, seed, dtype=tf.float64):
    """The noise an op with this seed draws for θ of shape shape[1:], as float64 NumPy."""
    draw = tp.noise.get_noise(name).sample(list(shape), tp.seeds.sanitize_seed(seed), dtype)
    return draw.numpy().astype(np.float64)


def _assert_within(estimates, expected, what):
    """|mean − expected| < 5 standard errors of the mean over the replicas (axis 0)."""
    mean = estimates.mean(0)
    stderr = estimates.std(0, ddof=1) / math.sqrt(len(estimates))
    np.testing.assert_array_less(np.abs(mean - expected), Z_SCORE * stderr + 1e-12, err_msg=what)


# ------------------------------------------------------------------ 1. sums over samples


@pytest.mark.parametrize(
    "mode, num_samples, chunk_size",
    [("eager", 1000, None), ("graph", 1000, None), ("xla", 1000, None),
     ("eager", 100_000, None), ("graph", 100_000, None), ("xla", 100_000, None),
     ("eager", 1_000_000, 100_000), ("xla", 1_000_000, 100_000)],
)
def test_perturbed_maximum_keeps_float32_precision_at_any_number_of_samples(mode, num_samples, chunk_size):
    # σ = 1e-7: every sample solves the unperturbed problem, F_ε(θ) = max θ + ε·mean(Z_i*),
    # and ε·mean(Z) < 5e-7/√M; a sum that adds one sample at a time drifts by ~M·2⁻²⁴
    # (1.9011744 at M = 1e5, before the fix).
    op = tp.perturbed_max("argmax", num_samples=num_samples, sigma=1e-7, seed=0, chunk_size=chunk_size)
    got = MODES[mode](op)(tf.constant(THETA)).numpy()
    np.testing.assert_allclose(got, THETA.max(-1), rtol=1e-6)


@pytest.mark.parametrize("mode", ["eager", "xla"])
def test_fenchel_young_loss_at_small_sigma_is_zero_to_its_noise_not_to_rounding(mode):
    # y = y*(θ), σ → 0: L = F_ε(θ) − ⟨θ, y⟩ = ε·mean_m Z_{m,i*}, |L| ≤ 5ε/√M. Before the fix
    # it was −0.017 at M = 1e6 (a difference of two rounded numbers near max θ).
    num_samples, sigma = 1_000_000, 1e-7
    target = tp.solvers.argmax(tf.constant(THETA))
    loss = MODES[mode](
        lambda t: tp.fenchel_young_loss(target, t, "argmax", num_samples=num_samples, sigma=sigma, seed=0,
                                        chunk_size=100_000)
    )(tf.constant(THETA)).numpy()
    assert np.all(np.abs(loss) <= Z_SCORE * sigma / math.sqrt(num_samples)), loss


@pytest.mark.parametrize("mode", MODES)
def test_mean_of_non_integer_solutions_keeps_float32_precision(mode):
    # The identity "solver" (output_ndims 1): ŷ = θ + ε·mean(Z) = θ to 1e-6 relative at σ → 0.
    op = tp.perturbed(tf.identity, num_samples=200_000, sigma=1e-7, seed=1, chunk_size=50_000)
    got = MODES[mode](op)(tf.constant(THETA)).numpy()
    np.testing.assert_allclose(got, THETA, rtol=1e-6)


@pytest.mark.parametrize("control_variate", [False, "leave_one_out"])
def test_jacobian_sums_keep_float32_precision(control_variate):
    # Identity solver, σ = 1: the VJP (1/M) Σ_m ⟨θ + Z_m − b, g⟩ Z_m is recomputed in float64
    # from the same noise; the chunked float32 sums must agree to ~1e-6 of its size.
    num_samples, shape = 400_000, (2, 5)
    g = np.random.default_rng(0).normal(size=shape)
    theta = tf.constant(THETA)
    op = tp.perturbed(tf.identity, num_samples=num_samples, sigma=1.0, seed=2,
                      control_variate=control_variate, chunk_size=100_000)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        value = tf.reduce_sum(op(theta) * g)
    got = tape.gradient(value, theta).numpy()
    z = _noise("normal", (num_samples, *shape), 2, tf.float32)  # the op's float32 draw
    weight = ((THETA.astype(np.float64) + z) * g).sum(-1)  # [M, B]
    if control_variate:
        expected = ((weight - weight.mean(0))[..., None] * z).sum(0) / (num_samples - 1)
    else:
        expected = (weight[..., None] * z).mean(0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6 * np.abs(expected).max())


def test_multiplicative_fenchel_young_value_equals_its_float64_recomputation():
    # Shortest paths with multiplicative noise (the Warcraft default), ε = 0.05, y = y*(c): every
    # term is ⟨y_m, c'_m⟩ − ⟨y, c⟩, recomputed in float64 from the same float32 noise.
    rng = np.random.default_rng(10)
    costs = rng.uniform(0.5, 2.0, (3, 6, 6)).astype(np.float32)
    sigma, num_samples = 0.05, 400
    target = tp.solvers.shortest_path(tf.constant(costs))
    got = tp.fenchel_young_loss(target, tf.constant(costs), "shortest_path", num_samples=num_samples,
                                sigma=sigma, seed=4).numpy()
    z = _noise("normal", (num_samples, 3, 6, 6), 4, tf.float32)
    perturbed = costs.astype(np.float64) * np.exp(sigma * z - sigma**2 / 2)
    paths = tp.solvers.shortest_path(tf.constant(perturbed)).numpy()
    expected = -((paths * perturbed).sum((-2, -1)).mean(0) - (target.numpy() * costs).sum((-2, -1)))
    assert np.all(np.abs(expected) > 1e-3)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# ------------------------------------------------------------------ 2. callables and their axes


def test_callable_with_fewer_output_axes_gets_the_exact_estimator_when_batch_equals_samples():
    # B = M = 2, f = max over the last axis ([B, D] → [B]): the VJP must be
    # (1/M) Σ_m (f(θ + εZ_m) − mean of the other sample) ∇ν(Z_m) / ε, per row.
    # Before the fix it contracted over the batch axis: right shape, wrong values.
    theta = np.array([[0.3, 1.2, -0.4], [0.8, 0.1, 0.5]])
    sigma, g = 0.5, np.array([1.5, -0.7])
    op = tp.perturbed(lambda t: tf.reduce_max(t, -1), num_samples=2, sigma=sigma, seed=3)
    theta_t = tf.constant(theta)
    with tf.GradientTape() as tape:
        tape.watch(theta_t)
        y = op(theta_t)
        value = tf.reduce_sum(y * g)
    got = tape.gradient(value, theta_t).numpy()
    z = _noise("normal", (2, 2, 3), 3)
    samples = (theta + sigma * z).max(-1)  # [M, B]
    np.testing.assert_allclose(y.numpy(), samples.mean(0), rtol=1e-12)
    weight = samples * g  # [M, B]
    expected = ((weight - weight.mean(0))[..., None] * z).sum(0) / (2 - 1) / sigma  # leave-one-out
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_callable_smooth_maximum_with_gumbel_noise_has_softmax_gradient():
    # E[max(θ + εG)] = ε·logsumexp(θ/ε) + εγ, gradient softmax(θ/ε) (Gumbel-max); B = 1 gives
    # a gradient of θ's shape (before the fix: the wrong shape).
    theta, sigma, rows, num_samples = np.array([0.3, 1.2, -0.4, 0.8]), 0.6, 2000, 50
    op = tp.perturbed(lambda t: tf.reduce_max(t, -1), num_samples=num_samples, sigma=sigma, noise="gumbel",
                      output_ndims=0, seed=4)
    single = tf.constant(theta[None])
    with tf.GradientTape() as tape:
        tape.watch(single)
        value = tf.reduce_sum(op(single))
    assert tape.gradient(value, single).shape == (1, 4)
    batch = tf.constant(np.tile(theta, (rows, 1)))
    with tf.GradientTape() as tape:
        tape.watch(batch)
        values = op(batch)
        total = tf.reduce_sum(values)
    grads = tape.gradient(total, batch).numpy()
    expected_value = sigma * np.log(np.exp(theta / sigma).sum()) + sigma * EULER
    _assert_within(values.numpy()[:, None], expected_value, "value")
    _assert_within(grads, _softmax(theta / sigma), "gradient")


def test_callable_axes_declared_wrongly_or_dropping_the_batch_raise_naming_them():
    theta = tf.zeros([4, 5])
    with pytest.raises(ValueError, match="output_ndims=1"):
        tp.perturbed(lambda t: tf.reduce_max(t, -1), num_samples=2, output_ndims=1, seed=0)(theta)
    with pytest.raises(ValueError, match="event_ndims=1"):
        tp.perturbed(lambda t: tf.reduce_max(t, 0), num_samples=2, seed=0)(theta)  # drops the batch axis
    with pytest.raises(ValueError, match="event_ndims"):
        tp.perturbed("argmax", event_ndims=2)
    with pytest.raises(ValueError, match="needs ⟨y, θ⟩"):
        tp.perturbed_max(lambda t: tf.reduce_max(t, -1), num_samples=2, seed=0)(theta)
    with pytest.raises(ValueError, match="needs ⟨y, θ⟩"):
        tp.fenchel_young_loss(theta, theta, lambda t: tf.reduce_max(t, -1), num_samples=2, seed=0)


def test_callable_over_two_axes_and_a_layer_with_declared_axes():
    # f: [B, H, W] → [B], the maximum entry of each grid.
    op = tp.perturbed(lambda t: tf.reduce_max(t, [-2, -1]), num_samples=3, sigma=0.1, event_ndims=2,
                      output_ndims=0, seed=0)
    assert op(tf.zeros([6, 3, 4])).shape == (6,)
    layer = tp.PerturbedOptimizer(lambda t: tf.reduce_max(t, [-2, -1]), num_samples=3, event_ndims=2, seed=0)
    assert layer.compute_output_shape((None, 3, 4)) == (None,)
    assert layer(tf.zeros([6, 3, 4]), training=True).shape == (6,)


# ------------------------------------------------------------------ 3. negative costs


def _rook_grid_closed_forms(costs, sigma):
    """2 × 2 grid, rook moves: the path takes (0, 1) or (1, 0), clipped additive normal noise.

    A = max(c01 + εZ₁, 0), B = max(c10 + εZ₂, 0): P(A < B) = P(c01 + εZ₁ < c10 + εZ₂, c10 + εZ₂ > 0);
    both ≤ 0 is a tie at 0, broken by the solver's rule. ∇F = E[y ⊙ 1[c + εZ > 0]].
    """
    c01, c10 = costs[0, 1], costs[1, 0]
    phi = scipy.stats.norm

    def first_below(a, b):  # P(a + εZ₁ < b + εZ₂, b + εZ₂ > 0, and a + εZ₁ > 0 if strict)
        return scipy.integrate.quad(
            lambda t: phi.cdf((t - a) / sigma) * phi.pdf((t - b) / sigma) / sigma, 0, np.inf
        )[0]

    def first_below_positive(a, b):
        return scipy.integrate.quad(
            lambda t: (phi.cdf((t - a) / sigma) - phi.cdf(-a / sigma)) * phi.pdf((t - b) / sigma) / sigma, 0, np.inf
        )[0]

    tie = phi.cdf(-c01 / sigma) * phi.cdf(-c10 / sigma)
    tie_path = tp.solvers.shortest_path(tf.zeros([2, 2]), neighbourhood=4).numpy()
    mean = np.ones((2, 2))
    mean[0, 1] = first_below(c01, c10) + tie * tie_path[0, 1]
    mean[1, 0] = first_below(c10, c01) + tie * tie_path[1, 0]
    grad = phi.cdf(costs / sigma)  # corners: 1[c + εZ > 0]
    grad[0, 1] = first_below_positive(c01, c10)
    grad[1, 0] = first_below_positive(c10, c01)
    return mean, grad


def test_negative_perturbed_costs_are_clipped_alike_in_the_op_the_loss_and_the_layer():
    # Additive noise of scale 0.5 on costs 0.1–0.4 drives most perturbed costs below 0.
    costs = np.array([[0.2, 0.1], [0.3, 0.4]])
    sigma, num_samples = 0.5, 200_000
    mean, grad = _rook_grid_closed_forms(costs, sigma)
    common = dict(num_samples=num_samples, sigma=sigma, perturbation="additive", solver_kwargs={"neighbourhood": 4})
    c = tf.constant(costs[None])
    got = tp.perturbed("shortest_path", seed=5, **common)(c).numpy()[0]
    stderr = np.sqrt(mean * (1 - mean) / num_samples)  # Bernoulli frequencies
    np.testing.assert_array_less(np.abs(got - mean), Z_SCORE * stderr + 1e-12)
    target = tp.solvers.shortest_path(c, neighbourhood=4)
    with tf.GradientTape() as tape:
        tape.watch(c)
        loss = tp.fenchel_young_loss(target, c, "shortest_path", seed=5, **common)
    loss_grad = tape.gradient(loss, c).numpy()[0]  # y − ∇F for a minimising solver
    stderr = np.sqrt(grad * (1 - grad) / num_samples)
    np.testing.assert_array_less(np.abs((target.numpy()[0] - loss_grad) - grad), Z_SCORE * stderr + 1e-12)
    layer = tp.PerturbedShortestPath(num_samples=num_samples, sigma=sigma, perturbation="additive",
                                     neighbourhood=4, seed=9)
    op = tp.perturbed("shortest_path", seed=None, **common)
    seed = tp.seeds.next_seed(keras.random.SeedGenerator(9))
    c32 = tf.cast(c, tf.float32)  # the layer's compute dtype
    np.testing.assert_array_equal(layer(c32, training=True).numpy(), op(c32, seed=seed).numpy())
    keras_loss = tp.FenchelYoungLoss("shortest_path", seed=5, reduction=None, **common)
    assert np.all(np.isfinite(keras_loss(target, c).numpy()))


def test_the_solver_itself_still_rejects_negative_costs():
    with pytest.raises(tf.errors.InvalidArgumentError, match="costs"):
        tp.solvers.shortest_path(tf.constant([[1.0, -0.5], [1.0, 1.0]]))


# ------------------------------------------------------------------ 4. second derivatives


def _hessians(fn, theta):
    """Per-row Hessians of Σ fn(θ) `[rows, d, d]` by a nested tape."""
    theta = tf.constant(theta)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(theta)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            value = tf.reduce_sum(fn(theta))
        grad = inner.gradient(value, theta)
    return outer.batch_jacobian(grad, theta, experimental_use_pfor=False).numpy()


@pytest.mark.parametrize("control_variate", [True, "hard", False])
def test_hessian_of_the_perturbed_maximum_is_the_softmax_jacobian_with_gumbel_noise(control_variate):
    # F_ε = ε·logsumexp(θ/ε) + εγ, ∇²F_ε = (diag p − ppᵀ)/ε with p = softmax(θ/ε).
    theta, sigma, rows = np.array([0.3, 1.2, -0.4, 0.8]), 0.7, 1500
    op = tp.perturbed_max("argmax", num_samples=40, sigma=sigma, noise="gumbel", control_variate=control_variate,
                          seed=6)
    hessians = _hessians(op, np.tile(theta, (rows, 1)))
    p = _softmax(theta / sigma)
    _assert_within(hessians.reshape(rows, -1), ((np.diag(p) - np.outer(p, p)) / sigma).ravel(), "Hessian")


def test_hessian_of_the_fenchel_young_loss_is_that_of_the_perturbed_maximum_with_the_same_noise():
    theta = np.random.default_rng(1).normal(size=(3, 5))
    target = tp.solvers.top_k(tf.constant(-theta), k=2)
    kwargs = dict(num_samples=30, sigma=0.5, seed=7, solver_kwargs={"k": 2})
    h_max = _hessians(tp.perturbed_max("top_k", **kwargs), theta)
    h_loss = _hessians(lambda t: tp.fenchel_young_loss(target, t, "top_k", **kwargs), theta)
    h_min = _hessians(lambda t: tp.fenchel_young_loss(target, t, "top_k", maximize=False, **kwargs), theta)
    assert np.abs(h_max).max() > 0
    np.testing.assert_allclose(h_loss, h_max, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(h_min, -h_max, rtol=1e-12, atol=1e-12)


def test_hessian_with_multiplicative_noise_matches_finite_differences_of_its_gradient():
    # ∇F_ε(θ) = E[y*(θ') ⊙ θ'/θ]; its Jacobian by the Monte-Carlo estimator (replicas, M = 50)
    # against central differences of a large-M gradient with common random numbers.
    theta, sigma, h, rows = np.array([1.0, 1.3, 0.8]), 0.5, 0.02, 400
    small = tp.perturbed_max("argmax", num_samples=50, sigma=sigma, perturbation="multiplicative", seed=8)
    hessians = _hessians(small, np.tile(theta, (rows, 1)))
    large = tp.perturbed_max("argmax", num_samples=4000, sigma=sigma, perturbation="multiplicative", seed=9)

    def gradient(t):
        t = tf.constant(np.tile(t, (rows, 1)))
        with tf.GradientTape() as tape:
            tape.watch(t)
            value = tf.reduce_sum(large(t))
        return tape.gradient(value, t).numpy()

    fd = np.stack([(gradient(theta + h * e) - gradient(theta - h * e)) / (2 * h) for e in np.eye(3)], -1)
    diff = hessians - fd  # [rows, d, d]; both unbiased up to O(h²)
    _assert_within(diff.reshape(rows, -1), 0.0, "multiplicative Hessian")


def test_second_derivative_of_the_perturbed_maximizer_and_of_the_direct_estimator_raise():
    theta = tf.constant(np.random.default_rng(2).normal(size=(2, 4)))
    for op in (tp.perturbed("argmax", num_samples=5, seed=0), tp.direct_loss_gradient("argmax")):
        for wrap in (lambda f: f, tf.function):
            with pytest.raises(NotImplementedError, match="second derivative"):
                wrap(lambda t, op=op: _hessians_of(op, t))(theta)


def _hessians_of(op, theta):
    with tf.GradientTape() as outer:
        outer.watch(theta)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            value = tf.reduce_sum(op(theta) * tf.range(4, dtype=theta.dtype))
        grad = inner.gradient(value, theta)
    return outer.gradient(grad, theta)


# ------------------------------------------------------------------ gradients against finite differences

LINEAR_SOLVERS = [
    ("argmax", {}, (3, 5), "additive"),
    ("top_k", {"k": 2}, (3, 5), "additive"),
    ("ranks", {}, (3, 5), "additive"),
    ("shortest_path", {}, (2, 4, 4), "multiplicative"),
    ("shortest_path", {}, (2, 4, 4), "additive"),
    ("assignment", {}, (2, 3, 3), "additive"),
]


def _directional_check(value_fn, theta, directions, h=1e-6):
    """⟨∇value, v⟩ against central differences along each v, float64."""
    t = tf.constant(theta)
    with tf.GradientTape() as tape:
        tape.watch(t)
        value = tf.reduce_sum(value_fn(t))
    grad = tape.gradient(value, t).numpy()
    assert np.abs(grad).max() > 0
    for v in directions:
        fd = (tf.reduce_sum(value_fn(tf.constant(theta + h * v))) - tf.reduce_sum(value_fn(tf.constant(theta - h * v))))
        fd = fd.numpy() / (2 * h)
        np.testing.assert_allclose((grad * v).sum(), fd, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("solver, kwargs, shape, perturbation", LINEAR_SOLVERS)
def test_perturbed_maximum_and_fenchel_young_gradients_are_those_of_their_value(
    solver, kwargs, shape, perturbation, chunk_size
):
    rng = np.random.default_rng(3)
    theta = rng.uniform(0.2, 2.0, size=shape)  # positive: costs for shortest paths, θ ≠ 0 for multiplicative
    directions = rng.normal(size=(3, *shape))
    common = dict(num_samples=8, sigma=0.5, perturbation=perturbation, solver_kwargs=kwargs, chunk_size=chunk_size)
    fmax = tp.perturbed_max(solver, seed=11, **common)
    _directional_check(fmax, theta, directions)
    target = tp.solvers.get_solver(solver, kwargs)(tf.constant(rng.uniform(0.2, 2.0, size=shape)))
    _directional_check(lambda t: tp.fenchel_young_loss(target, t, solver, seed=12, **common), theta, directions)


def test_keras_fenchel_young_loss_gradient_is_that_of_its_value_for_the_warcraft_default():
    # The minimising shortest path with multiplicative noise; a fresh loss with the same seed
    # draws the same noise at its first call.
    rng = np.random.default_rng(4)
    costs, target = rng.uniform(0.5, 2.0, (2, 5, 5)), None
    target = tp.solvers.shortest_path(tf.constant(rng.uniform(0.5, 2.0, (2, 5, 5))))

    def value(t):
        return tp.FenchelYoungLoss("shortest_path", num_samples=6, sigma=0.3, seed=2, dtype="float64")(target, t)

    _directional_check(value, costs, rng.normal(size=(2, 2, 5, 5)))


def test_maximize_override_flips_the_sign_of_the_loss_and_of_its_gradient():
    # An argmin given as a plain callable: maximize=False says it minimises.
    rng = np.random.default_rng(5)
    costs = rng.normal(size=(4, 6))
    target = tp.solvers.argmax(tf.constant(-rng.normal(size=(4, 6))))

    def loss(t, maximize):
        return tp.fenchel_young_loss(target, t, lambda c: tp.solvers.argmax(-c), num_samples=20, sigma=0.5,
                                     seed=3, maximize=maximize)

    as_min = loss(tf.constant(costs), False).numpy()
    np.testing.assert_array_equal(as_min, -loss(tf.constant(costs), True).numpy())
    # ⟨c, y⟩ − mean_m min_y ⟨y, c + εZ_m⟩ ≥ ⟨y, c⟩ − ⟨y, c + ε·mean Z⟩ = −ε⟨y, mean Z⟩ per example
    z = _noise("normal", (20, 4, 6), 3)
    assert np.all(as_min >= -0.5 * (target.numpy() * z.mean(0)).sum(-1) - 1e-12)
    _directional_check(lambda t: loss(t, False), costs, rng.normal(size=(2, 4, 6)))


# ------------------------------------------------------------------ Jacobians of the perturbed maximizer

JACOBIAN_CASES = [
    ("top_k", {"k": 2}, (5,), "additive"),
    ("ranks", {}, (4,), "additive"),
    ("sort_permutation", {}, (3,), "additive"),
    ("shortest_path", {}, (3, 3), "multiplicative"),
    ("assignment", {}, (3, 3), "additive"),
]


@pytest.mark.parametrize("solver, kwargs, shape, perturbation", JACOBIAN_CASES)
def test_monte_carlo_jacobian_matches_finite_differences_of_a_large_sample_estimate(
    solver, kwargs, shape, perturbation
):
    # ⟨Jᵀg, v⟩ by the estimator (per replica) against ⟨ŷ(θ + hv) − ŷ(θ − hv), g⟩/2h with a large
    # M and common random numbers (same seed on both sides); the O(h²) bias is far below the errors.
    rng = np.random.default_rng(6)
    rows, sigma, h = 200, 1.0, 0.05
    theta = rng.uniform(0.5, 2.0, size=shape)
    out_shape = shape + shape if solver == "sort_permutation" else shape
    g = rng.normal(size=out_shape)
    common = dict(sigma=sigma, perturbation=perturbation, solver_kwargs=kwargs)
    batch = tf.constant(np.tile(theta, (rows,) + (1,) * len(shape)))
    small = tp.perturbed(solver, num_samples=100, seed=13, **common)
    with tf.GradientTape() as tape:
        tape.watch(batch)
        value = tf.reduce_sum(small(batch) * g)
    vjp = tape.gradient(value, batch).numpy()  # [rows, *shape]
    large = tp.perturbed(solver, num_samples=1000, seed=14, **common)
    for v in rng.normal(size=(2, *shape)):
        step = np.tile(h * v, (rows,) + (1,) * len(shape))
        plus, minus = large(batch + step).numpy(), large(batch - step).numpy()
        fd = ((plus - minus) * g).reshape(rows, -1).sum(-1) / (2 * h)  # [rows]
        mc = (vjp * v).reshape(rows, -1).sum(-1)
        _assert_within(np.stack([mc - fd], -1), 0.0, f"{solver}: Jacobian along a direction")


def test_sort_permutations_and_ranks_give_the_same_estimates_for_the_same_seed():
    # ranks = Pᵀ·(0, …, d−1) sample by sample, so the perturbed means and their Jacobians agree.
    rng = np.random.default_rng(7)
    theta = tf.constant(rng.normal(size=(4, 6)))
    g = tf.constant(rng.normal(size=(4, 6)))
    positions = tf.range(6, dtype=tf.float64)
    kwargs = dict(num_samples=50, sigma=0.7, seed=15)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(theta)
        ranks = tp.perturbed("ranks", **kwargs)(theta)
        perms = tp.perturbed("sort_permutation", **kwargs)(theta)
        from_perms = tf.einsum("bij,i->bj", perms, positions)
        a, b = tf.reduce_sum(ranks * g), tf.reduce_sum(from_perms * g)
    np.testing.assert_allclose(from_perms.numpy(), ranks.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(tape.gradient(b, theta).numpy(), tape.gradient(a, theta).numpy(), rtol=0, atol=1e-10)


@pytest.mark.parametrize("control_variate", ["hard", "leave_one_out", False])
def test_every_control_variate_is_unbiased(control_variate):
    # Gumbel argmax: the VJP's mean is softmax's, (p ⊙ (g − ⟨p, g⟩))/ε, within 5 standard errors
    # (a zero gradient fails: the exact VJP is far from 0 in standard errors).
    theta, sigma, rows = np.array([0.3, 1.2, -0.4, 0.8]), 0.4, 4000
    g = np.array([1.0, -2.0, 0.5, 3.0])
    op = tp.perturbed("argmax", num_samples=10, sigma=sigma, noise="gumbel", control_variate=control_variate,
                      seed=16)
    batch = tf.constant(np.tile(theta, (rows, 1)))
    with tf.GradientTape() as tape:
        tape.watch(batch)
        value = tf.reduce_sum(op(batch) * g)
    grads = tape.gradient(value, batch).numpy()
    p = _softmax(theta / sigma)
    exact = p * (g - p @ g) / sigma
    _assert_within(grads, exact, f"control variate {control_variate}")
    stderr = grads.std(0, ddof=1) / math.sqrt(rows)
    assert np.abs(exact).max() > 10 * stderr.max()  # a zero gradient would fail


@pytest.mark.parametrize("control_variate", [True, "hard", False])
def test_a_nan_row_gets_nan_and_leaves_the_other_rows_unchanged(control_variate):
    # The policy of docs/guides/hostile_input.md: a problem with a NaN score has a NaN solution, so its
    # perturbed mean and gradient are NaN; other rows equal those of the same batch without it.
    theta = np.random.default_rng(8).normal(size=(3, 5))
    bad = theta.copy()
    bad[1, 2] = np.nan
    g = np.random.default_rng(9).normal(size=(3, 5))
    op = tp.perturbed("ranks", num_samples=6, sigma=0.5, control_variate=control_variate, seed=17)
    results = []
    for t in (theta, bad):
        t = tf.constant(t)
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = op(t)
            value = tf.reduce_sum(tf.where(tf.math.is_nan(y), tf.zeros_like(y), y) * g)
        results.append((y.numpy(), tape.gradient(value, t).numpy()))
    (y, grad), (y_bad, grad_bad) = results
    assert np.all(np.isnan(y_bad[1])) and np.all(np.isnan(grad_bad[1]))
    for row in (0, 2):
        np.testing.assert_array_equal(y_bad[row], y[row])
        np.testing.assert_array_equal(grad_bad[row], grad[row])


# ------------------------------------------------------------------ eager = graph = XLA

# Every linear solver but the assignment (whose XLA compilation, three ops with their
# gradients, costs more than the rest together; the solver contract checks it eager =
# graph = XLA bit for bit, and the estimators do not depend on the solver).
MODE_CASES = [(*case, None) for case in LINEAR_SOLVERS if case[0] != "assignment"] + [
    ("ranks", {}, (3, 5), "additive", 2),  # chunked: the while loop (more in test_determinism.py)
    ("sort_permutation", {}, (3, 4), "additive", None),  # not linear: the perturbed mean only
]


@pytest.mark.parametrize("solver, kwargs, shape, perturbation, chunk_size", MODE_CASES)
def test_every_op_gives_the_same_value_and_gradient_eagerly_in_a_graph_and_under_xla(
    solver, kwargs, shape, perturbation, chunk_size
):
    # Same seed, same noise in every mode (Philox under XLA too); the float32 sums may be
    # associated differently by Grappler and XLA, so agreement is to float32 rounding.
    rng = np.random.default_rng(10)
    theta = tf.constant(rng.uniform(0.2, 2.0, size=shape), tf.float32)
    common = dict(num_samples=16, sigma=0.5, perturbation=perturbation, solver_kwargs=kwargs, chunk_size=chunk_size)
    linear = tp.solvers.get_spec(solver).linear_output
    mean = tp.perturbed(solver, seed=21, **common)
    weights = tf.constant(rng.normal(size=mean(theta).shape), tf.float32)
    if linear:
        fmax = tp.perturbed_max(solver, seed=22, **common)
        target = tp.solvers.get_solver(solver, kwargs)(tf.constant(rng.uniform(0.2, 2.0, size=shape), tf.float32))

    def values_and_gradients(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            outputs = [mean(t)]
            if linear:
                outputs += [fmax(t), tp.fenchel_young_loss(target, t, solver, seed=23, **common)]
            total = tf.reduce_sum(outputs[0] * weights) + sum(tf.reduce_sum(v) for v in outputs[1:])
        return [tape.gradient(total, t), *outputs]

    eager = [v.numpy() for v in values_and_gradients(theta)]
    assert np.abs(eager[0]).max() > 0  # a gradient flows
    for mode in ("graph", "xla"):
        got = MODES[mode](values_and_gradients)(theta)
        for what, g, e in zip(["gradient", "perturbed", "perturbed_max", "fenchel_young_loss"], got, eager):
            np.testing.assert_allclose(g.numpy(), e, rtol=1e-5, atol=1e-6 * max(np.abs(e).max(), 1.0),
                                       err_msg=f"{solver} {perturbation}: {what} in {mode} mode")
