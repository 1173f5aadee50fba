"""Tests of the general-graph shortest-path solver against SciPy, beyond the solver contract.

The contract (tests/test_solver_contract.py) holds the solver on PyEPO's 5 × 5 grid DAG to
optimality, ties, batch axes, dtypes, eager = graph = XLA and non-finite costs. Here: thousands
of random directed graphs, acyclic with costs of any sign and cyclic with costs ≥ 0 (self-loops,
parallel edges, zero-cost cycles), against `scipy.sparse.csgraph.shortest_path`
(`references.graph_distances`); since ties allow several optimal paths, the tests compare path
costs and check that every output marks one simple source → target path, and check the
documented tie rule where SciPy's exact distances determine it. Then float rounding that absorbs
costs, float64, cyclic graphs in every mode, the arguments' errors, the registry's
per-graph domain, and the estimators on the solver.

Each random graph family keeps its number of vertices, of edges and of problems per call fixed,
so that all its graphs share one compiled program.
"""

import doctest
import json

import keras
import numpy as np
import pytest
import references
import scipy.sparse
import tensorflow as tf
from scipy.sparse.csgraph import breadth_first_order, connected_components, shortest_path

import tf_perturbed as tp
from tf_perturbed._src.solvers import graph as graph_lib

PROBLEMS = 48  # cost vectors per graph (and per call)


# ----------------------------------------------------------------------------- random graphs


def _adjacency(senders, receivers, size: int) -> scipy.sparse.csr_matrix:
    return scipy.sparse.csr_matrix((np.ones(len(senders)), (senders, receivers)), shape=(size, size))


def _ends(rng, senders, receivers, size: int):
    """A source with out-edges and the vertex it reaches last in breadth-first order (SciPy)."""
    adjacency = _adjacency(senders, receivers, size)
    while True:
        source = int(rng.choice(senders))
        order = breadth_first_order(adjacency, source, directed=True, return_predecessors=False)
        if len(order) > 1:
            return source, int(order[-1])


def _random_graph(rng, size: int, edges: int, acyclic: bool):
    """(senders, receivers, source, target): random edges, parallel ones included.

    Acyclic: every edge goes forwards in a random order of the vertices. Cyclic: any
    pairs, self-loops included, and the first edge's reverse, so that there is a cycle.
    """
    if acyclic:
        order = rng.permutation(size)
        a, b = rng.integers(0, size, edges), rng.integers(0, size - 1, edges)
        b = np.where(b >= a, b + 1, b)  # b ≠ a
        senders, receivers = order[np.minimum(a, b)], order[np.maximum(a, b)]
    else:
        senders, receivers = rng.integers(0, size, edges), rng.integers(0, size, edges)
        senders[-1], receivers[-1] = receivers[0], senders[0]
    senders, receivers = [int(v) for v in senders], [int(v) for v in receivers]
    return (senders, receivers, *_ends(rng, senders, receivers, size))


def _costs(rng, edges: int, acyclic: bool) -> np.ndarray:
    """float32 `[PROBLEMS, E]`: reals, and integers with many ties (and zeros).

    Acyclic: halves of Gaussians and integers in [−3, 3]. Cyclic (costs ≥ 0): thirds of
    reals in [0.1, 10), integers in [0, 3], and zeros with a few ones (zero-cost cycles).
    """
    if acyclic:
        half = PROBLEMS // 2
        return np.concatenate([rng.normal(size=(half, edges)), rng.integers(-3, 4, (half, edges))]).astype(np.float32)
    third = PROBLEMS // 3
    zeros = (rng.uniform(size=(third, edges)) < 0.2).astype(float)
    return np.concatenate([rng.uniform(0.1, 10, (third, edges)), rng.integers(0, 4, (third, edges)), zeros]).astype(
        np.float32
    )


