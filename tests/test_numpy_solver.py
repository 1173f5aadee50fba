"""The NumPy/SciPy adapter: exact answers, estimators on top, clear errors for XLA and export."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

import tf_perturbed as tp


def _assignment(scores):
    rows, cols = linear_sum_assignment(scores, maximize=True)
    perm = np.zeros_like(scores, dtype=np.float32)
    perm[rows, cols] = 1.0
    return perm


def _np_argmax(theta):
    return np.eye(theta.shape[-1], dtype=np.float32)[np.argmax(theta)]


def test_matches_the_tf_solver_batched_over_leading_axes():
    solver = tp.solvers.numpy_solver(_np_argmax)
    theta = tf.constant(np.random.default_rng(0).normal(size=(3, 4, 7)), tf.float32)
    np.testing.assert_array_equal(solver(theta).numpy(), tp.solvers.argmax(theta).numpy())
    np.testing.assert_array_equal(tf.function(solver)(theta).numpy(), tp.solvers.argmax(theta).numpy())


def test_perturbed_and_fenchel_young_agree_with_the_tf_solver_for_the_same_seed():
    solver = tp.solvers.numpy_solver(_np_argmax)
    theta = tf.constant(np.random.default_rng(1).normal(size=(2, 5)), tf.float32)
    seed = tf.constant([1, 2])
    for op_np, op_tf in [
        (tp.perturbed(solver, num_samples=20), tp.perturbed("argmax", num_samples=20)),
        (tp.perturbed_max(solver, num_samples=20), tp.perturbed_max("argmax", num_samples=20)),
    ]:
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(theta)
            a, b = op_np(theta, seed=seed), op_tf(theta, seed=seed)
            # distinct weights per entry (a constant upstream gradient would give 0 = 0 through argmax)
            va = tf.reduce_sum(a * tf.reshape(tf.range(1.0, 1.0 + tf.size(a, tf.float32)), tf.shape(a)))
            vb = tf.reduce_sum(b * tf.reshape(tf.range(1.0, 1.0 + tf.size(b, tf.float32)), tf.shape(b)))
        np.testing.assert_allclose(a.numpy(), b.numpy())
        grad_np, grad_tf = tape.gradient(va, theta).numpy(), tape.gradient(vb, theta).numpy()
        assert np.abs(grad_tf).max() > 0.1
        np.testing.assert_allclose(grad_np, grad_tf, rtol=1e-6, atol=1e-6 * np.abs(grad_tf).max())
    y = tp.solvers.argmax(theta)
    np.testing.assert_allclose(
        tp.fenchel_young_loss(y, theta, solver, num_samples=10, seed=3).numpy(),
        tp.fenchel_young_loss(y, theta, "argmax", num_samples=10, seed=3).numpy(),
    )


def test_matrix_solver_with_scipy_assignment():
    solver = tp.solvers.numpy_solver(_assignment, event_ndims=2)
    scores = tf.constant(np.random.default_rng(2).normal(size=(4, 5, 5)), tf.float32)
    y = tp.perturbed(solver, num_samples=8, sigma=0.1, seed=0)(scores).numpy()
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(y.sum(-2), 1.0, rtol=1e-6)


def test_declared_output_shape_and_wrong_shapes():
    def sort_matrix(theta):
        return np.eye(theta.shape[-1], dtype=np.float32)[np.argsort(theta, kind="stable")]

    solver = tp.solvers.numpy_solver(sort_matrix, output_shape=lambda s: s + s)
    theta = tf.constant([[0.3, -1.0, 2.0]])
    np.testing.assert_array_equal(solver(theta).numpy(), tp.solvers.sort_permutation(theta).numpy())
    wrong = tp.solvers.numpy_solver(sort_matrix)  # declares the input's shape
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError), match="declare it with `output_shape=`"):
        wrong(theta)


def test_a_fixed_output_shape_is_not_mistaken_for_the_input_shape():
    # Two numbers per problem whatever its size: the size-2 shape must not read as "θ's shape".
    first_two = tp.solvers.numpy_solver(lambda t: t[:, :2], (2,), batched=True)
    assert first_two.spec.linear_output is False
    theta = tf.reshape(tf.range(12.0), [4, 3])
    np.testing.assert_array_equal(first_two(theta).numpy(), theta.numpy()[:, :2])
    same = tp.solvers.numpy_solver(lambda t: -t, lambda s: s, batched=True)
    assert same.spec.linear_output is True


def test_xla_and_export_give_clear_errors(tmp_path):
    solver = tp.solvers.numpy_solver(_np_argmax, name="numpy_argmax")
    with pytest.raises(ValueError, match="cannot be compiled with XLA"):
        tf.function(solver, jit_compile=True)(tf.zeros([2, 3]))
    inputs = keras.Input((3,))
    model = keras.Model(inputs, tp.PerturbedOptimizer("numpy_argmax", num_samples=4, seed=0)(inputs))
    assert model.predict(np.eye(3, dtype=np.float32), verbose=0).shape == (3, 3)
    with pytest.raises(ValueError, match="cannot be exported"):
        model.export(str(tmp_path / "exported"), verbose=False)


def test_bad_arguments():
    with pytest.raises(TypeError, match="fn=3"):
        tp.solvers.numpy_solver(3)
    with pytest.raises(ValueError, match="event_ndims=0"):
        tp.solvers.numpy_solver(_np_argmax, event_ndims=0)
