"""The 0-1 knapsack solver beyond the contract: thousands of random instances against brute force,
its arguments, and the estimators on it (the contract line is in tests/test_solver_contract.py)."""

import json

import keras
import numpy as np
import pytest
import references
import tensorflow as tf

import tf_perturbed as tp


def _brute_force(values: np.ndarray, weights: tuple, capacity: int) -> np.ndarray:
    """Optimal values [N] over every feasible 0/1 selection, float64."""
    return np.max(values.astype(np.float64) @ references.selections(weights, capacity).T, axis=-1)


@pytest.mark.parametrize("n", [1, 4, 9])
def test_optimal_on_random_instances_with_and_without_ties(n):
    # 20 random (weights, capacity) pairs × 100 problems each, half of them integer-valued
    # with many ties and zero or negative values; weights include 0 and items that never fit.
    rng = np.random.default_rng(n)
    for trial in range(20):
        weights = tuple(int(w) for w in rng.integers(0, 8, n))
        capacity = int(rng.integers(0, 3 * n + 2))
        ties = trial % 2 == 1
        values = rng.integers(-2, 4, (100, n)) if ties else rng.normal(size=(100, n))
        values = values.astype(np.float32)
        y = tp.solvers.knapsack(tf.constant(values), weights, capacity).numpy()
        assert np.isin(y, [0.0, 1.0]).all()
        assert (y @ np.array(weights) <= capacity).all(), (weights, capacity)
        got = (y.astype(np.float64) * values).sum(-1)
        np.testing.assert_allclose(got, _brute_force(values, weights, capacity), rtol=0, atol=1e-12)
        assert not np.any(y[values <= 0])  # never an item of value ≤ 0 (a tie: left out)


def test_larger_capacities_agree_with_a_float64_numpy_recursion():
    # n = 30 items, capacity 100: too many selections for brute force; the textbook table
    # in NumPy (float64, the same recursion written out) gives the optimal value.
    rng = np.random.default_rng(0)
    weights = tuple(int(w) for w in rng.integers(1, 20, 30))
    values = rng.uniform(0, 1, (64, 30)).astype(np.float32)
    y = tp.solvers.knapsack(tf.constant(values), weights, 100).numpy()
    assert (y @ np.array(weights) <= 100).all()
    for row, chosen in zip(values.astype(np.float64), y, strict=True):
        table = np.zeros(101)
        for w, v in zip(weights, row, strict=True):
            table[w:] = np.maximum(table[w:], table[: 101 - w] + v)
        np.testing.assert_allclose((chosen * row).sum(), table[-1], rtol=1e-12)


@pytest.mark.parametrize("resources", [2, 3])
def test_several_resources_optimal_on_random_instances_with_ties(resources):
    # 30 random (weights [k, n], capacities [k]) × 64 problems against brute force over the
    # 2^n selections; integer values (ties, zeros, negatives) on every other trial; eager,
    # and under XLA the same selections.
    rng = np.random.default_rng(resources)
    solve_xla = tf.function(tp.solvers.knapsack, jit_compile=True, reduce_retracing=True)
    for trial in range(30):
        n = int(rng.integers(1, 9))
        weights = [[int(w) for w in rng.integers(0, 6, n)] for _ in range(resources)]
        capacity = [int(c) for c in rng.integers(0, 2 * n + 2, resources)]
        values = rng.integers(-2, 4, (64, n)) if trial % 2 else rng.normal(size=(64, n))
        values = values.astype(np.float64)
        y = tp.solvers.knapsack(tf.constant(values), weights, capacity).numpy()
        assert np.isin(y, [0.0, 1.0]).all()
        assert np.all(y @ np.array(weights).T <= np.array(capacity)), (weights, capacity)
        np.testing.assert_allclose((y * values).sum(-1), _brute_force(values, weights, capacity), rtol=0, atol=1e-12)
        assert not np.any(y[values <= 0])
        np.testing.assert_array_equal(solve_xla(tf.constant(values), weights, capacity).numpy(), y)