def _assert_shortest(y, costs, senders, receivers, source, target) -> None:
    """Every row of y is a simple path with the optimal cost: exactly for integer costs, else
    within 2·(V − 1)·2⁻²⁴·Σ|c| (float32 sums of ≤ V − 1 costs, each within (V − 1)·2⁻²⁴·Σ|c|)."""
    for path in y:
        assert references.is_simple_path(path, senders, receivers, source, target), (path, senders, receivers)
    costs = costs.astype(np.float64)
    gap = (y * costs).sum(-1) - references.graph_distances(costs, senders, receivers, source, target)
    size = max(max(senders), max(receivers)) + 1
    integer = (costs == np.round(costs)).all(-1)
    tolerance = np.where(integer, 0.0, 2 * (size - 1) * 2.0**-24 * np.abs(costs).sum(-1))
    bad = np.flatnonzero(np.abs(gap) > tolerance)
    assert bad.size == 0, (gap[bad], costs[bad[:1]], senders, receivers, source, target)


# (acyclic, vertices, edges, graphs): 4 × 50 graphs × 48 cost vectors = 9,600 problems.
SMALL, LARGE = (6, 9), (24, 70)  # SMALL: the size of the graphs worked by hand below
FAMILIES = [(True, *SMALL, 50), (True, *LARGE, 50), (False, *SMALL, 50), (False, *LARGE, 50)]


@pytest.mark.parametrize("acyclic, size, edges, graphs", FAMILIES)
def test_optimal_simple_paths_on_random_graphs(acyclic, size, edges, graphs):
    rng = np.random.default_rng(size + acyclic)
    for _ in range(graphs):
        senders, receivers, source, target = _random_graph(rng, size, edges, acyclic)
        # The solver's cycle check against SciPy's strongly connected components.
        strong = connected_components(_adjacency(senders, receivers, size), directed=True, connection="strong")[0]
        assert graph_lib.check_graph(senders, receivers, source, target).acyclic == acyclic
        assert acyclic == (strong == size and all(s != r for s, r in zip(senders, receivers, strict=True)))
        costs = _costs(rng, edges, acyclic)
        y = tp.solvers.graph_shortest_path(tf.constant(costs), senders, receivers, source, target).numpy()
        assert y.dtype == np.float32 and y.shape == costs.shape
        _assert_shortest(y, costs, senders, receivers, source, target)


def _lowest_index_paths(costs, senders, receivers, source, target) -> np.ndarray:
    """The documented tie rule from SciPy's exact distances, for integer costs where every tight
    edge comes from a strictly closer vertex (acyclic graphs, or costs ≥ 1): each vertex's
    predecessor is its lowest-index edge e = (u, v) with dist(u) + c_e = dist(v)."""
    senders, receivers = np.asarray(senders), np.asarray(receivers)
    paths = np.zeros(costs.shape)
    distances = references.graph_distances(costs, senders, receivers, source)  # [N, V]
    for row, dist, path in zip(costs.astype(np.float64), distances, paths, strict=True):
        vertex = target
        while vertex != source:
            edge = np.flatnonzero((receivers == vertex) & (dist[senders] + row == dist[vertex]))[0]
            path[edge], vertex = 1.0, senders[edge]
    return paths


@pytest.mark.parametrize("acyclic", [True, False])
def test_ties_go_to_the_lowest_index_edge_where_distances_decide(acyclic):
    rng = np.random.default_rng(7)
    for _ in range(10):
        senders, receivers, source, target = _random_graph(rng, *SMALL, acyclic)
        low = -2 if acyclic else 1  # integer costs: ties; ≥ 1 on a cyclic graph (no plateau)
        costs = rng.integers(low, 4, (PROBLEMS, SMALL[1])).astype(np.float32)
        y = tp.solvers.graph_shortest_path(tf.constant(costs), senders, receivers, source, target).numpy()
        np.testing.assert_array_equal(y, _lowest_index_paths(costs, senders, receivers, source, target))


