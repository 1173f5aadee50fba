"""benchmarks/pyepo/data.py's exact knapsack labels: the enumerated selections of the two-resource
knapsack (`ks2`) and the one-resource table, against brute force and tf_perturbed's solver."""

import importlib.util
import itertools
import pathlib

import numpy as np
import tensorflow as tf

import tf_perturbed as tp

PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "pyepo" / "data.py"


def _data():
    spec = importlib.util.spec_from_file_location("pyepo_benchmark_data", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_feasible_selections_are_every_selection_within_the_capacities():
    data = _data()
    rng = np.random.default_rng(0)
    for _ in range(10):
        weights = rng.integers(0, 6, (2, 9))
        capacity = rng.integers(3, 15, 2)
        got = {tuple(row) for row in data.feasible_selections(weights, capacity)}
        every = np.array(list(itertools.product([0, 1], repeat=9)))
        expected = {tuple(row) for row in every[np.all(every @ weights.T <= capacity, axis=1)]}
        assert got == expected
        assert len(got) == len(data.feasible_selections(weights, capacity))  # no selection twice


def test_labels_reach_the_optimal_value_of_the_knapsack_solver():
    # Two resources: the best enumerated selection has the value of tp.solvers.knapsack's DP; one
    # resource: the NumPy table gives the DP's selections (the same tie rule).
    data = _data()
    rng = np.random.default_rng(1)
    weights, capacity = rng.integers(1, 8, (2, 12)), [20, 18]
    values = rng.integers(0, 6, (300, 12)).astype(np.float64)  # integer values: ties
    labels = data.best_selections(values, data.feasible_selections(weights, capacity))
    exact = tp.solvers.knapsack(tf.constant(values), weights.tolist(), capacity).numpy()
    np.testing.assert_array_equal((labels * values).sum(1), (exact * values).sum(1))
    assert np.all(labels @ weights.T <= np.array(capacity))
    one = [int(w) for w in weights[0]]
    np.testing.assert_array_equal(
        data.knapsack_selections(values, one, 20), tp.solvers.knapsack(tf.constant(values), one, 20).numpy()
    )
