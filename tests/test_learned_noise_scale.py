"""LearnedNoiseScale: σ(x) > 0, noise in training only, the σ gradient through the direct estimator.

The gradient checks are exact (no Monte Carlo): the noise drawn by the layer is
read back from its output, γ = (θ' − θ)/σ, and the direct estimate and the
chain rule are recomputed in NumPy.

The layer's contract (config, seeds, `.keras`, export, fit with XLA, mixed precision,
bad arguments) is tests/test_layer_contract.py.

Runtime: 19 tests, about 10 s of CPU on 2 shared cores (4 s of it importing TensorFlow).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _one_hot_argmax(x):
    return np.eye(x.shape[-1])[x.argmax(-1)]


def _inputs(batch=32, features=5, d=4, seed=0):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(batch, d)).astype(np.float32)
    x = rng.normal(size=(batch, features)).astype(np.float32)
    return tf.constant(scores), tf.constant(x)


def test_initial_sigma_and_sigma_returned_at_inference():
    # (noise in training only, seeds and the rest of the layer contract: tests/test_layer_contract.py)
    scores, x = _inputs()
    layer = tp.LearnedNoiseScale(initial_sigma=0.7, return_sigma=True, seed=0)
    noisy, sigma = layer([scores, x], training=True)
    np.testing.assert_allclose(sigma.numpy(), np.full((32, 1), 0.7), rtol=1e-6)  # W = 0 at start
    assert np.all(noisy.numpy() != scores.numpy())
    out, sigma = layer([scores, x], training=False)
    np.testing.assert_array_equal(out.numpy(), scores.numpy())
    np.testing.assert_allclose(sigma.numpy(), np.full((32, 1), 0.7), rtol=1e-6)


def test_sigma_stays_positive_for_extreme_weights():
    scores, x = _inputs()
    layer = tp.LearnedNoiseScale(min_sigma=1e-3, per_entry=True, return_sigma=True, seed=1)
    layer([scores, x])
    # softplus underflows to 0 in float32 below about −104: the floor keeps σ > 0.
    kernel = np.where(np.arange(4) % 2 == 0, -1e4, 1e4) * np.ones((5, 4))
    layer.sigma_kernel.assign(kernel.astype(np.float32))
    noisy, sigma = layer([scores, tf.abs(x) + 1.0], training=True)
    sigma = sigma.numpy()
    assert sigma.shape == (32, 4)
    assert np.all(sigma >= 1e-3) and np.all(np.isfinite(sigma)) and np.all(np.isfinite(noisy.numpy()))
    np.testing.assert_array_equal(sigma[:, 0], 1e-3 * np.ones(32, np.float32))


@pytest.mark.parametrize("epsilon", [-0.5, 0.5])
def test_sigma_gradient_is_the_direct_estimate_through_the_chain_rule(epsilon):
    # ∇σ_b = a_b·(⟨γ_b, y_ε⟩ − ⟨γ_b, y₀⟩)/ε, then σ = softplus(xW + b) + floor.
    scores, x = _inputs(batch=64, seed=2)
    layer = tp.LearnedNoiseScale(min_sigma=0.01, return_sigma=True, seed=5)
    layer([scores, x])
    rng = np.random.default_rng(3)
    layer.sigma_kernel.assign(0.3 * rng.normal(size=(5, 1)).astype(np.float32))
    loss_weights = rng.normal(size=(64, 4)).astype(np.float32)  # g = ℓ for each example
    direct = tp.direct_loss_gradient("argmax", epsilon=epsilon)
    with tf.GradientTape() as tape:
        noisy, sigma = layer([scores, x], training=True)
        loss = tf.reduce_sum(direct(noisy) * loss_weights)
    grad_kernel, grad_bias = tape.gradient(loss, [layer.sigma_kernel, layer.sigma_bias])

    h = x.numpy() @ layer.sigma_kernel.numpy() + layer.sigma_bias.numpy()  # [B, 1]
    np.testing.assert_allclose(sigma.numpy(), _softplus(h) + 0.01, rtol=1e-5)
    theta_pert = noisy.numpy().astype(np.float64)
    gamma = (theta_pert - scores.numpy()) / sigma.numpy()
    scale = np.abs(loss_weights).max(-1, keepdims=True)
    y0 = _one_hot_argmax(theta_pert)
    y_eps = _one_hot_argmax(theta_pert + epsilon * loss_weights / scale)
    grad_sigma = (gamma * scale * (y_eps - y0) / epsilon).sum(-1, keepdims=True)  # [B, 1]
    grad_h = grad_sigma * _sigmoid(h)
    assert np.any(y0 != _one_hot_argmax(scores.numpy()))  # the noise changes some solutions
    assert np.abs(grad_h).sum() > 0  # σ's weights receive gradients
    np.testing.assert_allclose(grad_bias.numpy(), grad_h.sum(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad_kernel.numpy(), x.numpy().T @ grad_h, rtol=1e-4, atol=1e-5)


def _one_step(layer, optimizer, scores, x, weights):
    """Effective σ-head bias change after one optimizer step on ⟨θ', c⟩."""
    layer([scores, x])  # builds the weights; no noise is drawn outside training
    weight = layer.sigma_bias if layer.sigma_model is None else layer.sigma_model.layers[-1].bias
    scale = layer.sigma_lr_scale if layer.sigma_model is None else 1.0  # W = s·U (built-in head)
    before = scale * weight.numpy().copy()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer([scores, x], training=True) * weights)
    variables = layer.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
    return scale * weight.numpy() - before


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_sigma_lr_scale_scales_the_update_of_the_built_in_head(optimizer):
    scores, x = _inputs(seed=4)
    weights = tf.constant(np.random.default_rng(4).normal(size=(32, 4)), tf.float32)
    steps = {}
    for s in (1.0, 0.01):
        _, sigma = tp.LearnedNoiseScale(sigma_lr_scale=s, return_sigma=True, seed=6)([scores, x])
        np.testing.assert_allclose(sigma.numpy(), 1.0, rtol=1e-6)  # the forward pass ignores s
        layer = tp.LearnedNoiseScale(sigma_lr_scale=s, seed=6)
        # U = W₀/s ≈ 54 for s = 0.01, where float32 resolves steps of ~4e-6: a learning
        # rate of 0.1 keeps the measured step's rounding below 1e-4 of it.
        optimizer_instance = keras.optimizers.get({"class_name": optimizer, "config": {"learning_rate": 0.1}})
        steps[s] = _one_step(layer, optimizer_instance, scores, x, weights)
    assert np.all(np.abs(steps[1.0]) > 1e-3)
    np.testing.assert_allclose(steps[0.01], 0.01 * steps[1.0], rtol=1e-3)


