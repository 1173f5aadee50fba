"""Smoke tests of the Warcraft shortest-path tutorial (`python -m tutorials.warcraft` and its modules).

`main` runs in-process on a tiny generated set (every method, one epoch each) and the
Fenchel-Young model is exported and served from a fresh process; a separate test checks
that the Fenchel-Young loss of the tutorial's network falls when it trains on a few maps, and
SPO+ and I-MLE fit with XLA. Runtime: 158 s wall (68 s of CPU) on 2 CPU cores shared at load
average 6–10 (2026-12-04: the tiny `main` run with six methods 84 s, the two XLA fits 23 s,
the loss test 10 s); about 52 s at load 2.5–4 before SPO+ and I-MLE joined.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed
from tutorials import warcraft, warcraft_data, warcraft_model, warcraft_training

METRIC_KEYS = {"perfect_path_accuracy", "exact_match", "cost_ratio"}


def test_main_tiny_run_writes_metrics_figures_and_serves(tmp_path):
    argv = [
        "--output-dir", str(tmp_path),
        "--methods", "fenchel_young,squared,blackbox,spo_plus,imle,terrain_classifier",
        "--num-train", "14", "--num-val", "7", "--num-test", "7",
        "--epochs", "1", "--batch-size", "7", "--verbose", "0",
    ]  # fmt: skip
    warcraft.main(argv)
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert {"results", "command", "versions", "seconds", "serving", "curves"} <= set(payload)
    methods = ["fenchel_young", "squared", "blackbox", "spo_plus", "imle", "terrain_classifier"]
    assert [row["method"] for row in payload["results"]] == methods
    for row in payload["results"]:
        assert METRIC_KEYS <= set(row)
        assert 0.0 <= row["perfect_path_accuracy"] <= 1.0 and 0.0 <= row["exact_match"] <= 1.0
        # A path of the predicted costs can never beat the optimal path under the true costs.
        assert row["cost_ratio"] >= 1.0 - 1e-6
        assert np.isfinite(row["final_loss"]) and row["num_train"] == 14 and row["epochs"] == 1
        assert row["augment"] is True and row["symmetric_views"] is True
        assert METRIC_KEYS == set(row["single_view"]) and row["single_view"]["cost_ratio"] >= 1.0 - 1e-6
        if row["method"] == "blackbox":  # λ = 20 of Vlastelica et al. at their batch of 70, not this one (7)
            assert row["epsilon"] == pytest.approx(-20 / 70)
        if row["method"] == "imle":  # the blackbox step; Gumbel noise has no κ
            assert row["imle_lambda"] == pytest.approx(20 / 70) and row["imle_noise"] == "gumbel"
            assert row["imle_kappa"] is None
        assert len(row["epoch_seconds"]) == 1
        assert set(row["cost_by_terrain"]) <= set(warcraft_data.TERRAIN_NAMES)
        for spread in row["cost_by_terrain"].values():
            assert 0.0 <= spread["p5"] <= spread["p95"] and spread["true"] > 0.0
    for name in ["curves.png"] + [f"paths_{method}.png" for method in methods]:
        assert (tmp_path / name).stat().st_size > 1000
    assert payload["serving"]["method"] == "fenchel_young"
    assert payload["serving"]["served_equal_in_process"] is True
    served = np.load(tmp_path / "saved_model_fenchel_young" / "served_paths.npy")
    assert served.shape == (payload["serving"]["served_maps"], 12, 12)
    assert set(np.unique(served)) <= {0.0, 1.0} and np.all(served[:, 0, 0] == 1) and np.all(served[:, -1, -1] == 1)


def test_fenchel_young_loss_falls_on_a_few_maps(tmp_path):
    maps = warcraft_data.generate_maps(10, seed=5, split="train")
    images, paths = tf.constant(maps["images"]), tf.constant(maps["paths"])
    args = warcraft.parse_args(["--quick", "--output-dir", str(tmp_path)])
    keras.utils.set_random_seed(0)
    # The tutorial's Fenchel-Young set-up: costs divided by their per-map mean, so that the
    # loss cannot fall by shrinking every cost (it is 1-homogeneous in the costs).
    model, loss, target = warcraft_model.build_method("fenchel_young", warcraft_model.build_cost_model(96, 12), args)
    assert target == "paths"
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss)
    losses = [float(model.train_on_batch(images, paths)) for _ in range(16)]
    # The loss is a Monte-Carlo estimate (M = 10 draws per step), so it is noisy; memorising
    # 10 maps must still cut it well below its start: the mean of the last four steps under
    # half the mean of the first four (in one run: about 1 % of it).
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4]), losses


@pytest.mark.parametrize("method", ["spo_plus", "imle"])
def test_new_methods_fit_with_xla(tmp_path, method):
    # The two methods of issue 19 in model.fit with jit_compile=True, on 8 maps of 6 × 6.
    maps = warcraft_data.generate_maps(8, grid_size=6, seed=2, split="train")
    args = warcraft.parse_args(["--quick", "--output-dir", str(tmp_path)])
    keras.utils.set_random_seed(0)
    model, loss, target = warcraft_model.build_method(method, warcraft_model.build_cost_model(48, 6), args, maps["paths"])
    assert target == ("costs" if method == "spo_plus" else "paths")
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, jit_compile=True)
    history = model.fit(maps["images"], maps[target], batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"])), history.history
    if method == "imle":  # training draws noise, inference solves the network's own costs
        paths = model.predict(maps["images"], verbose=0)
        assert set(np.unique(paths)) <= {0.0, 1.0} and np.all(paths[:, 0, 0] == 1) and np.all(paths[:, -1, -1] == 1)


def test_imle_without_noise_is_the_blackbox_gradient(tmp_path):
    # With τ = 0 and S = 1, I-MLE with the blackbox λ and max-abs normalisation is the
    # blackbox estimator: the same gradient of the Hamming loss, entry for entry.
    maps = warcraft_data.generate_maps(4, seed=7, split="train")
    paths = tf.constant(maps["paths"])
    costs = tf.Variable(np.random.default_rng(0).uniform(0.5, 2.0, (4, 12, 12)).astype(np.float32))
    # Both on the costs divided by their map mean (blackbox's default, I-MLE's --imle-normalize 1).
    args = warcraft.parse_args(["--quick", "--imle-sigma", "0", "--imle-normalize", "1", "--output-dir", str(tmp_path)])
    inputs = keras.Input((12, 12))
    identity = keras.Model(inputs, keras.layers.Identity()(inputs))  # the "network": costs in, costs out
    gradients = {}
    for method in ("blackbox", "imle"):
        model, loss, _ = warcraft_model.build_method(method, identity, args, maps["paths"])
        with tf.GradientTape() as tape:
            value = tf.reduce_mean(loss(paths, model(costs, training=True)))
        gradients[method] = tape.gradient(value, costs).numpy()
    assert np.any(gradients["blackbox"] != 0)
    np.testing.assert_allclose(gradients["imle"], gradients["blackbox"], rtol=1e-6, atol=1e-7)
    # κ of the sum-of-Gamma noise: the mean length of the training paths (at least g = 12 vertices).
    args = warcraft.parse_args(["--quick", "--imle-noise", "sum_of_gamma", "--output-dir", str(tmp_path)])
    kappa = warcraft_model.imle_kappa(args, maps["paths"])
    assert kappa == pytest.approx(np.mean(maps["paths"].sum(axis=(1, 2)))) and kappa >= 12


def test_corner_symmetries_move_tiles_and_keep_shortest_paths():
    maps = warcraft_data.generate_maps(6, seed=3, split="train")
    # An image whose every pixel holds the row and column of its tile (8 × 8 pixels each).
    rows, cols = np.meshgrid(np.arange(96) // 8, np.arange(96) // 8, indexing="ij")
    tiles = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.float32)  # [96, 96, 3]
    moved_vertex = {
        0: lambda r, c: (r, c),
        1: lambda r, c: (c, r),
        2: lambda r, c: (11 - r, 11 - c),
        3: lambda r, c: (11 - c, 11 - r),
    }
    for choice, where in moved_vertex.items():
        image, _ = warcraft_training.corner_symmetry(tf.constant(tiles), tf.zeros([12, 12]), tf.constant(choice))
        image = image.numpy()
        for r, c in [(0, 0), (0, 5), (3, 11), (7, 2), (11, 11)]:
            # The tile now at (r, c) came from the vertex that the symmetry maps to (r, c).
            source = where(r, c)
            np.testing.assert_array_equal(image[8 * r + 3, 8 * c + 4, :2], source)
        for i in range(6):
            _, costs = warcraft_training.corner_symmetry(
                tf.constant(maps["images"][i]), tf.constant(maps["costs"][i]), tf.constant(choice)
            )
            _, path = warcraft_training.corner_symmetry(
                tf.constant(maps["images"][i]), tf.constant(maps["paths"][i]), tf.constant(choice)
            )
            path, costs = path.numpy(), costs.numpy()
            assert path[0, 0] == 1 and path[-1, -1] == 1
            optimum = np.sum(warcraft_data.shortest_paths(costs[None])[0] * costs)
            np.testing.assert_allclose(np.sum(path * costs), optimum, rtol=1e-6)


def test_augmented_batches_use_all_four_symmetries():
    images = np.zeros((40, 16, 16, 3), np.uint8)
    targets = np.zeros((40, 2, 2), np.float32)
    targets[:, 0, 0] = np.arange(1, 41)  # which map; the 180° rotation moves it to (1, 1)
    targets[:, 0, 1] = 100.0  # a marker: the transposition or the rotation alone moves it to (1, 0)
    batches = list(warcraft_training.augmented_batches(images, targets, batch_size=16, seed=0))
    assert [len(x) for x, _ in batches] == [16, 16, 8] and batches[0][0].shape[1:] == (16, 16, 3)
    moved = np.concatenate([y.numpy() for _, y in batches])  # [40, 2, 2]
    rotated = moved[:, 1, 1] > 0
    transposed = (moved[:, 1, 0] == 100.0) != rotated
    assert sorted((moved[:, 0, 0] + moved[:, 1, 1]).astype(int).tolist()) == list(
        range(1, 41)
    )  # each map once
    assert set(zip(transposed.tolist(), rotated.tolist())) == {
        (False, False),
        (False, True),
        (True, False),
        (True, True),
    }


def _dihedral_images(x):
    """The 8 images of a square array `[a, a, ...]` under rotations and reflections (NumPy)."""
    return [np.rot90(y, r, axes=(0, 1)) for y in (x, np.swapaxes(x, 0, 1)) for r in range(4)]


def test_square_symmetries_are_the_eight_turns_and_undo_themselves():
    x = np.arange(25, dtype=np.float32).reshape(5, 5)
    turned = [np.asarray(warcraft_model.square_symmetry(x[None], k))[0] for k in range(8)]
    expected = {y.tobytes() for y in _dihedral_images(x)}
    assert {y.tobytes() for y in turned} == expected and len(expected) == 8
    for k, y in enumerate(turned):
        np.testing.assert_array_equal(np.asarray(warcraft_model.square_symmetry(y[None], k, inverse=True))[0], x)
        if k < 4:  # the corner symmetries of the augmentation are the first four
            _, moved = warcraft_training.corner_symmetry(tf.zeros([1, 1, 1]), tf.constant(x), tf.constant(k))
            np.testing.assert_array_equal(moved.numpy(), y)
    images = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)  # channels stay put
    np.testing.assert_array_equal(np.asarray(warcraft_model.square_symmetry(images, 1)), images.transpose(0, 2, 1, 3))
    with pytest.raises(ValueError, match="k=8"):
        warcraft_model.square_symmetry(x[None], 8)


def test_symmetric_cost_model_averages_the_turned_maps():
    keras.utils.set_random_seed(1)
    cost_model = warcraft_model.build_cost_model(32, 4)  # untrained: not equivariant by itself
    symmetric = warcraft_model.build_symmetric_cost_model(cost_model)
    image = np.random.default_rng(2).integers(0, 256, (32, 32, 3)).astype(np.float32)
    # By hand: the costs of each turned image, turned back by matching a marker grid.
    marker = np.arange(16, dtype=np.float32).reshape(4, 4)
    views = []
    for turned_image, turned_marker in zip(_dihedral_images(image), _dihedral_images(marker), strict=True):
        costs = cost_model(np.ascontiguousarray(turned_image)[None]).numpy()[0]  # [4, 4], turned frame
        back = np.empty_like(costs)
        back.reshape(-1)[turned_marker.astype(int).reshape(-1)] = costs.reshape(-1)
        views.append(back / back.mean())
    averaged = symmetric(image[None]).numpy()[0]
    np.testing.assert_allclose(averaged, np.mean(views, axis=0), rtol=1e-5)
    assert np.max(np.abs(views[0] - averaged)) > 1e-3  # the views do differ
    # The average turns with the map, which the single network's costs do not.
    for turned_image, turned_costs in zip(_dihedral_images(image), _dihedral_images(averaged), strict=True):
        np.testing.assert_allclose(
            symmetric(np.ascontiguousarray(turned_image)[None]).numpy()[0], turned_costs, rtol=1e-5
        )


def test_terrain_classes_and_the_classifier_costs():
    costs = np.array([[[0.8, 9.2], [5.3, 1.2]], [[7.7, 0.8], [0.8, 0.8]]], np.float32)
    np.testing.assert_array_equal(warcraft_model.terrain_classes(costs), [[[0, 4], [2, 1]], [[3, 0], [0, 0]]])
    with pytest.raises(ValueError, match="terrain costs.*received: a cost of 2.5"):
        warcraft_model.terrain_classes(np.array([[[0.8, 2.5]]], np.float32))
    classifier, cost_model = warcraft_model.build_terrain_classifier(warcraft_model.build_cost_model(16, 2))
    images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.float32)
    logits = classifier(images).numpy()  # [3, 2, 2, 5]
    assert logits.shape == (3, 2, 2, 5)
    # The costs model reads the same network: the cost of each vertex's most likely terrain.
    expected = warcraft_data.TERRAIN_COSTS[np.argmax(logits, axis=-1)]
    np.testing.assert_array_equal(cost_model(images).numpy(), expected)


def test_cost_by_terrain_by_hand():
    true = np.array([[[0.8, 9.2], [0.8, 5.3]]], np.float32)  # mean 4.025
    # Twice the true costs: the same after dividing by the map's mean.
    spread = warcraft_training.cost_by_terrain(2.0 * true, true)
    assert set(spread) == {"grass", "forest", "water"}
    for name, cost in (("grass", 0.8), ("forest", 5.3), ("water", 9.2)):
        for key in ("true", "mean", "p5", "p95"):
            assert spread[name][key] == pytest.approx(cost / 4.025, rel=1e-6), (name, key)
    # Grass read as 0.8 once and 2.0 once: mean 1.4, percentiles 5 % and 95 % of the way.
    pred = np.array([[[0.8, 9.2], [2.0, 5.3]]], np.float32)  # mean 4.325
    grass = warcraft_training.cost_by_terrain(pred, true)["grass"]
    assert grass["mean"] == pytest.approx(1.4 / 4.325, rel=1e-6)
    assert grass["p5"] == pytest.approx((0.8 + 0.05 * 1.2) / 4.325, rel=1e-6)
    assert grass["p95"] == pytest.approx((0.8 + 0.95 * 1.2) / 4.325, rel=1e-6)
    assert warcraft_training.cost_by_terrain(true, np.full_like(true, 2.5)) is None  # not terrain costs


def test_path_metrics_by_hand():
    costs = np.array([[[1.0, 5.0], [1.0, 1.0]]] * 3, np.float32)  # [3, 2, 2]
    true = np.array([[[1.0, 0.0], [0.0, 1.0]]] * 3, np.float32)  # diagonal: cost 2
    pred = np.array(
        [
            [[1.0, 0.0], [0.0, 1.0]],  # the label itself
            [[1.0, 0.0], [1.0, 1.0]],  # detour through a cheap vertex: cost 3
            [[1.0, 1.0], [0.0, 1.0]],  # detour through the expensive vertex: cost 7
        ],
        np.float32,
    )
    metrics = warcraft_training.path_metrics(pred, true, costs)
    assert metrics["perfect_path_accuracy"] == pytest.approx(1 / 3)
    assert metrics["exact_match"] == pytest.approx(1 / 3)
    assert metrics["cost_ratio"] == pytest.approx((1.0 + 1.5 + 3.5) / 3)


def test_blackbox_step_is_absolute_unless_the_costs_are_normalized():
    # The blackbox step moves each cost by at most |ε| = 20/70: on costs ten times larger it
    # changes no path and the gradient vanishes; dividing each map by its mean undoes the scale.
    rng = np.random.default_rng(0)
    true = rng.choice([0.8, 1.2, 5.3, 7.7, 9.2], size=(8, 12, 12)).astype(np.float32)
    paths = warcraft_data.shortest_paths(true)
    costs = rng.uniform(1.5, 2.5, (8, 12, 12)).astype(np.float32)
    args = warcraft.parse_args(["--quick"])  # normalized by default
    inputs = keras.Input((12, 12))
    layer = tf_perturbed.DirectLossGradient("shortest_path", epsilon=warcraft_model.blackbox_epsilon(20.0))
    normalized = keras.layers.Lambda(warcraft_model.normalize_costs)(inputs)

    def gradient(model, c):
        c = tf.constant(c)
        with tf.GradientTape() as tape:
            tape.watch(c)
            loss = tf.reduce_mean(warcraft_model.hamming_loss(paths, model(c)))
        return tape.gradient(loss, c).numpy()

    raw, norm = keras.Model(inputs, layer(inputs)), keras.Model(inputs, layer(normalized))
    assert np.any(gradient(raw, costs) != 0) and not np.any(gradient(raw, 10 * costs))
    np.testing.assert_allclose(10 * gradient(norm, 10 * costs), gradient(norm, costs), rtol=1e-4, atol=1e-6)
    assert np.any(gradient(norm, 10 * costs) != 0)
    model, _, target = warcraft_model.build_method("blackbox", warcraft_model.build_cost_model(96, 12), args)
    assert target == "paths" and "normalize" in [layer.name for layer in model.layers]


def test_is_induced_path_by_hand():
    diagonal = np.eye(4, dtype=np.float32)
    assert warcraft_training.is_induced_path(diagonal)
    staircase = np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]], np.float32)
    assert warcraft_training.is_induced_path(staircase)
    shortcut = diagonal.copy()
    shortcut[1, 0] = 1.0  # (0,0)–(1,0)–(1,1): (0,0) touches (1,1) directly
    assert not warcraft_training.is_induced_path(shortcut)
    branch = diagonal.copy()
    branch[0, 2] = 1.0  # a spur next to (1,1): three masked neighbours there
    assert not warcraft_training.is_induced_path(branch)
    broken = diagonal.copy()
    broken[2, 2] = 0.0  # (1,1) and (3,3) do not touch
    assert not warcraft_training.is_induced_path(broken)
    island = np.eye(8, dtype=np.float32)
    for v in [(0, 5), (1, 4), (1, 6), (2, 5)]:  # a ring apart: every count right, never reached
        island[v] = 1.0
    assert not warcraft_training.is_induced_path(island)
    no_end = diagonal.copy()
    no_end[3, 3] = 0.0
    assert not warcraft_training.is_induced_path(no_end)
    loop = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]], np.float32)  # a ring through both corners
    assert not warcraft_training.is_induced_path(loop)


def test_shortest_paths_are_induced_paths():
    # Every shortest path under positive vertex costs is an induced path (a shortcut would cost less).
    costs = np.random.default_rng(3).choice([0.8, 1.2, 5.3, 7.7, 9.2], size=(40, 8, 8)).astype(np.float32)
    paths = warcraft_data.shortest_paths(costs)
    assert all(warcraft_training.is_induced_path(path) for path in paths)


def test_mask_metrics_by_hand():
    costs = np.array([[[1.0, 5.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]] * 4, np.float32)
    true = np.array([np.eye(3)] * 4, np.float32)  # diagonal, cost 3
    detour = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 1]], np.float32)  # (0,0)(1,0)(2,1)(2,2): cost 4
    not_a_path = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]], np.float32)  # (0,0) touches (0,1) and (1,1)
    pred = np.stack([true[0], detour, not_a_path, np.zeros((3, 3), np.float32)])
    metrics = warcraft_training.mask_metrics(pred, true, costs)
    assert metrics["valid_path_rate"] == pytest.approx(2 / 4)
    assert metrics["perfect_path_accuracy"] == pytest.approx(1 / 4)  # only the label itself
    assert metrics["exact_match"] == pytest.approx(1 / 4)
    assert metrics["cost_ratio"] == pytest.approx((1.0 + 4 / 3) / 2)  # over the two paths
    none = warcraft_training.mask_metrics(pred[2:], true[2:], costs[2:])
    assert none["valid_path_rate"] == 0.0 and none["perfect_path_accuracy"] == 0.0
    assert np.isnan(none["cost_ratio"])


def test_squared_paths_baseline_trains_without_a_solver(tmp_path):
    # The paper's squared baseline: path scores regressed onto the masks, thresholded at ½.
    argv = [
        "--output-dir", str(tmp_path), "--methods", "squared_paths,fenchel_young",
        "--num-train", "14", "--num-val", "7", "--num-test", "7",
        "--epochs", "2", "--batch-size", "7", "--verbose", "0",
    ]  # fmt: skip
    warcraft.main(argv)
    payload = json.loads((tmp_path / "metrics.json").read_text())
    row = payload["results"][0]
    assert row["method"] == "squared_paths" and row["symmetric_views"] is False
    assert row["cost_by_terrain"] is None and 0.0 <= row["valid_path_rate"] <= 1.0
    assert row["perfect_path_accuracy"] <= row["valid_path_rate"]
    assert row["final_loss"] < payload["curves"]["squared_paths"]["loss"][0]
    assert "valid_path_rate" in payload["curves"]["squared_paths"]["val"][0]
    assert payload["serving"]["method"] == "fenchel_young"  # the first method with a solver
    model, loss, target = warcraft_model.build_method(
        "squared_paths", warcraft_model.build_cost_model(48, 6), warcraft.parse_args(["--quick"])
    )
    assert target == "paths" and tuple(model.output.shape) == (None, 6, 6)
    assert "positive" not in [layer.name for layer in model.layers]  # unbounded scores, no softplus


def test_model_shapes_and_schedule():
    model = warcraft_model.build_cost_model(96, 12)
    costs = model(np.zeros((2, 96, 96, 3), np.float32))
    assert tuple(costs.shape) == (2, 12, 12) and bool(np.all(np.asarray(costs) > 0))
    assert tuple(warcraft_model.build_cost_model(144, 18, reduction="mean").output.shape) == (None, 18, 18)
    with pytest.raises(ValueError, match="image_size"):
        warcraft_model.build_cost_model(100, 12)
    schedule = warcraft_training.learning_rate_schedule(50, 5e-4)
    assert [schedule(e) for e in (0, 29, 30, 39, 40, 49)] == pytest.approx(
        [5e-4, 5e-4, 5e-5, 5e-5, 5e-6, 5e-6]
    )
    assert warcraft_training.learning_rate_schedule(1, 5e-4)(0) == pytest.approx(5e-4)


def test_presets_and_flags_that_override_them(tmp_path):
    out = ["--output-dir", str(tmp_path)]
    full = warcraft.parse_args(out)
    assert (full.num_train, full.num_val, full.num_test) == (10000, 1000, 1000)
    assert (full.epochs, full.batch_size, full.learning_rate, full.num_samples, full.sigma) == (12, 35, 2e-3, 10, 0.05)
    assert full.augment and full.symmetric_views
    quick = warcraft.parse_args(["--quick", *out])
    assert (quick.num_train, quick.epochs, quick.batch_size, quick.sigma) == (1400, 5, 35, 0.1)
    paper = warcraft.parse_args(["--epochs", "50", "--batch-size", "70", "--learning-rate", "5e-4", "--no-augment", *out])
    assert (paper.epochs, paper.batch_size, paper.learning_rate, paper.augment) == (50, 70, 5e-4, False)
    assert paper.num_train == 10000


def test_sizes_runner_flags_and_report(tmp_path):
    from tutorials import warcraft_sizes  # noqa: PLC0415

    argv = warcraft_sizes.run_argv(18, "imle", tmp_path, 0, ["--batch-size", "35", "--imle-sigma", "0"])
    flags = dict(zip(argv[::2], argv[1::2], strict=False))
    # The preset's flags, except the one passed on, which wins; the grid size and method of the run.
    assert argv.count("--batch-size") == 1 and flags["--batch-size"] == "35" and flags["--num-train"] == "280"
    assert flags["--grid-size"] == "18" and flags["--methods"] == "imle" and "--no-symmetric-views" in argv
    # Two runs by hand: epoch times after the first, CPU ratio to squared at the same size.
    rows = [
        {"grid_size": 12, "method": m, "perfect_path_accuracy": p, "exact_match": 0.0, "cost_ratio": 1.1,
         "symmetric_views": False, "val_perfect_path_accuracy": [p], "epoch_seconds": [9.0, 2.0, 4.0],
         "epoch_cpu_seconds": [9.0, c, c], "run_seconds": 10.0, "num_train": 280, "num_test": 200, "epochs": 3,
         "batch_size": 14, "load_average_start": [1.0], "command": "python …", "date": "2026-12-04 00:00 UTC"}
        for m, p, c in (("squared", 0.0, 2.0), ("fenchel_young", 0.5, 3.0))
    ]  # fmt: skip
    summary = warcraft_sizes.summarize(rows)
    assert [r["method"] for r in summary] == ["fenchel_young", "squared"]
    assert summary[0]["epoch_seconds"] == 3.0 and summary[0]["cpu_ratio_to_floor"] == pytest.approx(1.5)
    table = warcraft_sizes.markdown_table(summary)
    assert "| 12×12 | `fenchel_young` | 0.500 ± 0.035 |" in table and "0 (< 0.015)" in table
    page = tmp_path / "page.md"
    page.write_text("a\n<!-- warcraft-sizes-table:begin -->\nold\n<!-- warcraft-sizes-table:end -->\nb\n")
    assert warcraft_sizes.write_table_into_page(page, table) and warcraft_sizes.write_table_into_page(page, table)
    assert page.read_text() == f"a\n<!-- warcraft-sizes-table:begin -->\n{table}\n<!-- warcraft-sizes-table:end -->\nb\n"


def test_sizes_runner_publishes_into_the_tutorial_page():
    """`--publish` targets the Warcraft-at-every-size page, which has the table markers, and its files."""
    from tutorials import warcraft_sizes  # noqa: PLC0415

    page = warcraft_sizes.PUBLISHED["page"].read_text(encoding="utf-8")
    begin, end = (f"<!-- {warcraft_sizes.PAGE_MARKER}:{edge} -->" for edge in ("begin", "end"))
    assert 0 <= page.index(begin) < page.index(end)
    assert warcraft_sizes.PUBLISHED["figure"].name in page and warcraft_sizes.PUBLISHED["json"].name in page
    results = json.loads(warcraft_sizes.PUBLISHED["json"].read_text(encoding="utf-8"))
    assert len(results["results"]) == len(warcraft_sizes.SIZES) * len(warcraft_sizes.METHODS)
    assert warcraft_sizes.PUBLISHED["figure"].stat().st_size > 0
