"""Tests of the grid shortest-path solver against SciPy's Dijkstra.

Each grid shape is solved in one batched call mixing three families of costs
(uniform reals, small integers with many ties, small integers with zeros), so that
every shape compiles once. The optimal costs are compared with
`scipy.sparse.csgraph.dijkstra` on the vertex-cost graph (edge u → v weighs c_v, plus
the source's own cost); since ties allow several optimal paths, the tests compare
costs and check that every mask is a simple path between the corners. Batch axes,
dtypes, determinism, eager = graph = XLA and bad, negative or non-finite costs are
checked by the solver contract, tests/test_solver_contract.py.
"""

import functools

import numpy as np
import pytest
import scipy.ndimage
import scipy.sparse
import tensorflow as tf
from scipy.sparse.csgraph import dijkstra

import tf_perturbed as tp

KING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
ROOK = ((-1, 0), (0, -1), (0, 1), (1, 0))
MOVES = {8: KING, 4: ROOK}

# (neighbourhood, H, W, batch): about 5,000 grids, and 2,400 more in the zero-cost test (1 × 1
# grids are in the solver contract).
CASES = [
    (8, 1, 9, 240),
    (8, 5, 8, 1200),
    (8, 12, 12, 1500),
    (8, 30, 30, 400),
    (4, 12, 12, 1200),
    (4, 30, 21, 300),
]


def _grids(batch: int, h: int, w: int, seed: int) -> np.ndarray:
    """float32 `[batch, h, w]`: thirds of reals in [0.1, 10), integers 1–3, integers 0–2."""
    rng = np.random.default_rng(seed)
    third = batch // 3
    reals = rng.uniform(0.1, 10.0, (third, h, w))
    ties = rng.integers(1, 4, (third, h, w))
    zeros = rng.integers(0, 3, (batch - 2 * third, h, w))
    return np.concatenate([reals, ties, zeros]).astype(np.float32)


@functools.cache
def _graph(h: int, w: int, neighbourhood: int):
    """CSR structure of the grid graph: (indptr, heads), edges sorted by tail."""
    index = np.arange(h * w).reshape(h, w)
    tails, heads = [], []
    for dy, dx in MOVES[neighbourhood]:
        tail = index[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
        head = index[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)]
        tails.append(tail.ravel())
        heads.append(head.ravel())
    tails, heads = np.concatenate(tails), np.concatenate(heads)
    order = np.lexsort((heads, tails))
    indptr = np.searchsorted(tails[order], np.arange(h * w + 1))
    return indptr, heads[order]


def _optimal_costs(costs: np.ndarray, neighbourhood: int) -> np.ndarray:
    """Cost of a cheapest path per grid, by Dijkstra in float64."""
    batch, h, w = costs.shape
    indptr, heads = _graph(h, w, neighbourhood)
    out = np.empty(batch)
    for b, grid in enumerate(costs.reshape(batch, -1).astype(np.float64)):
        # Explicit zeros stay edges in a CSR graph built this way.
        graph = scipy.sparse.csr_matrix((grid[heads], heads, indptr), shape=(h * w, h * w))
        out[b] = dijkstra(graph, indices=0)[-1] + grid[0]
    return out


