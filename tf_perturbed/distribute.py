"""Training under `tf.distribute`: what the package adds to Keras's own support.

The layers and losses need nothing under a strategy: each replica folds its replica
id into the layer's seed (`tf_perturbed.seeds.per_replica`), so replicas draw
independent noise, and the seed generators' states are saved with the weights, so
`keras.callbacks.BackupAndRestore` resumes a run with the noise where it stopped.

What this module adds:

- `patch_keras_fit()`: Keras 3's `model.fit` fails under
  `tf.distribute.MultiWorkerMirroredStrategy` for every model (keras-team/keras#20585;
  tested here with Keras 3.15.1, where it is needed). Calling it once, before
  `model.fit`, replaces two private functions of Keras's TensorFlow trainer with
  versions that work under the collective strategy (and keep Keras's code under every
  other strategy); `unpatch_keras_fit()` restores them. Remove the call when a Keras
  release fixes the issue.
- `worker_backup_dir(path)`: a `BackupAndRestore` directory per worker
  (`path/worker-<index>` from `TF_CONFIG`), so that workers never write one file at once.

The recipe, on each worker (`TF_CONFIG` names the cluster and the worker), as in
`tutorials/multi_worker.py`::

    tp.distribute.patch_keras_fit()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = build_model()          # with tf_perturbed layers, seeded
        model.compile(optimizer, tp.FenchelYoungLoss("ranks", seed=1))
    backup = keras.callbacks.BackupAndRestore(tp.distribute.worker_backup_dir("backup"))
    model.fit(dataset, epochs=epochs, callbacks=[backup])
"""

import json
import os

from tf_perturbed._src.keras_compat import TESTED_KERAS, is_patched, patch_keras_fit, unpatch_keras_fit


def worker_backup_dir(path: str) -> str:
    """`path/worker-<i>` for the worker `TF_CONFIG` names (task type and index), or `path` without one.

    Every worker of a multi-worker run holds the same weights after each step, and
    `keras.callbacks.BackupAndRestore` writes them from every worker: one folder per
    worker keeps the writes apart (on shared storage too).
    """
    config = os.environ.get("TF_CONFIG")
    if not config:
        return path
    try:
        task = json.loads(config)["task"]
        name = f"{task['type']}-{int(task['index'])}"
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"TF_CONFIG={config!r} does not name this task as {{'task': {{'type', 'index'}}}}") from error
    return os.path.join(path, name)


__all__ = ["TESTED_KERAS", "is_patched", "patch_keras_fit", "unpatch_keras_fit", "worker_backup_dir"]
