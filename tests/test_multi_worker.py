"""Multi-worker training as users run it: `python -m tutorials.multi_worker` on real processes on loopback.

The example is the documented recipe (`tf_perturbed.distribute`): each worker, with
its `TF_CONFIG`, calls `tp.distribute.patch_keras_fit()` and trains a model with a
`PerturbedRanks` layer and a `FenchelYoungLoss` with `model.fit` under
`MultiWorkerMirroredStrategy`, backed up by `BackupAndRestore`.

What is checked:
- 2 and 3 workers train to completion, and equal, bit for bit, `MirroredStrategy` on
  2 and 3 logical CPUs of one process: the same replicas (replica r folds r into the
  seeds) on the same global batches, so the same noise, gradients and weights;
- every worker ends with the same weights and seed states;
- the custom training loop (`--loop custom`: `strategy.run` in a `tf.function`, without
  the patch) on 2 workers gives `model.fit`'s weights on 2 replicas, bit for bit;
- against one device (no strategy) the run differs only by the noise realisation,
  and reaches the same accuracy within the spread of seeds on one device;
- faults: worker 1 is killed (SIGKILL, by its process id) after the backup of epoch
  2; worker 0 stops with an error (its collectives abort); both are restarted, as a
  cluster manager does, resume from their backups and finish: no epoch lost or
  repeated, and the final weights, seed states and the resumed epochs' losses equal
  the uninterrupted run's, bit for bit.

Runtime on 2 shared cores: about 2 min of wall time, most of it importing TensorFlow
in the processes and the collective strategy's start-up.
"""

import json
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tutorials import multi_worker

ROOT = pathlib.Path(__file__).resolve().parents[1]  # the workers run `-m tutorials.multi_worker` from here

EPOCHS = 5
ARGS = ["--quick", "--epochs", str(EPOCHS), "--verbose", "0"]
TIMEOUT = 600


