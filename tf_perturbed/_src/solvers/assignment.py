"""Maximum-weight perfect matchings (linear assignment) in TensorFlow ops.

The solver is the shortest augmenting path method (Jonker-Volgenant, in the form
of Crouse 2016, also behind `scipy.optimize.linear_sum_assignment`) on costs
`c = −scores`, in float64, batched over the leading axes and XLA-compilable:

* duals `u` (rows) and `v` (columns) start from the column reduction
  `v_j = min_i c_ij`, which also matches each column's cheapest row when that row
  is still free;
* each free row is then inserted by a Dijkstra search over reduced costs
  `c_ij − u_i − v_j ≥ 0` until it reaches a free column, the duals are updated and
  the matching is flipped along the path.

Every batch element runs its own state machine (search step, augmentation step or
done) inside one `tf.while_loop`, so an element that needs a long search does not
hold the others back at every row. The loop is bounded by n·(2n + 1) + 1 steps:
at most n insertions, each of at most n search steps, n augmentation steps and one
step to start the next row. Ties are broken towards the lowest index (and, in the
search, towards free columns).
"""

import tensorflow as tf

from tf_perturbed._src.solvers import _checks


def _square(scores: tf.Tensor) -> tf.Tensor:
    """Checks that the last two axes of `scores` have the same size."""
    rows, cols = scores.shape[-2], scores.shape[-1]
    if rows is not None and cols is not None and rows != cols:
        raise ValueError(
            "Expected `scores` of shape [..., n, n] (square matrices), "
            f"received: scores.shape={scores.shape}"
        )
    if rows is None or cols is None:
        shape = tf.shape(scores)
        tf.debugging.assert_equal(
            shape[-2],
            shape[-1],
            message="Expected `scores` of shape [..., n, n] (square matrices), received: scores.shape=",
            data=[shape],
        )
    return scores


def _column_reduction(cost: tf.Tensor):
    """Feasible duals and a partial matching satisfying complementary slackness.

    Args:
        cost: `[B, n, n]` float64.

    Returns:
        `(v, col4row, row4col)`: column duals `[B, n]` (row duals start at 0), and the
        matching as int32 `[B, n]` indices with −1 for free rows and columns.
    """
    n = tf.shape(cost)[-1]
    v = tf.reduce_min(cost, axis=1)  # [B, n]  cheapest row of each column
    best_row = tf.argmin(cost, axis=1, output_type=tf.int32)  # [B, n(j)]
    # Each row takes the lowest column whose cheapest row it is, if any.
    claims = tf.equal(best_row[:, None, :], tf.range(n)[None, :, None])  # [B, n(i), n(j)]
    col4row = tf.where(
        tf.reduce_any(claims, axis=2),
        tf.argmax(tf.cast(claims, tf.int32), axis=2, output_type=tf.int32),
        -1,
    )  # [B, n(i)]
    taken = tf.gather(col4row, best_row, batch_dims=1)  # [B, n(j)]
    row4col = tf.where(tf.equal(taken, tf.range(n)[None, :]), best_row, -1)  # [B, n(j)]
    return v, col4row, row4col


def _free_rows(col4row: tf.Tensor):
    """Free rows in ascending order, then the matched ones: `([B, n] int32, count [B])`."""
    free = tf.cast(col4row < 0, tf.int32)  # [B, n]
    order = tf.argsort(-free, axis=1, stable=True)  # [B, n]  free rows first, ascending
    return order, tf.reduce_sum(free, axis=1)


def _set(values: tf.Tensor, cols: tf.Tensor, new: tf.Tensor, where: tf.Tensor) -> tf.Tensor:
    """`values[b, cols[b]] = new[b]` where `where[b]`, else unchanged: O(B) work."""
    index = tf.stack([tf.range(tf.shape(cols)[0]), cols], axis=1)  # [B, 2]
    old = tf.gather_nd(values, index)  # [B]
    return tf.tensor_scatter_nd_update(values, index, tf.where(where, new, old))


