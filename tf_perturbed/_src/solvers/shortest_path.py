"""Minimum-cost paths on grids with vertex costs (the Warcraft shortest-path setting).

The solver is batched min-plus dynamic programming in TensorFlow ops, so it runs
inside `tf.function` and compiles with XLA:

1. Distances by Gauss-Seidel sweeps: a sweep relaxes the lines of the grid (rows or
   columns) one after the other, each from the line before it, already relaxed in
   this sweep, so a path that keeps going down (or right, left, up) is found in one
   sweep. Sweeps go down, right, left, up, again and again, until two opposite
   sweeps in a row change nothing (about 25 sweeps on 30 × 30 random grids, where
   relaxing the whole grid at once took about 50 rounds). Every value is a float
   sum of a path's costs added in path order, and the sweeps stop at the same fixed
   point as any order of relaxations would: the smallest such sum over all paths.
2. Plateau depths `h`: a vertex whose distance equals its closest neighbour's
   (zero or negligible cost) gets `h` = the number of such equal-distance steps to
   a vertex with a strictly closer neighbour. Costs that are all ≥ 4 eps Σ c leave
   no plateau (see `_solve`), and then every depth is 0 and this step is skipped.
3. Backtracking: each vertex's predecessor is its neighbour smallest in
   (distance, h, move order); (distance, h) strictly decreases along predecessors,
   so the walk from the bottom-right vertex is a simple path and reaches the
   top-left vertex in at most H·W − 1 steps.

Distances are compared only with values produced by the same float additions, so
the backtracking needs no tolerance. Large batches are solved 128 grids at a time
(their distances stay in the cache), and batches of 128 grids or more in two halves,
which the TensorFlow executor runs on two cores. The solver is compiled with XLA even
when called eagerly or from a `tf.function` without `jit_compile` (a nested
`tf.function(jit_compile=True)`): its loops of small steps run about 15× slower in
the TensorFlow executor.
"""

from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf

from tf_perturbed._src.base import tf_compat, validate
from tf_perturbed._src.solvers import _halves

# (dy, dx) offsets; their order breaks ties between equally good predecessors.
_KING_MOVES = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
_ROOK_MOVES = ((-1, 0), (0, -1), (0, 1), (1, 0))

Moves = Sequence[Tuple[int, int]]


def _moves(neighbourhood) -> Moves:
    if isinstance(neighbourhood, bool) or neighbourhood not in (4, 8):
        raise ValueError(
            "Expected `neighbourhood` in (4, 8) (rook or king moves), "
            f"received: neighbourhood={neighbourhood!r}"
        )
    return _KING_MOVES if neighbourhood == 8 else _ROOK_MOVES


def _neighbours(grid: tf.Tensor, moves: Moves, fill) -> list:
    """The grid seen from each move: `out[k][y, x] = grid[y + dy_k, x + dx_k]`, or `fill`."""
    h, w = tf.shape(grid)[0], tf.shape(grid)[1]
    padded = tf.pad(grid, [[1, 1], [1, 1], [0, 0]], constant_values=fill)  # [H+2, W+2, B]
    return [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in moves]


def _box_min(padded: tf.Tensor) -> tf.Tensor:
    """Smallest value in each vertex's 3 × 3 box (itself and its 8 neighbours).

    Args:
        padded: the grid with a border of +inf, `[H+2, W+2, B]`.

    Returns:
        `[H, W, B]`, computed as a minimum over rows then over columns: 4 minima
        instead of 8.
    """
    rows = tf.minimum(tf.minimum(padded[:, :-2], padded[:, 1:-1]), padded[:, 2:])  # [H+2, W, B]
    return tf.minimum(tf.minimum(rows[:-2], rows[1:-1]), rows[2:])  # [H, W, B]


