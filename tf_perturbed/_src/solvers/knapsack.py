"""The 0-1 knapsack with integer weights in TensorFlow ops: dynamic programming over the capacity.

`knapsack(values, weights, capacity)` selects the items of largest total value whose
total weight is at most the capacity, exactly, batched over the leading axes of the
values and XLA-compilable. With several resources (`weights` a k × n table and
`capacity` k integers, PyEPO's multi-dimensional knapsack) the total weight is at most
the capacity in every resource. The weights and the capacity are the problem's constants
(hyper-parameters of the registered solver, as `k` is for top-k); the values are
the scores a model predicts.

The table `best[b, c]` is the largest value of a selection among the items seen so
far with total weight ≤ c (c a vector of k used capacities, one table entry per
vector: Π_d (C_d + 1) entries, flattened with strides s_d = Π_{e<d} (C_e + 1)). Item i
(weights w_i, value v_i) updates it for every c at once:
`best[c] ← max(best[c], best[c − w_i] + v_i)` for c ≥ w_i in every resource — a shift
of the flattened table by Σ_d w_{d,i} s_d — recording where taking it is strictly
better. Walking the items backwards from c = capacity then recovers the selection. On
ties the item is left out, so an item of value ≤ 0 is never taken. Work and memory:
O(n · Π_d (C_d + 1)) per problem, in n sequential steps over the whole batch; values
are summed in float64.
"""

import numbers
from typing import Tuple, Union

import numpy as np
import tensorflow as tf

from tf_perturbed._src.base import validate

#: The largest table a knapsack may have: Π_d (C_d + 1) entries, indexed in int32.
MAX_STATES = 2**30

Weights = Union[Tuple[int, ...], Tuple[Tuple[int, ...], ...]]


def _integers(row, name: str, shown) -> Tuple[int, ...]:
    """`row` as a non-empty tuple of ints ≥ 0, or raises naming `name` with the value `shown`."""
    if isinstance(row, (str, bytes)) or not hasattr(row, "__iter__"):
        raise TypeError(f"Expected `{name}` to be a sequence of integers ≥ 0, received: {name}={shown!r}")
    row = tuple(row)
    if not row:
        raise ValueError(f"Expected `{name}` to hold one integer ≥ 0 per item, received: {name}={shown!r}")
    for value in row:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"Expected `{name}` to be integers ≥ 0, received: {name}={shown!r}")
    return tuple(int(value) for value in row)


def check_arguments(weights, capacity) -> tuple:
    """(weights, capacity) checked, or raises naming the argument.

    One resource: weights a sequence of n ints ≥ 0 and capacity an int ≥ 0, returned as
    (tuple of ints, int). k resources: weights k sequences of n ints and capacity k ints,
    returned as (tuple of k tuples, tuple of k ints).
    """
    if isinstance(weights, (str, bytes)) or not hasattr(weights, "__iter__"):
        raise TypeError(f"Expected `weights` to be a sequence of integers ≥ 0, received: weights={weights!r}")
    rows = tuple(weights)
    if rows and all(not isinstance(row, (numbers.Number, str, bytes)) and hasattr(row, "__iter__") for row in rows):
        table = tuple(_integers(row, "weights", weights) for row in rows)
        if len({len(row) for row in table}) != 1:
            raise ValueError(
                f"Expected `weights` rows of one length (one entry per item), received: weights={weights!r}"
            )
        if isinstance(capacity, (str, bytes)) or not hasattr(capacity, "__iter__"):
            raise TypeError(
                f"Expected `capacity` to be {len(table)} integers ≥ 0, one per row of `weights`, "
                f"received: capacity={capacity!r}"
            )
        capacities = tuple(capacity)
        if len(capacities) != len(table):
            raise ValueError(
                f"Expected `capacity` to be {len(table)} integers ≥ 0, one per row of `weights`, "
                f"received: capacity={capacity!r}"
            )
        capacities = tuple(validate.integer(c, "capacity", minimum=0) for c in capacities)
    else:
        table = _integers(rows, "weights", weights)
        capacities = validate.integer(capacity, "capacity", minimum=0)
    states = int(np.prod([c + 1 for c in np.atleast_1d(capacities)], dtype=object))
    if states > MAX_STATES:
        raise ValueError(
            f"Expected a capacity whose table Π (capacity + 1) has at most {MAX_STATES} entries, received: "
            f"capacity={capacity!r} ({states} entries); solve larger problems with a MIP solver, "
            "`tf_perturbed.solvers.milp`"
        )
    return table, capacities


def _table(weights: Weights, capacity) -> tuple:
    """(weights `[k, n]`, table sizes `[k]` = capacity + 1) as int32 constants, for one or k resources.

    A weight above its capacity becomes capacity + 1: such an item never fits either way
    (and `_solve` keeps every offset below the table's size, within int32).
    """
    table = np.array([weights] if isinstance(capacity, int) else weights, np.int64)  # [k, n]
    sizes = np.array([capacity] if isinstance(capacity, int) else capacity, np.int64) + 1  # [k]
    table = np.minimum(table, sizes[:, None])
    return tf.constant(table, tf.int32), tf.constant(sizes, tf.int32)


