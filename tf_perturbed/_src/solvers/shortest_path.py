"""Minimum-cost paths on grids with vertex costs (the Warcraft shortest-path setting).

The solver is batched min-plus dynamic programming in TensorFlow ops, so it runs
inside `tf.function` and compiles with XLA:

1. Bellman-Ford relaxation of the whole distance map at once, with shifted views
   of the grid padded with +inf (for king moves, a 3 × 3 box minimum taken over
   rows then columns), inside a `tf.while_loop` that stops once a round changes
   nothing (tested every second round; at most H·W + 1 rounds, since a path visits
   at most H·W vertices). Batches of 128 grids or more are solved in two halves,
   which the TensorFlow executor runs on two cores.
2. Plateau depths `h`: a vertex whose distance equals its closest neighbour's
   (zero or negligible cost) gets `h` = the number of such equal-distance steps to
   a vertex with a strictly closer neighbour (usually no vertex needs any).
3. Backtracking: each vertex's predecessor is its neighbour smallest in
   (distance, h, move order); (distance, h) strictly decreases along predecessors,
   so the walk from the bottom-right vertex is a simple path and reaches the
   top-left vertex in at most H·W − 1 steps.

Distances are compared only with values produced by the same float additions, so
the backtracking needs no tolerance. The solver is compiled with XLA even when called
eagerly or from a `tf.function` without `jit_compile` (a nested
`tf.function(jit_compile=True)`): its loops of small steps run about 15× slower in the
TensorFlow executor.
"""

from typing import Sequence, Tuple

import tensorflow as tf

from tf_perturbed._src.base import validate
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


def _distances(costs: tf.Tensor, moves: Moves) -> tf.Tensor:
    """Bellman-Ford: cost of the cheapest path from (0, 0) to every vertex, ends included.

    Args:
        costs: `[H, W, B]`, finite and ≥ 0.

    Returns:
        Distances `[H, W, B]`. At convergence every vertex but the source satisfies
        `dist = min_neighbour(dist) + cost` in float arithmetic.
    """
    h, w = tf.shape(costs)[0], tf.shape(costs)[1]
    inf = tf.constant(float("inf"), costs.dtype)
    border = [[1, 1], [1, 1], [0, 0]]
    source = tf.reshape(tf.range(h * w) == 0, [h, w, 1])  # [H, W, 1]
    dist = tf.pad(tf.where(source, costs, inf), border, constant_values=inf)  # [H+2, W+2, B]

    def relax(padded):
        """One round on the padded distances: (new padded distances, candidates, old)."""
        candidate = _padded_min(padded, moves) + costs  # [H, W, B]
        old = padded[1:-1, 1:-1]  # [H, W, B]
        return tf.pad(tf.minimum(old, candidate), border, constant_values=inf), candidate, old

    def two_rounds(padded, changed):
        # Extra rounds after convergence change nothing, so only every second round is
        # tested (the test and its reduction cost about as much as a round). The
        # distances stay padded with +inf so that no round pads a copy of them.
        del changed
        padded, candidate, old = relax(relax(padded)[0])
        return padded, tf.reduce_any(candidate < old)

    dist, _ = tf.while_loop(
        lambda padded, changed: changed,
        two_rounds,
        (dist, tf.constant(True)),
        maximum_iterations=(h * w + 1) // 2,
    )
    return dist[1:-1, 1:-1]  # [H, W, B]


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


@tf.function(jit_compile=True, autograph=False)
def _solve(grids: tf.Tensor, moves: Moves) -> tf.Tensor:
    """0/1 masks `[B, H, W]` of shortest paths on grids `[B, H, W]` of costs ≥ 0."""
    grids = tf.transpose(grids, [1, 2, 0])  # [H, W, B]: the batch is the contiguous axis
    dist = _distances(grids, moves)  # [H, W, B]
    depth = _plateau_depths(dist, moves)  # [H, W, B]
    previous = _predecessors(dist, depth, moves)  # [H, W, B]
    return _backtrack(previous, moves, grids.dtype)  # [B, H, W]


# Batches of at least this many grids are solved in two halves: the relaxation rounds are
# element-wise work over the whole batch, which one compiled program runs on one core.
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
        (Bellman-Ford to convergence, then backtracking from (H−1, W−1))

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
    valid = tf.reduce_all(tf.logical_and(grids >= 0, tf.math.is_finite(grids)), axis=[1, 2])  # [B]
    tf.debugging.Assert(
        tf.reduce_all(valid),
        [
            "Expected `costs` finite and ≥ 0 (negative costs make shortest paths "
            "undefined), received: costs with a negative, NaN or infinite entry; "
            "min(costs) =",
            tf.reduce_min(grids),
        ],
    )
    # Invalid grids (reachable only under XLA, which drops the assertion) are solved
    # with zero costs, so every loop stays bounded, and their masks become NaN.
    grids = tf.where(valid[:, None, None], grids, tf.zeros_like(grids))
    # No gradient flows through a solver; stop_gradient also keeps tapes from recording
    # the compiled loop (whose TensorLists cannot cross the XLA boundary).
    mask = _solve_batch(tf.stop_gradient(grids), moves)  # [B, H, W]
    mask = tf.where(valid[:, None, None], mask, tf.constant(float("nan"), mask.dtype))
    return tf.cast(tf.reshape(mask, shape), dtype)  # [..., H, W]