def _rook_min(padded: tf.Tensor) -> tf.Tensor:
    """Smallest value among each vertex's 4 edge neighbours, from `[H+2, W+2, B]` padded with +inf."""
    vertical = tf.minimum(padded[:-2, 1:-1], padded[2:, 1:-1])  # [H, W, B]
    return tf.minimum(vertical, tf.minimum(padded[1:-1, :-2], padded[1:-1, 2:]))


def _padded_min(padded: tf.Tensor, moves: Moves) -> tf.Tensor:
    """Smallest neighbour of each vertex, from the grid padded with +inf `[H+2, W+2, B]`.

    For king moves, the smallest value of the 3 × 3 box, the vertex itself included: either
    way it is below the vertex's own value exactly where a neighbour is smaller, and in the
    relaxation dist + cost ≥ dist (cost ≥ 0, rounding monotone), so min(dist, candidate)
    and the test `candidate < dist` are the same as with the 8 neighbours alone (4 minima
    instead of 8, about 25 % faster).
    """
    return _box_min(padded) if tuple(moves) == _KING_MOVES else _rook_min(padded)


def _smallest_around(grid: tf.Tensor, moves: Moves) -> tf.Tensor:
    """`_padded_min` of a grid `[H, W, B]`."""
    return _padded_min(tf.pad(grid, [[1, 1], [1, 1], [0, 0]], constant_values=float("inf")), moves)


def _min3(padded: tf.Tensor) -> tf.Tensor:
    """Smallest of each entry and its two neighbours along the first axis: `[L+2, B]` → `[L, B]`."""
    return tf.minimum(tf.minimum(padded[:-2], padded[1:-1]), padded[2:])


def _sweep(dist: tf.Tensor, costs: tf.Tensor, axis: int, cost_axis: int, reverse: bool, moves: Moves):
    """One sweep: the lines of `dist` along `axis`, each relaxed from the line before it.

    Args:
        dist: distances `[A0, A1, B]`; line i is `dist[i]` (axis 0) or `dist[:, i]` (axis 1).
        costs: costs `[H, W, B]`; line i is `costs[i]` (cost_axis 0) or `costs[:, i]` (1).
        reverse: visit the lines from last to first.

    Returns:
        (the relaxed lines `[n, L, B]`, whether a distance decreased). A vertex gets
        min(its distance, its cost + the smallest new distance among its neighbours in the
        line before: three for king moves, one for rook moves); the first line keeps its
        distances.
    """
    n, length, batch = tf.shape(dist)[axis], tf.shape(dist)[1 - axis], tf.shape(dist)[2]
    pad = [[1, 1], [0, 0]]
    king = tuple(moves) == _KING_MOVES
    first, last = (n - 1, 0) if reverse else (0, n - 1)

    def step(t, before, changed, lines):
        i = n - 1 - t if reverse else t
        # The line before i, carried in the loop state, is written and compared here
        # rather than where it is computed: XLA then computes each line once.
        j = i + 1 if reverse else i - 1
        lines = lines.write(j, before[1:-1])
        changed = tf.logical_or(changed, before[1:-1] < tf.gather(dist, j, axis=axis))  # [L, B]
        around = _min3(before) if king else before[1:-1]  # [L, B]
        new = tf.minimum(tf.gather(dist, i, axis=axis), around + tf.gather(costs, i, axis=cost_axis))
        return t + 1, tf.pad(new, pad, constant_values=float("inf")), changed, lines

    line = tf.pad(tf.gather(dist, first, axis=axis), pad, constant_values=float("inf"))  # [L+2, B]
    _, line, changed, lines = tf.while_loop(
        lambda t, *_: t < n,
        step,
        (1, line, tf.zeros([length, batch], tf.bool), tf.TensorArray(dist.dtype, size=n)),
    )
    changed = tf.logical_or(changed, line[1:-1] < tf.gather(dist, last, axis=axis))
    lines = lines.write(last, line[1:-1])
    return tf.reshape(lines.stack(), [n, length, batch]), tf.reduce_any(changed)