def _flip(col4row, row4col, path, sink, current, found):
    """Flips the matching along the augmenting paths ending at `sink`, where `found`."""

    def step(column, col4row, row4col, flipping):
        column = tf.maximum(column, 0)  # [B]
        path_row = tf.gather(path, column, batch_dims=1)  # [B]
        old_column = tf.gather(col4row, path_row, batch_dims=1)  # [B]
        row4col = _set(row4col, column, path_row, flipping)
        col4row = _set(col4row, path_row, column, flipping)
        flipping = tf.logical_and(flipping, tf.not_equal(path_row, current))
        return old_column, col4row, row4col, flipping

    n = tf.shape(path)[1]
    _, col4row, row4col, _ = tf.while_loop(
        lambda column, col4row, row4col, flipping: tf.reduce_any(flipping),
        step,
        (sink, col4row, row4col, found),
        maximum_iterations=n,
    )
    return col4row, row4col


def _solve(cost: tf.Tensor) -> tf.Tensor:
    """Column of each row in a minimum-cost perfect matching: `[B, n]` float64 → `[B, n]` int32.

    Row duals are not stored: a matched row's dual is `u_i = c[i, col4row_i] − v[col4row_i]`
    (complementary slackness), and a row still free has `u_i = 0`.
    """
    batch, n = tf.shape(cost)[0], tf.shape(cost)[-1]
    inf = tf.constant(float("inf"), tf.float64)
    index = tf.range(n)[None, :]  # [1, n]
    v, col4row, row4col = _column_reduction(cost)
    order, free_count = _free_rows(col4row)
    current = tf.where(free_count > 0, order[:, 0], n)  # [B]
    state = dict(
        v=v,
        col4row=col4row,
        row4col=row4col,
        inserted=tf.zeros([batch], tf.int32),  # free rows inserted so far
        current=current,  # row being inserted; n when done
        row=current,  # row the search scans next
        min_val=tf.zeros([batch], tf.float64),
        spc=tf.fill([batch, n], inf),  # shortest path costs to the columns
        path=tf.zeros([batch, n], tf.int32),  # row each column is reached from
        scanned=tf.zeros([batch, n], tf.bool),  # settled columns
    )

    def step(s):
        searching = s["current"] < n  # [B]
        # Scan `row`: tentative distances through it, then settle the closest open column.
        row = tf.clip_by_value(s["row"], 0, n - 1)  # [B]
        row_cost = tf.gather(cost, row, batch_dims=1)  # [B, n]
        own = tf.maximum(tf.gather(s["col4row"], row, batch_dims=1), 0)  # [B]
        u_row = tf.where(
            tf.equal(row, s["current"]),
            tf.zeros_like(s["min_val"]),
            tf.gather(row_cost, own, batch_dims=1) - tf.gather(s["v"], own, batch_dims=1),
        )  # [B]
        reduced = row_cost - s["v"] + (s["min_val"] - u_row)[:, None]  # [B, n]
        closer = tf.logical_and(tf.logical_not(s["scanned"]), reduced < s["spc"])  # [B, n]
        spc = tf.where(closer, reduced, s["spc"])
        path = tf.where(closer, row[:, None], s["path"])
        open_spc = tf.where(s["scanned"], inf, spc)  # [B, n]
        lowest = tf.reduce_min(open_spc, axis=1)  # [B]
        settled = tf.argmin(open_spc, axis=1, output_type=tf.int32)  # [B]
        next_row = tf.gather(s["row4col"], settled, batch_dims=1)  # [B]
        found = tf.logical_and(searching, next_row < 0)  # [B]
        scanned = tf.logical_or(s["scanned"], tf.equal(index, settled[:, None]))  # [B, n]

        # A free column reached: flip the path, update the duals, start the next row.
        col4row, row4col = _flip(s["col4row"], s["row4col"], path, settled, s["current"], found)
        restart = found[:, None]  # [B, 1]
        v = tf.where(tf.logical_and(restart, scanned), s["v"] - (lowest[:, None] - spc), s["v"])
        inserted = s["inserted"] + tf.cast(found, tf.int32)  # [B]
        following = tf.gather(order, tf.minimum(inserted, n - 1), batch_dims=1)  # [B]
        following = tf.where(inserted < free_count, following, n)
        current = tf.where(found, following, s["current"])
        return dict(
            v=v,
            col4row=col4row,
            row4col=row4col,
            inserted=inserted,
            current=current,
            row=tf.where(found, following, next_row),
            min_val=tf.where(found, tf.zeros_like(lowest), lowest),
            spc=tf.where(restart, inf, spc),
            path=path,
            scanned=tf.logical_and(tf.logical_not(restart), scanned),
        )

    state = tf.while_loop(
        lambda s: tf.reduce_any(s["current"] < n),
        lambda s: (step(s),),
        (state,),
        maximum_iterations=n * n,
    )[0]
    return state["col4row"]


