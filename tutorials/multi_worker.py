"""Multi-worker training with `model.fit`: a perturbed layer and a Fenchel-Young loss on several processes.

The recipe a user copies (see `tf_perturbed.distribute`): on every worker, with
`TF_CONFIG` naming the cluster and the worker,

    tp.distribute.patch_keras_fit()                      # Keras 3.15.1: keras-team/keras#20585
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model(); model.compile(...)
    backup = keras.callbacks.BackupAndRestore(tp.distribute.worker_backup_dir(...))
    model.fit(dataset, epochs=..., callbacks=[backup])

The task is label ranking (Berthet et al. 2020, §5.2, small): features x ~ N(0, I),
true ranks y = ranks(x·w₀) of `LABELS` labels; a linear model's scores are trained
by `tf_perturbed.FenchelYoungLoss("ranks")`, and a `PerturbedRanks` head on the same
scores by the squared error to y (so both a loss and a layer draw noise on every
replica). Each replica folds its id into the seeds: replicas draw independent noise.

Run it on one machine:

    python -m tutorials.multi_worker --launch 2        # two local workers on loopback

or on a cluster: set `TF_CONFIG` on each machine and run `python -m tutorials.multi_worker`
there, from the repository root. `--strategy mirrored --replicas N` trains the same model
with `MirroredStrategy` on N logical CPUs of one process (the same replicas, so the same
noise: the result equals the N-worker run), `--strategy none` on one device.
`--loop custom` trains with a custom loop instead (`strategy.run` inside a
`tf.function`, per-example losses averaged over the global batch), which needs no
patch of Keras and gives `model.fit`'s weights, bit for bit (no backups in that loop).
Each worker writes `<output-dir>/<task>.json` (history, final weights, seed states);
the chief (worker 0) also writes `metrics.json`. A worker killed and restarted (all
of them restarted, as a cluster manager does) resumes from its `BackupAndRestore`
backup of the last finished epoch, with the weights, the optimizer and the noise
streams where they were.
"""

import argparse
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np

NAME = "multi_worker"
FEATURES, LABELS = 8, 10
BATCH = 48  # the global batch: 2, 3, 4, 6, … replicas get equal parts
QUICK = dict(examples=6 * BATCH, epochs=4)
FULL = dict(examples=48 * BATCH, epochs=10)


def _free_ports(n: int) -> list:
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def launch(workers: int, argv: list, output_dir: pathlib.Path) -> list:
    """Starts `workers` processes of this script on loopback, each with its TF_CONFIG; returns them."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(workers)]}
    output_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for index in range(workers):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        log = open(output_dir / f"worker-{index}.log", "w")  # noqa: SIM115  (closed with the process)
        # The workers inherit the working directory, where `tutorials` is importable.
        cmd = [sys.executable, "-m", "tutorials.multi_worker", *argv]
        procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
    return procs


def data(examples: int, seed: int = 0):
    """Features [n, FEATURES] and the true ranks [n, LABELS] of their scores x·w₀."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(examples, FEATURES)).astype("float32")
    w0 = rng.choice([-1.0, 1.0], size=(FEATURES, LABELS)).astype("float32")
    ranks = np.argsort(np.argsort(x @ w0, axis=-1), axis=-1).astype("float32")  # 0 … LABELS − 1
    return x, ranks


LOSS_WEIGHTS = {"scores": 1.0, "ranks": 0.01}


def build_model(keras, tp):
    """Scores θ = Dense(x); outputs θ (for the Fenchel-Young loss) and PerturbedRanks(θ) (squared error)."""
    inputs = keras.Input((FEATURES,), name="x")
    scores = keras.layers.Dense(LABELS, kernel_initializer=keras.initializers.GlorotUniform(seed=0), name="scores")(
        inputs
    )
    ranks = tp.PerturbedRanks(num_samples=8, sigma=0.5, seed=2, name="ranks")(scores)
    return keras.Model(inputs, {"scores": scores, "ranks": ranks})


