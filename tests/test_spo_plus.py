"""The SPO+ loss against its definition by brute force, and its subgradient against finite differences."""

import numpy as np
import pytest
import references
import tensorflow as tf

import tf_perturbed as tp

D = 5
WEIGHTS, CAPACITY = [3, 1, 4, 1, 5], 6


def _vertices(name):
    """Every solution of the problem on D items (or a 3 × 3 matching): [V, *event]."""
    if name == "argmax":
        return np.eye(D)
    if name == "top_k":
        return references.k_hots(D, 2)
    if name == "ranks":
        return references.permutations(D).astype(float)
    if name == "knapsack":
        return references.selections(WEIGHTS, CAPACITY)
    return np.eye(3)[references.permutations(3)]  # assignment: permutation matrices


CASES = {
    "argmax": ({}, (D,)),
    "top_k": ({"k": 2}, (D,)),
    "ranks": ({}, (D,)),
    "knapsack": ({"weights": WEIGHTS, "capacity": CAPACITY}, (D,)),
    "assignment": ({}, (3, 3)),
}


def _spo_by_definition(theta_hat, theta, vertices):
    """max_y ⟨2θ̂ − θ, y⟩ − 2⟨θ̂, y*(θ)⟩ + ⟨θ, y*(θ)⟩ by enumerating the vertices, float64."""
    flat = vertices.reshape(len(vertices), -1)
    th, t = theta_hat.reshape(len(theta_hat), -1), theta.reshape(len(theta), -1)
    star = flat[np.argmax(t @ flat.T, axis=-1)]  # y*(θ) (continuous θ: no ties)
    return np.max((2 * th - t) @ flat.T, axis=-1) - 2 * (th * star).sum(-1) + (t * star).sum(-1)


@pytest.mark.parametrize("name", list(CASES))
def test_value_is_the_definition_nonnegative_and_zero_at_the_truth(name):
    kwargs, event = CASES[name]
    rng = np.random.default_rng(0)
    theta, theta_hat = rng.normal(size=(64, *event)), rng.normal(size=(64, *event))
    got = tp.spo_plus_loss(tf.constant(theta), tf.constant(theta_hat), name, solver_kwargs=kwargs).numpy()
    np.testing.assert_allclose(got, _spo_by_definition(theta_hat, theta, _vertices(name)), rtol=1e-12, atol=1e-12)
    assert np.all(got >= 0) and np.any(got > 0.1)
    at_truth = tp.spo_plus_loss(tf.constant(theta), tf.constant(theta), name, solver_kwargs=kwargs).numpy()
    np.testing.assert_array_equal(at_truth, 0.0)
    given = tp.solvers.get_solver(name, kwargs)(tf.constant(theta))
    with_y = tp.spo_plus_loss(tf.constant(theta), tf.constant(theta_hat), name, y_true=given, solver_kwargs=kwargs)
    np.testing.assert_array_equal(with_y.numpy(), got)


@pytest.mark.parametrize("name", list(CASES))
def test_subgradient_is_that_of_the_value(name):
    # ℓ is piecewise linear in θ̂: float64 central differences along random directions equal
    # ⟨∇ℓ, v⟩ (a step of 1e-6 almost never crosses a kink; the seed is fixed), and ∇ℓ is
    # 2(y*(2θ̂ − θ) − y*(θ)) computed by the public solver.
    kwargs, event = CASES[name]
    rng = np.random.default_rng(1)
    theta, theta_hat = tf.constant(rng.normal(size=(16, *event))), rng.normal(size=(16, *event))
    weights = tf.constant(rng.uniform(0.5, 1.5, 16))

    def value(t):
        return tf.reduce_sum(weights * tp.spo_plus_loss(theta, t, name, solver_kwargs=kwargs))

    t = tf.constant(theta_hat)
    with tf.GradientTape() as tape:
        tape.watch(t)
        total = value(t)
    grad = tape.gradient(total, t).numpy()
    solve = tp.solvers.get_solver(name, kwargs)
    expected = 2 * (solve(2 * t - theta).numpy() - solve(theta).numpy())
    np.testing.assert_array_equal(grad, weights.numpy()[(...,) + (None,) * len(event)] * expected)
    assert np.abs(grad).max() > 0
    h = 1e-6
    for v in rng.normal(size=(3, 16, *event)):
        fd = (value(tf.constant(theta_hat + h * v)) - value(tf.constant(theta_hat - h * v))).numpy() / (2 * h)
        np.testing.assert_allclose((grad * v).sum(), fd, rtol=1e-7, atol=1e-8)