# Cyclic graphs worked by hand, of the SMALL size (solved in batches of PROBLEMS, the size the
# random graphs compile for). Their zero-cost cycle edges come first, so that the lowest-index
# edge attaining a distance would close a cycle: the depths must decide.
# HANDMADE: a zero-cost cycle 5 → 4 → 5 (e0, e8) and a zero-cost self-loop on 5 (e1), parallel
# edges 0 → 1 (e2, e3), a diamond 1 → {2, 3} → 4 (e4-e7).
HANDMADE = ([5, 5, 0, 0, 1, 1, 2, 3, 4], [4, 5, 1, 1, 2, 3, 4, 4, 5])
# ABSORBING: vertex 1 is reached at cost 1 by e3 in the first round, at 0.75 by e4, e5 in the
# second, and e6 (cost 1e8) gives vertex 3 its float32 distance 1e8 in the second round from
# either: the round at which each distance is first reached leaves vertex 3 no predecessor
# reached before it. Around it, zero-cost edges: 4 → 3 (e0), a loop on 4 (e1), 3 → 1 (e2),
# 3 → 4 (e7), 4 → 5 (e8).
ABSORBING = ([4, 4, 3, 0, 0, 2, 1, 3, 4], [3, 4, 1, 1, 2, 1, 3, 4, 5])


def _solve_tiled(costs, edges, source, target) -> np.ndarray:
    """The solutions for the rows of `costs` [n, 9], solved in a batch of PROBLEMS (rows repeated)."""
    tiled = np.resize(np.asarray(costs, np.float32), (PROBLEMS, 9))
    y = tp.solvers.graph_shortest_path(tf.constant(tiled), *edges, source, target).numpy()
    return y[: len(costs)]


def test_ties_and_plateaus_by_hand():
    unit, zero = [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0], [0.0] * 9
    # Unit costs: distances 0, 1, 2, 2, 3, 3. Vertex 4's edges attaining 3 are e0 (from 5, at the
    # same distance), e6 (from 2) and e7: it is an exit (depth 0), 5 has depth 1, and e6 is the
    # lowest-index edge that descends; vertex 5 takes e8 (e1 is its own loop), vertex 1 e2.
    # All costs zero: the depths are the hops from the source, 0, 1, 2, 2, 3, 4: the same edges.
    path = [0, 0, 1, 0, 1, 0, 1, 0, 1]
    np.testing.assert_array_equal(_solve_tiled([unit, zero], HANDMADE, 0, 5), [path] * 2)
    # source == target: the empty path.
    np.testing.assert_array_equal(_solve_tiled([unit, zero], HANDMADE, 4, 4), np.zeros([2, 9]))
    # ABSORBING: 3 is an exit (e6 from the closer 1), so e0 (from 4 at depth 1) does not descend:
    # e4, e5, e6, e7, e8. All costs zero: depths 0, 1, 1, 2, 3, 4; vertex 1 takes e3 (e2 and e5
    # come from depths 2 and 1), vertex 3 e6: e3, e6, e7, e8.
    costs = [[0.0, 0.0, 0.0, 1.0, 0.25, 0.5, 1e8, 0.0, 0.0], zero]
    np.testing.assert_array_equal(_solve_tiled(costs, ABSORBING, 0, 5),
                                  [[0, 0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 1, 0, 0, 1, 1, 1]])