def test_sigma_lr_scale_with_a_sub_model_scales_its_gradient():
    scores, x = _inputs(seed=7)
    weights = tf.constant(np.random.default_rng(7).normal(size=(32, 4)), tf.float32)
    steps = {}
    for s in (1.0, 0.1):
        head = keras.Sequential([keras.layers.Dense(1, kernel_initializer=keras.initializers.Zeros())])
        layer = tp.LearnedNoiseScale(sigma_model=head, sigma_lr_scale=s, seed=8)
        steps[s] = _one_step(layer, keras.optimizers.SGD(0.1), scores, x, weights)
    assert np.all(steps[1.0] != 0)
    np.testing.assert_allclose(steps[0.1], 0.1 * steps[1.0], rtol=1e-4)


def test_sub_model_shapes_per_example_and_per_entry():
    scores = tf.zeros([6, 3, 4])  # [B, n, K]
    features = tf.ones([6, 2, 5])  # any shape the sub-model accepts
    per_example = keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(1)])
    per_entry = keras.Sequential(
        [keras.layers.Flatten(), keras.layers.Dense(12), keras.layers.Reshape((3, 4))]
    )
    for head, shape in ((per_example, (6, 1, 1)), (per_entry, (6, 3, 4))):
        layer = tp.LearnedNoiseScale(sigma_model=head, return_sigma=True, seed=0)
        _, sigma = layer([scores, features], training=True)
        assert tuple(sigma.shape) == shape
        assert layer.compute_output_shape([(None, 3, 4), (None, 2, 5)]) == ((None, 3, 4), (None,) + shape[1:])
    wrong = tp.LearnedNoiseScale(
        sigma_model=keras.Sequential([keras.layers.Flatten(), keras.layers.Dense(5)]), seed=0
    )
    with pytest.raises(ValueError, match="5 values per example"):
        wrong([scores, features], training=True)
    with pytest.raises(ValueError, match=r"\[scores, features\]"):
        tp.LearnedNoiseScale()(scores)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(min_sigma=0.0), ValueError, "min_sigma=0.0"),
        (dict(min_sigma="0.1"), TypeError, "min_sigma='0.1'"),
        (dict(initial_sigma=1e-4), ValueError, "initial_sigma=0.0001"),
        (dict(sigma_lr_scale=-1.0), ValueError, "sigma_lr_scale=-1.0"),
        (dict(sigma_model="dense"), TypeError, "sigma_model='dense'"),
        (dict(per_entry="yes"), TypeError, "per_entry='yes'"),
        (dict(per_entry=True, sigma_model=keras.layers.Dense(1)), ValueError, "per_entry=True"),
        (dict(return_sigma=1), TypeError, "return_sigma=1"),
    ],
)
def test_rejects_bad_arguments(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        tp.LearnedNoiseScale(**kwargs)


def test_config_round_trip_with_a_sub_model_and_non_default_arguments():
    head = keras.Sequential([keras.layers.Dense(2, activation="relu"), keras.layers.Dense(1)])
    for kwargs in (
        dict(noise="normal", min_sigma=0.02, initial_sigma=0.5, per_entry=True, sigma_lr_scale=0.1, seed=4),
        dict(sigma_model=head, return_sigma=True, seed=None),
    ):
        layer = tp.LearnedNoiseScale(**kwargs)
        config = layer.get_config()
        for key, value in kwargs.items():
            if key != "sigma_model":
                assert config[key] == value, key
        clone = tp.LearnedNoiseScale.from_config(config)
        assert clone.get_config() == config
        restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert restored.get_config() == config
    assert isinstance(clone.sigma_model, keras.Sequential)


def _model(sigma_model=None, return_sigma=False):
    inputs = keras.Input((6,))
    scores = keras.layers.Dense(4, kernel_initializer=keras.initializers.GlorotUniform(seed=0))(inputs)
    noise_scale = tp.LearnedNoiseScale(
        sigma_model=sigma_model, return_sigma=return_sigma, seed=1, name="noise_scale"
    )
    if return_sigma:
        noisy, sigma = noise_scale([scores, inputs])
        return keras.Model(inputs, [tp.DirectLossGradient("argmax", epsilon=-1.0)(noisy), sigma])
    noisy = noise_scale([scores, inputs])
    return keras.Model(inputs, tp.DirectLossGradient("argmax", epsilon=-1.0)(noisy))


def _classification_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 6)).astype(np.float32)
    labels = np.argmax(x @ rng.normal(size=(6, 4)), 1)
    return x, np.eye(4, dtype=np.float32)[labels]