@tf.function(jit_compile=True, autograph=False)
def _solve(values: tf.Tensor, weights: tf.Tensor, sizes: tf.Tensor) -> tf.Tensor:
    """0/1 selections `[B, n]` (float64) for values `[B, n]` float64, weights `[k, n]`, sizes `[k]` int32.

    The table is flattened with strides s_d = Π_{e<d} sizes_e: entry Σ_d c_d s_d holds the
    best value within used capacities c; item i moves it by Σ_d w_{d,i} s_d and fits entry
    c when w_i ≤ c in every resource; the last entry is the full capacity.
    """
    batch = tf.shape(values)[0]
    strides = tf.math.cumprod(sizes, exclusive=True)  # [k]
    states = tf.reduce_prod(sizes)
    used = (tf.range(states)[None, :] // strides[:, None]) % sizes[:, None]  # [k, S] capacities of each entry
    # [n] offsets < S: a weight above its capacity (never fitting, so its offset is never used)
    # counts as the capacity there.
    shifts = tf.reduce_sum(tf.minimum(weights, sizes[:, None] - 1) * strides[:, None], axis=0)
    fits = tf.reduce_all(used[:, None, :] >= weights[:, :, None], axis=0)  # [n, S] (at most 1/B of `taken`)
    items = tf.range(tf.shape(weights)[1])

    def add_item(carry, item):
        best, _ = carry  # best: [B, S]
        shifted = tf.roll(best, shift=shifts[item], axis=1)  # best[c − w] at c (wrapped where it does not fit)
        take = shifted + tf.gather(values, item, axis=1)[:, None]  # [B, S]
        better = tf.logical_and(fits[item][None, :], take > best)
        return tf.where(better, take, best), better

    start = (tf.zeros([batch, states], tf.float64), tf.zeros([batch, states], tf.bool))
    _, taken = tf.scan(add_item, items, initializer=start)  # taken: [n, B, S]

    def take_back(carry, item):
        room, _ = carry  # room: [B] entry of the capacities left
        chosen = tf.gather(taken[item], room, batch_dims=1)  # [B]
        return room - tf.where(chosen, shifts[item], 0), chosen

    room = tf.fill([batch], states - 1)
    _, chosen = tf.scan(take_back, items, initializer=(room, tf.zeros([batch], tf.bool)), reverse=True)  # [n, B]
    return tf.cast(tf.transpose(chosen), tf.float64)  # [B, n]


def knapsack(values: tf.Tensor, weights, capacity: int) -> tf.Tensor:
    """The 0-1 knapsack: the items of largest total value with total weight ≤ capacity, exactly.

    Formula:
        y*(v) = argmax_{y ∈ {0, 1}^n, Σ_i w_{d,i} y_i ≤ C_d for every resource d} ⟨y, v⟩
        (dynamic programming over the capacities, values summed in float64)

    Args:
        values: `[..., n]`, finite, any float or integer dtype (half precision is read
            in float32, integers in float64).
        weights: n integers ≥ 0 (a list or tuple), the items' weights; or, for k
            resources, k such sequences of n integers (a `[k, n]` table).
        capacity: integer ≥ 0, the largest total weight; k integers for k resources.
            Time and memory grow as Π_d (capacity_d + 1) (at most 2^30 entries).

    Returns:
        0/1 selections `[..., n]` in values' float dtype (float32 for integer values).
        Among selections of equal value the one the recursion reaches: an item is left
        out unless taking it is strictly better, so items of value ≤ 0 are never taken.
        Under `jit_compile=True` XLA drops the finiteness check; a problem with a NaN or
        infinite value then gives a selection of NaN.

    Raises:
        ValueError: if values has rank < 1, an empty last axis or not n entries there
            (one per item); for weights or a capacity that are not integers ≥ 0, rows
            of weights of different lengths, a capacity per row missing or a table
            larger than 2^30 entries.
        TypeError: if values is neither float nor integer.
        tf.errors.InvalidArgumentError: if a value is NaN or infinite.

    Example:
        >>> knapsack(tf.constant([6.0, 10.0, 12.0]), weights=[1, 2, 3], capacity=5).numpy()
        array([0., 1., 1.], dtype=float32)

        Two resources (weight and volume), each with its capacity:

        >>> knapsack(tf.constant([6.0, 10.0, 12.0]), weights=[[1, 2, 3], [3, 1, 2]], capacity=[5, 3]).numpy()
        array([0., 1., 1.], dtype=float32)
        >>> knapsack(tf.constant([6.0, 10.0, 12.0]), weights=[[1, 2, 3], [3, 1, 2]], capacity=[5, 2]).numpy()
        array([0., 0., 1.], dtype=float32)
    """
    weights, capacity = check_arguments(weights, capacity)
    values = tf.convert_to_tensor(values)
    dtype = validate.output_float_dtype(values.dtype)
    values, _ = validate.scores(values, "values", min_rank=1)
    table, sizes = _table(weights, capacity)
    num_items = int(table.shape[1])
    n = values.shape[-1]
    if n is not None and n != num_items:
        raise ValueError(
            f"Expected `values` with one entry per item, {num_items} (the weights' items) on its last axis, "
            f"received: values.shape={values.shape}"
        )
    shape = tf.shape(values)
    rows = tf.reshape(tf.cast(values, tf.float64), [-1, num_items])  # [B, n]
    valid = tf.reduce_all(tf.math.is_finite(rows), axis=-1)  # [B]
    tf.debugging.Assert(
        tf.reduce_all(valid),
        ["Expected `values` to be finite, received: values with a NaN or infinite entry"],
    )
    # Invalid problems (reachable only under XLA, which drops the assertion) are solved
    # as zeros, and their outputs become NaN.
    rows = tf.where(valid[:, None], rows, tf.zeros_like(rows))
    chosen = _solve(rows, table, sizes)
    chosen = tf.where(valid[:, None], tf.cast(chosen, dtype), tf.constant(float("nan"), dtype))
    return tf.reshape(chosen, shape)
