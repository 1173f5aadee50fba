"""The few TensorFlow internals the package needs, in one place.

TensorFlow has no public API for these three facts; each function falls back to a
safe answer if the private module moves in a later release.
"""

import tensorflow as tf


def in_xla_context() -> bool:
    """Whether ops built now will be compiled by XLA (inside `jit_compile=True`)."""
    try:
        from tensorflow.python.ops import control_flow_util  # noqa: PLC0415
    except ImportError:  # pragma: no cover - a TF release without the module
        return False
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def in_save_context() -> bool:
    """Whether a SavedModel is being exported (`tf.saved_model.save`, `model.export`)."""
    try:
        from tensorflow.python.saved_model import save_context  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return False
    return save_context.in_save_context()


def xla_sort(keys: tf.Tensor) -> tf.Tensor:
    """XLA's single-operand `Sort` along the last axis, ascending (only inside XLA)."""
    from tensorflow.compiler.tf2xla.python import xla as tf2xla  # noqa: PLC0415

    return tf2xla.sort(keys)
