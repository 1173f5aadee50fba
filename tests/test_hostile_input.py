"""Hostile input: property-based tests over call inputs.

Every generated case must end in one of three ways: a valid result, a result that is
NaN exactly where the input holds a NaN, or a ValueError / TypeError /
InvalidArgumentError that names the problem. A structure that silently ignores a NaN
(a one-hot, a path, a permutation) counts as a failure.

The policy, also in docs/guides/hostile_input.md:
- closed-form solvers (argmax, top-k, ranks, sort permutation): ±inf is a score like
  any other; a problem with a NaN score gets a solution of NaN, and so does its
  gradient, in eager mode, graphs and XLA alike;
- structured solvers (shortest paths, matchings): NaN, ±inf and negative costs raise
  InvalidArgumentError (under XLA, which drops the check, the solution is NaN);
- multiplicative perturbation never moves an entry θ_i = 0: its gradient is NaN.

Validity is decided by an oracle written here (the argmax / top-k / ranks of a NumPy
stable sort, Dijkstra on the grid, SciPy's assignment), never by the code under test.
Constructor arguments, hostile or not, are part of the contract of every layer and
loss (tests/test_layer_contract.py), which checks them the same way. Hypothesis runs derandomized (fixed
examples, reproducible in CI), without a deadline or an example database; the
`max_examples` below add up to 170 generated cases. Runtime on 2 shared cores:
about 15 s of CPU time.
"""


import numpy as np
import pytest
import references
import scipy.optimize
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tf_perturbed as tp

ERRORS = (ValueError, TypeError, tf.errors.InvalidArgumentError)
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
SPECIAL = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e30, -1e30, 3e38, 1e-40, 65504.0, 1e300]

# ---------------------------------------------------------------------------
# Call inputs: closed-form solvers


def _stable_order(row):
    """Indices sorted by (value, index): ties broken towards the lowest index; −0.0 == 0.0."""
    return np.array(sorted(range(len(row)), key=lambda i: (row[i], i)))


def _oracle(name, row, k):
    d = len(row)
    order = _stable_order(row)
    if name == "argmax":
        return np.eye(d)[sorted(range(d), key=lambda i: (-row[i], i))[0]]
    if name == "top_k":
        return np.eye(d)[sorted(range(d), key=lambda i: (-row[i], i))[:k]].sum(0)
    ranks = np.empty(d)
    ranks[order] = np.arange(d)
    if name == "ranks":
        return ranks
    return np.eye(d)[ranks.astype(int)].T  # P[i, j] = 1 if rank_j = i


FLOAT_DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
INT_DTYPES = [tf.int32, tf.int64]


@st.composite
def closed_form_cases(draw):
    name = draw(st.sampled_from(["argmax", "top_k", "ranks", "sort_permutation"]))
    batch, d = draw(st.integers(0, 3)), draw(st.integers(1, 5))
    dtype = draw(st.sampled_from(FLOAT_DTYPES + INT_DTYPES))
    if dtype.is_integer:
        limit = 2**31 - 1 if dtype == tf.int32 else 2**62
        element = st.one_of(st.integers(-5, 5), st.sampled_from([-limit, limit, 0]))
    else:
        element = st.one_of(st.floats(-1e3, 1e3), st.sampled_from(SPECIAL))
    values = draw(st.lists(st.lists(element, min_size=d, max_size=d), min_size=batch, max_size=batch))
    k = draw(st.integers(1, 4))
    training = draw(st.booleans())
    control_variate = draw(st.sampled_from([True, False, "hard"]))
    return name, np.array(values, dtype=object).reshape(batch, d), dtype, k, training, control_variate


def _closed_form_layer(name, k, control_variate):
    common = dict(num_samples=3, sigma=0.5, control_variate=control_variate, seed=0)
    if name == "argmax":
        return tp.PerturbedArgmax(**common)
    if name == "top_k":
        return tp.PerturbedTopK(k=k, **common)
    if name == "ranks":
        return tp.PerturbedRanks(**common)
    return tp.PerturbedOptimizer("sort_permutation", **common)


