"""Shortest source → target paths on a fixed directed graph with edge costs, in TensorFlow ops.

The graph is given by its edges, `senders[e] → receivers[e]`, and stays fixed; the
costs, one per edge, are the scores a model predicts (PyEPO's shortest-path setting).
`graph_shortest_path` is batched over the costs' leading axes and compiles with XLA:

1. Bellman-Ford: every round relaxes every edge at once, `dist(v) ← min(dist(v),
   min_{e = (u, v)} dist(u) + c_e)` (a gather over the senders and
   `tf.math.unsorted_segment_min` over the receivers), in a `tf.while_loop` that stops
   once a round changes nothing, after at most V − 1 rounds (a shortest path has at
   most V − 1 edges).
2. Tight edges: those with `dist(u) + c_e = dist(v)`, in the float arithmetic of the
   relaxation, so that no tolerance is needed. On a graph with cycles (costs ≥ 0), a
   tight edge between vertices at the same distance (a zero or negligible cost) could
   close a cycle, so plateau depths break those ties as in the grid solver: a vertex is
   an exit if it is the source or a tight edge comes from a strictly closer vertex;
   exits get depth 0, any other vertex 1 + the smallest depth among its tight
   predecessors at its distance (this loop usually runs no round at all). An edge is
   admissible if it is tight and (distance, depth) strictly decreases along it
   backwards. On an acyclic graph every tight edge is admissible, whatever the signs
   of the costs.
3. Backtracking: each vertex's predecessor is its admissible incoming edge of lowest
   index; the walk from the target follows them back to the source in at most V − 1
   steps and marks their edges.

The rounds of the first item are the round at which each vertex's distance is first
reached only in exact arithmetic: in floats a cost can absorb the last improvement of
its sender's distance, so depths are taken from the final distances instead.

The solver is compiled with XLA even when called eagerly or from a `tf.function`
without `jit_compile` (a nested `tf.function(jit_compile=True)`), as the other
structured solvers are; batches of many costs are solved in two halves, on two cores.
"""

import collections
import dataclasses
import functools
import numbers
from typing import Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from tf_perturbed._src.base import validate
from tf_perturbed._src.solvers import _halves


@dataclasses.dataclass(frozen=True)
class Graph:
    """A checked directed graph: `senders[e] → receivers[e]`, vertices 0 … num_vertices − 1."""

    senders: Tuple[int, ...]
    receivers: Tuple[int, ...]
    source: int
    target: int
    num_vertices: int
    acyclic: bool


def _vertex_list(value, name: str) -> Tuple[int, ...]:
    """`value` as a non-empty tuple of ints ≥ 0, or raises naming `name` and the bad entry."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(
            f"Expected `{name}` to be a sequence of vertex indices (integers ≥ 0), received: {name}={value!r}"
        )
    value = tuple(value)
    if not value:
        raise ValueError(f"Expected `{name}` to hold one vertex index per edge, received: {name}={value!r}")
    for i, vertex in enumerate(value):
        if isinstance(vertex, bool) or not isinstance(vertex, numbers.Integral) or vertex < 0:
            raise ValueError(
                f"Expected `{name}` to be vertex indices (integers ≥ 0), received: {name}[{i}]={vertex!r}"
            )
    return tuple(int(vertex) for vertex in value)


def _is_acyclic(senders: Sequence[int], receivers: Sequence[int], num_vertices: int) -> bool:
    """Whether the graph has no directed cycle (self-loops included): Kahn's topological sort."""
    indegree = np.bincount(receivers, minlength=num_vertices)
    order = np.argsort(senders, kind="stable")
    starts = np.searchsorted(np.asarray(senders)[order], np.arange(num_vertices + 1))
    heads = np.asarray(receivers)[order]
    ready = collections.deque(np.flatnonzero(indegree == 0).tolist())
    sorted_count = 0
    while ready:
        vertex = ready.popleft()
        sorted_count += 1
        for head in heads[starts[vertex] : starts[vertex + 1]].tolist():
            indegree[head] -= 1
            if indegree[head] == 0:
                ready.append(head)
    return sorted_count == num_vertices


