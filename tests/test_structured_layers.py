"""PerturbedShortestPath, PerturbedMatching and their Fenchel-Young losses: what is their own.

Their contract (config, `.keras`, export, fit with XLA, mixed precision, seeds) is
tests/test_layer_contract.py; here: clipping to the solver's domain, the
neighbourhood argument, and learning the grid costs and the assignments end to end
(in graph mode: the contract fits these losses with XLA).
"""

import keras
import layer_harness as harness
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp

H, W, N = 5, 6, 4


def test_additive_shortest_path_clips_negative_perturbed_costs():
    # σ = 5 on costs near 0.1: most perturbed costs are negative, which the
    # solver alone rejects; the additive layer clips them at 0 by default.
    layer = tp.PerturbedShortestPath(num_samples=8, sigma=5.0, perturbation="additive", seed=0)
    y = layer(tf.fill([2, H, W], 0.1), training=True).numpy()
    assert np.all(y[:, 0, 0] == 1.0) and np.all(y[:, -1, -1] == 1.0)
    op = tp.perturbed("shortest_path", num_samples=8, sigma=5.0, perturbation="additive")
    np.testing.assert_array_equal(op(tf.fill([2, H, W], 0.1), seed=tp.seeds.next_seed(keras.random.SeedGenerator(0))), y)


def _grid_problem(num, seed):
    """Vertex features x [num, H, W, 3]; true costs softplus(x·w) + 0.1; true paths."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, H, W, 3)).astype(np.float32)
    costs = np.log1p(np.exp(x @ np.array([2.0, -1.0, 0.5], np.float32))) + 0.1
    paths = tp.solvers.shortest_path(tf.constant(costs)).numpy()
    return x, costs, paths


def _perfect_paths(model, x, costs, paths):
    predicted = tp.solvers.shortest_path(tf.constant(model.predict(x, verbose=0))).numpy()
    true_cost = (predicted * costs).sum((1, 2))
    optimal = (paths * costs).sum((1, 2))
    return float(np.mean(np.abs(true_cost - optimal) <= 1e-5 * optimal))


def test_fenchel_young_shortest_path_learns_grid_costs_with_fit():
    keras.utils.set_random_seed(0)
    x, costs, paths = _grid_problem(256, seed=0)
    inputs = keras.Input((H, W, 3))
    predicted = keras.layers.Dense(1, activation="softplus")(inputs)
    model = keras.Model(inputs, keras.layers.Reshape((H, W))(predicted))
    before = _perfect_paths(model, x, costs, paths)
    loss = tp.FenchelYoungLoss("shortest_path", num_samples=5, sigma=0.5, seed=0)
    losses = harness.fit_lowers_loss(model, x, paths, loss, epochs=15, learning_rate=0.05, jit_compile=False)
    after = _perfect_paths(model, x, costs, paths)
    assert after > before + 0.2 and after > 0.6, (before, after, losses)


def test_fenchel_young_assignment_learns_with_fit():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, N, N)).astype(np.float32)
    target = tp.solvers.assignment(tf.constant(x * 2.0 - x.transpose(0, 2, 1))).numpy()
    inputs = keras.Input((N, N))
    flat = keras.layers.Reshape((N * N,))(inputs)
    transposed = keras.layers.Reshape((N * N,))(keras.layers.Permute((2, 1))(inputs))
    scores = keras.layers.Dense(N * N)(keras.layers.Concatenate()([flat, transposed]))
    model = keras.Model(inputs, keras.layers.Reshape((N, N))(scores))
    loss = tp.FenchelYoungLoss("assignment", num_samples=5, sigma=0.5, seed=0)
    harness.fit_lowers_loss(model, x, target, loss, epochs=8, learning_rate=0.02, jit_compile=False)
    hard = tp.solvers.assignment(tf.constant(model.predict(x, verbose=0))).numpy()
    assert np.mean(np.all(hard == target, axis=(1, 2))) > 0.5


def test_neighbourhood_is_four_or_eight():
    with pytest.raises(ValueError, match="neighbourhood=6"):
        tp.PerturbedShortestPath(neighbourhood=6)
    layer = tp.PerturbedShortestPath(neighbourhood=4)
    assert layer.neighbourhood == 4 and layer.solver.kwargs == {"neighbourhood": 4}
    assert layer.get_config()["neighbourhood"] == 4