def test_one_resource_as_a_table_is_the_plain_knapsack():
    rng = np.random.default_rng(3)
    values = rng.normal(size=(200, 7)).astype(np.float32)
    weights = [int(w) for w in rng.integers(0, 6, 7)]
    plain = tp.solvers.knapsack(tf.constant(values), weights, 9).numpy()
    np.testing.assert_array_equal(tp.solvers.knapsack(tf.constant(values), [weights], [9]).numpy(), plain)


def test_several_resources_in_the_fenchel_young_loss_save_and_load(tmp_path):
    weights, capacity = [[3, 1, 4, 1, 5], [2, 6, 1, 1, 3]], [7, 6]
    loss = tp.FenchelYoungLoss("knapsack", weights=weights, capacity=capacity, num_samples=4, seed=0)
    config = json.loads(json.dumps(loss.get_config()))
    assert config["solver_kwargs"] == {"weights": weights, "capacity": capacity}
    scores = tf.constant(np.random.default_rng(0).normal(size=(8, 5)), tf.float32)
    y = tp.solvers.knapsack(scores, weights, capacity)
    value = loss(y, scores)
    assert np.isfinite(value.numpy())
    np.testing.assert_allclose(tp.FenchelYoungLoss.from_config(config)(y, scores).numpy(), value.numpy(), rtol=1e-6)