def _degrees(masks: np.ndarray, neighbourhood: int) -> np.ndarray:
    """Number of mask neighbours of every vertex, `[B, H, W]`."""
    padded = np.pad(masks, [(0, 0), (1, 1), (1, 1)])
    h, w = masks.shape[1:]
    return sum(
        padded[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy, dx in MOVES[neighbourhood]
    )


def _is_hamiltonian_path(mask: np.ndarray, neighbourhood: int) -> bool:
    """Whether the mask's vertices form one simple path from (0, 0) to (H−1, W−1) (DFS)."""
    h, w = mask.shape
    vertices = {(y, x) for y, x in zip(*np.nonzero(mask), strict=True)}
    target = (h - 1, w - 1)

    def extend(vertex, seen):
        if vertex == target:
            return len(seen) == len(vertices)
        for dy, dx in MOVES[neighbourhood]:
            nxt = (vertex[0] + dy, vertex[1] + dx)
            if nxt in vertices and nxt not in seen:
                if extend(nxt, seen | {nxt}):
                    return True
        return False

    return (0, 0) in vertices and extend((0, 0), {(0, 0)})


def _check_paths(masks: np.ndarray, costs: np.ndarray, neighbourhood: int) -> None:
    """Every mask is 0/1, holds both corners, is connected and has the optimal cost."""
    batch, h, w = masks.shape
    assert set(np.unique(masks)) <= {0.0, 1.0}
    assert np.all(masks[:, 0, 0] == 1) and np.all(masks[:, -1, -1] == 1)
    values = np.sum(masks.astype(np.float64) * costs, axis=(1, 2))
    optimal = _optimal_costs(costs, neighbourhood)
    np.testing.assert_allclose(values, optimal, rtol=1e-5, atol=1e-5)
    structure = (
        np.ones((3, 3)) if neighbourhood == 8 else scipy.ndimage.generate_binary_structure(2, 1)
    )
    for mask in masks:
        _, count = scipy.ndimage.label(mask, structure=structure)
        assert count == 1
    # With positive costs an optimal path has no shortcut, so its mask is an induced
    # path: the ends have one mask neighbour, the other vertices two.
    positive = np.all(costs > 0, axis=(1, 2))
    degrees = _degrees(masks, neighbourhood)[positive]
    inner = masks[positive].copy()
    inner[:, 0, 0] = inner[:, -1, -1] = 0
    if h * w > 1:
        assert np.all(degrees[:, 0, 0] == 1) and np.all(degrees[:, -1, -1] == 1)
    assert np.all(degrees[inner == 1] == 2)


@pytest.mark.parametrize("neighbourhood, h, w, batch", CASES)
def test_optimal_against_scipy(neighbourhood, h, w, batch):
    costs = _grids(batch, h, w, seed=h * 100 + w + neighbourhood)
    masks = tp.solvers.shortest_path(costs, neighbourhood=neighbourhood).numpy()
    assert masks.shape == costs.shape and masks.dtype == np.float32
    _check_paths(masks, costs, neighbourhood)


@pytest.mark.parametrize("neighbourhood, h, w", [(8, 5, 8), (4, 12, 12)])
def test_zero_costs_give_simple_paths(neighbourhood, h, w):
    # Zero-cost plateaus are where a careless backtracking would loop or branch.
    costs = np.random.default_rng(neighbourhood).integers(0, 3, (1200, h, w)).astype(np.float32)
    costs[:50] = 0.0
    costs[50:100, :, 3:] = 0.0
    masks = tp.solvers.shortest_path(costs, neighbourhood=neighbourhood).numpy()
    _check_paths(masks, costs, neighbourhood)
    for mask in masks[:300]:
        assert _is_hamiltonian_path(mask, neighbourhood)


def test_example_from_docstring():
    costs = tf.constant([[1.0, 9.0, 9.0], [5.0, 1.0, 9.0], [2.0, 1.0, 1.0]])
    np.testing.assert_array_equal(tp.solvers.shortest_path(costs), np.eye(3))
    np.testing.assert_array_equal(
        tp.solvers.shortest_path(costs, neighbourhood=4), [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    )


def test_dynamic_shapes_in_graph_mode():
    solve = tf.function(
        lambda c: tp.solvers.shortest_path(c, neighbourhood=4),
        input_signature=[tf.TensorSpec([None, None, None], tf.float32)],
    )
    costs = _grids(300, 30, 21, seed=5)
    np.testing.assert_array_equal(solve(costs), tp.solvers.shortest_path(costs, neighbourhood=4))


def test_large_batches_split_in_halves_give_the_same_paths():
    # An odd batch at the split size is solved in two unequal halves; grids solved in
    # small batches (one compiled program each) must get the very same masks.
    batch = 129  # the solver splits batches of ≥ 128 grids in two halves (module docstring)
    costs = _grids(batch, 12, 12, seed=13)
    whole = tf.function(tp.solvers.shortest_path)(costs).numpy()  # halves run concurrently in graphs
    parts = np.concatenate([tp.solvers.shortest_path(costs[i : i + 43]).numpy() for i in range(0, batch, 43)])
    np.testing.assert_array_equal(whole, parts)
    _check_paths(whole, costs, 8)


def test_chunked_batches_give_the_same_paths():
    # A call on 256 grids or more solves them 128 at a time, and a chunk whose costs
    # leave no plateau skips the plateau depths. Thirds of reals, ties and zeros make
    # chunks of both kinds, and one grid with a negligible cost (lost in the additions)
    # has plateaus without zeros. Grids solved in small batches must get the same masks.
    costs = _grids(600, 12, 12, seed=17)
    costs[5, 6, 6] = 1e-9
    parts = np.concatenate([tp.solvers.shortest_path(costs[i : i + 50]).numpy() for i in range(0, 600, 50)])
    for jit_compile in (False, True):  # halves of 300 grids, or one call on 600 under XLA
        whole = tf.function(tp.solvers.shortest_path, jit_compile=jit_compile)(costs).numpy()
        np.testing.assert_array_equal(whole, parts)
    _check_paths(parts, costs, 8)


def test_neighbourhood_is_checked():
    with pytest.raises(ValueError, match="neighbourhood"):
        tp.solvers.shortest_path(tf.ones([3, 3]), neighbourhood=6)
    with pytest.raises(ValueError, match="neighbourhood"):
        tp.solvers.shortest_path(tf.ones([3, 3]), neighbourhood=True)