def _wait(procs, what, timeout=TIMEOUT):
    try:
        codes = [proc.wait(timeout=timeout) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert codes == [0] * len(procs), f"{what}: exit codes {codes}"


def _start(strategy, out, extra=()):
    """One process of the example on one machine (`--strategy mirrored|none`)."""
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / f"{strategy}.log", "w")  # noqa: SIM115  (closed with the process)
    cmd = [sys.executable, "-m", "tutorials.multi_worker", *ARGS, "--strategy", strategy,
           "--output-dir", str(out), *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def _read(out, name):
    return json.loads((out / f"{name}.json").read_text())


def _logs(out):
    return "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(out.glob("*.log")))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run but the fault test's, in three waves of up to four processes (on 2 cores,
    more at once mostly spin TensorFlow's thread pools): 2 workers, Mirrored 2 and one
    device; 3 workers and Mirrored 3; 2 workers with the custom loop."""
    tmp = tmp_path_factory.mktemp("multi_worker")
    waves = [
        lambda: {
            "workers2": multi_worker.launch(2, [*ARGS, "--output-dir", str(tmp / "workers2")], tmp / "workers2"),
            "mirrored2": [_start("mirrored", tmp / "mirrored2", ["--replicas", "2"])],
            "single": [_start("none", tmp / "single")],
        },
        lambda: {
            "workers3": multi_worker.launch(3, [*ARGS, "--output-dir", str(tmp / "workers3")], tmp / "workers3"),
            "mirrored3": [_start("mirrored", tmp / "mirrored3", ["--replicas", "3"])],
        },
        lambda: {
            "custom2": multi_worker.launch(2, [*ARGS, "--loop", "custom", "--output-dir", str(tmp / "custom2")],
                                           tmp / "custom2"),
        },
    ]
    for wave in waves:
        for name, procs in wave().items():
            try:
                _wait(procs, name)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{_logs(tmp / name)}") from None
    return tmp


def _assert_same_run(got, want, what):
    assert got["history"] == want["history"], what
    for a, b in zip(got["weights"], want["weights"], strict=True):
        np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=what)
    assert got["seed_states"] == want["seed_states"], what


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_train_to_completion_and_equal_mirrored_on_as_many_replicas(runs, workers):
    results = [_read(runs / f"workers{workers}", f"worker-{i}") for i in range(workers)]
    mirrored = _read(runs / f"mirrored{workers}", f"mirrored-{workers}")
    assert mirrored["replicas"] == workers and all(r["replicas"] == workers for r in results)
    for index, result in enumerate(results):
        assert len(result["history"]["loss"]) == EPOCHS
        _assert_same_run(result, mirrored, f"worker {index} of {workers} against Mirrored")
    steps = EPOCHS * -(-multi_worker.QUICK["examples"] // multi_worker.BATCH)  # one draw per global step
    assert all(state[1] == steps for state in mirrored["seed_states"])
    losses = mirrored["history"]["scores_loss"]
    assert losses[-1] < 0.5 * losses[0], losses


def test_the_custom_loop_on_two_workers_is_model_fit_on_two_replicas(runs):
    # strategy.run in a tf.function, no Keras trainer (and no patch): the same maths as
    # model.fit (per-example losses averaged over the global batch), the same weights.
    mirrored = _read(runs / "mirrored2", "mirrored-2")
    for index in range(2):
        custom = _read(runs / "custom2", f"worker-{index}")
        assert custom["loop"] == "custom" and custom["replicas"] == 2
        for a, b in zip(custom["weights"], mirrored["weights"], strict=True):
            np.testing.assert_array_equal(np.array(a), np.array(b), err_msg=f"worker {index}")
        assert custom["seed_states"] == mirrored["seed_states"]
        # the logged mean loss: float64 in the loop, float32 in Keras's metric
        np.testing.assert_allclose(custom["history"]["loss"], mirrored["history"]["loss"], rtol=1e-6)


def test_one_device_differs_only_by_the_noise(runs):
    # Same data, weights and seeds; one replica draws other noise than two, so the runs
    # differ, but only by that: the losses fall alike and the accuracies are close.
    single = _read(runs / "single", "none-2")
    two = _read(runs / "mirrored2", "mirrored-2")
    assert single["replicas"] == 1
    assert single["history"]["scores_loss"] != two["history"]["scores_loss"]  # other noise
    for key in ("scores_loss", "ranks_loss"):
        a, b = np.array(single["history"][key]), np.array(two["history"][key])
        assert a[-1] < 0.5 * a[0] and b[-1] < 0.5 * b[0], (key, a, b)
        np.testing.assert_allclose(a[-1], b[-1], rtol=0.25, err_msg=key)
    assert abs(single["rank_accuracy"] - two["rank_accuracy"]) < 0.05


def _backed_up_epoch(out, worker):
    path = out / "backup" / f"worker-{worker}" / "training_metadata.json"
    try:
        return json.loads(path.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return -1


def test_a_killed_worker_restarted_with_the_others_resumes_where_the_backup_left_off(runs, tmp_path):
    out = tmp_path / "fault"
    argv = [*ARGS, "--output-dir", str(out)]
    procs = multi_worker.launch(2, [*argv, "--pause", "1.5"], out)  # the pause leaves time to kill mid-run
    try:
        start = time.time()
        while _backed_up_epoch(out, 1) < 2:
            assert time.time() - start < TIMEOUT and procs[1].poll() is None, _logs(out)
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGKILL)
        assert procs[1].wait(timeout=60) == -signal.SIGKILL
        # The surviving worker's collectives abort (its peer stopped sending heartbeats).
        assert procs[0].wait(timeout=180) != 0, _logs(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert "unhealthy" in (out / "worker-0.log").read_text() or "Unavailable" in (out / "worker-0.log").read_text()
    restored = [_backed_up_epoch(out, worker) for worker in (0, 1)]
    assert restored[0] == restored[1] and 2 <= restored[0] < EPOCHS, restored
    for log in out.glob("worker-*.json"):
        log.unlink()

    _wait(multi_worker.launch(2, argv, out), "restarted workers")  # new ports, the same backups
    reference = _read(runs / "workers2", "worker-0")
    for worker in (0, 1):
        resumed = _read(out, f"worker-{worker}")
        assert len(resumed["history"]["loss"]) == EPOCHS - restored[0]  # none lost, none repeated
        for key, values in resumed["history"].items():
            assert values == reference["history"][key][restored[0]:], key
        for a, b in zip(resumed["weights"], reference["weights"], strict=True):
            np.testing.assert_array_equal(np.array(a), np.array(b))
        assert resumed["seed_states"] == reference["seed_states"]


def test_patch_is_idempotent_reversible_and_leaves_other_strategies_to_keras(monkeypatch):
    import keras  # noqa: PLC0415
    from keras.src.backend.tensorflow import trainer  # noqa: PLC0415  (to see what the patch replaces)

    import tf_perturbed as tp  # noqa: PLC0415

    originals = (trainer.reduce_per_replica, trainer.TensorFlowTrainer._maybe_symbolic_build)
    was_patched = tp.distribute.is_patched()
    if was_patched:  # another test of this process applied it
        tp.distribute.unpatch_keras_fit()
        originals = (trainer.reduce_per_replica, trainer.TensorFlowTrainer._maybe_symbolic_build)
    try:
        assert tp.distribute.patch_keras_fit() is True and tp.distribute.is_patched()
        assert tp.distribute.patch_keras_fit() is False  # once only
        assert (trainer.reduce_per_replica, trainer.TensorFlowTrainer._maybe_symbolic_build) != originals
        # Under no strategy and one replica, Keras's own code runs: a fit works as before.
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        model = keras.Model(inputs, tp.PerturbedArgmax(num_samples=2, seed=0)(keras.layers.Dense(4)(inputs)))
        model.compile("sgd", "mse")
        x = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
        assert np.isfinite(model.fit(x, x, epochs=1, verbose=0).history["loss"][0])
        assert "3.15.1" in tp.distribute.TESTED_KERAS
        tp.distribute.unpatch_keras_fit()
        monkeypatch.setattr(keras, "version", lambda: "3.99.0")  # a release it was not tested with
        with pytest.warns(UserWarning, match=r"not 3\.99\.0.*keras-team/keras#20585"):
            assert tp.distribute.patch_keras_fit() is True
    finally:
        assert tp.distribute.unpatch_keras_fit() is True
        assert tp.distribute.unpatch_keras_fit() is False
        assert (trainer.reduce_per_replica, trainer.TensorFlowTrainer._maybe_symbolic_build) == originals
        if was_patched:
            tp.distribute.patch_keras_fit()


def test_worker_backup_dir_names_the_task_or_rejects_a_bad_tf_config(monkeypatch):
    import tf_perturbed as tp  # noqa: PLC0415

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert tp.distribute.worker_backup_dir("backup") == "backup"
    config = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert tp.distribute.worker_backup_dir("backup") == str(pathlib.Path("backup") / "worker-1")
    for bad in ('{"cluster": {}}', "not json", '{"task": {"type": "worker", "index": "x"}}'):
        monkeypatch.setenv("TF_CONFIG", bad)
        with pytest.raises(ValueError, match="TF_CONFIG="):
            tp.distribute.worker_backup_dir("backup")
