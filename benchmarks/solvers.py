"""Exact combinatorial solvers in TensorFlow against the SciPy loop a user would write.

What is timed, for each problem (a batch of B random instances):

- SciPy: a Python loop over the batch, as a user would write it.
  Shortest path: per grid, a CSR matrix of the vertex-cost graph (edge u → v weighs
  the cost of v; the sparsity structure is built once per shape), then
  `scipy.sparse.csgraph.dijkstra(…, indices=0, return_predecessors=True)` and the
  walk back from the bottom-right vertex into a 0/1 mask. Graph shortest path: the
  same per cost vector on the edge list's CSR matrix (structure built once, data
  permuted into it), `dijkstra(…, indices=source, return_predecessors=True)` and the
  walk back from the target, each step looked up in a V × V table of edge indices, into
  0/1 edge indicators. Assignment:
  `scipy.optimize.linear_sum_assignment(s, maximize=True)` per matrix, written into
  a permutation matrix. Knapsack: `scipy.optimize.milp` per instance (maximise ⟨v, y⟩,
  y ∈ {0, 1}ⁿ, ⟨w, y⟩ ≤ C; integer weights 3–7 and C = half their sum, as in PyEPO's
  generator), rounded to a 0/1 vector.
- ours: `tf_perturbed.solvers.shortest_path` / `graph_shortest_path` / `assignment` / `knapsack` on a tensor
  holding the batch, in a `tf.function` (graph mode) and a `tf.function(jit_compile=True)` (XLA),
  each call ending with `.numpy()`. The solvers compile their loops with XLA even
  in graph mode, so the two modes mostly differ by the ops around the loops.

Before timing, every problem is checked: our optimal values (path costs, matching
scores, knapsack values) must equal SciPy's. Candidates alternate round by round, as in
`common.interleaved_times`; tables give medians, and ratios are SciPy's median over
ours, in wall-clock time and in the process's CPU time (less distorted when other
jobs share the machine).

Usage (from the repository root):

    .venv/bin/python benchmarks/solvers.py            # ≈ 3 min on an idle machine
    .venv/bin/python benchmarks/solvers.py --quick    # 2 rounds; results/solvers_quick.*

Results: `benchmarks/results/solvers.{md,json}`.
"""

import argparse
import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import scipy.sparse  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.optimize import Bounds, LinearConstraint, linear_sum_assignment, milp  # noqa: E402
from scipy.sparse.csgraph import breadth_first_order, dijkstra  # noqa: E402

from tf_perturbed import solvers  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

KING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))

# (solver, size, batch): shortest paths on H × H grids, shortest paths on graphs (size 5:
# PyEPO's 5 × 5 grid DAG; otherwise a random directed graph of `size` vertices, see
# `graph_instance`), assignments of n × n matrices, knapsacks of n items (knapsack_2: two
# resources).
PYEPO_GRID = 5
PROBLEMS = [
    ("shortest_path", 12, 512),
    ("shortest_path", 30, 512),
    ("graph_shortest_path", PYEPO_GRID, 512),
    ("graph_shortest_path", 200, 512),
    ("assignment", 10, 512),
    ("assignment", 50, 256),
    ("assignment", 100, 64),
    ("knapsack", 32, 512),
    ("knapsack", 100, 256),
    ("knapsack_2", 32, 512),  # two resources (weight and volume), each with its capacity
]


def grid_structure(h: int, w: int):
    """CSR structure (indptr, heads) of the king-move grid graph, edges sorted by tail."""
    index = np.arange(h * w).reshape(h, w)
    tails, heads = [], []
    for dy, dx in KING:
        tails.append(index[max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)].ravel())
        heads.append(index[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)].ravel())
    tails, heads = np.concatenate(tails), np.concatenate(heads)
    order = np.lexsort((heads, tails))
    return np.searchsorted(tails[order], np.arange(h * w + 1)), heads[order]


def scipy_shortest_paths(costs: np.ndarray) -> np.ndarray:
    """0/1 masks `[B, H, W]` of shortest paths, one Dijkstra per grid."""
    batch, h, w = costs.shape
    indptr, heads = grid_structure(h, w)
    masks = np.zeros_like(costs)
    for b in range(batch):
        flat = costs[b].ravel()
        graph = scipy.sparse.csr_matrix((flat[heads], heads, indptr), shape=(h * w, h * w))
        _, previous = dijkstra(graph, indices=0, return_predecessors=True)
        mask, vertex = masks[b].reshape(-1), h * w - 1
        while vertex >= 0:
            mask[vertex] = 1.0
            vertex = previous[vertex]
    return masks


