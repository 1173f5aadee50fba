"""Maximum-weight perfect matchings (linear assignment) in TensorFlow ops.

`assignment` solves max_P ⟨P, S⟩ over permutation matrices exactly, batched over
the leading axes and XLA-compilable, with the Jonker-Volgenant method on the costs
`c = −S`, in float64:

1. Column reduction: column duals `v_j = min_i c_ij`; each column's cheapest row
   takes it if that row is still free.
2. Augmenting row reduction (bounded, auction-like): a free row takes the column
   of its smallest reduced cost `c_ij − v_j`, lowers that column's dual so the
   cost there becomes its second smallest, and evicts the previous owner.
3. Shortest augmenting paths: each row still free is inserted by a Dijkstra search
   over the reduced costs `c_ij − u_i − v_j ≥ 0` until it reaches a free column;
   the duals are updated and the matching is flipped along the path.

Row duals are never stored: a matched row's dual is `u_i = c[i, x_i] − v[x_i]`
(complementary slackness) and a free row's is 0. Each batch element runs its own
searches, one Dijkstra step per element per loop iteration, so an element with
long searches does not hold the others back at every row. Every loop is bounded:
2n reduction steps, n² search steps (at most n insertions of at most n steps) and
n flips per insertion. Within each step ties go to the lowest index, so the matching
is a deterministic function of the scores (not always the lexicographically first optimum).

The solver is compiled with XLA even when called eagerly or from a `tf.function`
without `jit_compile` (a nested `tf.function(jit_compile=True)`): a while loop of
many small steps is about 30× slower in the TensorFlow executor.
"""

import tensorflow as tf

from tf_perturbed._src.base import validate
from tf_perturbed._src.solvers import _halves

_INF = float("inf")


def _inf() -> tf.Tensor:
    return tf.constant(_INF, tf.float64)