def _distances(costs: tf.Tensor, moves: Moves) -> tf.Tensor:
    """Cost of the cheapest path from (0, 0) to every vertex, ends included.

    Args:
        costs: `[H, W, B]`, finite and ≥ 0.

    Returns:
        Distances `[H, W, B]`: every vertex but the source satisfies
        `dist = min_neighbour(dist) + cost` in float arithmetic.

    Sweeps go down, right, left, up (rows top to bottom, columns left to right, ...),
    and stop once right and left, or up and the next down, change nothing. Such a pair
    relaxes every move but those along the other lines: right and left never relax a
    move from the vertex above or below, up and down none from the left or right. These
    hold as well. Say right and left changed nothing after a down sweep, and u is below
    v: the last up sweep relaxed u → v; if the down sweep lowered u since, u got
    dist(w) + c_u from a vertex w of v's row next to u, v itself or a neighbour of v in
    its row, whose move to v right and left found relaxed: dist(v) ≤ dist(w) + c_v ≤
    (dist(w) + c_u) + c_v (floats round monotonically). The down sweep relaxed the move
    from the vertex above v after its last change; up and the next down are the same
    turned by 90°, and rook moves have w = v. The loop is bounded: a cycle does at least
    what a round of Bellman-Ford does.
    """
    h, w = tf.shape(costs)[0], tf.shape(costs)[1]
    source = tf.reshape(tf.range(h * w) == 0, [h, w, 1])  # [H, W, 1]
    dist = tf.where(source, costs, tf.constant(float("inf"), costs.dtype))  # [H, W, B]
    true, false = tf.constant(True), tf.constant(False)

    def cycle(dist, up_unchanged, done):
        del done
        down, changed = _sweep(dist, costs, 0, 0, False, moves)  # [H, W, B]

        def across():
            right, changed_r = _sweep(down, costs, 1, 1, False, moves)  # [W, H, B]
            left, changed_l = _sweep(right, costs, 0, 1, True, moves)  # [W, H, B]

            def up():
                up_, changed_u = _sweep(left, costs, 1, 0, True, moves)  # [H, W, B]
                return up_, tf.logical_not(changed_u), false

            return tf.cond(tf.logical_or(changed_r, changed_l), up, lambda: (down, true, true))

        settled = tf.logical_and(up_unchanged, tf.logical_not(changed))  # up, then down: no change
        return tf.cond(settled, lambda: (down, true, true), across)

    dist, _, _ = tf.while_loop(
        lambda dist, up_unchanged, done: tf.logical_not(done),
        cycle,
        (dist, false, false),
        maximum_iterations=h * w + 1,
    )
    return dist


def _plateau_depths(dist: tf.Tensor, moves: Moves) -> tf.Tensor:
    """Tie-breaking potential for the backtracking, int32 `[H, W, B]`.

    A vertex is an exit if it is the source or has a neighbour with a strictly smaller
    distance; exits get 0. Any other vertex has a neighbour with the same distance (its
    cost vanished in the addition) and gets 1 + the smallest depth among those
    neighbours. Every plateau holds an exit (the relaxation reached it from one), so
    the depths are finite, and (distance, depth) strictly decreases along the walk.
    """
    h, w = tf.shape(dist)[0], tf.shape(dist)[1]
    source = tf.reshape(tf.range(h * w) == 0, [h, w, 1])  # [H, W, 1]
    exits = tf.logical_or(source, _smallest_around(dist, moves) < dist)  # [H, W, B]
    unknown = h * w  # larger than any depth
    depth = tf.where(exits, 0, unknown)  # [H, W, B]

    def deepen(depth, changed):
        del changed
        # The shifted grids are built here, not before the loop, which usually runs
        # no round at all (random costs leave no plateau).
        dist_around = _neighbours(dist, moves, float("inf"))
        depth_around = _neighbours(depth, moves, unknown)
        best = tf.fill(tf.shape(depth), unknown)
        for d_k, h_k in zip(dist_around, depth_around, strict=True):
            best = tf.minimum(best, tf.where(tf.equal(d_k, dist), h_k, unknown))
        new = tf.where(exits, 0, tf.minimum(depth, best + 1))
        return new, tf.reduce_any(new < depth)

    depth, _ = tf.while_loop(
        lambda depth, changed: changed,
        deepen,
        (depth, tf.reduce_any(tf.logical_not(exits))),
        maximum_iterations=h * w,
    )
    return depth


