"""Tests of `sorting_numbers --protocol paper`: the authors' choices (Indelman et al.'s code).

The preset and its flags, their loss augmentation on a hand-computed example, their global
persistent ε escape, σ's SGD regime against a derived bound, the fixed-at-init row, and a
tiny `main` run that writes the σ curves and their figure. Tiny sizes: seconds each.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tutorials import sorting_numbers


def test_paper_preset_sets_each_flag_and_a_flag_overrides_it(tmp_path):
    out = ["--output-dir", str(tmp_path)]
    paper = sorting_numbers._parse(["--protocol", "paper"] + out)
    ours = sorting_numbers._parse(out)
    expected = {**sorting_numbers.PAPER, "early_stopping": ("train-loss", 50)}
    assert {key: getattr(paper, key) for key in expected} == expected
    assert paper.sigma_optimizer == "sgd" and paper.sigma_lr == 1e-6 and paper.noise_scale == 1.3505
    assert (paper.num_train, paper.epochs) == (10, 2000)
    assert paper.methods == list(sorting_numbers.PAPER_METHODS)
    assert ours.early_stopping == ("none", 0) and ours.loss_augmentation == "squared"
    assert (ours.num_train, ours.epochs) == (400, 8)
    flipped = sorting_numbers._parse(["--protocol", "paper", "--escape", "per-problem", "--quick"] + out)
    assert flipped.escape == "per-problem" and flipped.loss_augmentation == "hamming-x2"
    assert flipped.epochs == sorting_numbers.PAPER_QUICK["epochs"]
    with pytest.raises(SystemExit):
        sorting_numbers._parse(["--early-stopping", "validation:0"] + out)


def test_bad_sigma_rate_and_missing_validation_split_are_named(tmp_path):
    out = ["--output-dir", str(tmp_path)]
    with pytest.raises(ValueError, match="--sigma-lr 0.0"):
        sorting_numbers._parse(["--protocol", "paper", "--sigma-lr", "0"] + out)
    with pytest.raises(ValueError, match="--num-validation 0"):
        sorting_numbers._parse(["--early-stopping", "validation:5", "--num-validation", "0"] + out)


def test_hamming_augmentation_is_the_authors_formula_on_a_3x3_example():
    x = np.array([[0.5, 0.1, 0.9]], np.float32)  # sorted: x_1 < x_0 < x_2
    # Theirs: +12·x_j² on the ground-truth entry of column j, −12·x_j² on the others;
    # x_j² = 0.25, 0.01, 0.81 → 3, 0.12, 9.72. Column 0's truth is row 1 (0.1), column 1's
    # row 0 (0.5), column 2's row 2 (0.9).
    expected = np.array([[-3.0, 0.12, -9.72], [3.0, -0.12, -9.72], [-3.0, -0.12, 9.72]])
    h = sorting_numbers.loss_augmentation(x, "hamming-x2", "none").numpy()[0]
    np.testing.assert_allclose(-12.0 * h, expected, rtol=1e-6)
    # Ours: C_ij = (x_i − s_j)², s = (0.1, 0.5, 0.9), divided by its largest entry 0.64.
    squared = np.array([[0.16, 0.0, 0.16], [0.0, 0.16, 0.64], [0.64, 0.16, 0.0]]) / 0.64
    c = sorting_numbers.loss_augmentation(x, "squared", "max_abs").numpy()[0]
    np.testing.assert_allclose(c, squared, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="kind='hinge'"):
        sorting_numbers.loss_augmentation(x, "hinge", "none")


def test_authors_direct_step_gradient_on_a_3x3_example():
    # θ' = 0.01·I: y₀ = I; the bonus 12·x_j² on the truth entries (±3, 0.12, 9.72 ≫ 0.01) makes
    # y_ε the sorting permutation P*; D = sign(ε)(y_ε − y₀) = I − P*, spread over B·M·d² = 9
    # entries; with the 1/(ε·f) of DirectLossGradient instead of sign(ε): (I − P*)/(9·12).
    x = tf.constant([[0.5, 0.1, 0.9]], tf.float32)
    truth = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], np.float32)
    expected = (np.eye(3, dtype=np.float32) - truth) / 9.0
    for divide, scale in ((False, 1.0), (True, 1.0 / 12.0)):
        layer = sorting_numbers.AuthorsDirectMatching(divide_by_epsilon=divide)
        theta = tf.constant(0.01 * np.eye(3, dtype=np.float32)[None])
        with tf.GradientTape() as tape:
            tape.watch(theta)
            y = layer([theta, x], training=True)
            loss = tf.reduce_sum(y * tf.random.normal(y.shape, seed=1))  # any loss: the step ignores it
        np.testing.assert_array_equal(y.numpy()[0], np.eye(3))
        np.testing.assert_allclose(tape.gradient(loss, theta).numpy()[0], scale * expected, rtol=1e-6, atol=1e-8)


def _escape_call(layer, thetas, x):
    theta = tf.constant(np.stack(thetas), tf.float32)  # [B, 3, 3]
    layer([theta, tf.constant(np.repeat(x, len(thetas), axis=0))], training=True)
    return float(layer.growth.numpy())


def test_global_persistent_escape_grows_epsilon_only_when_the_whole_batch_is_stuck():
    x = np.array([[0.5, 0.1, 0.9]], np.float32)
    truth = sorting_numbers.sorting_permutation(x)[0]
    wrong = np.eye(3, dtype=np.float32)  # the identity: x_0 and x_1 misplaced
    # |ε·H| ≤ 12·0.81 < 10: scores 100·wrong do not move at ε = −12 (stuck); 0.01·wrong do.
    stuck, moves, sorted_ = 100.0 * wrong, 0.01 * wrong, 100.0 * truth
    layer = sorting_numbers.AuthorsDirectMatching(escape="global-persistent")
    assert _escape_call(layer, [stuck, moves], x) == 1.0  # one problem moves: no growth
    assert _escape_call(layer, [sorted_, sorted_], x) == 1.0  # stuck but sorted (loss 0): none
    grown = _escape_call(layer, [stuck, stuck], x)  # every problem stuck, loss > 0: grows
    # 1.1^k with k the first retry that moves: a scale between 100/(24·0.81) and 2·100/(24·0.01).
    k = np.log(grown) / np.log(1.1)
    assert grown > 100.0 / (24 * 0.81) and abs(k - round(k)) < 1e-3, grown
    assert _escape_call(layer, [stuck, moves], x) == pytest.approx(grown)  # persistent: kept
    per_problem = sorting_numbers.AuthorsDirectMatching(escape="per-problem")
    assert _escape_call(per_problem, [stuck, stuck], x) == 1.0  # ours never stores it


# |Gumbel| of a float32 draw: u ∈ [2⁻²⁵, 1 − 2⁻²⁴] (tf_perturbed.noise.uniform_from_bits), so
# −log(−log u) ∈ [−2.86, 16.64].
GUMBEL_BOUND = 16.64


def _sigma_shift(method: str, extra: list, output_dir, steps: int = 30) -> float:
    """Largest |σ(x) − σ₀(x)| over the training sequences after `steps` full-batch steps."""
    args = sorting_numbers._parse(
        ["--protocol", "paper", "--epochs", str(steps), "--early-stopping", "none", "--num-samples", "2"]
        + ["--verbose", "0", "--output-dir", str(output_dir)]
        + extra
    )
    x = sorting_numbers.make_sequences(10, 5, np.random.default_rng(0))
    trainer = sorting_numbers.Trainer(method, 5, args)
    trainer.initialise_head(0)
    before = trainer.sigma(x)
    trainer.fit(x, 0)
    return float(np.max(np.abs(trainer.sigma(x) - before)))


def test_sigma_under_sgd_at_1e6_stays_within_its_bound_and_under_adam_moves(tmp_path):
    # The gradient reaching θ' is D/(B·M·d²), D = y₀ − y_ε with entries in {−1, 0, 1} and at
    # most 2d of them non-zero per sample; θ' = θ + σ_b·β·G, so |∂/∂σ_b| ≤ 2βĜ/(B·d) (Ĝ the
    # bound on |G|). σ = softplus(x·W + b) + floor with x ∈ [0, 1]^d: |∂/∂W_k|, |∂/∂b| ≤ 2βĜ/d,
    # one SGD step moves h(x) by ≤ (d + 1)·η·2βĜ/d ≤ 4ηβĜ, and σ (softplus is 1-Lipschitz)
    # by no more: over N steps, |Δσ| ≤ 4·N·η·β·Ĝ.
    steps, eta = 30, 1e-6
    bound = 4 * steps * eta * sorting_numbers.PAPER["noise_scale"] * GUMBEL_BOUND  # 2.7e-3
    assert _sigma_shift("direct_learned", [], tmp_path) <= bound
    assert _sigma_shift("direct_learned", ["--sigma-lr", "1e-2"], tmp_path) > 0.0  # the SGD step is wired
    assert _sigma_shift("direct_learned_adam", [], tmp_path) > bound  # Adam at 0.1 × 0.01: it moves


def test_paper_main_writes_sigma_curves_and_the_fixed_row_starts_where_the_learned_one_does(tmp_path):
    methods = ["direct_learned", "direct_learned_adam", "direct_sigma_init"]
    payload = sorting_numbers.main(
        ["--protocol", "paper", "--dims", "5", "--repetitions", "2", "--epochs", "3", "--num-test", "10"]
        + [
            "--num-samples",
            "2",
            "--verbose",
            "0",
            "--output-dir",
            str(tmp_path),
            "--methods",
            ",".join(methods),
        ]
    )
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["protocol"]["name"] == "paper" and written["protocol"]["sigma_optimizer"] == "sgd"
    rows = {row["method"]: row for row in written["results"]}
    learned, fixed = rows["direct_learned"], rows["direct_sigma_init"]
    # Full batch: the first epoch's σ metric is the mean initial σ over the training set.
    # The frozen row keeps that value at every epoch, per repetition; each run draws its own σ.
    np.testing.assert_allclose(
        [c[0] for c in learned["sigma_curves"]], learned["initial_sigma_runs"], rtol=1e-5
    )
    for start, curve in zip(learned["initial_sigma_runs"], fixed["sigma_curves"]):
        np.testing.assert_allclose(curve, start, rtol=1e-5)
    assert fixed["initial_sigma_runs"] == pytest.approx(learned["initial_sigma_runs"], rel=1e-6)
    assert learned["initial_sigma_runs"][0] != pytest.approx(learned["initial_sigma_runs"][1])
    curves = written["sigma_mean_curves"]
    assert sorted(curves) == ["d=5 direct_learned (SGD 1e-06)", "d=5 direct_learned_adam (Adam ×0.01)"]
    assert all(len(curve) == 3 for curve in curves.values())
    assert (tmp_path / "learned_sigma.png").is_file() and payload["figures"] == [
        "metrics_vs_d.png",
        "learned_sigma.png",
    ]
