"""A sample axis for estimators that draw one noise per copy of an example."""

import keras
import tensorflow as tf

from tf_perturbed._src.base import validate


def repeat_samples(inputs, num_samples: int) -> tf.Tensor:
    """Repeats every example `num_samples` times along a new axis 1.

    Formula:
      out[b, m, ...] = inputs[b, ...]   for m = 0, …, M − 1

    A layer that draws noise element-wise, such as `DirectLossGradient(sigma > 0)`
    or `LearnedNoiseScale`, draws an independent noise for each copy, so a loss
    averaged over the copies is an M-sample estimate; the solver sees the copies
    as more batch entries.

    Args:
      inputs: a tensor `[B, *event]`.
      num_samples: M ≥ 1.

    Returns:
      A tensor `[B, M, *event]` of the dtype of `inputs`.

    Raises:
      TypeError, ValueError: for a `num_samples` that is not an integer ≥ 1.

    Example:
      >>> tuple(tp.repeat_samples(tf.constant([[1.0, 2.0], [3.0, 4.0]]), 3).shape)
      (2, 3, 2)
    """
    num_samples = validate.integer(num_samples, "num_samples")
    inputs = tf.convert_to_tensor(inputs)
    return tf.repeat(inputs[:, None], num_samples, axis=1)  # [B, M, *event]


@keras.saving.register_keras_serializable(package="tf_perturbed")
class RepeatSamples(keras.layers.Layer):
    """`[B, *event]` → `[B, M, *event]`: M copies of each example, one per noise draw.

    Formula:
      out[b, m, ...] = inputs[b, ...]   for m = 0, …, M − 1

    Put it before a layer that draws noise element-wise (`DirectLossGradient`
    with `sigma > 0`, `LearnedNoiseScale`) to train on M noise draws per example;
    the loss then sees `[B, M, *event]` outputs and averages over the copies.
    Same at training and inference.

    Args:
      num_samples: M ≥ 1.
      **kwargs: `keras.layers.Layer` arguments (`name`, `dtype`, …).

    Raises:
      TypeError, ValueError: for a `num_samples` that is not an integer ≥ 1.

    Example:
      >>> tuple(tp.RepeatSamples(2)(np.zeros((4, 3, 3), "float32")).shape)
      (4, 2, 3, 3)
    """

    def __init__(self, num_samples: int, **kwargs):
        super().__init__(**kwargs)
        self.num_samples = validate.integer(num_samples, "num_samples")

    def call(self, inputs):
        return tf.repeat(inputs[:, None], self.num_samples, axis=1)  # [B, M, *event]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_samples, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "num_samples": self.num_samples}
