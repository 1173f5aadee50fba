"""tf.distribute: every layer and loss trains with `model.fit` under MirroredStrategy
(2 logical CPUs); the layers and losses on the closed-form solvers also under
MultiWorkerMirroredStrategy (2 worker processes on loopback; the structured solvers,
slow to trace, are left out there: folding the replica id into the seed does not
depend on the solver).

What is checked:
- replicas draw different noise (the replica id is folded into the stateless seed),
  and the same seed gives the same per-replica noise again; each replica's output is
  exactly the public op's with the replica-folded seed, `tp.seeds.fold_in(seed,
  replica_id)` (what `tp.seeds.per_replica` does under a strategy with > 1 replica),
  for every layer and loss and a chunked layer;
- the `keras.random.SeedGenerator` state advances once per step and stays the same
  on every replica;
- training under a strategy agrees with single-device training.

Tolerance of the agreement. With a strategy, each replica perturbs its half of the
batch with its own noise, so the run differs from the single-device run with the
same seeds only by the noise realisation (and the order of float additions). Two
single-device runs with different seeds (A, B) differ by exactly that kind of
noise, so the per-head tolerance is 5 × max_epoch |L_A − L_B| (5 allows for the
spread being estimated from one pair) plus 1e-4 relative for float reordering.
A head with no noise in it (`DirectLossGradient` with σ = 0) has spread 0: there
the tolerance is the float floor, and a loss reduced or averaged the wrong way
across replicas shows up at once. The test also checks that the spread is small
next to the losses (< 25 %), so that a mis-scaled loss (e.g. summed over replicas)
cannot hide inside it.

The processes: one runs the single-device fits and the MirroredStrategy fit (logical
devices must be set before TensorFlow starts, hence a subprocess), two are the
MultiWorkerMirroredStrategy workers; all three start together. Runtime measured on
2 shared cores: about 140 s of CPU time in total, most of it importing TensorFlow
and tracing the models (wall time with idle cores: about 1.5 min).
"""

import contextlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
EPOCHS, BATCH, N = 3, 16, 64
WORKER_HEADS = ("argmax", "top_k", "ranks", "sort_permutation", "direct", "noise_scale", "fenchel_young")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Starts the Mirrored process and the two workers together; returns their JSON results."""
    tmp = tmp_path_factory.mktemp("distribute")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    cluster = {"worker": [f"127.0.0.1:{_free_port()}" for _ in range(2)]}
    jobs = {"mirrored": dict(env)}
    for index in range(2):
        task = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        jobs[f"worker{index}"] = dict(env, TF_CONFIG=json.dumps(task))
    procs = {
        name: subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "mirrored" if name == "mirrored" else "worker",
             str(tmp / f"{name}.json")],
            env=job_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name, job_env in jobs.items()
    }
    logs = {}
    try:
        for name, proc in procs.items():
            logs[name], _ = proc.communicate(timeout=900)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    results = {}
    for name, proc in procs.items():
        if proc.returncode != 0 or not (tmp / f"{name}.json").exists():
            results[name] = {"error": logs.get(name, "")[-4000:]}
        else:
            results[name] = json.loads((tmp / f"{name}.json").read_text())
    return results


def _ok(result):
    assert "error" not in result, result.get("error")
    return result


def _assert_agrees_with_single_device(history, single_a, single_b):
    """Per head and epoch, |L − L_A| ≤ 5·max|L_A − L_B| + 1e-4·|L_A| (see the module docstring)."""
    for key, values in history.items():
        if key == "loss":  # the sum of the heads: checked head by head
            continue
        a, b, got = np.array(single_a[key]), np.array(single_b[key]), np.array(values)
        spread = np.max(np.abs(a - b))
        assert spread <= 0.25 * np.mean(np.abs(a)) + 1e-6, (key, a, b)
        tolerance = 5.0 * spread + 1e-4 * np.max(np.abs(a)) + 1e-6
        assert np.max(np.abs(got - a)) <= tolerance, (key, got, a, b, tolerance)
        assert np.all(np.isfinite(got)), (key, got)


def test_mirrored_fit_agrees_with_single_device_training(runs):
    result = _ok(runs["mirrored"])
    assert result["replicas"] == 2
    assert set(result["mirrored"]) == set(result["single_a"])
    _assert_agrees_with_single_device(result["mirrored"], result["single_a"], result["single_b"])


def test_mirrored_training_is_reproducible_from_the_seed(runs):
    result = _ok(runs["mirrored"])
    assert result["mirrored_again"] == result["mirrored"]


def test_single_device_runs_differ_with_the_seed_and_deterministic_heads_do_not(runs):
    result = _ok(runs["mirrored"])
    a, b = result["single_a"], result["single_b"]
    for key in a:
        head = key[: -len("_loss")] if key.endswith("_loss") else None
        if head in ("direct",):
            assert a[key] == b[key], key  # σ = 0: no noise at all
        elif head is not None:
            assert a[key] != b[key], key  # the noise is seeded by the layer or loss


def test_seed_generator_state_advances_once_per_step_on_every_replica(runs):
    result = _ok(runs["mirrored"])
    steps = EPOCHS * (N // BATCH)
    states = result["generator_states"]
    assert sum(state["noisy"] for state in states) == 9  # 6 perturbed layers, LearnedNoiseScale, 2 losses
    for state in states:
        first, second = state["replicas"]
        assert first == second
        assert first[1] == (steps if state["noisy"] else 0)  # σ = 0 draws no seed


PROBES = ["argmax", "top_k", "ranks", "sort_permutation", "shortest_path", "matching", "direct",
          "noise_scale", "fenchel_young", "ranks_chunked"]


@pytest.mark.parametrize("name", PROBES)
def test_replicas_draw_different_noise_reproducibly(runs, name):
    first, second = _ok(runs["mirrored"])["probes"][name]
    assert first == second  # new objects, same seed: same noise on each replica
    replica_0, replica_1 = (np.array(v) for v in first)
    assert not np.array_equal(replica_0, replica_1)  # one input, two replicas, two noises


@pytest.mark.parametrize("name", PROBES)
def test_each_replica_is_the_op_with_the_replica_folded_seed(runs, name):
    result = _ok(runs["mirrored"])
    replicas, expected = result["probes"][name][0], result["folded_op"][name]
    assert len(replicas) == len(expected) == 2
    for replica, (got, want) in enumerate(zip(replicas, expected, strict=True)):
        np.testing.assert_array_equal(np.array(got), np.array(want), err_msg=f"replica {replica}")  # bit for bit


def test_multi_worker_fit_agrees_with_single_device_training(runs):
    single = _ok(runs["mirrored"])
    workers = [_ok(runs["worker0"]), _ok(runs["worker1"])]
    for worker in workers:
        assert worker["replicas"] == 2
        assert sorted(worker["multi_worker"]) == sorted(
            [f"{head}_loss" for head in WORKER_HEADS] + ["learned_noise_scale_sigma", "loss"]
        )
        _assert_agrees_with_single_device(worker["multi_worker"], single["single_a"], single["single_b"])
    # Logs are all-reduced: both workers report the same losses.
    assert workers[0]["multi_worker"] == workers[1]["multi_worker"]
    # Each worker is a replica with its own noise.
    assert not np.array_equal(np.array(workers[0]["probe"]), np.array(workers[1]["probe"]))


# ---------------------------------------------------------------------------
# The subprocesses: `python test_distribute.py (mirrored|worker) OUT.json`.
# TensorFlow is imported inside these functions: logical devices must be set first.


def _log(what):
    import resource  # noqa: PLC0415
    import time  # noqa: PLC0415

    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"{what}: {time.time():.0f} s, cpu {usage.ru_utime + usage.ru_stime:.1f} s", file=sys.stderr, flush=True)


def _generators(model, losses):
    """(owner, SeedGenerator) of every layer and loss that has one."""
    owners = [layer for layer in model._flatten_layers() if hasattr(layer, "seed_generator")]
    owners += [loss for loss in losses.values() if hasattr(loss, "seed_generator")]
    return [(owner, owner.seed_generator) for owner in owners]


def _build(strategy=None, heads=None):
    import keras  # noqa: PLC0415
    import layer_harness as harness  # noqa: PLC0415

    keras.utils.set_random_seed(0)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model, losses = harness.all_layers_model(seed=0, heads=heads or harness.ALL_HEADS)
        model.compile(keras.optimizers.SGD(0.1), losses, jit_compile=False)
    return model, losses


def _fit(model, losses, x, y, weights, offset):
    """Fits from `weights`, every seed generator restarted as in a new model (+ offset)."""
    if weights is not None:
        model.set_weights(weights)
    for owner, generator in _generators(model, losses):
        generator.state.assign(np.array([(owner.seed or 0) + offset, 0], dtype=generator.state.dtype))
    x = {name: value for name, value in x.items() if name in model.input}
    history = model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0, shuffle=False)
    return {k: [float(v) for v in values] for k, values in history.history.items()}


def _replica_outputs(strategy, fn):
    """fn() run once on each replica (in replica context, eagerly: no tracing): one result per replica."""
    return [np.asarray(v).tolist() for v in strategy.experimental_local_results(strategy.run(fn))]


def _folded_op(strategy, obj, inputs, target=None):
    """Per replica r, the public op of obj at its first call with the seed folded with r, outside the strategy.

    Outside a strategy `tp.seeds.next_seed` is the generator's seed itself; under one with
    more than one replica, `tp.seeds.per_replica` folds in the replica id.
    """
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    import tf_perturbed as tp  # noqa: PLC0415

    first = tp.seeds.next_seed(keras.random.SeedGenerator(obj.seed))  # the seed of an object's first call
    outputs = []
    for replica in range(strategy.num_replicas_in_sync):
        seed = tp.seeds.fold_in(first, replica)
        if isinstance(obj, tp.FenchelYoungLoss):
            y = tp.fenchel_young_loss(target, inputs, **obj.config.arguments(), maximize=obj.maximize, seed=seed)
        elif isinstance(obj, tp.LearnedNoiseScale):  # θ + σ(x)·γ, σ = softplus(x·W + b) + σ_min
            scores, features = inputs
            h = tf.matmul(features, obj.sigma_kernel) + obj.sigma_bias
            sigma = tf.nn.softplus(h) + obj.min_sigma
            y = scores + sigma * tp.noise.get_noise(obj.get_config()["noise"]).sample(tf.shape(scores), seed)
        elif isinstance(obj, tp.DirectLossGradient):  # y*(θ + σγ)
            arguments = dict(obj.config.arguments())
            sigma, noise = arguments.pop("sigma"), arguments.pop("noise")
            gamma = tp.noise.get_noise(noise).sample(tf.shape(inputs), seed)
            y = tp.direct_loss_gradient(**arguments)(inputs + sigma * gamma)
        else:
            y = tp.perturbed(**obj.config.arguments())(inputs, seed=seed)
        outputs.append(np.asarray(y).tolist())
    return outputs


def _probes(strategy):
    """Each layer and loss that draws noise, on one input in replica context, twice from new objects.

    Returns `(probes, folded_op)`: per name the replicas' outputs of both runs, and what
    the public op gives with each replica's folded seed.
    """
    import layer_harness as harness  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    import tf_perturbed as tp  # noqa: PLC0415

    rng = np.random.default_rng(1)  # small problems: eager loops of the structured solvers are slow
    theta = tf.constant(rng.normal(size=(2, harness.ALL_D)), tf.float32)
    grid = tf.constant(rng.uniform(0.5, 2.0, size=(2, 3, 3)), tf.float32)
    mat = tf.constant(rng.normal(size=(2, 3, 3)), tf.float32)
    target = tp.solvers.argmax(theta)
    makers = {
        "argmax": (lambda: tp.PerturbedArgmax(num_samples=4, seed=5), theta),
        "top_k": (lambda: tp.PerturbedTopK(k=2, num_samples=4, seed=5), theta),
        "ranks": (lambda: tp.PerturbedRanks(num_samples=4, seed=5), theta),
        "sort_permutation": (lambda: tp.PerturbedOptimizer("sort_permutation", num_samples=4, seed=5), theta),
        "shortest_path": (lambda: tp.PerturbedShortestPath(num_samples=4, seed=5), grid),
        "matching": (lambda: tp.PerturbedMatching(num_samples=4, seed=5), mat),
        "direct": (lambda: tp.DirectLossGradient("argmax", sigma=1.0, seed=5), theta),
        "noise_scale": (lambda: tp.LearnedNoiseScale(seed=5), [theta, theta]),
        "ranks_chunked": (lambda: tp.PerturbedRanks(num_samples=4, chunk_size=3, seed=5), theta),
    }
    probes, folded_op = {}, {}
    for name, (make, inputs) in makers.items():
        runs = []
        for _ in range(2):
            with strategy.scope():
                layer = make()
            runs.append(_replica_outputs(strategy, lambda: layer(inputs, training=True)))  # noqa: B023
        probes[name] = runs
        folded_op[name] = _folded_op(strategy, layer, inputs)
    runs = []
    for _ in range(2):
        with strategy.scope():
            loss = tp.FenchelYoungLoss("argmax", num_samples=4, reduction=None, seed=5)
        runs.append(_replica_outputs(strategy, lambda: loss(target, theta)))  # noqa: B023
    probes["fenchel_young"] = runs
    folded_op["fenchel_young"] = _folded_op(strategy, loss, theta, target)
    return probes, folded_op


def _run_mirrored():
    import tensorflow as tf  # noqa: PLC0415

    cpu = tf.config.list_physical_devices("CPU")[0]  # before TensorFlow initialises its devices
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import layer_harness as harness  # noqa: PLC0415

    x, y = harness.all_layers_data(N)
    result = {}
    single, single_losses = _build()
    weights = single.get_weights()
    _log("single model built")
    result["single_a"] = _fit(single, single_losses, x, y, weights, 0)
    _log("single A")
    result["single_b"] = _fit(single, single_losses, x, y, weights, 1000)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored, mirrored_losses = _build(strategy)
    result["replicas"] = strategy.num_replicas_in_sync
    _log("mirrored built")
    result["mirrored"] = _fit(mirrored, mirrored_losses, x, y, weights, 0)
    _log("mirrored fit")
    result["mirrored_again"] = _fit(mirrored, mirrored_losses, x, y, weights, 0)
    states = []
    for owner, generator in _generators(mirrored, mirrored_losses):
        variable = generator.state.value
        values = [np.asarray(v).tolist() for v in getattr(variable, "values", [variable])]
        states.append({"noisy": getattr(owner, "sigma", 1.0) > 0, "replicas": values})
    result["generator_states"] = states
    result["probes"], result["folded_op"] = _probes(strategy)
    _log("probes")
    return result


def _run_worker():
    """A MultiWorkerMirroredStrategy worker; TF_CONFIG names the cluster and this task."""
    import layer_harness as harness  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    # Keras 3.15.1's model.fit fails under MultiWorkerMirroredStrategy (keras-team/keras#20585):
    # the package's public workaround, as tutorials/multi_worker.py and the README use it.
    import tf_perturbed as tp  # noqa: PLC0415

    tp.distribute.patch_keras_fit()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y = harness.all_layers_data(N)
    # The heads without structured solvers (those are slow to trace; MirroredStrategy covers
    # them): folding the replica id into the seed does not depend on the solver. Same seeds,
    # hence the single-device model's initial weights.
    model, losses = _build(strategy, WORKER_HEADS)
    y = {name: y[name] for name in losses}
    result = {"replicas": strategy.num_replicas_in_sync, "multi_worker": _fit(model, losses, x, y, None, 0)}
    theta = tf.constant(np.random.default_rng(1).normal(size=(4, harness.ALL_D)), tf.float32)
    with strategy.scope():
        probe = tp.PerturbedArgmax(num_samples=4, seed=5)
    result["probe"] = _replica_outputs(strategy, lambda: probe(theta, training=True))
    return result


if __name__ == "__main__":
    sys.path.insert(0, TESTS_DIR)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _result = _run_mirrored() if sys.argv[1] == "mirrored" else _run_worker()
    with open(sys.argv[2], "w") as _f:
        json.dump(_result, _f)