def _reachable(senders: Sequence[int], receivers: Sequence[int], source: int, num_vertices: int) -> np.ndarray:
    """Boolean `[V]`: the vertices reachable from `source` along the edges (breadth-first search)."""
    reached = np.zeros(num_vertices, bool)
    reached[source] = True
    senders, receivers = np.asarray(senders), np.asarray(receivers)
    frontier = reached.copy()
    while frontier.any():
        heads = receivers[frontier[senders]]
        frontier = np.zeros(num_vertices, bool)
        frontier[heads] = True
        frontier &= ~reached
        reached |= frontier
    return reached


@functools.lru_cache(maxsize=64)
def _checked(senders: tuple, receivers: tuple, source: int, target: int, num_vertices: Optional[int]) -> Graph:
    if len(senders) != len(receivers):
        raise ValueError(
            "Expected `senders` and `receivers` of one length (one entry each per edge), received: "
            f"len(senders)={len(senders)}, len(receivers)={len(receivers)}"
        )
    largest = max(max(senders), max(receivers))
    if num_vertices is None:
        num_vertices = largest + 1
    elif num_vertices <= largest:
        raise ValueError(
            f"Expected `num_vertices` greater than every vertex index of the edges (the largest is "
            f"{largest}), received: num_vertices={num_vertices}"
        )
    for name, vertex in (("source", source), ("target", target)):
        if vertex >= num_vertices:
            raise ValueError(
                f"Expected `{name}` to be a vertex, an integer in [0, {num_vertices}) (num_vertices = "
                f"{num_vertices}), received: {name}={vertex}"
            )
    if not _reachable(senders, receivers, source, num_vertices)[target]:
        raise ValueError(
            "Expected `target` reachable from `source` along the edges (senders → receivers), received: "
            f"source={source}, target={target}, which no path joins"
        )
    return Graph(senders, receivers, source, target, num_vertices, _is_acyclic(senders, receivers, num_vertices))


def check_graph(senders, receivers, source, target, num_vertices: Optional[int] = None) -> Graph:
    """The checked `Graph`, or raises naming the argument (results are cached per graph).

    Raises:
      TypeError: for edge lists that are not sequences, or a vertex that is not an integer.
      ValueError: for empty or negative edge lists, lists of different lengths, a vertex
        out of range, or a target that no path reaches from the source.
    """
    return _checked(
        _vertex_list(senders, "senders"),
        _vertex_list(receivers, "receivers"),
        validate.integer(source, "source", minimum=0),
        validate.integer(target, "target", minimum=0),
        validate.optional_integer(num_vertices, "num_vertices"),
    )


