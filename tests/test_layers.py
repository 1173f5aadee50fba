"""Behaviour of single layers and losses that is not a contract of all of them.

The contract every layer and loss keeps (config, `.keras`, export and serving, fit
with XLA, mixed precision, seeds, bad arguments) is tests/test_layer_contract.py;
the structured layers' own behaviour is in tests/test_structured_layers.py, the
direct and learned-noise layers' in tests/test_direct_loss.py and
tests/test_learned_noise_scale.py.
"""

import keras
import pytest
import tensorflow as tf

import tf_perturbed as tp


def test_top_k_arguments():
    with pytest.raises(ValueError, match="k=0"):
        tp.PerturbedTopK(k=0)
    with pytest.raises(ValueError, match="k=9"):  # k ≤ d, checked when the layer sees d
        tp.PerturbedTopK(k=9)(tf.zeros([2, 8]))
    with pytest.raises(ValueError, match=r"needs the hyper-parameters \['k'\]"):
        tp.FenchelYoungLoss("top_k")
    with pytest.raises(ValueError, match="unexpected"):
        tp.FenchelYoungLoss("argmax", k=2)


def test_loss_keyword_hyper_parameters_are_the_solvers():
    loss = tp.FenchelYoungLoss("top_k", k=3, num_samples=5, seed=1)
    config = loss.get_config()
    assert config["solver"] == "top_k" and config["solver_kwargs"] == {"k": 3} and "k" not in config
    assert loss.solver.kwargs == {"k": 3}
    assert tp.FenchelYoungLoss.from_config(config).get_config() == config


def test_unregistered_callable_solver_works_but_cannot_be_saved(tmp_path):
    def my_argmax(theta):
        return tp.solvers.argmax(theta)

    theta = tf.random.stateless_normal([4, 8], seed=[0, 1])
    layer = tp.PerturbedOptimizer(my_argmax, num_samples=4, seed=0)
    assert layer(theta, training=True).shape == theta.shape
    with pytest.raises(ValueError, match="register_solver"):
        layer.get_config()
    inputs = keras.Input((4,))
    model = keras.Model(inputs, tp.PerturbedOptimizer(my_argmax, num_samples=2)(keras.layers.Dense(4)(inputs)))
    with pytest.raises(ValueError, match=r"register_solver\('my_solver'"):
        model.save(tmp_path / "layer.keras")
    model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    model.compile("sgd", tp.FenchelYoungLoss(my_argmax, num_samples=2))
    with pytest.raises(ValueError, match=r"register_solver\('my_solver'"):
        model.save(tmp_path / "loss.keras")