def fenchel_young(tp, reduction="sum_over_batch_size"):
    return tp.FenchelYoungLoss("ranks", num_samples=8, sigma=0.5, seed=1, reduction=reduction)


def fit(model, dataset, strategy, args, keras, tp) -> tuple:
    """`model.fit`, backed up by `BackupAndRestore` under the multi-worker strategy; (history, the FY loss)."""
    with strategy.scope():
        loss = fenchel_young(tp)
        model.compile(keras.optimizers.Adam(0.05), {"scores": loss, "ranks": "mse"}, loss_weights=LOSS_WEIGHTS)
    callbacks = []
    if args.strategy == "multi_worker":
        callbacks.append(keras.callbacks.BackupAndRestore(tp.distribute.worker_backup_dir(str(args.backup_dir))))
    if args.pause:  # after the backup of the epoch: to watch a run, or to interrupt it
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: time.sleep(args.pause)))
    return model.fit(dataset, epochs=args.epochs, callbacks=callbacks, verbose=args.verbose).history, loss


def custom_loop(model, dataset, strategy, args, keras, tf, tp) -> tuple:
    """The same training as `fit`, written with `strategy.run` in a `tf.function` (no Keras trainer).

    Per-example losses (`reduction=None`) averaged over the global batch by
    `tf.nn.compute_average_loss`; the optimizer sums the replicas' gradients. The
    layers and the loss fold the replica id into their seeds as under `model.fit`.
    """
    with strategy.scope():
        optimizer = keras.optimizers.Adam(0.05)
        optimizer.build(model.trainable_variables)  # its variables before the tf.function traces
        loss = fenchel_young(tp, reduction=None)
    distributed = strategy.experimental_distribute_dataset(dataset)
    steps = int(dataset.cardinality())

    def step(x, y):
        with tf.GradientTape() as tape:
            outputs = model(x, training=True)
            per_example = LOSS_WEIGHTS["scores"] * loss(y["scores"], outputs["scores"])
            per_example += LOSS_WEIGHTS["ranks"] * tf.reduce_mean(tf.square(y["ranks"] - outputs["ranks"]), -1)
            value = tf.nn.compute_average_loss(per_example, global_batch_size=args.batch_size)
        gradients = tape.gradient(value, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return value

    @tf.function
    def train_step(batch):
        return strategy.reduce("SUM", strategy.run(step, args=batch), axis=None)

    history = {"loss": []}
    for epoch in range(args.epochs):
        if args.verbose:
            print(f"Epoch {epoch + 1}/{args.epochs}")
        progress = keras.utils.Progbar(steps, verbose=args.verbose)
        total = 0.0
        for index, batch in enumerate(distributed):
            total += float(train_step(batch))
            progress.update(index + 1, [("loss", total / (index + 1))])
        history["loss"].append(total / steps)
    return history, loss


def train(args) -> dict:
    import keras  # noqa: PLC0415  (after the logical devices are set)
    import tensorflow as tf  # noqa: PLC0415

    import tf_perturbed as tp  # noqa: PLC0415

    if args.strategy == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * args.replicas)
        strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(args.replicas)])
    elif args.strategy == "multi_worker":
        if args.loop == "fit":
            tp.distribute.patch_keras_fit()  # Keras 3.15.1: keras-team/keras#20585
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    keras.utils.set_random_seed(0)
    x, y = data(args.examples)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, {"scores": y, "ranks": y})).batch(args.batch_size)
    dataset = dataset.with_options(options)
    with strategy.scope():
        model = build_model(keras, tp)
    if args.loop == "fit":
        history, loss = fit(model, dataset, strategy, args, keras, tp)
    else:
        history, loss = custom_loop(model, dataset, strategy, args, keras, tf, tp)
    scores = model(x, training=False)["scores"].numpy()
    rank_accuracy = float(np.mean(np.argsort(np.argsort(scores, -1), -1) == y))
    states = [v.numpy().tolist() for v in model.variables if "seed_generator" in v.path]
    states.append(loss.seed_generator.state.numpy().tolist())
    return {
        "strategy": args.strategy,
        "loop": args.loop,
        "replicas": strategy.num_replicas_in_sync,
        "history": {key: [float(v) for v in values] for key, values in history.items()},
        "weights": [w.tolist() for w in model.get_weights()],
        "seed_states": states,
        "rank_accuracy": rank_accuracy,
        "keras": keras.version(),
        "tensorflow": tf.__version__,
    }