def grid_graph_edges(rows: int, cols: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(senders, receivers) of the rows × cols grid whose edges go right and down (PyEPO's graph).

    Vertex (i, j) is `i · cols + j`. The edges are listed as in PyEPO: row by row,
    first the row's edges to the right, then its edges down. The 5 × 5 grid has 40 edges
    from vertex 0 (top left) to vertex 24 (bottom right); the graph is acyclic.

    Args:
      rows: number of rows, an integer ≥ 1.
      cols: number of columns, an integer ≥ 1 (rows · cols ≥ 2: the grid needs an edge).

    Returns:
      Two tuples of ints of length `rows · (cols − 1) + (rows − 1) · cols`.

    Raises:
      TypeError, ValueError: for sizes that are not integers ≥ 1, or a 1 × 1 grid.

    Example:
      >>> grid_graph_edges(2, 2)
      ((0, 0, 1, 2), (1, 2, 3, 3))

    References:
      Tang, Khalil. PyEPO: A PyTorch-based End-to-End Predict-then-Optimize Library for
      Linear and Integer Programming (2022), the shortest-path data set.
    """
    rows, cols = validate.integer(rows, "rows"), validate.integer(cols, "cols")
    if rows * cols < 2:
        raise ValueError(f"Expected a grid of at least two vertices, received: rows={rows}, cols={cols}")
    senders, receivers = [], []
    for i in range(rows):
        for j in range(cols - 1):  # to the right
            senders.append(i * cols + j)
            receivers.append(i * cols + j + 1)
        if i < rows - 1:
            for j in range(cols):  # down
                senders.append(i * cols + j)
                receivers.append((i + 1) * cols + j)
    return tuple(senders), tuple(receivers)


# ----------------------------------------------------------------------------- the solver


def _distances(costs: tf.Tensor, senders, receivers, source, num_vertices: int) -> tf.Tensor:
    """Bellman-Ford: the cost of the cheapest path from the source to every vertex (+inf: none).

    Args:
        costs: `[E, B]`, finite; ≥ 0 unless the graph is acyclic.

    Returns:
        Distances `[V, B]`. At convergence every vertex v with an incoming edge satisfies
        `dist(v) ≤ dist(u) + c_e` for each of them in float arithmetic, with equality for
        one of them unless v is the source or unreachable.
    """
    batch = tf.shape(costs)[1]
    inf = tf.constant(float("inf"), costs.dtype)
    vertices = tf.range(num_vertices)
    is_source = tf.equal(vertices, source)[:, None]  # [V, 1]
    dist = tf.where(is_source, tf.zeros([num_vertices, batch], costs.dtype), inf)  # [V, B]
    # Vertices without incoming edges keep their distance: unsorted_segment_min gives the
    # dtype's largest finite value (not +inf) for an empty segment.
    has_in = tf.math.unsorted_segment_max(tf.ones_like(receivers), receivers, num_vertices) > 0  # [V]

    def relax(dist, changed):
        del changed
        through = tf.gather(dist, senders) + costs  # [E, B]
        best = tf.math.unsorted_segment_min(through, receivers, num_vertices)  # [V, B]
        new = tf.where(has_in[:, None], tf.minimum(dist, best), dist)
        return new, tf.reduce_any(new < dist)

    dist, _ = tf.while_loop(
        lambda dist, changed: changed,
        relax,
        (dist, tf.constant(True)),
        maximum_iterations=num_vertices - 1,
    )
    return dist


def _plateau_depths(dist, tight, senders, receivers, source, num_vertices: int) -> tf.Tensor:
    """Tie-breaking potential on a graph with cycles, int32 `[V, B]`.

    An exit is the source, an unreachable vertex, or one with a tight incoming edge from
    a strictly closer vertex; exits get 0. Any other reachable vertex has only tight
    incoming edges from vertices at its own distance (costs ≥ 0) and gets 1 + the
    smallest depth among them. Every reachable vertex is joined to the source by tight
    edges along which distances do not decrease, so the first vertex at its distance on
    such a path is an exit and the depths are finite.
    """
    dist_from, dist_to = tf.gather(dist, senders), tf.gather(dist, receivers)  # [E, B]
    closer = tf.cast(tf.logical_and(tight, dist_from < dist_to), tf.int32)  # [E, B]
    from_closer = tf.math.unsorted_segment_max(closer, receivers, num_vertices) > 0  # [V, B]
    is_source = tf.equal(tf.range(num_vertices), source)[:, None]  # [V, 1]
    exits = tf.logical_or(tf.logical_or(is_source, from_closer), tf.logical_not(tf.math.is_finite(dist)))
    level = tf.logical_and(tight, tf.equal(dist_from, dist_to))  # [E, B] edges within a plateau
    unknown = num_vertices  # larger than any depth
    depth = tf.where(exits, 0, unknown)  # [V, B]

    def deepen(depth, changed):
        del changed
        via = tf.where(level, tf.gather(depth, senders) + 1, unknown)  # [E, B]
        best = tf.math.unsorted_segment_min(via, receivers, num_vertices)  # [V, B]
        new = tf.where(exits, 0, tf.minimum(depth, best))
        return new, tf.reduce_any(new < depth)

    depth, _ = tf.while_loop(
        lambda depth, changed: changed,
        deepen,
        (depth, tf.reduce_any(tf.logical_not(exits))),
        maximum_iterations=num_vertices,
    )
    return depth


def _backtrack(previous, senders, source, target, num_edges: int, dtype: tf.DType) -> tf.Tensor:
    """0/1 edge indicators `[B, E]` of the walk from the target back to the source.

    Args:
        previous: each vertex's predecessor edge, int32 `[V, B]` (E where it has none).
    """
    num_vertices, batch = tf.shape(previous)[0], tf.shape(previous)[1]
    rows = tf.range(batch)  # [B]
    ones = tf.ones([batch], dtype)
    # Index E stands for "no edge": it leads back to the source, and its column is dropped.
    senders = tf.concat([senders, tf.reshape(source, [1])], 0)  # [E + 1]

    def step(vertex, on_path):
        edge = tf.gather_nd(previous, tf.stack([vertex, rows], axis=1))  # [B]
        edge = tf.where(tf.equal(vertex, source), num_edges, edge)
        on_path = tf.tensor_scatter_nd_update(on_path, tf.stack([rows, edge], axis=1), ones)
        return tf.gather(senders, edge), on_path

    _, on_path = tf.while_loop(
        lambda vertex, on_path: tf.reduce_any(tf.not_equal(vertex, source)),
        step,
        (tf.fill([batch], target), tf.zeros([batch, num_edges + 1], dtype)),  # on_path: [B, E + 1]
        maximum_iterations=num_vertices - 1,
    )
    return on_path[:, :num_edges]  # [B, E]


@tf.function(jit_compile=True, autograph=False)
def _solve(costs, senders, receivers, source, target, num_vertices: int, acyclic: bool) -> tf.Tensor:
    """0/1 edge indicators `[B, E]` of shortest paths for costs `[B, E]` (finite; ≥ 0 unless acyclic).

    The edges (int32 `[E]`) and the end vertices (int32 scalars) are tensors, so that
    graphs with as many vertices and edges share one compiled program.
    """
    num_edges = costs.shape[1]
    costs = tf.transpose(costs)  # [E, B]: the batch is the contiguous axis
    dist = _distances(costs, senders, receivers, source, num_vertices)  # [V, B]
    through = tf.gather(dist, senders) + costs  # [E, B]
    tight = tf.logical_and(tf.equal(through, tf.gather(dist, receivers)), tf.math.is_finite(through))
    admissible = tight  # on an acyclic graph no walk backwards along edges can cycle
    if not acyclic:
        depth = _plateau_depths(dist, tight, senders, receivers, source, num_vertices)  # [V, B]
        dist_from, dist_to = tf.gather(dist, senders), tf.gather(dist, receivers)  # [E, B]
        shallower = tf.gather(depth, senders) < tf.gather(depth, receivers)  # [E, B]
        descends = tf.logical_or(dist_from < dist_to, tf.logical_and(tf.equal(dist_from, dist_to), shallower))
        admissible = tf.logical_and(tight, descends)
    edges = tf.range(num_edges)[:, None]  # [E, 1]
    previous = tf.math.unsorted_segment_min(tf.where(admissible, edges, num_edges), receivers, num_vertices)
    previous = tf.minimum(previous, num_edges)  # [V, B]; a vertex without incoming edges: E
    return _backtrack(previous, senders, source, target, num_edges, costs.dtype)  # [B, E]


# Batches of at least this many costs (problems × edges) are solved in two halves, which the
# TensorFlow executor runs on two cores (one compiled call runs on one); below it, the second
# call costs more than it saves (PyEPO's 5 × 5 grid, B = 512: 20,480 costs).
_SPLIT_COSTS = 2**17
_solve_in_halves = _halves.in_two_halves(_solve, 2)


def graph_shortest_path(
    costs: tf.Tensor,
    senders: Sequence[int],
    receivers: Sequence[int],
    source: int,
    target: int,
    num_vertices: Optional[int] = None,
) -> tf.Tensor:
    """Edge indicators of a minimum-cost path from `source` to `target` on a directed graph.

    Edge e goes from vertex `senders[e]` to vertex `receivers[e]` and costs `costs[..., e]`;
    a path pays the cost of each of its edges. On a graph with cycles the costs must be
    ≥ 0 (a negative cycle makes shortest paths undefined); on an acyclic graph any finite
    costs are accepted. The graph is checked once (lists, vertex range, reachability of
    the target, cycles) with NumPy and the check is cached. Batched over the leading axes,
    XLA-compilable.

    Among several shortest paths the result is the one the backtracking reaches: each
    vertex's predecessor is its lowest-index incoming edge that attains its distance (on a
    graph with cycles, among those from a closer vertex, or from one at the same distance
    that is fewer zero-cost steps from a closer one), a deterministic function of the
    costs. Parallel edges and self-loops are allowed.

    Formula:
        y*(c) = argmin_{y ∈ P} ⟨y, c⟩, P = edge indicators of source → target paths
        dist(source) = 0,  dist(v) = min_{e = (u, v)} dist(u) + c_e
        (Bellman-Ford, at most V − 1 rounds, then backtracking from the target)

    Args:
        costs: edge costs `[..., E]`, E = len(senders), finite (and ≥ 0 on a graph with
            cycles), any float or integer dtype; half precision and integers are solved
            in float32.
        senders: E vertex indices (integers ≥ 0), the edges' tails.
        receivers: E vertex indices, the edges' heads.
        source: the first vertex of the paths.
        target: the last vertex, reachable from `source` (`target == source` gives the
            empty path, all zeros).
        num_vertices: V, the number of vertices; default 1 + the largest index in the
            edge lists.

    Returns:
        0/1 edge indicators `[..., E]` in costs' float dtype (float32 for integer costs).
        Path costs must stay finite in that dtype. Under `jit_compile=True` XLA drops the
        check below; a problem with an invalid cost then gives indicators of NaN.

    Raises:
        ValueError: if costs has rank < 1 or not E entries on its last axis; for edge lists
            of different lengths, empty or with negative entries, a vertex out of range, or
            a target that no path reaches from the source.
        TypeError: if costs is neither float nor integer, or a vertex is not an integer.
        tf.errors.InvalidArgumentError: if a cost is NaN or infinite, or negative on a
            graph with cycles.

    Example:
        >>> senders, receivers = [0, 0, 1, 2, 1], [1, 2, 3, 3, 2]
        >>> graph_shortest_path(tf.constant([1.0, 4.0, 5.0, 1.0, 1.0]), senders, receivers,
        ...                     source=0, target=3).numpy()
        array([1., 0., 0., 1., 1.], dtype=float32)

    References:
        Bellman. On a routing problem. Quarterly of Applied Mathematics 16 (1958).
        Tang, Khalil. PyEPO: A PyTorch-based End-to-End Predict-then-Optimize Library for
        Linear and Integer Programming (2022), the shortest-path data set.
    """
    graph = check_graph(senders, receivers, source, target, num_vertices)
    num_edges = len(graph.senders)
    costs, dtype = validate.scores(costs, "costs", min_rank=1)
    if costs.shape[-1] is not None and costs.shape[-1] != num_edges:
        raise ValueError(
            f"Expected `costs` with one entry per edge, E = len(senders) = {num_edges} on its last axis, "
            f"received: costs.shape={costs.shape}"
        )
    shape = tf.shape(costs)
    check = tf.debugging.Assert(
        tf.equal(shape[-1], num_edges),
        [f"Expected `costs` with one entry per edge, E = len(senders) = {num_edges} on its last axis, "
         "received: costs.shape =", shape],
    )
    with tf.control_dependencies([check]):
        rows = tf.reshape(costs, [-1, num_edges])  # [B, E]
    valid = tf.math.is_finite(rows)
    if graph.acyclic:
        message = "Expected `costs` finite, received: costs with a NaN or infinite entry"
        data = []
    else:
        valid = tf.logical_and(valid, rows >= 0)
        message = (
            "Expected `costs` finite and ≥ 0 on a graph with cycles (negative costs can form negative "
            "cycles), received: costs with a negative, NaN or infinite entry; min(costs) ="
        )
        data = [tf.reduce_min(rows)]
    valid = tf.reduce_all(valid, axis=-1)  # [B]
    tf.debugging.Assert(tf.reduce_all(valid), [message, *data])
    # Invalid problems (reachable only under XLA, which drops the assertion) are solved
    # with zero costs, and their indicators become NaN.
    rows = tf.where(valid[:, None], rows, tf.zeros_like(rows))
    batch = rows.shape[0]
    solve = _solve_in_halves if batch is not None and batch * num_edges >= _SPLIT_COSTS else _solve
    path = solve(
        tf.stop_gradient(rows),
        tf.constant(graph.senders, tf.int32),
        tf.constant(graph.receivers, tf.int32),
        tf.constant(graph.source, tf.int32),
        tf.constant(graph.target, tf.int32),
        graph.num_vertices,
        graph.acyclic,
    )  # [B, E]
    path = tf.where(valid[:, None], path, tf.constant(float("nan"), path.dtype))
    return tf.cast(tf.reshape(path, shape), dtype)  # [..., E]