def _closest_neighbours(dist: tf.Tensor, moves: Moves) -> tf.Tensor:
    """`_predecessors` when every depth is 0: the first move to a neighbour of smallest distance."""
    dist_around = _neighbours(dist, moves, float("inf"))
    best_dist, best = dist_around[0], tf.zeros(tf.shape(dist), tf.int32)
    for k in range(1, len(moves)):
        best = tf.where(dist_around[k] < best_dist, k, best)
        best_dist = tf.minimum(best_dist, dist_around[k])
    return best


def _predecessors(dist: tf.Tensor, depth: tf.Tensor, moves: Moves) -> tf.Tensor:
    """Move to each vertex's neighbour smallest in (distance, depth, move): int32 `[H, W, B]`."""
    dist_around = _neighbours(dist, moves, float("inf"))
    depth_around = _neighbours(depth, moves, tf.shape(dist)[0] * tf.shape(dist)[1])
    best_dist, best_depth = dist_around[0], depth_around[0]
    best = tf.zeros(tf.shape(depth), tf.int32)
    for k in range(1, len(moves)):
        closer = tf.logical_or(
            dist_around[k] < best_dist,
            tf.logical_and(tf.equal(dist_around[k], best_dist), depth_around[k] < best_depth),
        )
        best_dist = tf.where(closer, dist_around[k], best_dist)
        best_depth = tf.where(closer, depth_around[k], best_depth)
        best = tf.where(closer, k, best)
    return best


def _backtrack(previous: tf.Tensor, moves: Moves, dtype: tf.DType) -> tf.Tensor:
    """0/1 mask `[B, H, W]` of the walk from the bottom-right vertex to the top-left one.

    Args:
        previous: the move to each vertex's predecessor, int32 `[H, W, B]`.
    """
    h, w, batch = tf.shape(previous)[0], tf.shape(previous)[1], tf.shape(previous)[2]
    previous = tf.reshape(previous, [h * w, batch])  # [H·W, B]
    offsets = tf.constant([dy for dy, _ in moves]) * w + tf.constant([dx for _, dx in moves])
    rows = tf.range(batch)  # [B]
    ones = tf.ones([batch], dtype)
    target = tf.fill([batch], h * w - 1)  # [B]  (H−1, W−1) flattened
    mask = tf.zeros([batch, h * w], dtype)  # [B, H·W]
    mask = tf.tensor_scatter_nd_update(mask, tf.stack([rows, target], axis=1), ones)

    def step(vertex, mask):
        move = tf.gather_nd(previous, tf.stack([vertex, rows], axis=1))  # [B]
        vertex = tf.where(vertex > 0, vertex + tf.gather(offsets, move), vertex)  # [B]
        mask = tf.tensor_scatter_nd_update(mask, tf.stack([rows, vertex], axis=1), ones)
        return vertex, mask

    _, mask = tf.while_loop(
        lambda vertex, mask: tf.reduce_any(vertex > 0),
        step,
        (target, mask),
        maximum_iterations=h * w - 1,
    )
    return tf.reshape(mask, [batch, h, w])  # [B, H, W]