def graph_instance(size: int) -> tuple:
    """(senders, receivers, source, target) of the graph of a graph_shortest_path problem.

    Size 5: PyEPO's 5 × 5 grid, 40 edges right and down from vertex 0 to vertex 24. Otherwise
    `size` vertices and 5·size distinct edges drawn at random (no self-loops, cycles allowed),
    from vertex 0 to the vertex it reaches last in breadth-first order.
    """
    if size == PYEPO_GRID:
        senders, receivers = solvers.grid_graph_edges(size, size)
        return senders, receivers, 0, size * size - 1
    rng = np.random.default_rng(size)
    pairs = rng.choice(size * (size - 1), 5 * size, replace=False)  # ordered pairs u ≠ v
    senders, receivers = pairs // (size - 1), pairs % (size - 1)
    receivers = receivers + (receivers >= senders)
    adjacency = scipy.sparse.csr_matrix((np.ones(len(pairs)), (senders, receivers)), shape=(size, size))
    target = breadth_first_order(adjacency, 0, directed=True, return_predecessors=False)[-1]
    return tuple(senders.tolist()), tuple(receivers.tolist()), 0, int(target)


def scipy_graph_paths(costs: np.ndarray, senders, receivers, source: int, target: int) -> np.ndarray:
    """0/1 edge indicators `[B, E]` of shortest paths (distinct edges, costs ≥ 0), one Dijkstra per row."""
    senders, receivers = np.asarray(senders), np.asarray(receivers)
    size = max(senders.max(), receivers.max()) + 1
    order = np.lexsort((receivers, senders))  # CSR order
    indptr = np.searchsorted(senders[order], np.arange(size + 1))
    edge = np.full((size, size), -1)
    edge[senders, receivers] = np.arange(len(senders))
    paths = np.zeros_like(costs)
    for b in range(len(costs)):
        graph = scipy.sparse.csr_matrix((costs[b][order], receivers[order], indptr), shape=(size, size))
        _, previous = dijkstra(graph, indices=source, return_predecessors=True)
        vertex = target
        while vertex != source:
            paths[b, edge[previous[vertex], vertex]] = 1.0
            vertex = previous[vertex]
    return paths


def scipy_assignments(scores: np.ndarray) -> np.ndarray:
    """Permutation matrices `[B, n, n]` maximising ⟨P, S⟩, one call per matrix."""
    perms = np.zeros_like(scores)
    for b in range(len(scores)):
        rows, cols = linear_sum_assignment(scores[b], maximize=True)
        perms[b, rows, cols] = 1.0
    return perms


