"""The 0-1 knapsack with integer weights in TensorFlow ops: dynamic programming over the capacity.

`knapsack(values, weights, capacity)` selects the items of largest total value whose
total weight is at most the capacity, exactly, batched over the leading axes of the
values and XLA-compilable. The weights and the capacity are the problem's constants
(hyper-parameters of the registered solver, as `k` is for top-k); the values are
the scores a model predicts.

The table `best[b, c]` is the largest value of a selection among the items seen so
far with total weight ≤ c. Item i (weight w_i, value v_i) updates it for every c
at once: `best[c] ← max(best[c], best[c − w_i] + v_i)` for c ≥ w_i, recording where
taking it is strictly better. Walking the items backwards from c = capacity then
recovers the selection. On ties the item is left out, so an item of value ≤ 0 is
never taken. Work: O(n · capacity) per problem, in n sequential steps over the
whole batch; values are summed in float64.
"""

import numbers

import tensorflow as tf

from tf_perturbed._src.base import validate


def check_arguments(weights, capacity) -> tuple:
    """(weights as a tuple of ints ≥ 0, capacity as an int ≥ 0), or raises naming the argument."""
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
        raise TypeError(f"Expected `weights` to be a sequence of integers ≥ 0, received: weights={weights!r}")
    weights = tuple(weights)
    if not weights:
        raise ValueError(f"Expected `weights` to hold one integer ≥ 0 per item, received: weights={weights!r}")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, numbers.Integral) or weight < 0:
            raise ValueError(f"Expected `weights` to be integers ≥ 0, received: weights={weights!r}")
    return tuple(int(w) for w in weights), validate.integer(capacity, "capacity", minimum=0)


@tf.function(jit_compile=True, autograph=False)
def _solve(values: tf.Tensor, weights: tf.Tensor, capacity: tf.Tensor) -> tf.Tensor:
    """0/1 selections `[B, n]` (float64) for values `[B, n]` float64, weights `[n]` int32, capacity int32."""
    batch = tf.shape(values)[0]
    positions = tf.range(capacity + 1)  # [C + 1]
    items = tf.range(tf.shape(weights)[0])

    def add_item(carry, item):
        best, _ = carry  # best: [B, C + 1]
        weight = weights[item]
        shifted = tf.roll(best, shift=weight, axis=1)  # best[c − w] at c (wrapped where c < w)
        take = shifted + tf.gather(values, item, axis=1)[:, None]  # [B, C + 1]
        better = tf.logical_and(positions[None, :] >= weight, take > best)
        return tf.where(better, take, best), better

    start = (tf.zeros([batch, capacity + 1], tf.float64), tf.zeros([batch, capacity + 1], tf.bool))
    _, taken = tf.scan(add_item, items, initializer=start)  # taken: [n, B, C + 1]

    def take_back(carry, item):
        room, _ = carry  # room: [B] capacity left
        chosen = tf.gather(taken[item], room, batch_dims=1)  # [B]
        return room - tf.where(chosen, weights[item], 0), chosen

    room = tf.fill([batch], capacity)
    _, chosen = tf.scan(take_back, items, initializer=(room, tf.zeros([batch], tf.bool)), reverse=True)  # [n, B]
    return tf.cast(tf.transpose(chosen), tf.float64)  # [B, n]


def knapsack(values: tf.Tensor, weights, capacity: int) -> tf.Tensor:
    """The 0-1 knapsack: the items of largest total value with total weight ≤ capacity, exactly.

    Formula:
        y*(v) = argmax_{y ∈ {0, 1}^n, Σ_i w_i y_i ≤ C} ⟨y, v⟩
        (dynamic programming over the capacity, values summed in float64)

    Args:
        values: `[..., n]`, finite, any float or integer dtype (half precision is read
            in float32, integers in float64).
        weights: n integers ≥ 0 (a list or tuple), the items' weights.
        capacity: integer ≥ 0, the largest total weight.

    Returns:
        0/1 selections `[..., n]` in values' float dtype (float32 for integer values).
        Among selections of equal value the one the recursion reaches: an item is left
        out unless taking it is strictly better, so items of value ≤ 0 are never taken.
        Under `jit_compile=True` XLA drops the finiteness check; a problem with a NaN or
        infinite value then gives a selection of NaN.

    Raises:
        ValueError: if values has rank < 1, an empty last axis or not n = len(weights)
            entries there; for weights or a capacity that are not integers ≥ 0.
        TypeError: if values is neither float nor integer.
        tf.errors.InvalidArgumentError: if a value is NaN or infinite.

    Example:
        >>> knapsack(tf.constant([6.0, 10.0, 12.0]), weights=[1, 2, 3], capacity=5).numpy()
        array([0., 1., 1.], dtype=float32)
    """
    weights, capacity = check_arguments(weights, capacity)
    values = tf.convert_to_tensor(values)
    dtype = validate.output_float_dtype(values.dtype)
    values, _ = validate.scores(values, "values", min_rank=1)
    n = values.shape[-1]
    if n is not None and n != len(weights):
        raise ValueError(
            f"Expected `values` with one entry per item, len(weights) = {len(weights)} on its last axis, "
            f"received: values.shape={values.shape}"
        )
    shape = tf.shape(values)
    rows = tf.reshape(tf.cast(values, tf.float64), [-1, len(weights)])  # [B, n]
    valid = tf.reduce_all(tf.math.is_finite(rows), axis=-1)  # [B]
    tf.debugging.Assert(
        tf.reduce_all(valid),
        ["Expected `values` to be finite, received: values with a NaN or infinite entry"],
    )
    # Invalid problems (reachable only under XLA, which drops the assertion) are solved
    # as zeros, and their outputs become NaN.
    rows = tf.where(valid[:, None], rows, tf.zeros_like(rows))
    chosen = _solve(rows, tf.constant(weights, tf.int32), tf.constant(capacity, tf.int32))
    chosen = tf.where(valid[:, None], tf.cast(chosen, dtype), tf.constant(float("nan"), dtype))
    return tf.reshape(chosen, shape)