def _solve_chunk(grids: tf.Tensor, valid: tf.Tensor, plateau_free: tf.Tensor, moves: Moves) -> tf.Tensor:
    """0/1 masks `[B, H, W]` of shortest paths on grids `[B, H, W]`.

    Args:
        valid: bool `[B]`; the grids that are not are solved with unit costs, so that every
            loop stays bounded.
        plateau_free: a bool scalar, true when no grid has a plateau (every depth is 0).
    """
    grids = tf.where(valid[:, None, None], grids, tf.ones_like(grids))
    grids = tf.transpose(grids, [1, 2, 0])  # [H, W, B]: the batch is the contiguous axis
    dist = _distances(grids, moves)  # [H, W, B]
    previous = tf.cond(
        plateau_free,
        lambda: _closest_neighbours(dist, moves),
        lambda: _predecessors(dist, _plateau_depths(dist, moves), moves),
    )  # [H, W, B]
    return _backtrack(previous, moves, grids.dtype)  # [B, H, W]


# Grids solved per loop: the sweeps' arrays of 128 grids of 30 × 30 mostly stay in the
# cache, and fewer grids pay the loops' per-step overhead more often (64, 96 and 256 were
# slower at 30 × 30, 112 alike, on the 2-core machine of benchmarks/results/solvers.md).
_CHUNK = 128


@tf.function(jit_compile=True, autograph=False)
def _solve(grids: tf.Tensor, moves: Moves) -> tf.Tensor:
    """0/1 masks `[B, H, W]` of shortest paths on grids `[B, H, W]`; NaN masks for grids
    with a negative or non-finite cost (solved with unit costs, so that every loop stays
    bounded).

    A grid has no plateau when every cost c_v ≥ 4 eps Σ c > 0: a vertex's distance is
    fl(m + c_v) with m its closest neighbour's distance, m < every distance ≤ 2 Σ c (a
    simple path's float sum, with room for the rounding of Σ c), and fl(m + c_v) > m once
    c_v ≥ ulp(m), which c_v ≥ eps · 2 Σ c ensures.
    """
    smallest = tf.reduce_min(grids, axis=[1, 2])  # [B]
    total = tf.reduce_sum(grids, axis=[1, 2])  # [B], NaN if a cost is NaN
    valid = tf.logical_and(smallest >= 0, tf.reduce_max(grids, axis=[1, 2]) < float("inf"))
    valid = tf.logical_and(valid, tf.logical_not(tf.math.is_nan(total)))  # [B]
    eps = np.finfo(grids.dtype.as_numpy_dtype).eps
    h, w = tf.shape(grids)[1], tf.shape(grids)[2]
    few_terms = tf.cast(h * w, grids.dtype) * eps <= 0.25  # Σ c rounded by less than 1/8
    plateau_free = tf.logical_or(
        tf.logical_not(valid),  # unit costs
        tf.logical_and(few_terms, tf.logical_and(smallest > 0, smallest >= 4 * eps * total)),
    )  # [B]
    batch = grids.shape[0]
    chunks = 0 if batch is None or batch < 2 * _CHUNK else batch // _CHUNK
    masks = []
    if chunks:
        size = chunks * _CHUNK
        solved = tf.map_fn(
            lambda chunk: _solve_chunk(*chunk, moves),
            (
                tf.reshape(grids[:size], [chunks, _CHUNK, h, w]),
                tf.reshape(valid[:size], [chunks, _CHUNK]),
                tf.reduce_all(tf.reshape(plateau_free[:size], [chunks, _CHUNK]), axis=1),
            ),
            fn_output_signature=grids.dtype,
        )  # [chunks, CHUNK, H, W]
        masks.append(tf.reshape(solved, [size, h, w]))
    if not chunks or batch % _CHUNK:
        rest = chunks * _CHUNK
        masks.append(_solve_chunk(grids[rest:], valid[rest:], tf.reduce_all(plateau_free[rest:]), moves))
    masks = tf.concat(masks, 0) if len(masks) > 1 else masks[0]  # [B, H, W]
    return tf.where(valid[:, None, None], masks, tf.constant(float("nan"), masks.dtype))


# Batches of at least this many grids are solved in two halves: the sweeps are element-wise
# work over the batch, which one compiled program runs on one core.
_SPLIT_BATCH = 128
_solve_batch = _halves.in_two_halves(_solve, _SPLIT_BATCH)  # [B, H, W], moves → [B, H, W]