def test_zero_and_absorbed_costs_give_simple_paths():
    # Float32 costs spread over 16 orders of magnitude on cyclic graphs: a large cost absorbs the
    # last improvements of its sender's distance, and zero or tiny costs make plateaus; the
    # predecessors must still form a simple path, of optimal cost within float32 rounding.
    rng = np.random.default_rng(3)
    for _ in range(20):
        senders, receivers, source, target = _random_graph(rng, *LARGE, acyclic=False)
        costs = 10.0 ** rng.uniform(-8, 8, (PROBLEMS, LARGE[1]))
        costs[: PROBLEMS // 2] *= rng.uniform(size=(PROBLEMS // 2, LARGE[1])) < 0.5  # half the edges free
        costs = costs.astype(np.float32)
        y = tp.solvers.graph_shortest_path(tf.constant(costs), senders, receivers, source, target).numpy()
        _assert_shortest(y, costs, senders, receivers, source, target)


def test_float64_is_solved_in_float64():
    rng = np.random.default_rng(4)
    senders, receivers, source, target = _random_graph(rng, *LARGE, acyclic=False)
    costs = rng.uniform(1.0, 1.0 + 1e-9, (PROBLEMS, LARGE[1]))  # differences float32 cannot see
    y = tp.solvers.graph_shortest_path(tf.constant(costs), senders, receivers, source, target).numpy()
    assert y.dtype == np.float64
    optimum = references.graph_distances(costs, senders, receivers, source, target)
    np.testing.assert_allclose((y * costs).sum(-1), optimum, rtol=1e-14)


def test_cyclic_graph_in_every_mode_with_batch_axes_and_halves():
    # Eager = tf.function = XLA bit for bit on a cyclic graph with plateaus; leading axes; a batch
    # of 1,920 × 70 costs (solved in two halves) equals its problems solved 48 at a time.
    rng = np.random.default_rng(5)
    senders, receivers, source, target = _random_graph(rng, *LARGE, acyclic=False)
    costs = np.concatenate([_costs(rng, LARGE[1], acyclic=False) for _ in range(40)])  # [1920, E]
    assert costs.size >= graph_lib._SPLIT_COSTS

    def solve(c):
        return tp.solvers.graph_shortest_path(c, senders, receivers, source, target)

    eager = solve(tf.constant(costs)).numpy()
    for fn in (tf.function(solve), tf.function(solve, jit_compile=True)):
        np.testing.assert_array_equal(fn(tf.constant(costs)).numpy(), eager)
    parts = [solve(tf.constant(part)).numpy() for part in np.split(costs, 40)]
    np.testing.assert_array_equal(np.concatenate(parts), eager)
    np.testing.assert_array_equal(solve(tf.constant(costs.reshape(40, 2, 24, -1))).numpy().reshape(eager.shape), eager)
    _assert_shortest(eager[:PROBLEMS], costs[:PROBLEMS], senders, receivers, source, target)


def test_negative_costs_on_a_cyclic_graph_raise_and_give_nan_under_xla():
    costs = np.ones((PROBLEMS, 9), np.float32)
    costs[1, 0] = -2.0  # the cycle 4 → 5 → 4 (e8, e0) costs 2 in the other problems, −1 in problem 1

    def solve(c):
        return tp.solvers.graph_shortest_path(c, *HANDMADE, 0, 5)

    for fn in (solve, tf.function(solve)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="costs.* on a graph with cycles"):
            fn(tf.constant(costs))
    y = tf.function(solve, jit_compile=True)(tf.constant(costs)).numpy()
    assert np.isnan(y[1]).all()
    np.testing.assert_array_equal(np.delete(y, 1, 0), [[0, 0, 1, 0, 1, 0, 1, 0, 1]] * (PROBLEMS - 1))  # solved


# ----------------------------------------------------------------------------- arguments

EDGES = ([0, 0, 1], [1, 2, 2])


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(senders=[0, -1, 1]), ValueError, r"senders\[1\]=-1"),
        (dict(receivers=[1, 2.5, 2]), ValueError, r"receivers\[1\]=2\.5"),
        (dict(senders=[0, True, 1]), ValueError, r"senders\[1\]=True"),
        (dict(senders=[]), ValueError, r"senders=\(\)"),
        (dict(senders=5), TypeError, "senders=5"),
        (dict(receivers="ab"), TypeError, "receivers='ab'"),
        (dict(senders=[0, 0]), ValueError, r"len\(senders\)=2, len\(receivers\)=3"),
        (dict(source=3), ValueError, r"\[0, 3\).*source=3"),
        (dict(target=-1), ValueError, "target=-1"),
        (dict(source=1.0), TypeError, "source=1.0"),
        (dict(num_vertices=2), ValueError, r"largest is 2\).*num_vertices=2"),
        (dict(num_vertices=5, target=4), ValueError, "source=0, target=4, which no path joins"),
        (dict(source=2, target=0), ValueError, "source=2, target=0, which no path joins"),
    ],
)
def test_bad_graphs_are_named(kwargs, error, match):
    arguments = dict(senders=EDGES[0], receivers=EDGES[1], source=0, target=2, **{})
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        tp.solvers.graph_shortest_path(tf.ones([3]), **arguments)
    with pytest.raises(error, match=match):
        tp.FenchelYoungLoss("graph_shortest_path", solver_kwargs=arguments)


