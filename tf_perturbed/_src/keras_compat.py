"""A workaround for `model.fit` under `MultiWorkerMirroredStrategy` in Keras 3 (keras-team/keras#20585).

Keras 3's TensorFlow trainer (checked with 3.15.1) fails under the collective
multi-worker strategy for any model, a plain `Dense` one too, in two places:

1. Before the first step it builds the model's metrics and losses from the first
   distributed batch, which it first reduces across replicas with
   `strategy.reduce("MEAN", batch, axis=None)`; under the collective strategy this
   raises (`Attempt to convert a value (PerReplica:{…}) … to a Tensor`).
2. After each step it reduces the logs (scalar metric results) with
   `strategy.reduce("MEAN", value, axis=0)`, which has no axis 0 to reduce.

The workaround, only under `MultiWorkerMirroredStrategy` (other strategies keep
Keras's code): build from this worker's first replica's batch (the build needs the
shapes and dtypes, not the values), and reduce the logs across replicas with
`axis=None` (the mean of the replicas' values). It replaces two private functions of
`keras.src.backend.tensorflow.trainer`; `patch_keras_fit` does nothing when called
again, and `unpatch_keras_fit` restores Keras's own functions.
"""

import threading
import warnings

import keras
import tensorflow as tf

_LOCK = threading.Lock()
_ORIGINALS: dict = {}
TESTED_KERAS = ("3.15.1",)  # the Keras versions the workaround was tested with
_BUILD = "_maybe_symbolic_build"  # the trainer's method replaced (a private Keras name)


def _trainer_module():
    from keras.src.backend.tensorflow import trainer  # noqa: PLC0415

    return trainer


def _is_multi_worker(strategy) -> bool:
    """A collective strategy with replicas on other workers than this one."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        len(strategy.extended.worker_devices) < strategy.num_replicas_in_sync
    )


def _local_batch(strategy, batch):
    """The first local replica's part of a distributed batch (itself when not distributed)."""

    def first(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(first, batch)


def _maybe_symbolic_build(self, iterator=None, data_batch=None):
    strategy = self._distribute_strategy
    if strategy is None or not _is_multi_worker(strategy):
        return _ORIGINALS[_BUILD](self, iterator=iterator, data_batch=data_batch)
    if iterator is not None:
        for _, _, epoch_iterator in iterator:
            data_batch = _local_batch(strategy, next(epoch_iterator))
            break
    with strategy.scope():
        self._symbolic_build(data_batch=data_batch)


def _reduce_per_replica(values, strategy, reduction):
    if _is_multi_worker(strategy) and reduction in ("auto", "mean"):
        return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)
    return _ORIGINALS["reduce_per_replica"](values, strategy, reduction)


def patch_keras_fit() -> bool:
    """Makes `model.fit` work under `MultiWorkerMirroredStrategy` (Keras 3.15.1, keras-team/keras#20585).

    Replaces two private functions of Keras's TensorFlow trainer: the model is built
    from this worker's first replica's batch instead of a cross-replica mean of the
    first batch, and the logs are averaged across replicas with `axis=None`. Under
    any other strategy (or none) Keras's own code runs. Call it once per process,
    before `model.fit`; later calls do nothing.

    Returns:
      True if this call applied the workaround, False if it was already applied.

    Warns (UserWarning) on a Keras version it was not tested with (`TESTED_KERAS`):
    check whether that release fixes the issue, and drop the call if it does.
    """
    with _LOCK:
        if _ORIGINALS:
            return False
        if keras.version() not in TESTED_KERAS:
            warnings.warn(
                f"tf_perturbed.distribute.patch_keras_fit was tested with Keras {', '.join(TESTED_KERAS)}, "
                f"not {keras.version()}: check whether keras-team/keras#20585 is fixed there (then drop the "
                "call); the workaround replaces private functions that may have changed.",
                stacklevel=2,
            )
        trainer = _trainer_module()
        _ORIGINALS["reduce_per_replica"] = trainer.reduce_per_replica
        _ORIGINALS[_BUILD] = getattr(trainer.TensorFlowTrainer, _BUILD)
        trainer.reduce_per_replica = _reduce_per_replica
        setattr(trainer.TensorFlowTrainer, _BUILD, _maybe_symbolic_build)
        return True


def unpatch_keras_fit() -> bool:
    """Restores Keras's own functions; returns whether the workaround was applied."""
    with _LOCK:
        if not _ORIGINALS:
            return False
        trainer = _trainer_module()
        trainer.reduce_per_replica = _ORIGINALS.pop("reduce_per_replica")
        setattr(trainer.TensorFlowTrainer, _BUILD, _ORIGINALS.pop(_BUILD))
        return True


def is_patched() -> bool:
    """Whether `patch_keras_fit` is in effect."""
    return bool(_ORIGINALS)