def shortest_path(costs: tf.Tensor, neighbourhood: int = 8) -> tf.Tensor:
    """Mask of a minimum-cost path from the top-left to the bottom-right vertex of a grid.

    Vertex (y, x) of an H × W grid costs `costs[..., y, x]`; a path pays the cost of
    every vertex it visits, both ends included (the Warcraft setting of Vlastelica et
    al.). Moves go to the 8 surrounding vertices (king moves) or to the 4 sharing an
    edge. Among several optimal paths the result is a deterministic function of the
    costs. Batched over the leading axes, XLA-compilable.

    Formula:
        y*(c) = argmin_{y ∈ P} ⟨y, c⟩, P = masks of paths (0, 0) → (H−1, W−1)
        dist(v) = c_v + min_{u ∈ N(v)} dist(u),  dist(0, 0) = c_00
        (relaxation sweeps to convergence, then backtracking from (H−1, W−1))

    Args:
        costs: vertex costs `[..., H, W]`, finite and ≥ 0, any float or integer dtype;
            half precision and integers are solved in float32.
        neighbourhood: 8 (king moves, default) or 4 (up, down, left, right).

    Returns:
        0/1 mask `[..., H, W]` of the path's vertices, in costs' float dtype (float32
        for integer costs). Under `jit_compile=True` XLA drops the check below; a grid
        with a negative or non-finite cost then gives a mask of NaN.

    Raises:
        ValueError: if costs has rank < 2 or an empty grid axis, or `neighbourhood` is
            not 4 or 8.
        TypeError: if costs is neither float nor integer.
        tf.errors.InvalidArgumentError: if a cost is negative, NaN or infinite (negative
            costs can form negative cycles, which make shortest paths undefined).

    Example:
        >>> costs = tf.constant([[1.0, 9.0, 9.0],
        ...                      [5.0, 1.0, 9.0],
        ...                      [2.0, 1.0, 1.0]])
        >>> shortest_path(costs).numpy()
        array([[1., 0., 0.],
               [0., 1., 0.],
               [0., 0., 1.]], dtype=float32)
        >>> shortest_path(costs, neighbourhood=4).numpy()
        array([[1., 0., 0.],
               [1., 1., 0.],
               [0., 1., 1.]], dtype=float32)

    References:
        Vlastelica, Paulus, Musil, Martius, Rolínek. Differentiation of Blackbox
        Combinatorial Solvers. ICLR 2020 (the Warcraft shortest-path benchmark).
    """
    costs, dtype = validate.scores(costs, "costs", min_rank=2)
    moves = _moves(neighbourhood)
    shape = tf.shape(costs)
    h, w = shape[-2], shape[-1]
    grids = tf.reshape(costs, [-1, h, w])  # [B, H, W]
    # No gradient flows through a solver; stop_gradient also keeps tapes from recording
    # the compiled loop (whose TensorLists cannot cross the XLA boundary).
    # Inside XLA the halves would run one after the other: one call saves splitting.
    solve = _solve if tf_compat.in_xla_context() else _solve_batch
    mask = solve(tf.stop_gradient(grids), moves)  # [B, H, W], NaN for a bad grid
    # Every path holds the top-left vertex: 1 there, NaN for a grid with a bad cost.
    valid = tf.reduce_all(tf.math.is_finite(mask[:, 0, 0]))

    def report():
        tf.debugging.Assert(
            valid,
            [
                "Expected `costs` finite and ≥ 0 (negative costs make shortest paths "
                "undefined), received: costs with a negative, NaN or infinite entry; "
                "min(costs) =",
                tf.reduce_min(grids),
            ],
        )
        return mask

    mask = tf.cond(valid, lambda: mask, report)
    return tf.cast(tf.reshape(mask, shape), dtype)  # [..., H, W]