def test_minimising_costs_is_maximising_their_negatives():
    rng = np.random.default_rng(2)
    costs, predicted = tf.constant(rng.normal(size=(8, D))), tf.constant(rng.normal(size=(8, D)))

    def argmin(c):
        return tp.solvers.argmax(-c)

    with tf.GradientTape(persistent=True) as tape:
        tape.watch(predicted)
        as_costs = tp.spo_plus_loss(costs, predicted, argmin, maximize=False)
        as_scores = tp.spo_plus_loss(-costs, -predicted, "argmax")
    np.testing.assert_allclose(as_costs.numpy(), as_scores.numpy(), rtol=1e-12)
    np.testing.assert_allclose(tape.gradient(as_costs, predicted).numpy(), tape.gradient(as_scores, predicted).numpy())


def test_eager_graph_and_xla_agree_and_no_gradient_reaches_the_truth():
    rng = np.random.default_rng(3)
    theta, theta_hat = tf.constant(rng.normal(size=(6, D)), tf.float32), tf.constant(rng.normal(size=(6, D)), tf.float32)
    kwargs = CASES["knapsack"][0]

    def both(t, p):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch([t, p])
            value = tp.spo_plus_loss(t, p, "knapsack", solver_kwargs=kwargs)
        return value, tape.gradient(value, p), tape.gradient(value, t)

    eager = both(theta, theta_hat)
    assert eager[2] is None
    for fn in (tf.function(both), tf.function(both, jit_compile=True)):
        value, grad, none = fn(theta, theta_hat)
        np.testing.assert_array_equal(value.numpy(), eager[0].numpy())
        np.testing.assert_array_equal(grad.numpy(), eager[1].numpy())
        assert none is None


def test_bad_solvers_and_shapes_are_named():
    theta = tf.ones([2, 3, 3])
    with pytest.raises(ValueError, match="solver='shortest_path'"):
        tp.spo_plus_loss(theta, theta, "shortest_path")
    with pytest.raises(ValueError, match="'sort_permutation' returns another shape"):
        tp.spo_plus_loss(tf.ones([2, 3]), tf.ones([2, 3]), "sort_permutation")
    with pytest.raises(ValueError, match=r"theta_true\.shape=\(2, 3\), theta_pred\.shape=\(2, 4\)"):
        tp.spo_plus_loss(tf.ones([2, 3]), tf.ones([2, 4]), "argmax")
    with pytest.raises(ValueError, match=r"y_true\.shape=\(2, 4\)"):
        tp.spo_plus_loss(tf.ones([2, 3]), tf.ones([2, 3]), "argmax", y_true=tf.ones([2, 4]))
    with pytest.raises(TypeError, match="theta_pred"):
        tp.spo_plus_loss(tf.ones([2, 3]), tf.ones([2, 3], tf.int32), "argmax")


