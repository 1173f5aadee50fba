"""Determinism: the same seeds give bit-identical outputs and gradients in two
separate processes (CPU).

The test process and a fresh subprocess (`python test_determinism.py OUT.npz`, another
PYTHONHASHSEED) compute, from fixed inputs and seeds:
- every layer and loss in training mode, eagerly, twice in a row (the second call
  draws new noise), and the gradients with respect to the inputs and the weights;
- the perturbed argmax and the chunked perturbed top-k and their gradients under XLA;
- the weights after a short `model.fit` (graph mode) of a perturbed layer trained
  with a Fenchel-Young loss.
The test compares the arrays byte for byte (the test process has run other tests
before: the results must not depend on what ran before either).

`chunk_size` must not change the result either: a sample's noise does not depend on
the chunking, so the perturbed means are the same bits and the gradients differ only
by the order of float additions (checked in float64, to 1e-10 relative).

Runtime on 2 shared cores: about 50 s of CPU time.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp


def _value_and_grads(fn, inputs, variables=()):
    """fn(*inputs), and the gradient of Σ fn·w (w: small integers) with respect to inputs and variables."""
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        out = fn(*inputs)
        weights = tf.cast(tf.reshape(tf.range(tf.size(out)) % 5, tf.shape(out)), out.dtype)
        value = tf.reduce_sum(out * weights)
    return out, tape.gradient(value, list(inputs) + list(variables))


def _compute():
    """The arrays to compare, by name."""
    arrays = {}
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    theta = tf.constant(rng.normal(size=(3, 6)), tf.float32)
    costs = tf.constant(rng.uniform(0.5, 2.0, size=(2, 3, 4)), tf.float32)
    scores = tf.constant(rng.normal(size=(2, 3, 3)), tf.float32)
    layers = {
        "argmax": (tp.PerturbedArgmax(num_samples=6, seed=0), theta),
        "top_k": (tp.PerturbedTopK(k=2, num_samples=6, noise="gumbel", seed=1), theta),
        "ranks": (tp.PerturbedRanks(num_samples=6, control_variate="hard", seed=2), theta),
        "sort_permutation": (tp.PerturbedOptimizer("sort_permutation", num_samples=6, seed=3, chunk_size=4), theta),
        "shortest_path": (tp.PerturbedShortestPath(num_samples=6, seed=4), costs),
        "matching": (tp.PerturbedMatching(num_samples=6, seed=5), scores),
        "direct": (tp.DirectLossGradient("top_k", sigma=0.5, seed=6, solver_kwargs={"k": 2}), theta),
    }
    for name, (layer, x) in layers.items():
        for call in range(2):
            out, (grad,) = _value_and_grads(lambda t, layer=layer: layer(t, training=True), [x])
            arrays[f"{name}_{call}"], arrays[f"{name}_grad_{call}"] = out.numpy(), grad.numpy()
    scale = tp.LearnedNoiseScale(seed=7)
    scale.build([theta.shape, theta.shape])
    for call in range(2):
        out, grads = _value_and_grads(lambda t: scale([t, t], training=True), [theta], scale.trainable_variables)
        arrays[f"noise_scale_{call}"] = out.numpy()
        for i, grad in enumerate(grads):
            arrays[f"noise_scale_grad_{call}_{i}"] = grad.numpy()
    losses = {
        "fenchel_young": (tp.FenchelYoungLoss("argmax", num_samples=6, seed=8, reduction=None), theta),
        "fenchel_young_path": (tp.FenchelYoungLoss("shortest_path", num_samples=6, seed=9, reduction=None), costs),
    }
    for name, (loss, x) in losses.items():
        target = loss.solver(x * 0.5 + 1.0)
        for call in range(2):
            out, (grad,) = _value_and_grads(lambda t, loss=loss, y=target: loss(y, t), [x])
            arrays[f"{name}_{call}"], arrays[f"{name}_grad_{call}"] = out.numpy(), grad.numpy()

    ops = {
        "argmax": tp.perturbed("argmax", num_samples=50, sigma=0.5, seed=1),
        "top_k_chunked": tp.perturbed("top_k", num_samples=50, sigma=0.5, seed=3, chunk_size=16,
                                      solver_kwargs={"k": 2}),
    }
    for name, op in ops.items():
        compiled = tf.function(lambda t, op=op: _value_and_grads(op, [t]), jit_compile=True)
        out, (grad,) = compiled(theta)
        arrays[f"xla_{name}"], arrays[f"xla_grad_{name}"] = out.numpy(), grad.numpy()

    keras.utils.set_random_seed(0)
    inputs = keras.Input((7,))
    dense = keras.layers.Dense(7, kernel_initializer=keras.initializers.GlorotUniform(seed=0))
    small = keras.Model(inputs, tp.PerturbedRanks(num_samples=5, seed=4)(dense(inputs)))
    small.compile(keras.optimizers.Adam(0.05), tp.FenchelYoungLoss("ranks", num_samples=5, seed=5),
                  jit_compile=False)
    data = np.random.default_rng(1).normal(size=(64, 7)).astype(np.float32)
    small.fit(data, tp.solvers.ranks(data @ np.eye(7)[::-1]).numpy(), epochs=2, batch_size=16, verbose=0)
    for i, weight in enumerate(small.get_weights()):
        arrays[f"fit_{i}"] = weight
    return arrays


def test_same_seed_gives_bit_identical_results_in_two_processes(tmp_path):
    path = str(tmp_path / "subprocess.npz")
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), path],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="1234"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    here = _compute()  # meanwhile, in this process
    log = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, log[-3000:]
    there = dict(np.load(path))
    assert sorted(here) == sorted(there)
    every = ("argmax", "top_k", "ranks", "sort_permutation", "shortest_path", "matching", "direct",
             "noise_scale", "fenchel_young", "fenchel_young_path")
    assert all(f"{name}_1" in here for name in every)
    for name in here:
        assert here[name].dtype == there[name].dtype and here[name].shape == there[name].shape, name
        assert here[name].tobytes() == there[name].tobytes(), name
        assert np.all(np.isfinite(here[name])), name
    for name in ("argmax", "matching", "fenchel_young"):  # successive calls draw new noise
        assert not np.array_equal(here[f"{name}_0"], here[f"{name}_1"]), name


CLOSED_FORM = [("argmax", {}, (4, 6)), ("top_k", {"k": 2}, (4, 6)), ("ranks", {}, (4, 6)),
               ("sort_permutation", {}, (3, 5))]
STRUCTURED = [("shortest_path", {}, (2, 3, 4)), ("assignment", {}, (2, 3, 3))]  # eager loops: slow, fewer cases
CHUNK_CASES = [case + (cv,) for case in CLOSED_FORM for cv in (True, False, "hard")] + [
    case + (True,) for case in STRUCTURED
]


@pytest.mark.parametrize("solver, kwargs, shape, control_variate", CHUNK_CASES)
def test_chunked_solving_gives_the_unchunked_result(solver, kwargs, shape, control_variate):
    rng = np.random.default_rng(0)
    theta = tf.constant(rng.uniform(0.2, 2.0, size=shape), tf.float64)
    out_shape = shape + (shape[-1],) if solver == "sort_permutation" else shape
    upstream = tf.constant(rng.normal(size=out_shape), tf.float64)

    def run(chunk_size, jit):
        op = tp.perturbed(solver, num_samples=10, sigma=0.5, control_variate=control_variate, seed=7,
                          solver_kwargs=kwargs, chunk_size=chunk_size)

        def value_and_grad(t):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = op(t)
                v = tf.reduce_sum(y * upstream)
            return y, tape.gradient(v, t)

        return tf.function(value_and_grad, jit_compile=jit)(theta) if jit else value_and_grad(theta)

    # XLA for the closed-form solvers and the default control variate (compiling is slow)
    jit_cases = [False, True] if len(shape) == 2 and control_variate is True else [False]
    for jit in jit_cases:
        y, grad = run(None, jit)
        # 4 chunks of 3 (the last with two padded samples), 3 chunks of 4, 1 chunk
        for chunk_size in (3, 4, 10) if not (jit or len(shape) == 3) else (3,):
            y_c, grad_c = run(chunk_size, jit)
            np.testing.assert_array_equal(y_c.numpy(), y.numpy())
            np.testing.assert_allclose(grad_c.numpy(), grad.numpy(), rtol=1e-10, atol=1e-10 * np.abs(grad).max())


@pytest.mark.parametrize("solver, kwargs", [("ranks", {}), ("shortest_path", {})])
def test_chunked_perturbed_maximum_and_fenchel_young_loss(solver, kwargs):
    rng = np.random.default_rng(1)
    theta = tf.constant(rng.uniform(0.2, 2.0, size=(3, 4, 5) if solver == "shortest_path" else (3, 6)), tf.float64)
    target = tp.solvers.get_solver(solver, kwargs)(theta)
    results = []
    for chunk_size in (None, 3):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(theta)
            value = tp.perturbed_max(solver, num_samples=10, seed=3, chunk_size=chunk_size, solver_kwargs=kwargs)(theta)
            loss = tp.fenchel_young_loss(target, theta, solver, num_samples=10, seed=3, chunk_size=chunk_size,
                                         solver_kwargs=kwargs)
        results.append([value, tape.gradient(value, theta), loss, tape.gradient(loss, theta)])
    for full, chunked in zip(*results, strict=True):
        np.testing.assert_allclose(chunked.numpy(), full.numpy(), rtol=1e-10, atol=1e-12)


if __name__ == "__main__":
    np.savez(sys.argv[1], **_compute())