@pytest.mark.parametrize(
    "weights, capacity, match",
    [([[1, 2], [1]], [2, 2], r"rows of one length.*weights=\[\[1, 2\], \[1\]\]"),
     ([[1, 2], [1, 1]], 2, r"2 integers ≥ 0, one per row.*capacity=2"),
     ([[1, 2], [1, 1]], [2], r"2 integers ≥ 0, one per row.*capacity=\[2\]"),
     ([[1, 2], [1, -1]], [2, 2], r"integers ≥ 0.*weights=\[\[1, 2\], \[1, -1\]\]"),
     ([[1, 2], [1, 1]], [2, -1], "capacity=-1"),
     ([[1, 2], [1, 1]], [2**15, 2**15], r"at most 1073741824 entries.*capacity=\[32768, 32768\]")],
)
def test_bad_tables_of_weights_or_capacities_are_named(weights, capacity, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tp.solvers.knapsack(tf.ones([2]), weights, capacity)
    with pytest.raises((ValueError, TypeError), match=match):
        tp.FenchelYoungLoss("knapsack", weights=weights, capacity=capacity)


@pytest.mark.parametrize(
    "weights, capacity, error, match",
    [([1, -1], 2, ValueError, r"weights=\[1, -1\]"), ([1.5, 1], 2, ValueError, r"weights=\[1\.5, 1\]"),
     ([True, 1], 2, ValueError, "weights="), ([], 2, ValueError, r"weights=\[\]"), ("ab", 2, TypeError, "weights='ab'"),
     (3, 2, TypeError, "weights=3"), ([1, 2], -1, ValueError, "capacity=-1"), ([1, 2], 2.0, TypeError, "capacity=2.0")],
)
def test_bad_weights_or_capacity_are_named(weights, capacity, error, match):
    with pytest.raises(error, match=match):
        tp.solvers.knapsack(tf.ones([2]), weights, capacity)
    with pytest.raises(error, match=match):
        tp.FenchelYoungLoss("knapsack", weights=weights, capacity=capacity)


def test_values_of_another_length_than_the_weights_are_named():
    with pytest.raises(ValueError, match=r"3 \(the weights' items\).*values\.shape=\(2, 4\)"):
        tp.solvers.knapsack(tf.ones([2, 4]), [1, 2, 3], 4)


def _features_and_selections(weights, capacity, n: int, features: int, num: int, seed: int):
    """Features x `[num, features]` and the optimal selections of the true values x·W (W drawn too)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, features)).astype("float32")
    truth = x @ rng.normal(size=(features, n)).astype("float32")
    return x, tp.solvers.knapsack(tf.constant(truth), weights, capacity).numpy()


def test_perturbed_layer_and_fenchel_young_loss_train_with_xla_and_save(tmp_path):
    # A linear model predicts item values from features; the labels are the optimal selections
    # of the true values. The Fenchel-Young loss falls, and the trained model's selections
    # are mostly the optimal ones; the loss and a perturbed layer round-trip through .keras.
    weights, capacity, n, features = [3, 1, 4, 1, 5, 2, 6, 2], 10, 8, 5
    x, y = _features_and_selections(weights, capacity, n, features, num=512, seed=0)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((features,))
    scores = keras.layers.Dense(n)(inputs)
    soft = tp.PerturbedOptimizer("knapsack", num_samples=8, sigma=0.5, seed=1,
                                 solver_kwargs={"weights": weights, "capacity": capacity})(scores)
    model = keras.Model(inputs, {"scores": scores, "soft": soft})
    loss = tp.FenchelYoungLoss("knapsack", weights=weights, capacity=capacity, num_samples=8, sigma=0.5, seed=2)
    model.compile(keras.optimizers.Adam(0.05), {"scores": loss, "soft": "mse"}, loss_weights={"scores": 1.0, "soft": 0.0},
                  jit_compile=True)
    history = model.fit(x, {"scores": y, "soft": y}, epochs=8, batch_size=64, verbose=0).history["scores_loss"]
    assert history[-1] < 0.5 * history[0], history
    predicted = tp.solvers.knapsack(model.predict(x, verbose=0)["scores"], weights, capacity).numpy()
    assert np.mean(np.all(predicted == y, -1)) > 0.5  # whole selections right
    config = loss.get_config()
    assert json.loads(json.dumps(config))["solver_kwargs"] == {"weights": weights, "capacity": capacity}
    model.save(tmp_path / "knapsack.keras")
    loaded = keras.saving.load_model(tmp_path / "knapsack.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x[:16], verbose=0)["soft"], model.predict(x[:16], verbose=0)["soft"])


def test_several_resources_train_with_xla_save_export_and_serve(tmp_path):
    # Two resources: a linear model learns item values through the Fenchel-Young loss under XLA,
    # its ImplicitMLE head (hard at inference) gives the same selections from the `.keras` file
    # (safe mode) and from the exported SavedModel.
    weights, capacity, n, features = [[3, 1, 4, 1, 5, 2], [2, 4, 1, 3, 1, 2]], [8, 7], 6, 4
    x, y = _features_and_selections(weights, capacity, n, features, num=384, seed=5)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((features,))
    scores = keras.layers.Dense(n)(inputs)
    head = tp.ImplicitMLE("knapsack", noise="gumbel", seed=3, solver_kwargs={"weights": weights, "capacity": capacity})
    model = keras.Model(inputs, {"scores": scores, "chosen": head(scores)})
    loss = tp.FenchelYoungLoss("knapsack", weights=weights, capacity=capacity, num_samples=8, sigma=0.5, seed=2)
    model.compile(keras.optimizers.Adam(0.05), {"scores": loss, "chosen": "mse"},
                  loss_weights={"scores": 1.0, "chosen": 0.0}, jit_compile=True)
    history = model.fit(x, {"scores": y, "chosen": y}, epochs=8, batch_size=64, verbose=0).history["scores_loss"]
    assert history[-1] < 0.5 * history[0], history
    chosen = model.predict(x, verbose=0)["chosen"]
    assert np.mean(np.all(chosen == y, -1)) > 0.5  # whole selections right
    model.export(str(tmp_path / "exported"), verbose=False)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x[:32], verbose=0)["chosen"], chosen[:32])
    exported = tf.saved_model.load(str(tmp_path / "exported"))
    served = exported.serve(tf.constant(x[:32]))
    served = served if isinstance(served, dict) else dict(zip(["chosen", "scores"], served))
    np.testing.assert_array_equal(np.asarray(served["chosen"]), chosen[:32])