def test_scores_and_learned_sigma_train_with_fit_and_sigma_is_reported():
    x, y = _classification_data()
    model = _model()
    model.compile(keras.optimizers.Adam(0.05), "mse", jit_compile=True)
    history = model.fit(x, y, epochs=3, batch_size=32, shuffle=False, verbose=0).history
    # MSE of one-hot predictions = (2/4)·error rate; about 0.3 in the first epoch.
    assert history["loss"][-1] < 0.5 * history["loss"][0], history
    sigma = np.array(history["noise_scale_sigma"])
    assert np.all(sigma > 0) and sigma[-1] != sigma[0], history  # σ is trained and reported


def test_saves_loads_and_exports_with_sigma_output(tmp_path):
    head = keras.Sequential(
        [
            keras.layers.Dense(
                3, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(seed=2)
            ),
            keras.layers.Dense(1),
        ]
    )
    model = _model(sigma_model=head, return_sigma=True)
    x, _ = _classification_data()
    x = x[:16]
    y, sigma = model.predict(x, verbose=0)
    assert np.all(sigma > 0) and np.ptp(sigma) > 0  # σ depends on the input
    model.save(tmp_path / "noise.keras")
    restored = keras.models.load_model(tmp_path / "noise.keras")
    for got, want in zip(restored.predict(x, verbose=0), (y, sigma), strict=True):
        np.testing.assert_array_equal(got, want)
    model.export(str(tmp_path / "noise_export"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "noise_export"))  # keep a reference: it owns the variables
    served = reloaded.serve(tf.constant(x))
    for got, want in zip(served, (y, sigma), strict=True):
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6)
