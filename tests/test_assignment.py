"""Tests of the linear assignment solver against `scipy.optimize.linear_sum_assignment`.

Each size n is solved in batched calls mixing families of score matrices (Gaussian
reals, large reals, small integers with many ties, constant matrices), so that every
shape compiles once. Ties allow several optimal matchings, so the tests compare the
optimal values and check that every output is a permutation matrix. Batch axes,
dtypes, determinism, eager = graph = XLA and bad or non-finite scores are checked by
the solver contract, tests/test_solver_contract.py.
"""

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

import tf_perturbed as tp

# (n, batch, calls): about 3,500 matrices, 4,100 with the other tests (n = 1, and more
# 7 × 7 against brute force, in the solver contract). Batches below 32 run the search in
# one loop; larger ones also move the slowest matrices to a smaller batch.
CASES = [
    (3, 24, 50),
    (7, 24, 60),
    (16, 512, 1),
    (40, 24, 10),
    (100, 24, 2),
    (200, 4, 1),
]


def _matrices(batch: int, n: int, seed: int) -> np.ndarray:
    """float32 `[batch, n, n]`: Gaussian, Gaussian × 1e4, integers 0–2, and constants."""
    rng = np.random.default_rng(seed)
    quarter = max(batch // 4, 1)
    normal = rng.normal(size=(batch, n, n))
    normal[quarter : 2 * quarter] *= 1e4
    normal[2 * quarter : 3 * quarter] = rng.integers(0, 3, (quarter, n, n))
    normal[3 * quarter :] = rng.integers(-5, 5, (batch - 3 * quarter, 1, 1))
    return normal.astype(np.float32)


def _optimal_values(scores: np.ndarray) -> np.ndarray:
    """max_P ⟨P, S⟩ per matrix, in float64."""
    scores = scores.astype(np.float64)
    return np.array(
        [
            s[linear_sum_assignment(s, maximize=True)].sum()
            for s in scores.reshape(-1, *scores.shape[-2:])
        ]
    )


def _check(perms: np.ndarray, scores: np.ndarray) -> None:
    """Permutation matrices whose value is optimal (to float64 rounding)."""
    n = scores.shape[-1]
    perms = perms.reshape(-1, n, n)
    scores = scores.reshape(-1, n, n).astype(np.float64)
    assert set(np.unique(perms)) <= {0.0, 1.0}
    np.testing.assert_array_equal(perms.sum(axis=1), 1.0)
    np.testing.assert_array_equal(perms.sum(axis=2), 1.0)
    values = np.sum(perms * scores, axis=(1, 2))
    tolerance = 1e-12 * n * np.max(np.abs(scores), axis=(1, 2))
    np.testing.assert_array_less(np.abs(values - _optimal_values(scores)), tolerance + 1e-300)


@pytest.mark.parametrize("n, batch, calls", CASES)
def test_optimal_against_scipy(n, batch, calls):
    for call in range(calls):
        scores = _matrices(batch, n, seed=1000 * n + call)
        perms = tp.solvers.assignment(scores).numpy()
        assert perms.shape == scores.shape and perms.dtype == np.float32
        _check(perms, scores)


def test_example_from_docstring():
    scores = tf.constant([[1.0, 5.0, 0.0], [4.0, 3.0, 0.0], [2.0, 0.0, 1.0]])
    expected = [[0, 1, 0], [1, 0, 0], [0, 0, 1]]
    # Batched like the n = 3 case above, which saves a compilation.
    np.testing.assert_array_equal(tp.solvers.assignment(tf.tile(scores[None], [24, 1, 1])), [expected] * 24)


def test_known_permutation():
    # A unique optimum: the scores reward one hidden permutation.
    rng = np.random.default_rng(0)
    hidden = np.stack([rng.permutation(16) for _ in range(512)])
    scores = rng.uniform(0.0, 1.0, (512, 16, 16))
    np.put_along_axis(scores, hidden[..., None], 2.0, axis=-1)
    perms = tp.solvers.assignment(scores.astype(np.float32)).numpy()
    np.testing.assert_array_equal(np.argmax(perms, axis=-1), hidden)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_integer_scores_are_exact(dtype):
    # Integers are read in float64: values beyond float32's 2^24 stay exact.
    rng = np.random.default_rng(1)
    high = 10**12 if dtype == np.int64 else 2**30
    scores = rng.integers(-high, high, (24, 7, 7)).astype(dtype)
    scores[:8] = rng.integers(0, 3, (8, 7, 7))  # ties
    perms = tp.solvers.assignment(scores).numpy()
    assert perms.dtype == np.float32
    values = np.einsum("bij,bij->b", perms.astype(np.int64), scores.astype(np.int64))
    expected = [s[linear_sum_assignment(s, maximize=True)].sum() for s in scores.astype(np.int64)]
    np.testing.assert_array_equal(values, expected)


def test_dynamic_shapes_in_graph_mode():
    solve = tf.function(tp.solvers.assignment, input_signature=[tf.TensorSpec([None, None, None], tf.float32)])
    scores = _matrices(24, 7, seed=9)
    np.testing.assert_array_equal(solve(scores), tp.solvers.assignment(scores))
    with pytest.raises(tf.errors.InvalidArgumentError, match="scores"):
        solve(tf.ones([2, 3, 4]))


def test_non_square_scores_raise():
    with pytest.raises(ValueError, match=r"scores.shape=\(3, 4\)"):
        tp.solvers.assignment(tf.ones([3, 4]))