def _check_soft(name, row, y, k):
    d = len(row)
    tol = 1e-5
    if name == "ranks":
        assert np.all((y >= -tol) & (y <= d - 1 + tol)), y
        assert abs(y.sum() - d * (d - 1) / 2) < tol * d * d, y
        return
    assert np.all((y >= -tol) & (y <= 1 + tol)), y
    if name == "argmax":
        assert abs(y.sum() - 1) < tol, y
    elif name == "top_k":
        assert abs(y.sum() - k) < tol * k, y
    else:  # doubly stochastic
        np.testing.assert_allclose(y.sum(0), 1, atol=tol)
        np.testing.assert_allclose(y.sum(1), 1, atol=tol)


@settings(max_examples=90, **SETTINGS)
@given(closed_form_cases())
def test_closed_form_layers_on_hostile_inputs(case):
    name, values, dtype, k, training, control_variate = case
    batch, d = values.shape
    if dtype.is_integer:
        x = tf.constant(values.astype(np.int64), dtype)
    else:
        x = tf.cast(tf.constant(values.astype(np.float64), tf.float64), dtype)
    effective = tf.cast(x, tf.float32).numpy()  # what the float32 layer computes on
    layer = _closed_form_layer(name, k, control_variate)
    if name == "top_k" and k > d:
        with pytest.raises(ValueError, match=f"k={k}"):
            layer(x, training=training)
        return
    with tf.GradientTape() as tape:
        x32 = tf.cast(x, tf.float32)
        tape.watch(x32)
        y = layer(x32 if training else x, training=training)
        weights = tf.cast(tf.reshape(tf.range(tf.size(y)) % 3, tf.shape(y)), y.dtype)
        value = tf.reduce_sum(tf.where(tf.math.is_nan(y), 0.0, y) * weights)
    out_shape = (batch, d, d) if name == "sort_permutation" else (batch, d)
    assert y.shape == out_shape and y.dtype == tf.float32
    y = y.numpy()
    grad = tape.gradient(value, x32) if training else None
    for b in range(batch):
        row = effective[b]
        if np.any(np.isnan(row)):
            assert np.all(np.isnan(y[b])), (row, y[b])  # a NaN score: a NaN solution
            continue
        if training:
            _check_soft(name, row, y[b], k)
            assert np.all(np.isfinite(grad.numpy()[b])), (row, grad.numpy()[b])
        else:
            np.testing.assert_array_equal(y[b], _oracle(name, row, k))


def test_multiplicative_perturbation_gives_a_nan_gradient_at_zero():
    layer = tp.PerturbedArgmax(num_samples=8, perturbation="multiplicative", seed=0)
    theta = tf.constant([[1.0, 0.0, 2.0], [-1.0, -2.0, -0.5]])
    with tf.GradientTape() as tape:
        tape.watch(theta)
        y = layer(theta, training=True)
        value = tf.reduce_sum(y * [1.0, 2.0, 3.0])
    grad = tape.gradient(value, theta).numpy()
    assert np.isnan(grad[0, 1]) and np.all(np.isfinite(grad[0, [0, 2]]))
    assert np.all(np.isfinite(grad[1]))  # negative scores: the estimator holds for θ ≠ 0


def test_integer_inputs_are_cast_to_the_compute_dtype_in_training_and_inference():
    x = tf.constant([[3, 1, 2]], tf.int32)
    for layer in (tp.PerturbedRanks(num_samples=4, seed=0), tp.DirectLossGradient("ranks")):
        for training in (False, True):
            y = layer(x, training=training)
            assert y.dtype == tf.float32, (layer, training)
    with pytest.raises(TypeError, match="inputs.dtype=bool"):
        tp.PerturbedArgmax(num_samples=2)(tf.constant([[True, False]]))


# ---------------------------------------------------------------------------
# Call inputs: structured solvers


def _assert_is_path(mask, costs):
    h, w = costs.shape
    assert set(np.unique(mask)) <= {0.0, 1.0}, mask
    assert mask[0, 0] == 1 and mask[-1, -1] == 1, mask
    cells = set(zip(*np.nonzero(mask), strict=True))
    seen, stack = {(0, 0)}, [(0, 0)]
    while stack:  # the path's cells are 8-connected
        i, j = stack.pop()
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                if (i + di, j + dj) in cells and (i + di, j + dj) not in seen:
                    seen.add((i + di, j + dj))
                    stack.append((i + di, j + dj))
    assert (h - 1, w - 1) in seen, mask
    optimum = references.dijkstra(costs)
    assert abs((mask * costs).sum() - optimum) <= 1e-5 * max(1.0, abs(optimum)), (mask, costs)


