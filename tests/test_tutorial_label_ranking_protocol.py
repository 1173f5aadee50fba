"""Label ranking tutorial: the perturbed + squared method's gradient, the rate search, the epoch curves."""

import argparse
import json

import numpy as np
import pytest
import tensorflow as tf

from tutorials import label_ranking

# -------------------------------------------------- perturbed + squared: gradient


def _expected_ranks(theta, epsilon):
    """E[ranks(θ + εZ)], Z ~ N(0, I), in closed form: ŷ_i = Σ_{j≠i} Φ((θ_i − θ_j)/(ε√2)).

    The ascending rank of i counts the j with θ_j + εZ_j < θ_i + εZ_i, and εZ_j − εZ_i
    ~ N(0, 2ε²); the j = i term Φ(0) = ½ is taken out.
    """
    diff = (theta[..., :, None] - theta[..., None, :]) / (epsilon * np.sqrt(2.0))  # [B, d, d]
    phi = 0.5 * (1.0 + tf.math.erf(diff / np.sqrt(2.0)))  # [B, d, d]
    return tf.reduce_sum(phi, axis=-1) - 0.5  # [B, d]


def test_perturbed_squared_gradient_matches_the_smoothed_map():
    """The method's training gradient w.r.t. θ against an independent reference.

    Reference: the gradient, by autodiff in float64, of the loss on the closed-form
    smoothed ranks above. The method's gradient is the Monte-Carlo Jacobian of
    `PerturbedRanks` (M samples) chained with the Keras MSE; R calls draw independent
    noise. Its mean over calls is compared with the reference within 4 standard errors
    (the standard deviation over the R calls / √R), coordinate by coordinate. The
    estimate's own bias (ŷ_ε and its Jacobian come from the same M samples) is
    O(1/M), an order below that standard error at M = 2,000, R = 20.
    """
    epsilon, num_samples, num_calls = 0.5, 2000, 20
    theta = np.array([[0.0, 0.3, -0.2, 0.6], [1.0, -1.0, 0.1, 0.2], [0.0, 0.05, 0.1, -0.05]])  # [3, 4]
    target = np.array([[3.0, 0.0, 1.0, 2.0], [0.0, 3.0, 2.0, 1.0], [1.0, 2.0, 3.0, 0.0]])  # [3, 4]
    args = argparse.Namespace(fy_sigma=epsilon, fy_num_samples=num_samples, seed=11)
    method = label_ranking.METHODS["perturbed_squared"]
    head, loss = method.head(args), method.loss(args)

    theta_64 = tf.constant(theta)
    with tf.GradientTape() as tape:
        tape.watch(theta_64)
        smoothed = _expected_ranks(theta_64, epsilon)
        reference_loss = tf.reduce_mean((target - smoothed) ** 2)
    reference = tape.gradient(reference_loss, theta_64).numpy()  # [3, 4]

    theta_32 = tf.constant(theta, tf.float32)
    outputs, grads = [], []
    for _ in range(num_calls):
        with tf.GradientTape() as tape:
            tape.watch(theta_32)
            output = head(theta_32, training=True)
            value = loss(tf.constant(target, tf.float32), output)
        outputs.append(output.numpy())
        grads.append(tape.gradient(value, theta_32).numpy())
    outputs, grads = np.stack(outputs), np.stack(grads)  # [R, 3, 4]

    # The forward pass: ŷ_ε, each rank a mean of M draws, against the closed form.
    output_se = outputs.std(axis=0, ddof=1) / np.sqrt(num_calls)
    np.testing.assert_array_less(np.abs(outputs.mean(axis=0) - smoothed.numpy()), 4.0 * output_se + 1e-6)

    grad_se = grads.std(axis=0, ddof=1) / np.sqrt(num_calls)
    # The check has power: the standard errors are small beside the gradient itself.
    assert np.max(grad_se) < 0.1 * np.max(np.abs(reference)), (grad_se, reference)
    np.testing.assert_array_less(np.abs(grads.mean(axis=0) - reference), 4.0 * grad_se)


# ------------------------------------------------------------ the rate search


def _run(tmp_path, *flags, methods="fenchel_young,perturbed_squared"):
    argv = [
        "--methods", methods, "--num-train", "100", "--num-test", "40", "--epochs", "2",
        "--noise-sigmas", "0.01", "--verbose", "0", "--output-dir", str(tmp_path), *flags,
    ]  # fmt: skip
    label_ranking.main(argv)
    return json.loads((tmp_path / "metrics.json").read_text())


def test_search_picks_the_best_validation_rate_and_records_the_epochs(tmp_path):
    payload = _run(tmp_path, "--learning-rates", "0.003,0.3", "--validation-fraction", "0.25")
    search = payload["learning_rate_search"]
    assert search["enabled"] and search["grid"] == [0.003, 0.3]
    for row in payload["results"]:
        grid = row["learning_rate_grid"]
        assert [g["learning_rate"] for g in grid] == [0.003, 0.3]
        best = max(grid, key=lambda g: g["spearman_validation"])
        assert row["learning_rate"] == best["learning_rate"] == search["chosen"][row["method"]]["0.01"]
        # The two rates, 100x apart, do not train equally well in 2 epochs.
        assert grid[0]["spearman_validation"] != grid[1]["spearman_validation"], row["method"]
        # One value per epoch, the last one the run's reported test metrics.
        for key, values in row["epoch_curves"].items():
            assert len(values) == 2, key
            assert values[-1] == row[key], key
    assert (tmp_path / "metrics_vs_epoch.png").stat().st_size > 0


def test_reported_run_is_a_full_training_run_at_the_chosen_rate(tmp_path):
    """A one-rate search validates that rate, then trains on all examples as the search-off mode does."""
    metric_keys = [*label_ranking.METRICS, "spearman_noiseless", "loss_curve"]
    searched = _run(tmp_path / "on", "--learning-rates", "0.05", methods="perturbed_squared")
    fixed = _run(
        tmp_path / "off", "--no-learning-rate-search", "--learning-rate", "0.05", methods="perturbed_squared"
    )
    (row_on,), (row_off,) = searched["results"], fixed["results"]
    assert {k: row_on[k] for k in metric_keys} == {k: row_off[k] for k in metric_keys}
    assert row_off["learning_rate_grid"] is None and not fixed["learning_rate_search"]["enabled"]


def test_search_off_uses_each_methods_default_rate(tmp_path):
    payload = _run(tmp_path, "--no-learning-rate-search", methods="squared")
    assert payload["results"][0]["learning_rate"] == label_ranking.METHODS["squared"].learning_rate


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--validation-fraction", "1.5"], "validation_fraction=1.5"),
        (["--validation-fraction", "0.001"], "validation_fraction=0.001"),
        (["--learning-rates", "0.1,0"], "--learning-rates=[0.0]"),
        (["--learning-rate", "0.1"], "--learning-rate=0.1"),
        (["--no-learning-rate-search", "--learning-rate", "-1"], "--learning-rate=[-1.0]"),
    ],
)
def test_bad_rate_flags_are_named(tmp_path, flags, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        _run(tmp_path, *flags)
