"""PerturbedShortestPath, PerturbedMatching and their Fenchel-Young losses (DESIGN §5)."""

import keras
import layer_harness as harness
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp

H, W, N = 5, 6, 4


def _layers():
    return {
        "shortest_path": tp.PerturbedShortestPath(num_samples=8, sigma=0.5, seed=1),
        "shortest_path_additive": tp.PerturbedShortestPath(
            num_samples=8, sigma=0.5, perturbation="additive", neighbourhood=4, seed=2
        ),
        "matching": tp.PerturbedMatching(num_samples=8, sigma=0.5, seed=3),
    }


def _inputs(name, batch=3, seed=0):
    rng = np.random.default_rng(seed)
    if name.startswith("shortest_path"):
        return tf.constant(rng.uniform(0.1, 2.0, size=(batch, H, W)), tf.float32)
    return tf.constant(rng.normal(size=(batch, N, N)), tf.float32)


@pytest.mark.parametrize("name", list(_layers()))
def test_config_round_trip_and_hard_inference(name):
    layer = _layers()[name]
    harness.config_round_trip(layer)
    harness.serialize_round_trip(layer)
    x = _inputs(name)
    np.testing.assert_array_equal(layer(x).numpy(), layer.solver(x).numpy())
    soft = layer(x, training=True).numpy()
    assert soft.shape == x.shape and not np.array_equal(soft, layer(x).numpy())
    assert layer.compute_output_shape(x.shape) == tuple(x.shape)


def test_additive_shortest_path_clips_negative_perturbed_costs():
    # σ = 5 on costs near 0.1: most perturbed costs are negative, which the
    # solver alone rejects; the additive layer clips them at 0 by default.
    layer = tp.PerturbedShortestPath(num_samples=8, sigma=5.0, perturbation="additive", seed=0)
    y = layer(tf.fill([2, H, W], 0.1), training=True).numpy()
    assert np.all(y[:, 0, 0] == 1.0) and np.all(y[:, -1, -1] == 1.0)
    op = tp.perturbed("shortest_path", num_samples=8, sigma=5.0, perturbation="additive")
    np.testing.assert_array_equal(op(tf.fill([2, H, W], 0.1), seed=tp.seeds.next_seed(keras.random.SeedGenerator(0))), y)


@pytest.mark.parametrize("name", list(_layers()))
def test_eager_graph_and_xla_agree(name):
    layer = _layers()[name]
    x = _inputs(name)
    seed = tf.constant([1, 2])

    def value_and_grad(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = tp.perturbed(**layer.config.arguments())(t, seed=seed)
            v = tf.reduce_sum(y * tf.reshape(tf.range(tf.size(y), dtype=y.dtype), tf.shape(y)))
        return tf.concat([tf.reshape(y, [-1]), tf.reshape(tape.gradient(v, t), [-1])], 0)

    harness.modes_agree(value_and_grad, x)


def test_keras_file_and_export_round_trips(tmp_path):
    grid_in = keras.Input((H, W))
    costs = keras.layers.Activation("softplus")(keras.layers.Dense(W)(grid_in))
    scores_in = keras.Input((N, N))
    scores = keras.layers.Dense(N)(scores_in)
    outputs = [
        keras.layers.Reshape((-1,))(_layers()["shortest_path"](costs)),
        keras.layers.Reshape((-1,))(_layers()["shortest_path_additive"](costs)),
        keras.layers.Reshape((-1,))(_layers()["matching"](scores)),
    ]
    model = keras.Model([grid_in, scores_in], keras.layers.Concatenate()(outputs))
    x = [_inputs("shortest_path", 4).numpy(), _inputs("matching", 4).numpy()]
    harness.keras_file_round_trip(model, x, tmp_path)
    # export takes one input signature per model input: serve a two-input model
    export_dir = str(tmp_path / "exported")
    model.export(export_dir, verbose=False)
    loaded = tf.saved_model.load(export_dir)  # keep a reference: its variables live in it
    served = loaded.serve([tf.constant(v) for v in x])
    np.testing.assert_allclose(served.numpy(), model.predict(x, verbose=0))


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
    losses = harness.fit_lowers_loss(model, x, paths, loss, epochs=15, learning_rate=0.05)
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
    harness.fit_lowers_loss(model, x, target, loss, epochs=8, learning_rate=0.02)
    hard = tp.solvers.assignment(tf.constant(model.predict(x, verbose=0))).numpy()
    assert np.mean(np.all(hard == target, axis=(1, 2))) > 0.5


def test_constructor_errors():
    with pytest.raises(ValueError, match="neighbourhood=6"):
        tp.PerturbedShortestPath(neighbourhood=6)
    with pytest.raises(ValueError, match="perturbation='log'"):
        tp.PerturbedShortestPath(perturbation="log")
    with pytest.raises(ValueError, match="sigma=0"):
        tp.PerturbedMatching(sigma=0)
