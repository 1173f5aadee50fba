"""The closed-form solvers against NumPy, in eager, graph and XLA modes."""

import numpy as np
import pytest
import tensorflow as tf

from tf_perturbed import solvers

MODES = {
    "eager": lambda f: f,
    "graph": lambda f: tf.function(f),
    "xla": lambda f: tf.function(f, jit_compile=True),
}


def _numpy_ranks(theta):
    # Stable ascending argsort, inverted: ties give the lower rank to the lower index.
    order = np.argsort(theta, axis=-1, kind="stable")
    return np.argsort(order, axis=-1, kind="stable")


def _random_scores(rng, shape, ties):
    if ties:
        return rng.integers(0, 3, size=shape).astype(np.float32)
    return rng.normal(size=shape).astype(np.float32)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ties", [False, True])
def test_argmax_and_top_k_match_numpy(mode, ties):
    rng = np.random.default_rng(0)
    theta = _random_scores(rng, (4, 7, 9), ties)
    got = MODES[mode](solvers.argmax)(tf.constant(theta)).numpy()
    expected = np.eye(9)[np.argmax(theta, axis=-1)]  # NumPy also takes the first maximum
    np.testing.assert_array_equal(got, expected)
    got_k = MODES[mode](lambda t: solvers.top_k(t, k=3))(tf.constant(theta)).numpy()
    assert got_k.shape == theta.shape
    np.testing.assert_array_equal(got_k.sum(-1), 3.0)
    # The selected entries carry the 3 largest values: their sum is the top-3 sum.
    np.testing.assert_allclose((got_k * theta).sum(-1), np.sort(theta, -1)[..., -3:].sum(-1), rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("d", [1, 2, 17, 300])
def test_ranks_and_sort_permutation_match_numpy(mode, ties, d):
    rng = np.random.default_rng(d)
    theta = _random_scores(rng, (3, 5, d), ties)
    got = MODES[mode](solvers.ranks)(tf.constant(theta)).numpy()
    np.testing.assert_array_equal(got, _numpy_ranks(theta))
    perm = MODES[mode](solvers.sort_permutation)(tf.constant(theta)).numpy()
    assert perm.shape == (3, 5, d, d)
    np.testing.assert_array_equal(perm.sum(-1), 1.0)
    np.testing.assert_array_equal(perm.sum(-2), 1.0)
    np.testing.assert_array_equal(np.einsum("...ij,...j->...i", perm, theta), np.sort(theta, -1))


@pytest.mark.parametrize("d", [8, 40])
def test_every_ranking_method_agrees(d):
    # ranks sorts outside XLA, and under XLA counts pairs (d ≤ 32) or sorts packed keys (d > 32).
    theta = _random_scores(np.random.default_rng(1), (6, d), ties=True)
    for fn in (solvers.ranks, tf.function(solvers.ranks, jit_compile=True)):
        np.testing.assert_array_equal(fn(tf.constant(theta)).numpy(), _numpy_ranks(theta))


def test_ranks_maximise_the_linear_objective_over_permutations():
    # Brute force over all permutations of (0, …, d−1) for d = 5.
    import itertools

    theta = np.random.default_rng(3).normal(size=5).astype(np.float32)
    best = max(itertools.permutations(range(5)), key=lambda p: np.dot(p, theta))
    np.testing.assert_array_equal(solvers.ranks(tf.constant(theta)).numpy(), best)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float64, tf.int32])
def test_output_dtype_follows_input(dtype):
    theta = tf.cast(tf.constant([[3.0, 1.0, 2.0]]), dtype)
    expected = tf.float32 if dtype.is_integer else dtype
    for fn in (solvers.argmax, solvers.ranks, lambda t: solvers.top_k(t, 2), solvers.sort_permutation):
        y = fn(theta)
        assert y.dtype == expected
    np.testing.assert_array_equal(solvers.ranks(theta).numpy().astype(np.float32), [[2.0, 0.0, 1.0]])


def test_solver_errors_name_the_argument():
    with pytest.raises(ValueError, match="theta"):
        solvers.argmax(tf.constant(1.0))
    with pytest.raises(ValueError, match=r"k=4"):
        solvers.top_k(tf.zeros([2, 3]), k=4)
    with pytest.raises(ValueError, match=r"k=0"):
        solvers.top_k(tf.zeros([2, 3]), k=0)
    with pytest.raises(TypeError, match=r"k=1.5"):
        solvers.top_k(tf.zeros([2, 3]), k=1.5)
    with pytest.raises(TypeError, match="theta"):
        solvers.ranks(tf.constant(["a", "b"]))