def test_costs_without_one_entry_per_edge_are_named():
    with pytest.raises(ValueError, match=r"E = len\(senders\) = 3.*costs\.shape=\(2, 4\)"):
        tp.solvers.graph_shortest_path(tf.ones([2, 4]), *EDGES, 0, 2)
    # Costs of unknown shape are checked when the graph runs (num_vertices: 4 isolated vertices more).
    dynamic = tf.function(lambda c: tp.solvers.graph_shortest_path(c, *EDGES, 0, 2, num_vertices=7),
                          input_signature=[tf.TensorSpec([None, None], tf.float32)])
    np.testing.assert_array_equal(dynamic(tf.constant([[1.0, 5.0, 1.0]])).numpy(), [[1.0, 0.0, 1.0]])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"E = len\(senders\) = 3"):
        dynamic(tf.ones([2, 4]))


def test_grid_graph_edges_are_pyepos():
    # PyEPO's _getArcs for a 3 × 4 grid, written out: per row, the arcs to the right, then down.
    senders, receivers = tp.solvers.grid_graph_edges(3, 4)
    expected = [(0, 1), (1, 2), (2, 3), (0, 4), (1, 5), (2, 6), (3, 7),
                (4, 5), (5, 6), (6, 7), (4, 8), (5, 9), (6, 10), (7, 11),
                (8, 9), (9, 10), (10, 11)]  # fmt: skip
    assert list(zip(senders, receivers, strict=True)) == expected
    assert len(tp.solvers.grid_graph_edges(5, 5)[0]) == 40
    assert tp.solvers.grid_graph_edges(1, 2) == ((0,), (1,))
    for rows, cols, error in [(1, 1, ValueError), (0, 3, ValueError), (2.0, 3, TypeError)]:
        with pytest.raises(error, match="rows="):
            tp.solvers.grid_graph_edges(rows, cols)


def test_docstring_examples_run():
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner()
    for test in finder.find(graph_lib, globs={"tf": tf, **vars(graph_lib)}):
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert runner.summarize(verbose=False).attempted >= 2


# ----------------------------------------------------------------------------- registry


def test_the_domain_follows_the_graph():
    dag = tp.solvers.get_solver("graph_shortest_path", senders=[0, 1], receivers=[1, 2], source=0, target=2)
    cyclic = tp.solvers.get_solver("graph_shortest_path", senders=[0, 1, 2], receivers=[1, 2, 1], source=0, target=2)
    assert dag.domain_min is None and dag.spec.domain_min is None
    assert cyclic.domain_min == 0.0 and cyclic.spec.domain_min == 0.0
    assert tp.solvers.get_spec("graph_shortest_path").domain_min is None  # unbound: per graph
    assert tp.solvers.get_solver(cyclic, senders=[0, 1], receivers=[1, 2]).domain_min is None
    assert tp.solvers.get_solver(dag, senders=[0, 1, 2], receivers=[1, 2, 1]).domain_min == 0.0
    assert cyclic.config() == {"solver": "graph_shortest_path", "solver_kwargs": {
        "senders": [0, 1, 2], "receivers": [1, 2, 1], "source": 0, "target": 2, "num_vertices": None}}
    # Solvers registered with a fixed domain keep it.
    assert tp.solvers.get_solver("shortest_path").domain_min == 0.0
    assert tp.solvers.get_solver("knapsack", weights=[1], capacity=1).domain_min is None


