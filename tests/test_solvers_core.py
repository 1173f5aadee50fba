"""Closed-form solvers: what the solver contract (tests/test_solver_contract.py) does not check.

The contract solves problems of 1 and 7 scores; under XLA ranks and sort permutations
switch method above d = 32 (from pairwise counting to one packed integer sort), and
top-k checks its own hyper-parameter.
"""

import numpy as np
import pytest
import tensorflow as tf

from tf_perturbed import solvers


def _numpy_ranks(theta):
    # Stable ascending argsort, inverted: ties give the lower rank to the lower index.
    order = np.argsort(theta, axis=-1, kind="stable")
    return np.argsort(order, axis=-1, kind="stable")


@pytest.mark.parametrize("d", [40, 300])
def test_every_ranking_method_agrees(d):
    # ranks sorts outside XLA, and under XLA counts pairs (d ≤ 32) or sorts packed keys (d > 32).
    rng = np.random.default_rng(d)
    theta = np.concatenate([rng.normal(size=(3, d)), rng.integers(0, 3, (3, d))]).astype(np.float32)
    expected = _numpy_ranks(theta)
    for fn in (solvers.ranks, tf.function(solvers.ranks, jit_compile=True)):
        np.testing.assert_array_equal(fn(tf.constant(theta)).numpy(), expected)
    for fn in (solvers.sort_permutation, tf.function(solvers.sort_permutation, jit_compile=True)):
        perm = fn(tf.constant(theta)).numpy()  # P[i, j] = 1 where rank_j = i
        np.testing.assert_array_equal(perm, np.swapaxes(np.eye(d)[expected], -1, -2))


def test_top_k_checks_k():
    with pytest.raises(ValueError, match=r"k=4"):
        solvers.top_k(tf.zeros([2, 3]), k=4)
    with pytest.raises(ValueError, match=r"k=0"):
        solvers.top_k(tf.zeros([2, 3]), k=0)
    with pytest.raises(TypeError, match=r"k=1.5"):
        solvers.top_k(tf.zeros([2, 3]), k=1.5)
