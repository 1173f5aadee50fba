"""Large batches solved as two concurrent halves."""

from typing import Callable

import tensorflow as tf


def in_two_halves(solve: Callable[..., tf.Tensor], min_batch: int) -> Callable[..., tf.Tensor]:
    """`solve(batch, *static)`, on two halves of the batch when it has ≥ `min_batch` items.

    `solve` is a compiled loop over a batch `[B, ...]` that returns `[B, ...]`, and
    `static` its hashable Python arguments. One compiled call runs on one core; two
    independent calls on the halves, inside a `tf.function` without `jit_compile`, are
    run by the TensorFlow executor at the same time on two cores. Inside an outer
    `jit_compile=True` function the halves run one after the other, at about the cost
    of one call. Batches of unknown or smaller size are solved in one call. Every item
    gets the same result either way.
    """

    @tf.function(autograph=False)
    def halves(batch: tf.Tensor, *static) -> tf.Tensor:
        half = batch.shape[0] // 2
        return tf.concat([solve(batch[:half], *static), solve(batch[half:], *static)], 0)

    def call(batch: tf.Tensor, *static) -> tf.Tensor:
        size = batch.shape[0]
        if size is None or size < min_batch:
            return solve(batch, *static)
        return halves(batch, *static)

    return call
