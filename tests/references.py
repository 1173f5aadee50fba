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


def selections(weights, capacity: int) -> np.ndarray:
    """Every 0/1 selection of the items whose total weight is ≤ capacity: [V, n]."""
    chosen = np.array(list(itertools.product([0.0, 1.0], repeat=len(weights))))
    return chosen[chosen @ np.array(weights, float) <= capacity]