def task_name(strategy: str, replicas: int) -> str:
    if strategy == "multi_worker":
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {"type": "worker", "index": 0})
        return f"{task['type']}-{task['index']}"
    return f"{strategy}-{replicas}"


def parse(argv=None):
    parser = argparse.ArgumentParser(prog=f"python -m tutorials.{NAME}", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"the quick preset {QUICK} (else {FULL})")
    parser.add_argument("--launch", type=int, default=0, help="start this many local workers on loopback")
    parser.add_argument("--strategy", choices=["multi_worker", "mirrored", "none"], default=None,
                        help="multi_worker when TF_CONFIG is set, else none")
    parser.add_argument("--replicas", type=int, default=2, help="logical CPUs of --strategy mirrored")
    parser.add_argument("--loop", choices=["fit", "custom"], default="fit",
                        help="model.fit (with BackupAndRestore), or a custom loop with strategy.run")
    parser.add_argument("--examples", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=BATCH,
                        help="the global batch, split over the replicas (a multiple of their number)")
    parser.add_argument("--output-dir", type=pathlib.Path, default=pathlib.Path("outputs") / NAME)
    parser.add_argument("--backup-dir", type=pathlib.Path, default=None, help="default: <output-dir>/backup")
    parser.add_argument("--pause", type=float, default=0.0, help="seconds to wait after each epoch")
    parser.add_argument("--verbose", type=int, default=2, help="Keras progress: 0, 1 (bar) or 2 (a line per epoch)")
    args = parser.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.strategy is None:
        args.strategy = "multi_worker" if os.environ.get("TF_CONFIG") else "none"
    if args.backup_dir is None:
        args.backup_dir = args.output_dir / "backup"
    for name in ("replicas", "examples", "epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)} must be ≥ 1")
    if args.strategy == "mirrored" and args.batch_size % args.replicas:
        # Keras builds the model from the mean of the replicas' first batches, which
        # must then have one shape (Keras 3.15.1).
        parser.error(f"--batch-size={args.batch_size} must be a multiple of --replicas={args.replicas}")
    return args


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    if args.launch:
        rest = [a for i, a in enumerate(argv) if a != "--launch" and (i == 0 or argv[i - 1] != "--launch")]
        rest = [a for a in rest if not a.startswith("--launch=")]
        procs = launch(args.launch, rest, args.output_dir)
        codes = [proc.wait() for proc in procs]
        if any(codes):
            raise SystemExit(f"[{NAME}] workers exited with {codes}; logs in {args.output_dir}/worker-*.log")
        result = json.loads((args.output_dir / "metrics.json").read_text())
        print(f"[{NAME}] {args.launch} workers: rank accuracy {result['rank_accuracy']:.3f}")
        return result
    start = time.time()
    result = train(args)
    result["seconds"] = round(time.time() - start, 1)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    name = task_name(args.strategy, args.replicas)
    (args.output_dir / f"{name}.json").write_text(json.dumps(result))
    if name in ("worker-0", "chief-0") or args.strategy != "multi_worker":
        (args.output_dir / "metrics.json").write_text(json.dumps(result))
    print(f"[{NAME}] {name}: rank accuracy {result['rank_accuracy']:.3f}, {result['seconds']} s")
    return result


if __name__ == "__main__":
    main()