def test_clip_to_domain_on_grid_paths_is_spo_plus_inside_the_domain_and_its_stated_surrogate_outside():
    # Inside the domain (2ĉ − c ≥ 0) the value is the definition, with min_w ⟨s, w⟩ and
    # ⟨c, w*(c)⟩ the textbook Dijkstra's path costs; outside, the value is
    # ⟨2ĉ − c, w*(c) − w*(s')⟩ and the gradient 2(w*(c) − w*(s')), s' = max(2ĉ − c, 0).
    rng = np.random.default_rng(4)
    costs = rng.uniform(0.5, 2.0, size=(12, 5, 5))
    inside = costs * rng.uniform(0.6, 1.5, size=costs.shape)  # 2ĉ − c ≥ 0.2c > 0
    outside = costs * rng.uniform(0.0, 1.5, size=costs.shape)
    assert np.all(2 * inside - costs > 0) and np.any(2 * outside - costs < 0)
    path = tp.solvers.shortest_path
    got = tp.spo_plus_loss(tf.constant(costs), tf.constant(inside), "shortest_path", clip_to_domain=True).numpy()
    star = path(tf.constant(costs)).numpy()
    definition = [
        -references.dijkstra(2 * p - c) + 2 * (p * w).sum() - references.dijkstra(c)
        for p, c, w in zip(inside, costs, star)
    ]
    np.testing.assert_allclose((costs * star).sum((1, 2)), [references.dijkstra(c) for c in costs], rtol=1e-12)
    np.testing.assert_allclose(got, definition, rtol=1e-12, atol=1e-12)
    assert np.all(got >= -1e-12) and np.any(got > 0.1)
    predicted = tf.constant(outside)
    with tf.GradientTape() as tape:
        tape.watch(predicted)
        value = tp.spo_plus_loss(tf.constant(costs), predicted, "shortest_path", clip_to_domain=True)
    clipped = path(tf.constant(np.maximum(2 * outside - costs, 0.0))).numpy()
    np.testing.assert_allclose(value.numpy(), ((2 * outside - costs) * (star - clipped)).sum((1, 2)), rtol=1e-12)
    np.testing.assert_array_equal(tape.gradient(value, predicted).numpy(), 2 * (star - clipped))


def test_keras_loss_is_the_op_reduced_and_round_trips():
    rng = np.random.default_rng(5)
    kwargs = CASES["knapsack"][0]
    theta, theta_hat = rng.normal(size=(8, D)), rng.normal(size=(8, D))
    loss = tp.SPOPlusLoss("knapsack", solver_kwargs=kwargs)
    per_example = tp.spo_plus_loss(tf.constant(theta), tf.constant(theta_hat), "knapsack", solver_kwargs=kwargs)
    np.testing.assert_allclose(float(loss(theta, theta_hat)), np.mean(per_example.numpy()), rtol=1e-6)
    summed = tp.SPOPlusLoss("knapsack", reduction="sum", **kwargs)  # keyword hyper-parameters join solver_kwargs
    np.testing.assert_allclose(float(summed(theta, theta_hat)), np.sum(per_example.numpy()), rtol=1e-6)
    config = summed.get_config()
    assert config["solver_kwargs"] == {"weights": WEIGHTS, "capacity": CAPACITY} and "seed" not in config
    assert tp.SPOPlusLoss.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="clip_to_domain=False"):
        tp.SPOPlusLoss("shortest_path")
    with pytest.raises(TypeError, match="clip_to_domain='yes'"):
        tp.SPOPlusLoss("shortest_path", clip_to_domain="yes")


def test_spo_plus_trains_a_linear_model_to_lower_regret():
    # End to end: costs linear in features; a linear model fitted with SPO+ in model.fit
    # (XLA) lowers the test regret of its decisions (knapsack, true values known).
    import keras

    rng = np.random.default_rng(6)
    kwargs = CASES["knapsack"][0]
    w = rng.normal(size=(4, D))
    x = rng.normal(size=(512, 4)).astype("float32")
    values = (x @ w).astype("float32")
    solve = tp.solvers.get_solver("knapsack", kwargs)

    def regret(model):
        chosen = solve(tf.constant(model.predict(x, verbose=0))).numpy()
        best = solve(tf.constant(values)).numpy()
        return float(((best - chosen) * values).sum(1).mean())

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(D)])
    model.compile(keras.optimizers.Adam(0.05), tp.SPOPlusLoss("knapsack", solver_kwargs=kwargs), jit_compile=True)
    before = regret(model)
    model.fit(x, values, epochs=8, batch_size=64, verbose=0)
    after = regret(model)
    assert after < 0.25 * before, (before, after)