def assignment(scores: tf.Tensor) -> tf.Tensor:
    """Permutation matrix maximising ⟨P, S⟩: the linear assignment problem, solved exactly.

    Formula:
        y*(S) = argmax_{P permutation matrix} Σ_ij P_ij S_ij
        (shortest augmenting paths on costs −S in float64; exact for float32 and
        integer scores up to 2^53 / n in magnitude, to float64 rounding otherwise)

    Args:
        scores: `[..., n, n]`, finite, any float or integer dtype.

    Returns:
        Permutation matrices `[..., n, n]` in scores' float dtype (float32 for integer
        scores): `P[..., i, j] = 1` if row i is matched to column j. Under
        `jit_compile=True` XLA drops the finiteness check; a matrix with a NaN or
        infinite score then gives a matrix of NaN.

    Raises:
        ValueError: if scores has rank < 2, an empty axis, or is not square.
        TypeError: if scores is neither float nor integer.
        tf.errors.InvalidArgumentError: if a score is NaN or infinite.

    Example:
        >>> assignment(tf.constant([[1.0, 5.0, 0.0],
        ...                         [4.0, 3.0, 0.0],
        ...                         [2.0, 0.0, 1.0]])).numpy()
        array([[0., 1., 0.],
               [1., 0., 0.],
               [0., 0., 1.]], dtype=float32)

    References:
        Jonker, Volgenant. A shortest augmenting path algorithm for dense and sparse
        linear assignment problems. Computing 38, 1987.
        Crouse. On implementing 2D rectangular assignment algorithms. IEEE Trans.
        Aerospace and Electronic Systems 52(4), 2016.
    """
    scores, dtype = _checks.scores(scores, "scores", min_rank=2)
    scores = _square(scores)
    shape = tf.shape(scores)
    n = shape[-1]
    matrices = tf.reshape(tf.cast(scores, tf.float64), [-1, n, n])  # [B, n, n]
    valid = tf.reduce_all(tf.math.is_finite(matrices), axis=[1, 2])  # [B]
    tf.debugging.Assert(
        tf.reduce_all(valid),
        ["Expected `scores` to be finite, received: scores with a NaN or infinite entry"],
    )
    # Invalid matrices (reachable only under XLA, which drops the assertion) are solved
    # as zeros, so the loop stays short, and their outputs become NaN.
    cost = tf.where(valid[:, None, None], -matrices, tf.zeros_like(matrices))  # [B, n, n]
    col4row = _solve(cost)  # [B, n]
    perm = tf.one_hot(col4row, n, dtype=dtype)  # [B, n, n]
    perm = tf.where(valid[:, None, None], perm, tf.constant(float("nan"), dtype))
    return tf.reshape(perm, shape)  # [..., n, n]
