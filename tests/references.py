"""Textbook references the tests compare the package's solvers with."""

import functools
import heapq
import itertools

import numpy as np

MOVES = {  # the grid shortest path's neighbourhoods
    8: ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)),
    4: ((-1, 0), (0, -1), (0, 1), (1, 0)),
}


def dijkstra(grid: np.ndarray, neighbourhood: int = 8) -> float:
    """Cheapest (0, 0) → (H−1, W−1) path on vertex costs, both ends paid: textbook Dijkstra."""
    h, w = grid.shape
    best = np.full((h, w), np.inf)
    best[0, 0] = grid[0, 0]
    heap = [(grid[0, 0], 0, 0)]
    while heap:
        dist, i, j = heapq.heappop(heap)
        if dist > best[i, j]:
            continue
        for di, dj in MOVES[neighbourhood]:
            a, b = i + di, j + dj
            if 0 <= a < h and 0 <= b < w and dist + grid[a, b] < best[a, b]:
                best[a, b] = dist + grid[a, b]
                heapq.heappush(heap, (best[a, b], a, b))
    return best[-1, -1]


def k_hots(d: int, k: int) -> np.ndarray:
    """Every 0/1 vector of length d with k ones: [C(d, k), d]."""
    return np.array([np.isin(np.arange(d), chosen) for chosen in itertools.combinations(range(d), k)], float)


@functools.cache
def permutations(n: int) -> np.ndarray:
    """All permutations of 0, …, n−1: [n!, n], int64."""
    return np.array(list(itertools.permutations(range(n))), dtype=np.int64).reshape(-1, n)


def selections(weights, capacity) -> np.ndarray:
    """Every 0/1 selection of the items whose total weight is ≤ capacity: [V, n].

    weights `[n]` and a capacity, or `[k, n]` and k capacities (every resource within its own).
    """
    table = np.atleast_2d(np.array(weights, float))  # [k, n]
    chosen = np.array(list(itertools.product([0.0, 1.0], repeat=table.shape[1])))
    return chosen[np.all(chosen @ table.T <= np.atleast_1d(capacity), axis=-1)]


def graph_distances(costs: np.ndarray, senders, receivers, source: int, target=None) -> np.ndarray:
    """Cheapest source → target path costs on a directed graph, per cost vector of `costs` [N, E]:
    [N] float64, or [N, V] to every vertex (inf: unreachable) when `target` is None.

    `scipy.sparse.csgraph.shortest_path` (Dijkstra for costs ≥ 0, Bellman-Ford otherwise) on a
    CSR matrix holding, for each (sender, receiver) pair, the cheapest of its parallel edges.
    """
    import scipy.sparse
    from scipy.sparse.csgraph import shortest_path

    senders, receivers = np.asarray(senders), np.asarray(receivers)
    size = max(senders.max(), receivers.max(), source, -1 if target is None else target) + 1
    pairs = senders * size + receivers
    order = np.lexsort((np.arange(len(pairs)), pairs))
    first = np.ones(len(pairs), bool)
    first[1:] = pairs[order][1:] != pairs[order][:-1]  # the first edge of each pair in `order`
    keep = order[first]
    distances = []
    for row in np.asarray(costs, np.float64):
        cheapest = np.minimum.reduceat(row[order], np.flatnonzero(first))  # per pair, in pair order
        graph = scipy.sparse.csr_matrix((cheapest, (senders[keep], receivers[keep])), shape=(size, size))
        method = "D" if (row >= 0).all() else "BF"
        distances.append(shortest_path(graph, method=method, indices=source))
    distances = np.array(distances)  # [N, V]
    return distances if target is None else distances[:, target]


def is_simple_path(y: np.ndarray, senders, receivers, source: int, target: int) -> bool:
    """Whether the 0/1 edge indicators y [E] mark exactly the edges of one simple source → target path."""
    if not np.isin(y, [0.0, 1.0]).all():
        return False
    chosen = np.flatnonzero(y == 1)
    senders, receivers = np.asarray(senders)[chosen], np.asarray(receivers)[chosen]
    vertex = source
    for _ in range(len(chosen)):  # walk the chosen edges out of the source, one per vertex
        if vertex == target:
            return False  # edges left over
        out = np.flatnonzero(senders == vertex)
        if len(out) != 1:
            return False
        vertex = receivers[out[0]]
    return vertex == target