def test_register_solver_checks_domain():
    with pytest.raises(TypeError, match="domain=0.0"):
        tp.solvers.register_solver("unused_domain_solver", tp.solvers.argmax, domain=0.0)
    with pytest.raises(ValueError, match="received both"):
        tp.solvers.register_solver("unused_domain_solver", tp.solvers.argmax, domain=lambda p: 0.0, domain_min=0.0)
    assert "unused_domain_solver" not in tp.solvers.registered_solvers()


# ----------------------------------------------------------------------------- estimators

GRID = tp.solvers.grid_graph_edges(3, 3)
GRID_KWARGS = {"senders": list(GRID[0]), "receivers": list(GRID[1]), "source": 0, "target": 8}


def _scipy_paths(costs: np.ndarray) -> np.ndarray:
    """Edge indicators [N, 12] of the shortest paths on the 3 × 3 grid from SciPy's predecessors."""
    edge = {pair: e for e, pair in enumerate(zip(*GRID, strict=True))}
    paths = np.zeros(costs.shape)
    for row, path in zip(costs, paths, strict=True):
        graph = scipy.sparse.csr_matrix((row, GRID), shape=(9, 9))
        _, previous = shortest_path(graph, method="BF", indices=0, return_predecessors=True)
        vertex = 8
        while vertex != 0:
            path[edge[previous[vertex], vertex]], vertex = 1.0, previous[vertex]
    return paths


def test_spo_plus_on_an_acyclic_graph_is_its_definition():
    # ℓ(ĉ, c) = −min_w ⟨2ĉ − c, w⟩ + 2⟨ĉ, w*(c)⟩ − ⟨c, w*(c)⟩, the minimum and w*(c) from SciPy
    # (Bellman-Ford: 2ĉ − c has negative entries); continuous costs, so w*(c) is unique.
    rng = np.random.default_rng(8)
    true, pred = rng.uniform(0.5, 2.0, (2, 24, 12)).astype(np.float32)
    loss = tp.spo_plus_loss(tf.constant(true), tf.constant(pred), "graph_shortest_path", solver_kwargs=GRID_KWARGS)
    true, pred = true.astype(np.float64), pred.astype(np.float64)
    w_true = _scipy_paths(true)
    expected = (-references.graph_distances(2 * pred - true, *GRID, 0, 8) + 2 * (pred * w_true).sum(-1)
                - (true * w_true).sum(-1))
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-5)  # float32 sums of 12 terms < 4
    assert (expected > 1e-3).sum() > 8  # mostly wrong predictions: a nonzero loss is tested
    with pytest.raises(ValueError, match="domain"):  # on a graph with cycles, 2ĉ − c leaves costs ≥ 0
        tp.spo_plus_loss(tf.constant(true[:, :9]), tf.constant(pred[:, :9]), "graph_shortest_path",
                         solver_kwargs={"senders": HANDMADE[0], "receivers": HANDMADE[1], "source": 0, "target": 5})