def _square(scores: tf.Tensor) -> tf.Tensor:
    """`scores`, after checking that its last two axes have the same size."""
    rows, cols = scores.shape[-2], scores.shape[-1]
    if rows is not None and cols is not None:
        if rows != cols:
            raise ValueError(
                "Expected `scores` of shape [..., n, n] (square matrices), "
                f"received: scores.shape={scores.shape}"
            )
        return scores
    shape = tf.shape(scores)
    check = tf.debugging.Assert(
        tf.equal(shape[-2], shape[-1]),
        [
            "Expected `scores` of shape [..., n, n] (square matrices), received: scores.shape =",
            shape,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(scores)


def _row_costs(scores: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    """Costs `c[b, rows[b], :] = −scores[b, rows[b], :]` in float64: `[B, n]`."""
    return -tf.cast(tf.gather(scores, rows, batch_dims=1), tf.float64)


def _set(values: tf.Tensor, cols: tf.Tensor, new: tf.Tensor, where: tf.Tensor) -> tf.Tensor:
    """`values[b, cols[b]] = new[b]` where `where[b]`, else unchanged: O(B) work."""
    index = tf.stack([tf.range(tf.shape(cols)[0]), cols], axis=1)  # [B, 2]
    old = tf.gather_nd(values, index)  # [B]
    return tf.tensor_scatter_nd_update(values, index, tf.where(where, new, old))


def _inverse(col4row: tf.Tensor) -> tf.Tensor:
    """`row4col` of a partial matching given by `col4row` (−1 for free): `[B, n]` int32."""
    batch, n = tf.shape(col4row)[0], tf.shape(col4row)[1]
    rows = tf.broadcast_to(tf.range(n)[None, :], [batch, n])  # [B, n]
    matched = col4row >= 0
    # Free rows write to a spare column n, dropped afterwards.
    target = tf.where(matched, col4row, n)  # [B, n]
    index = tf.stack([tf.broadcast_to(tf.range(batch)[:, None], [batch, n]), target], axis=-1)
    row4col = tf.fill([batch, n + 1], -1)  # [B, n+1]
    row4col = tf.tensor_scatter_nd_update(row4col, index, rows)
    return row4col[:, :n]  # [B, n]


def _first_min(values: tf.Tensor, positions: tf.Tensor):
    """Smallest entry of each row of `values` `[B, n]` and its lowest position: `([B], [B])`.

    `positions` `[1, n]` (or `[B, n]`) are the candidates' ranks in `values`' float dtype;
    the smallest rank among the smallest entries is returned, as int32. Rows must hold
    a non-NaN entry (the solver's values are finite or +inf). (Two plain reductions:
    XLA's CPU argmin, a reduction over (value, index) pairs, plus a gather of the value
    is about 1.7× slower at n = 50.)
    """
    lowest = tf.reduce_min(values, axis=1)  # [B]
    ties = tf.equal(values, lowest[:, None])  # [B, n]
    rank = tf.reduce_min(tf.where(ties, positions, tf.cast(2 ** 30, values.dtype)), axis=1)
    return tf.cast(rank, tf.int32), lowest


def _free_rows(col4row: tf.Tensor):
    """Free rows of each matching in ascending order, and how many: `([B, n], [B])` int32.

    Entries past the count are unspecified. (A cumulative sum and a scatter: XLA's
    sort is slow on CPU.)
    """
    batch, n = tf.shape(col4row)[0], tf.shape(col4row)[1]
    free = tf.cast(col4row < 0, tf.int32)  # [B, n]
    slot = tf.where(free > 0, tf.cumsum(free, axis=1) - 1, n)  # [B, n]  matched rows → n
    index = tf.stack([tf.broadcast_to(tf.range(batch)[:, None], [batch, n]), slot], axis=-1)
    rows = tf.broadcast_to(tf.range(n)[None, :], [batch, n])  # [B, n]
    order = tf.tensor_scatter_nd_update(tf.zeros([batch, n + 1], tf.int32), index, rows)
    return order[:, :n], tf.reduce_sum(free, axis=1)


def _column_reduction(scores: tf.Tensor):
    """Column duals and a partial matching satisfying complementary slackness.

    Args:
        scores: `[B, n, n]`, finite.

    Returns:
        `(v, col4row)`: column duals `[B, n]` float64 (row duals are 0), and the
        matched column of each row, int32 `[B, n]`, −1 for a free row.
    """
    batch, n = tf.shape(scores)[0], tf.shape(scores)[-1]
    v = -tf.cast(tf.reduce_max(scores, axis=1), tf.float64)  # [B, n]  min_i c_ij
    best_row = tf.argmax(scores, axis=1, output_type=tf.int32)  # [B, n(j)]
    # Each row takes the lowest column whose cheapest row it is, if any.
    segment = best_row + n * tf.range(batch)[:, None]  # [B, n(j)]
    columns = tf.broadcast_to(tf.range(n)[None, :], [batch, n])  # [B, n(j)]
    lowest = tf.math.unsorted_segment_min(columns, segment, batch * n)  # [B·n(i)]
    col4row = tf.reshape(tf.where(lowest < n, lowest, -1), [batch, n])  # [B, n(i)]
    return v, col4row


def _row_reduction(scores: tf.Tensor, v: tf.Tensor, col4row: tf.Tensor):
    """Augmenting row reduction: moves free rows onto their cheapest columns.

    Keeps every matched row on a column of smallest reduced cost `c_ij − v_j`, which
    is what the shortest path searches need. At most 2n steps per element.
    """
    batch, n = tf.shape(scores)[0], tf.shape(scores)[-1]
    index = tf.range(n)[None, :]  # [1, n]
    position = tf.cast(index, tf.float64)  # [1, n]
    row4col = _inverse(col4row)
    queue, count = _free_rows(col4row)  # a circular queue of free rows, lowest first
    head = tf.zeros([batch], tf.int32)

    def step(v, col4row, row4col, queue, head, count):
        active = count > 0  # [B]
        row = tf.gather(queue, head, batch_dims=1)  # [B]
        reduced = _row_costs(scores, row) - v  # [B, n]
        first, u1 = _first_min(reduced, position)  # [B], [B]
        others = tf.where(tf.equal(index, first[:, None]), _inf(), reduced)  # [B, n]
        second, u2 = _first_min(others, position)  # [B], [B]
        strict = u1 < u2  # [B]
        owner = tf.gather(row4col, first, batch_dims=1)  # [B]
        column = tf.where(tf.logical_or(strict, owner < 0), first, second)  # [B]
        evicted = tf.gather(row4col, column, batch_dims=1)  # [B]
        # Lower the column's dual so the row's reduced cost there is its second smallest.
        lowered = tf.gather(v, first, batch_dims=1) - (u2 - u1)
        v = _set(v, first, lowered, tf.logical_and(active, tf.logical_and(strict, n > 1)))
        row4col = _set(row4col, column, row, active)
        col4row = _set(col4row, row, column, active)
        col4row = _set(
            col4row,
            tf.maximum(evicted, 0),
            tf.fill([batch], -1),
            tf.logical_and(active, evicted >= 0),
        )
        # Pop `row`; an evicted row goes to the front after a strict step, else to the back.
        push = tf.logical_and(active, evicted >= 0)
        front = tf.logical_and(push, strict)
        next_head = (head + 1) % n
        head = tf.where(front, head, tf.where(active, next_head, head))
        slot = tf.where(front, head, (head + count - 1) % n)
        queue = _set(queue, slot, evicted, push)
        count = count - tf.cast(active, tf.int32) + tf.cast(push, tf.int32)
        return v, col4row, row4col, queue, head, count

    v, col4row, row4col, _, _, _ = tf.while_loop(
        lambda v, col4row, row4col, queue, head, count: tf.reduce_any(count > 0),
        step,
        (v, col4row, row4col, queue, head, count),
        maximum_iterations=2 * n,
    )
    return v, col4row, row4col


def _flip(col4row, row4col, path, sink, current, found):
    """Flips the matching along the augmenting paths ending at `sink`, where `found`."""

    def step(column, col4row, row4col, flipping):
        path_row = tf.gather(path, column, batch_dims=1)  # [B]
        old_column = tf.gather(col4row, path_row, batch_dims=1)  # [B]
        row4col = _set(row4col, column, path_row, flipping)
        col4row = _set(col4row, path_row, column, flipping)
        flipping = tf.logical_and(flipping, tf.not_equal(path_row, current))
        return tf.maximum(old_column, 0), col4row, row4col, flipping

    n = tf.shape(path)[1]
    _, col4row, row4col, _ = tf.while_loop(
        lambda column, col4row, row4col, flipping: tf.reduce_any(flipping),
        step,
        (sink, col4row, row4col, found),
        maximum_iterations=n,
    )
    return col4row, row4col


def _search(scores: tf.Tensor, slots: tf.Tensor, state: dict, stop) -> dict:
    """Runs the searches of the batch elements `slots` until at most `stop` are unfinished.

    Args:
        scores: `[B, n, n]`.
        slots: int32 `[K]`, the batch element each row of the state arrays belongs to.
        state: the per-slot search state, arrays `[K, ...]` (see `_augment`).
        stop: leave the loop once at most this many slots are still inserting rows.
    """
    n = tf.shape(scores)[-1]
    index = tf.range(n)[None, :]  # [1, n]
    position = tf.cast(index, tf.float64)  # [1, n]
    n_float = tf.cast(n, tf.float64)

    def step(s):
        searching = s["current"] < n  # [K]
        # Scan `row`: tentative distances through it, then settle the closest open column.
        row = tf.minimum(s["row"], n - 1)  # [K]
        row_cost = -tf.cast(tf.gather_nd(scores, tf.stack([slots, row], axis=1)), tf.float64)
        own = tf.maximum(tf.gather(s["col4row"], row, batch_dims=1), 0)  # [K]
        u_row = tf.where(
            tf.equal(row, s["current"]),
            tf.zeros_like(s["min_val"]),
            tf.gather(row_cost, own, batch_dims=1) - tf.gather(s["v"], own, batch_dims=1),
        )  # [K]
        reduced = row_cost - s["v"] + (s["min_val"] - u_row)[:, None]  # [K, n]
        closer = tf.logical_and(tf.logical_not(s["scanned"]), reduced < s["spc"])  # [K, n]
        spc = tf.where(closer, reduced, s["spc"])
        path = tf.where(closer, row[:, None], s["path"])
        open_spc = tf.where(s["scanned"], _inf(), spc)  # [K, n]
        # The closest open column; among equally close ones the lowest free one (it ends
        # the search), else the lowest: free columns rank 0…n−1, matched ones n…2n−1.
        matched = tf.where(s["row4col"] < 0, tf.zeros_like(n_float), n_float)  # [K, n]
        rank, lowest = _first_min(open_spc, position + matched)
        settled = rank % n  # [K]
        next_row = tf.gather(s["row4col"], settled, batch_dims=1)  # [K]
        found = tf.logical_and(searching, next_row < 0)  # [K]
        scanned = tf.logical_or(s["scanned"], tf.equal(index, settled[:, None]))  # [K, n]

        # A free column reached: flip the path, update the duals, start the next row.
        col4row, row4col = _flip(s["col4row"], s["row4col"], path, settled, s["current"], found)
        restart = found[:, None]  # [K, 1]
        v = tf.where(tf.logical_and(restart, scanned), s["v"] - (lowest[:, None] - spc), s["v"])
        inserted = s["inserted"] + tf.cast(found, tf.int32)  # [K]
        following = tf.gather(s["order"], tf.minimum(inserted, n - 1), batch_dims=1)  # [K]
        following = tf.where(inserted < s["free_count"], following, n)
        return dict(
            s,
            v=v,
            col4row=col4row,
            row4col=row4col,
            inserted=inserted,
            current=tf.where(found, following, s["current"]),
            row=tf.where(found, following, next_row),
            min_val=tf.where(found, tf.zeros_like(lowest), lowest),
            spc=tf.where(restart, _inf(), spc),
            path=path,
            scanned=tf.logical_and(tf.logical_not(restart), scanned),
        )

    def unfinished(s):
        return tf.reduce_sum(tf.cast(s["current"] < n, tf.int32))

    return tf.while_loop(
        lambda s: unfinished(s) > stop,
        lambda s: (step(s),),
        (state,),
        maximum_iterations=n * n,
    )[0]


def _augment(scores: tf.Tensor, v: tf.Tensor, col4row: tf.Tensor, row4col: tf.Tensor):
    """Inserts every free row by a shortest augmenting path search. Returns `col4row`.

    The batch runs together until three quarters of its elements are done; the rest
    then move to a batch a quarter of the size. The slowest matrices of a batch need
    about twice the mean number of search steps, so this saves about a third of the
    work on random matrices.
    """
    batch, n = scores.shape[0], tf.shape(scores)[-1]
    order, free_count = _free_rows(col4row)
    current = tf.where(free_count > 0, order[:, 0], n)  # [B]
    state = dict(
        v=v,
        col4row=col4row,
        row4col=row4col,
        order=order,  # the free rows in the order they are inserted
        free_count=free_count,
        inserted=tf.zeros_like(free_count),  # free rows inserted so far
        current=current,  # row being inserted; n when done
        row=current,  # row the search scans next
        min_val=tf.zeros_like(v[:, 0]),
        spc=tf.fill(tf.shape(v), _inf()),  # path costs to the columns
        path=tf.zeros_like(col4row),  # row each column is reached from
        scanned=tf.zeros(tf.shape(col4row), tf.bool),  # settled columns
    )
    if batch is None or batch < 32:
        return _search(scores, tf.range(tf.shape(scores)[0]), state, 0)["col4row"]
    small = (batch + 3) // 4
    state = _search(scores, tf.range(batch), state, small)
    # Move the unfinished elements, then finished ones, to the first `small` slots.
    finished = tf.cast(state["current"] >= n, tf.int32)  # [B]
    slots = tf.argsort(finished, stable=True)[:small]  # [K]
    compact = {key: tf.gather(value, slots) for key, value in state.items()}
    compact = _search(scores, slots, compact, 0)
    return tf.tensor_scatter_nd_update(state["col4row"], slots[:, None], compact["col4row"])


@tf.function(jit_compile=True, autograph=False)
def _solve(scores: tf.Tensor) -> tf.Tensor:
    """Column of each row in a maximum-score matching: `[B, n, n]` → int32 `[B, n]`."""
    v, col4row = _column_reduction(scores)
    v, col4row, row4col = _row_reduction(scores, v, col4row)
    return _augment(scores, v, col4row, row4col)


# Batches of at least this many matrices are solved in two halves: a batch waits for its
# slowest matrix, one sequential search step after another, on one core; two halves run
# on two cores (on an idle 2-core CPU, n = 50, B = 256: about 1.5× faster than one call).
_SPLIT_BATCH = 64
_solve_batch = _halves.in_two_halves(_solve, _SPLIT_BATCH)  # [B, n, n] → int32 [B, n]


def assignment(scores: tf.Tensor) -> tf.Tensor:
    """Permutation matrix maximising ⟨P, S⟩: the linear assignment problem, solved exactly.

    Formula:
        y*(S) = argmax_{P permutation matrix} Σ_ij P_ij S_ij
        (Jonker-Volgenant shortest augmenting paths on the costs −S, in float64)

    The arithmetic is exact, hence so is the optimum, for integer-valued scores with
    n · max|S| < 2^50; for other scores the matching is optimal up to float64
    rounding of the duals (its value is within about n · 1e-15 · max|S| of the
    optimum). Work: O(n³) per matrix in the worst case, sequential in n² steps.

    Args:
        scores: `[..., n, n]`, finite, any float or integer dtype (half precision is
            read in float32, integers in float64).

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
    scores = tf.convert_to_tensor(scores)
    dtype = validate.output_float_dtype(scores.dtype)
    if scores.dtype.is_integer:
        # float64 holds integers exactly up to 2^53, float32 only up to 2^24.
        scores = tf.cast(scores, tf.float64)
    scores, _ = validate.scores(scores, "scores", min_rank=2)
    scores = _square(scores)
    shape = tf.shape(scores)
    n = shape[-1]
    matrices = tf.reshape(scores, [-1, n, n])  # [B, n, n]
    valid = tf.reduce_all(tf.math.is_finite(matrices), axis=[1, 2])  # [B]
    tf.debugging.Assert(
        tf.reduce_all(valid),
        ["Expected `scores` to be finite, received: scores with a NaN or infinite entry"],
    )
    # Invalid matrices (reachable only under XLA, which drops the assertion) are solved
    # as zeros, and their outputs become NaN.
    matrices = tf.where(valid[:, None, None], matrices, tf.zeros_like(matrices))
    col4row = _solve_batch(matrices)  # [B, n]
    perm = tf.one_hot(col4row, n, dtype=dtype)  # [B, n, n]
    perm = tf.where(valid[:, None, None], perm, tf.constant(float("nan"), dtype))
    return tf.reshape(perm, shape)  # [..., n, n]