def knapsack_instance(size: int, resources: int = 1) -> tuple:
    """(weights, capacity) of the n = size items: integers in [3, 7], capacity half their sum.

    Two or more resources: weights a tuple of rows and one capacity per row.
    """
    if resources == 1:
        weights = np.random.default_rng(size).integers(3, 8, size)
        return tuple(int(w) for w in weights), int(weights.sum()) // 2
    table = np.random.default_rng(size).integers(3, 8, (resources, size))
    return tuple(tuple(int(w) for w in row) for row in table), tuple(int(c) // 2 for c in table.sum(axis=1))


def scipy_knapsacks(values: np.ndarray, weights: tuple, capacity) -> np.ndarray:
    """0/1 selections `[B, n]` maximising ⟨v, y⟩ with W y ≤ C, one MILP per instance."""
    n = values.shape[-1]
    constraint = LinearConstraint(np.atleast_2d(np.array(weights, float)), -np.inf, capacity)
    chosen = np.zeros_like(values)
    for b in range(len(values)):
        result = milp(-values[b].astype(np.float64), constraints=constraint, integrality=np.ones(n),
                      bounds=Bounds(0, 1))
        chosen[b] = np.round(result.x)
    return chosen


def numpy_knapsacks(values: np.ndarray, weights: tuple, capacity: int) -> np.ndarray:
    """The same selections by the textbook table in NumPy, one instance at a time (float64)."""
    chosen = np.zeros_like(values)
    for b, row in enumerate(values.astype(np.float64)):
        table, better = np.zeros(capacity + 1), np.zeros((len(weights), capacity + 1), bool)
        for i, (w, v) in enumerate(zip(weights, row, strict=True)):
            take = np.full(capacity + 1, -np.inf)
            take[w:] = table[: capacity + 1 - w] + v
            better[i] = take > table
            table = np.maximum(table, take)
        room = capacity
        for i in range(len(weights) - 1, -1, -1):
            if better[i, room]:
                chosen[b, i], room = 1.0, room - weights[i]
    return chosen


def make_problem(solver: str, size: int, batch: int):
    """(inputs, SciPy function, our solver) for one problem."""
    rng = np.random.default_rng(0)
    if solver == "shortest_path":
        # Warcraft-like vertex costs, positive.
        return (
            rng.uniform(0.1, 10.0, (batch, size, size)).astype(np.float32),
            scipy_shortest_paths,
            solvers.shortest_path,
        )
    if solver == "graph_shortest_path":
        graph = graph_instance(size)  # positive edge costs, for SciPy's Dijkstra
        return (
            rng.uniform(0.1, 10.0, (batch, len(graph[0]))).astype(np.float32),
            lambda costs: scipy_graph_paths(costs, *graph),
            lambda costs: solvers.graph_shortest_path(costs, *graph),
        )
    if solver in ("knapsack", "knapsack_2"):
        weights, capacity = knapsack_instance(size, 2 if solver == "knapsack_2" else 1)
        return (
            rng.uniform(0.0, 1.0, (batch, size)).astype(np.float32),
            lambda values: scipy_knapsacks(values, weights, capacity),
            lambda values: solvers.knapsack(values, weights, capacity),
        )
    return (
        rng.normal(size=(batch, size, size)).astype(np.float32),
        scipy_assignments,
        solvers.assignment,
    )


def compiled(ours) -> dict:
    """Our solver in the two timed modes: mode → function (a `tf.function` each)."""
    return {
        "graph": tf.function(ours),
        "xla": tf.function(ours, jit_compile=True),
    }


def check_against_scipy(solver: str, inputs: np.ndarray, reference, candidates: dict) -> None:
    """Raises AssertionError unless every candidate's optimal values (path costs, matching
    scores, knapsack values) equal SciPy's on `inputs` (tests/test_benchmarks.py runs it
    on small problems)."""
    tensor = tf.constant(inputs)
    axes = tuple(range(1, inputs.ndim))  # a problem's axes
    # Same optimal values as SciPy (ties could pick other optimal solutions).
    expected = np.sum(reference(inputs) * inputs, axis=axes, dtype=np.float64)
    for name, fn in candidates.items():
        got = np.sum(fn(tensor).numpy() * inputs, axis=axes, dtype=np.float64)
        np.testing.assert_allclose(got, expected, rtol=1e-5, err_msg=f"{solver} {name}")


def time_problem(solver: str, size: int, batch: int, rounds: int) -> dict:
    """Checks one problem against SciPy, then times the three candidates."""
    inputs, reference, ours = make_problem(solver, size, batch)
    tensor = tf.constant(inputs)
    candidates = compiled(ours)
    first_call_s = {}
    for name, fn in candidates.items():
        start = time.perf_counter()
        fn(tensor).numpy()
        first_call_s[name] = time.perf_counter() - start
    check_against_scipy(solver, inputs, reference, candidates)
    timed = {
        "scipy": lambda: reference(inputs),
        "graph": lambda: candidates["graph"](tensor).numpy(),
        "xla": lambda: candidates["xla"](tensor).numpy(),
    }
    if solver == "knapsack":  # the other loop a user might write: the textbook table in NumPy
        weights, capacity = knapsack_instance(size)
        check_against_scipy(solver, inputs, reference, {"numpy": lambda t: tf.constant(
            numpy_knapsacks(t.numpy(), weights, capacity))})
        timed["numpy"] = lambda: numpy_knapsacks(inputs, weights, capacity)
    cpu = {}
    wall = common.interleaved_times(timed, rounds=rounds, cpu_times=cpu)
    summary = {name: common.summarize(values) for name, values in wall.items()}
    cpu_summary = {name: common.summarize(values) for name, values in cpu.items()}
    scipy_ms = summary["scipy"]["median_ms"]
    scipy_cpu_ms = cpu_summary["scipy"]["median_ms"]
    return {
        "solver": solver,
        "size": size,
        "batch": batch,
        "first_call_s": first_call_s,
        "times": summary,
        "cpu_times": cpu_summary,
        "speedup": {mode: scipy_ms / summary[mode]["median_ms"] for mode in candidates},
        "cpu_speedup": {mode: scipy_cpu_ms / cpu_summary[mode]["median_ms"] for mode in candidates},
    }


def run(rounds: int) -> dict:
    results = []
    for solver, size, batch in PROBLEMS:
        item = time_problem(solver, size, batch, rounds)
        t = item["times"]
        print(
            f"{solver} size={size} B={batch}: SciPy {t['scipy']['median_ms']:.1f} ms, "
            f"graph {t['graph']['median_ms']:.1f} ms, xla {t['xla']['median_ms']:.1f} ms",
            flush=True,
        )
        results.append(item)
    return {"problems": results}


def report(payload: dict, info: dict, command: str) -> str:
    rows = []
    for item in payload["problems"]:
        t = item["times"]
        if item["solver"] == "shortest_path":
            size = f"{item['size']} × {item['size']}"
        elif item["solver"] == "graph_shortest_path":
            senders, _, _, _ = graph_instance(item["size"])
            kind = "PyEPO grid" if item["size"] == PYEPO_GRID else "random"
            vertices = item["size"] ** 2 if item["size"] == PYEPO_GRID else item["size"]
            size = f"{kind}, V = {vertices}, E = {len(senders)}"
        elif item["solver"] == "knapsack":
            size = f"n = {item['size']}, C = {knapsack_instance(item['size'])[1]}"
        elif item["solver"] == "knapsack_2":
            capacity = knapsack_instance(item["size"], 2)[1]
            size = f"n = {item['size']}, two resources, C = {capacity[0]} and {capacity[1]}"
        else:
            size = f"n = {item['size']}"
        rows.append(
            [
                item["solver"],
                size,
                item["batch"],
                t["scipy"]["median_ms"],
                t["graph"]["median_ms"],
                t["xla"]["median_ms"],
                f"{item['speedup']['graph']:.2f}×",
                f"{item['speedup']['xla']:.2f}×",
                f"{item['cpu_speedup']['xla']:.2f}×",
                f"{item['first_call_s']['xla']:.1f}",
            ]
        )
    notes = [
        f"Knapsack, n = {item['size']}, B = {item['batch']}: the textbook table in NumPy, one instance "
        f"at a time, takes {item['times']['numpy']['median_ms']:.3g} ms; ours under XLA is "
        f"{item['times']['numpy']['median_ms'] / item['times']['xla']['median_ms']:.1f}× faster."
        for item in payload["problems"]
        if "numpy" in item["times"]
    ]
    table = common.markdown_table(
        [
            "solver",
            "size",
            "B",
            "SciPy loop (ms)",
            "graph (ms)",
            "XLA (ms)",
            "speed-up graph",
            "speed-up XLA",
            "CPU-time speed-up XLA",
            "XLA first call (s)",
        ],
        rows,
    )
    return "\n\n".join(
        [
            "# Exact solvers: TensorFlow ops against a SciPy loop",
            "Median wall-clock time per batched call (all B instances), SciPy loop and "
            "ours alternating round by round; speed-up = SciPy median / our median "
            "(> 1: ours is faster). The CPU-time speed-up compares the process's CPU "
            "time per call instead (all threads; SciPy uses one, XLA may use more), "
            "which a busy machine distorts less. First call = tracing and XLA "
            "compilation.",
            table,
            *notes,
            common.machine_markdown(info, command),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds, _quick result files")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds (default 9)")
    args = parser.parse_args()
    rounds = args.rounds or (2 if args.quick else 9)
    info = common.machine_info(["tensorflow", "keras", "numpy", "scipy", "tf_perturbed"])
    payload = run(rounds)
    payload.update(machine=info, rounds=rounds, command=common.command_line())
    name = "solvers_quick" if args.quick else "solvers"
    text = report(payload, info, payload["command"])
    common.write_json(name, payload)
    common.write_markdown(name, text)
    print()
    print(text)


if __name__ == "__main__":
    main()
