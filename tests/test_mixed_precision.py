"""Mixed precision: every layer and loss runs and trains under `mixed_float16` and
`mixed_bfloat16`; solvers and Monte-Carlo sums run in float32, results come back in
the compute dtype.

How "in float32" is tested. A sum of M solutions accumulated in float16 stops
growing at 2048 (2048 + 1 rounds back to 2048; bfloat16: at 256), so the mean of
M = 4097 identical one-hot solutions would come out as 0.5 instead of 1. With σ
tiny next to the gaps between scores every sample has the hard solution, so the
perturbed mean must equal the hard solution exactly. Gradients are compared with
the float32 op on the same input and seed: they must be its float32 result cast
to the compute dtype (the only rounding a float32 computation leaves).

Runtime on 2 shared cores: about 70 s of CPU time, most of it tracing the
all-layers model once per policy and compiling with XLA.
"""

import keras
import layer_harness as harness
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp

POLICIES = {"mixed_float16": (tf.float16, 4097), "mixed_bfloat16": (tf.bfloat16, 513)}
D, H, W, N = 8, 3, 4, 3
SEED = 3


@pytest.fixture(params=sorted(POLICIES))
def policy(request):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy(previous)


def _inputs(name):
    """Inputs with gaps ≥ 1 between the scores (costs) that matter, so σ = 1e-3 flips nothing."""
    rng = np.random.default_rng(0)
    if name == "shortest_path":
        costs = np.ones((2, H, W))
        costs[:, 1:, 1:-1] = 30.0  # one cheapest path: along the top row, then down the last column
        return tf.constant(costs, tf.float32)
    if name == "matching":
        return tf.constant(np.stack([np.eye(N) * 8.0, np.eye(N)[::-1] * 8.0]), tf.float32)
    return tf.constant(np.stack([rng.permutation(D) for _ in range(2)]).astype(np.float32))


def _layers(num_samples):
    common = dict(num_samples=num_samples, sigma=1e-3, seed=SEED)
    return {
        "argmax": tp.PerturbedArgmax(**common),
        "top_k": tp.PerturbedTopK(k=3, **common),
        "ranks": tp.PerturbedRanks(**common),
        "sort_permutation": tp.PerturbedOptimizer("sort_permutation", **common),
        "shortest_path": tp.PerturbedShortestPath(**common),
        "matching": tp.PerturbedMatching(**common),
    }


@pytest.mark.parametrize(
    "name", ["argmax", "top_k", "ranks", "sort_permutation", "shortest_path", "matching"]
)
def test_perturbed_layers_sum_in_float32_and_return_the_compute_dtype(policy, name):
    dtype, num_samples = POLICIES[policy]
    if name in ("shortest_path", "matching"):
        num_samples = 17  # the same op as the closed-form layers: check dtypes and the solver, faster
    layer = _layers(num_samples)[name]
    assert layer.compute_dtype == dtype.name
    theta = _inputs(name)
    hard = layer.solver(theta).numpy()
    soft = layer(theta, training=True)  # Keras casts the input to the compute dtype
    assert soft.dtype == dtype
    np.testing.assert_array_equal(soft.numpy().astype(np.float32), hard)
    inference = layer(theta, training=False)
    assert inference.dtype == dtype
    np.testing.assert_array_equal(inference.numpy().astype(np.float32), hard)


