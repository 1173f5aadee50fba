"""`tf_perturbed.solvers.milp`: linear and integer programs given by their constraints, solved by
SciPy's HiGHS on the host, against the exact TF solvers on the same problems, and its errors."""

import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp

GRID_SENDERS, GRID_RECEIVERS = tp.solvers.grid_graph_edges(4, 4)


def _flow_constraints(senders, receivers, num_vertices, source, target):
    """Incidence matrix [V, E] (out − in) and the flow's right-hand side: +1 at source, −1 at target."""
    incidence = np.zeros((num_vertices, len(senders)))
    incidence[senders, np.arange(len(senders))] += 1
    incidence[receivers, np.arange(len(senders))] -= 1
    rhs = np.zeros(num_vertices)
    rhs[source], rhs[target] = 1, -1
    return incidence, rhs


@pytest.mark.parametrize("ties", [False, True])
def test_two_resource_knapsack_equals_the_dynamic_programme(ties):
    # 60 random problems with two resources: HiGHS's selection reaches the optimal value of the
    # exact DP (tp.solvers.knapsack), and is feasible; integer values tie often.
    rng = np.random.default_rng(int(ties))
    weights = rng.integers(1, 7, (2, 10))
    capacity = [int(c) for c in rng.integers(8, 20, 2)]
    values = rng.integers(-1, 5, (60, 10)) if ties else rng.uniform(0, 1, (60, 10))
    values = tf.constant(values, tf.float64)
    solver = tp.solvers.milp(a_ub=weights, b_ub=capacity, maximize=True)
    y = solver(values).numpy()
    exact = tp.solvers.knapsack(values, weights.tolist(), capacity).numpy()
    assert np.isin(y, [0.0, 1.0]).all()
    assert np.all(y @ weights.T <= np.array(capacity))
    np.testing.assert_allclose((y * values.numpy()).sum(-1), (exact * values.numpy()).sum(-1), atol=1e-9)


def test_shortest_path_linear_program_equals_the_graph_solver():
    # The flow LP (continuous 0 ≤ y ≤ 1, flow conservation) of the 4×4 grid DAG has integral
    # vertices; with distinct random costs the optimum is unique and equals Bellman-Ford's path.
    incidence, rhs = _flow_constraints(GRID_SENDERS, GRID_RECEIVERS, 16, 0, 15)
    solver = tp.solvers.milp(a_eq=incidence, b_eq=rhs, integrality=0)
    costs = tf.constant(np.random.default_rng(0).uniform(0.1, 2.0, (100, len(GRID_SENDERS))), tf.float32)
    y = solver(costs).numpy()
    expected = tp.solvers.graph_shortest_path(costs, GRID_SENDERS, GRID_RECEIVERS, 0, 15).numpy()
    np.testing.assert_allclose(y, expected, atol=1e-6)
    assert y.dtype == np.float32 and y.shape == (100, len(GRID_SENDERS))


def test_batch_axes_and_estimators():
    # Leading axes are kept; the Fenchel-Young loss and a perturbed layer accept the solver (eagerly
    # and in tf.function), and refuse XLA with an error naming the host solver.
    solver = tp.solvers.milp(a_ub=[[1, 2, 3], [3, 1, 2]], b_ub=[5, 3], maximize=True)
    theta = tf.constant(np.random.default_rng(1).normal(size=(2, 3, 3)), tf.float32)
    assert solver(theta).shape == (2, 3, 3)
    loss = tp.FenchelYoungLoss(solver, num_samples=4, seed=0)
    labels = solver(theta)
    value = tf.function(lambda: loss(labels, theta))()
    assert np.isfinite(value.numpy())
    with tf.GradientTape() as tape:
        tape.watch(theta)
        out = tf.reduce_sum(tp.PerturbedOptimizer(solver, num_samples=4, seed=0)(theta, training=True) * tf.range(3.0))
    gradient = tape.gradient(out, theta)
    assert gradient is not None and gradient.shape == theta.shape and np.all(np.isfinite(gradient.numpy()))
    with pytest.raises(ValueError, match="XLA"):
        tf.function(lambda t: solver(t), jit_compile=True)(theta)


def test_a_problem_without_solution_names_its_status_and_index():
    solver = tp.solvers.milp(a_ub=[[1.0, 1.0], [-1.0, -1.0]], b_ub=[1.0, -3.0])  # y1 + y2 ≤ 1 and ≥ 3
    message = "problem 0 of the batch not solved to optimality: HiGHS status 2"
    with pytest.raises(ValueError, match=message):  # eagerly: the host's exception
        solver(tf.ones([1, 2]))
    with pytest.raises(tf.errors.OpError, match=message):  # in a graph: the op's error, same message
        tf.function(solver.__call__)(tf.ones([1, 2]))
    with pytest.raises(ValueError, match="problem 1 of the batch has a NaN or infinite score"):
        tp.solvers.milp(a_ub=[[1.0, 1.0]], b_ub=[1.0])(tf.constant([[1.0, 0.0], [np.nan, 0.0]]))
    unbounded = tp.solvers.milp(a_ub=[[1.0, 0.0]], b_ub=[1.0], lower=-np.inf, upper=np.inf, integrality=0)
    with pytest.raises(ValueError, match="problem 1 of the batch"):
        unbounded(tf.constant([[-1.0, 0.0], [1.0, 0.0]]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a_ub=[[1, 2]]), "a_ub with b_ub"),
        (dict(b_eq=[1]), "a_eq with b_eq"),
        (dict(), "received neither"),
        (dict(a_ub=[1, 2], b_ub=[1]), r"non-empty matrix.*shape \(2,\)"),
        (dict(a_ub=[[1, 2]], b_ub=[1, 2]), r"`b_ub` to be a number or 1 numbers.*b_ub=\[1, 2\]"),
        (dict(a_ub=[[1, 2]], b_ub=[1], a_eq=[[1, 2, 3]], b_eq=[1]), r"`a_eq` to have one column per variable \(2\)"),
        (dict(a_ub=[[1, np.nan]], b_ub=[1]), "`a_ub` to be finite"),
        (dict(a_ub=[[1, 2]], b_ub=[1], lower=[0, np.nan]), "`lower` to be numbers, not NaN"),
        (dict(a_ub=[[1, 2]], b_ub=[1], integrality=[1, 2]), r"integrality=\[1, 2\]"),
    ],
)
def test_bad_constraints_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tp.solvers.milp(**kwargs)


def test_scores_of_another_length_are_named():
    solver = tp.solvers.milp(a_ub=[[1, 2, 3]], b_ub=[3])
    with pytest.raises(ValueError, match=r"3 entries \(the constraints' columns\).*theta.shape=\(2, 4\)"):
        solver(tf.ones([2, 4]))