def test_perturbed_optimizer_clips_to_the_domain_of_a_cyclic_graph():
    # Costs near 0 on a cyclic graph: additive noise makes negative costs, which the domain
    # (≥ 0 on this graph) clips, so the solver never sees them (it would raise).
    kwargs = {"senders": HANDMADE[0], "receivers": HANDMADE[1], "source": 0, "target": 3}
    layer = tp.PerturbedOptimizer("graph_shortest_path", num_samples=24, sigma=1.0, seed=0, solver_kwargs=kwargs)
    y = layer(tf.fill([2, 9], 0.01), training=True).numpy()  # 24 samples × 2: PROBLEMS problems
    # The only simple path 0 → 3: e2 or e3 (parallel), then e5.
    np.testing.assert_allclose(y[:, 2] + y[:, 3], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(y[:, 5], 1.0)
    np.testing.assert_array_equal(y[:, [0, 1, 4, 6, 7, 8]], 0.0)
    assert 0.0 < y[:, 2].min() and y[:, 2].max() < 1.0  # the parallel edges share the samples
    # On the DAG nothing is clipped: every edge of the 3 × 3 grid is on some sample's path.
    dag = tp.PerturbedOptimizer("graph_shortest_path", num_samples=24, sigma=1.0, seed=0, solver_kwargs=GRID_KWARGS)
    y = dag(tf.zeros([2, 12]), training=True).numpy()
    np.testing.assert_allclose(y.sum(-1), 4.0, rtol=1e-6)  # 4 edges on any path of the 3 × 3 grid
    assert 0.0 < y.min() and y.max() < 1.0


def test_fenchel_young_loss_trains_on_the_grid_with_xla():
    # A linear model predicts the 12 edge costs of the 3 × 3 grid from 5 features; the labels
    # are the shortest paths of the true costs. The loss falls and paths become right.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 5)).astype("float32")
    truth = (x @ rng.normal(size=(5, 12)) + 3.0).astype("float32")
    y = _scipy_paths(truth.astype(np.float64))
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(12)])
    loss = tp.FenchelYoungLoss("graph_shortest_path", solver_kwargs=GRID_KWARGS, num_samples=8, sigma=0.5, seed=1)
    model.compile(keras.optimizers.Adam(0.05), loss, jit_compile=True)
    history = model.fit(x, y, epochs=6, batch_size=32, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0], history
    predicted = tp.solvers.graph_shortest_path(model.predict(x[:48], verbose=0), *GRID, 0, 8).numpy()
    assert np.mean(np.all(predicted == y[:48], -1)) > 0.5  # whole paths right (chance: 1 in 6)
    config = json.loads(json.dumps(loss.get_config()))  # the graph is plain JSON in a config
    assert config["solver_kwargs"] == {**GRID_KWARGS, "num_vertices": None}
    assert tp.FenchelYoungLoss.from_config(config).get_config() == loss.get_config()


def test_layers_on_the_graph_solver_save_load_and_export(tmp_path):
    # A model ending in ImplicitMLE and PerturbedOptimizer heads on the 3 × 3 grid DAG: the
    # `.keras` file (safe mode) and the SavedModel give the in-process inference outputs.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    costs = keras.layers.Dense(12)(inputs)
    kwargs = dict(solver_kwargs=GRID_KWARGS, seed=2)
    outputs = {
        "imle": tp.ImplicitMLE("graph_shortest_path", **kwargs)(costs),
        "perturbed": tp.PerturbedOptimizer("graph_shortest_path", num_samples=8, inference="perturbed",
                                           **kwargs)(costs),
    }
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(1).normal(size=(16, 5)).astype("float32")
    model.export(str(tmp_path / "exported"), verbose=False)
    first = {k: v.numpy() for k, v in model(x, training=False).items()}
    model.save(tmp_path / "model.keras")
    second = {k: v.numpy() for k, v in model(x, training=False).items()}
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    again = {k: v.numpy() for k, v in loaded(x, training=False).items()}
    exported = tf.saved_model.load(str(tmp_path / "exported"))  # kept: its variables live as long as it does
    served = exported.serve(tf.constant(x))
    served = served if isinstance(served, dict) else dict(zip(sorted(outputs), served))
    np.testing.assert_array_equal(again["imle"], first["imle"])  # hard paths
    np.testing.assert_array_equal(again["perturbed"], second["perturbed"])  # the next draw, as the original's
    np.testing.assert_array_equal(np.asarray(served["imle"]), first["imle"])
    np.testing.assert_array_equal(np.asarray(served["perturbed"]), first["perturbed"])
    assert np.all(first["imle"].sum(-1) >= 4)  # a path through 5 vertices of the grid has 4 edges