@pytest.mark.parametrize(
    "name, jit_compile",  # XLA compiles are slow: two solvers under XLA
    [("argmax", False), ("top_k", False), ("ranks", False), ("sort_permutation", False),
     ("argmax", True), ("sort_permutation", True)],
)
def test_gradients_are_the_float32_computation_cast_to_the_compute_dtype(policy, name, jit_compile):
    dtype, _ = POLICIES[policy]
    layer = {
        "argmax": tp.PerturbedArgmax(num_samples=16, sigma=0.5, seed=SEED),
        "top_k": tp.PerturbedTopK(k=3, num_samples=16, sigma=0.5, noise="gumbel", seed=SEED),
        "ranks": tp.PerturbedRanks(num_samples=16, sigma=0.5, control_variate="hard", seed=SEED),
        "sort_permutation": tp.PerturbedOptimizer("sort_permutation", num_samples=16, sigma=0.5, seed=SEED),
    }[name]
    theta = tf.cast(tf.constant(np.random.default_rng(1).normal(size=(3, D)), tf.float32), dtype)
    seed = tp.seeds.sanitize_seed(tf.constant([SEED, 0], tf.int64))  # the generator's first seed

    def value_and_grad(op, t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = op(t)
            # small integers: exact in every dtype, so both sides get the same upstream gradient
            weights = tf.cast(tf.reshape(tf.range(tf.size(y)) % 4, tf.shape(y)), y.dtype)
            v = tf.reduce_sum(y * weights)
        return y, tape.gradient(v, t)

    def mixed(t):
        return value_and_grad(lambda u: layer(u, training=True), t)

    def reference(t):
        op = tp.perturbed(**layer.config.arguments())
        return value_and_grad(lambda u: op(u, seed=seed), t)

    y16, g16 = tf.function(mixed, jit_compile=jit_compile)(theta)
    y32, g32 = tf.function(reference, jit_compile=jit_compile)(tf.cast(theta, tf.float32))
    assert y16.dtype == dtype and g16.dtype == dtype
    np.testing.assert_array_equal(y16.numpy(), tf.cast(y32, dtype).numpy())
    # Within one unit in the last place of the compute dtype (2^-10 for float16, 2^-7 for
    # bfloat16, relative): the rounding of the final cast, and of nothing else.
    ulp = 2.0**-10 if dtype == tf.float16 else 2.0**-7
    g32 = g32.numpy()
    np.testing.assert_allclose(g16.numpy().astype(np.float32), g32, rtol=ulp, atol=ulp * np.abs(g32).max())


def test_fenchel_young_loss_runs_in_float32(policy):
    dtype, num_samples = POLICIES[policy]
    theta = _inputs("argmax")
    target = tp.solvers.argmax(-theta)  # a wrong target: the loss is the largest gap, > 0
    loss = tp.FenchelYoungLoss("argmax", num_samples=num_samples, sigma=1e-3, reduction=None, seed=SEED)
    value = loss(target, tf.cast(theta, dtype))
    assert value.dtype == tf.float32  # Keras losses compute in float32
    # σ tiny: F_ε(θ) = max θ up to ε·E[max z] (|ε z| < 1e-2 here), minus ⟨θ, y⟩.
    expected = theta.numpy().max(-1) - (theta.numpy() * target.numpy()).sum(-1)
    np.testing.assert_allclose(value.numpy(), expected, atol=1e-2)
    op_value = tp.fenchel_young_loss(target, tf.cast(theta, dtype), "argmax", num_samples=num_samples,
                                     sigma=1e-3, seed=SEED)
    assert op_value.dtype == dtype
    np.testing.assert_allclose(op_value.numpy().astype(np.float32), expected, rtol=1e-2, atol=1e-2)


def test_direct_and_learned_noise_scale_layers_keep_the_compute_dtype(policy):
    dtype, _ = POLICIES[policy]
    theta = tf.cast(_inputs("argmax"), dtype)
    scale = tp.LearnedNoiseScale(seed=SEED)
    direct = tp.DirectLossGradient("argmax", epsilon=-0.5, sigma=0.5, seed=SEED)
    with tf.GradientTape() as tape:
        tape.watch(theta)
        noisy = scale([theta, theta], training=True)
        y = direct(noisy, training=True)
        v = tf.reduce_sum(y * tf.cast(tf.range(D), dtype))
    grads = tape.gradient(v, [theta] + scale.trainable_variables)
    assert noisy.dtype == dtype and y.dtype == dtype
    assert grads[0].dtype == dtype
    assert all(np.all(np.isfinite(np.asarray(g, np.float32))) for g in grads)
    np.testing.assert_array_equal(direct(theta).numpy(), tp.solvers.argmax(theta).numpy())


def test_every_layer_and_loss_trains_with_fit(policy):
    keras.utils.set_random_seed(0)
    x, y = harness.all_layers_data(64)
    model, losses = harness.all_layers_model(num_samples=8, sigma=0.5, seed=0)
    outputs = model(x, training=False)
    compute = POLICIES[policy][0]
    for name in harness.ALL_HEADS:
        assert outputs[name].dtype == compute, name
    model.compile(keras.optimizers.Adam(0.05), losses, jit_compile=False)
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    history = model.fit(x, y, epochs=6, batch_size=16, verbose=0, shuffle=False).history
    for key, values in history.items():
        assert np.all(np.isfinite(values)), (key, values)
    assert history["loss"][-1] < history["loss"][0], history["loss"]
    for head in ("fenchel_young", "fenchel_young_path", "direct", "ranks", "top_k"):
        losses_of_head = history[f"{head}_loss"]
        assert losses_of_head[-1] < losses_of_head[0], (head, losses_of_head)