@st.composite
def grid_cases(draw):
    batch, h, w = draw(st.integers(0, 2)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    element = st.one_of(st.floats(0.01, 100.0), st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e30]))
    values = draw(st.lists(element, min_size=batch * h * w, max_size=batch * h * w))
    perturbation = draw(st.sampled_from(["multiplicative", "additive"]))
    return np.array(values, np.float32).reshape(batch, h, w), perturbation, draw(st.booleans())


@settings(max_examples=40, **SETTINGS)
@given(grid_cases())
def test_shortest_path_layer_on_hostile_costs(case):
    costs, perturbation, training = case
    layer = tp.PerturbedShortestPath(num_samples=3, sigma=0.5, perturbation=perturbation, seed=0)
    # the layer (as the op and the loss) hands the solver costs clipped to its domain, ≥ 0
    domain = np.where(costs <= 0, 0, costs)
    hopeless = np.isnan(domain).any() or np.isinf(domain).any()
    try:
        y = layer(tf.constant(costs), training=training).numpy()
    except tf.errors.InvalidArgumentError as error:
        assert "costs" in str(error)
        # a NaN or +inf cost — or a huge one that a multiplicative draw pushed past float32's range
        assert hopeless or (np.abs(costs) >= 1e30).any(), costs
        return
    assert not hopeless, (costs, y)
    assert y.shape == costs.shape
    for b in range(costs.shape[0]):
        if training:
            assert np.all((y[b] >= 0) & (y[b] <= 1)) and y[b][0, 0] == 1 and y[b][-1, -1] == 1, y[b]
        else:
            _assert_is_path(y[b], domain[b].astype(np.float64))


@st.composite
def matching_cases(draw):
    batch, rows = draw(st.integers(0, 2)), draw(st.integers(1, 4))
    cols = draw(st.sampled_from([rows, rows, rows, max(1, rows - 1), rows + 1]))
    element = st.one_of(st.floats(-100.0, 100.0), st.sampled_from([float("nan"), float("inf"), 1e30, -1e30]))
    values = draw(st.lists(element, min_size=batch * rows * cols, max_size=batch * rows * cols))
    return np.array(values, np.float32).reshape(batch, rows, cols), draw(st.booleans())


@settings(max_examples=40, **SETTINGS)
@given(matching_cases())
def test_matching_layer_on_hostile_scores(case):
    scores, training = case
    layer = tp.PerturbedMatching(num_samples=3, sigma=0.5, seed=0)
    batch, rows, cols = scores.shape
    if rows != cols:
        with pytest.raises(ValueError, match="square"):
            layer(tf.constant(scores), training=training)
        return
    try:
        y = layer(tf.constant(scores), training=training).numpy()
    except tf.errors.InvalidArgumentError as error:
        assert "finite" in str(error)
        assert not np.isfinite(scores).all(), scores
        return
    assert np.isfinite(scores).all(), (scores, y)
    assert y.shape == scores.shape
    for b in range(batch):
        np.testing.assert_allclose(y[b].sum(0), 1, atol=1e-5)
        np.testing.assert_allclose(y[b].sum(1), 1, atol=1e-5)
        if not training:
            assert set(np.unique(y[b])) <= {0.0, 1.0}
            r, c = scipy.optimize.linear_sum_assignment(scores[b].astype(np.float64), maximize=True)
            best = scores[b].astype(np.float64)[r, c].sum()
            got = (y[b] * scores[b].astype(np.float64)).sum()
            assert abs(got - best) <= 1e-6 * max(1.0, np.abs(scores[b]).sum()), (scores[b], y[b])


# ---------------------------------------------------------------------------
# Losses on hostile inputs


def test_fenchel_young_loss_with_hostile_inputs():
    loss = tp.FenchelYoungLoss("argmax", num_samples=4, reduction=None, seed=0)
    with pytest.raises(ValueError, match="y_true"):
        loss(tf.zeros([2, 3]), tf.zeros([2, 4]))
    theta = tf.constant([[1.0, float("nan"), 0.0], [1.0, 2.0, 0.0]])
    value = loss(tf.constant([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), theta).numpy()
    assert np.isnan(value[0]) and np.isfinite(value[1])
    empty = loss(tf.zeros([0, 3]), tf.zeros([0, 3]))
    assert empty.shape == (0,)
