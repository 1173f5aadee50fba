"""PyEPO's synthetic shortest-path and knapsack data, written from their formulas in NumPy.

Both sides of the PyEPO comparison (`run_ours.py` in the project's venv, `run_pyepo.py`
in `.venv-pyepo`) train and test on the instances this module writes to `.npz`, so
nothing here imports TensorFlow, PyTorch or PyEPO. `check_data.py` compares it with
PyEPO's own generators (PyEPO 2.2.7): equal to the bit for the same seed.

Formulas (Tang & Khalil, PyEPO; `pyepo.data.shortestpath.genData` and
`pyepo.data.knapsack.genData`). One `numpy.random.RandomState(seed)` draws, in order:

    shortest path on an h × w grid, d = (h − 1)·w + (w − 1)·h arcs, p features, n instances
      B ∈ {0, 1}^{d×p}, B_ij ~ Bernoulli(1/2)              rnd.binomial(1, 0.5, (d, p))
      x_i ~ N(0, I_p)                                      rnd.normal(0, 1, (n, p))
      c_ij = [(⟨B_j, x_i⟩/√p + 3)^deg + 1] / 3.5^deg · ε_ij
      ε_ij ~ U[1 − ē, 1 + ē]  (ē: the noise half-width)    rnd.uniform(1 − ē, 1 + ē, (n, d))
      costs are returned in float32, features in float64.

    knapsack, m items, k resource dimensions (PyEPO's experiments: m = 32, k = 2, capacity 20)
      weights W ∈ {3.00, 3.01, …, 7.99}^{k×m}, uniform     rnd.choice(range(300, 800), (k, m)) / 100
      B ∈ {0, 1}^{m×p}, x_i ~ N(0, I_p), ε_ij ~ U[1 − ē, 1 + ē], drawn as above
      c_ij = ⌈5 · [(⟨B_j, x_i⟩/√p + 3)^deg + 1] / 3.5^deg · ε_ij⌉   (integer values, float32)
      a maximisation: max ⟨c, y⟩ over y ∈ {0, 1}^m with W y ≤ capacity in every dimension.

Arcs of the grid (PyEPO's order, which the cost vector follows): vertices v = i·w + j,
row by row; for each row i the arcs (v, v + 1) to the right, then, unless i is the
last row, the arcs (v, v + w) downwards. The path runs from vertex 0 (top left) to
vertex h·w − 1 (bottom right); every arc points right or down, so the graph is acyclic
and the shortest path exists for costs of any sign (a linear model predicts negative
costs at times).

PyEPO's experiments (its paper, branch MPC of its repository): instance i of 10 uses
seed i, generates n_train + 1000 instances and splits them with scikit-learn's
`train_test_split(x, c, test_size=1000, random_state=seed)`, i.e. a permutation
`RandomState(seed).permutation(n)` whose first 1000 indices are the test set and the
rest the training set, in that order (`split_indices`).

Knapsacks: `ks` has one resource dimension, `ks2` two (PyEPO's published knapsack).
The weights are whole hundredths, so W·100 and capacity·100 are integers and the
problem is the same for `tf_perturbed.solvers.knapsack` (dynamic programming over the
capacities). With two dimensions its table has 2001² entries per problem, too many
for a training step; but weights ≥ 3 and capacity 20 leave few feasible selections
(9,366 for seed 0), so `ks2` enumerates them once (`feasible_selections`) and both
the labels and our in-graph solver take the best of them: exact, in one matrix product.

Usage:

    .venv/bin/python benchmarks/pyepo/data.py                       # the files run_*.py need
    .venv/bin/python benchmarks/pyepo/data.py --problem sp --deg 1 2 4 6 --seeds 0 1 2
"""

import argparse
import json
import pathlib
from typing import Dict, List, Sequence, Tuple

import numpy as np

DATA_DIR = pathlib.Path(__file__).resolve().parent / "data"

# The experiments of PyEPO's paper (n_train = 1000, p = 5, ē = 0.5, 1000 test instances).
GRID = (5, 5)
NUM_FEATURES = 5
NUM_TRAIN = 1000
NUM_TEST = 1000
NOISE_WIDTH = 0.5
DEGREES = (1, 2, 4, 6)
KNAPSACK_ITEMS = 32
KNAPSACK_CAPACITY = 20
KNAPSACK_DIM = {"ks": 1, "ks2": 2}  # resource dimensions; PyEPO's paper used 2 (see the module docstring)
PROBLEMS = ("sp", "ks", "ks2")


# ----------------------------------------------------------------------------- generators


def grid_arcs(grid: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Senders and receivers of the h × w grid's arcs, in PyEPO's order (module docstring)."""
    height, width = grid
    senders: List[int] = []
    receivers: List[int] = []
    for row in range(height):
        first = row * width
        senders += range(first, first + width - 1)  # right
        receivers += range(first + 1, first + width)
        if row < height - 1:
            senders += range(first, first + width)  # down
            receivers += range(first + width, first + 2 * width)
    return np.asarray(senders, np.int64), np.asarray(receivers, np.int64)


def _polynomial_costs(rnd: np.random.RandomState, num_data: int, num_features: int, dim: int, deg: int) -> np.ndarray:
    """[(x Bᵀ/√p + 3)^deg + 1] for B then x drawn from `rnd`, `[n, dim]` float64, and x."""
    basis = rnd.binomial(1, 0.5, (dim, num_features))  # [dim, p]
    features = rnd.normal(0, 1, (num_data, num_features))  # [n, p]
    return (features @ basis.T / np.sqrt(num_features) + 3) ** deg + 1, features


def shortest_path_data(
    num_data: int, num_features: int, grid: Tuple[int, int], deg: int, noise_width: float, seed: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Features `[n, p]` (float64) and arc costs `[n, d]` (float32), as PyEPO draws them."""
    _check_generator_args(num_data, num_features, deg, noise_width)
    rnd = np.random.RandomState(seed)
    num_arcs = (grid[0] - 1) * grid[1] + (grid[1] - 1) * grid[0]
    costs, features = _polynomial_costs(rnd, num_data, num_features, num_arcs, deg)
    costs /= 3.5**deg
    costs *= rnd.uniform(1 - noise_width, 1 + noise_width, (num_data, num_arcs))
    return features, costs.astype(np.float32)


def knapsack_data(
    num_data: int, num_features: int, num_items: int, dim: int, deg: int, noise_width: float, seed: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights `[dim, m]`, features `[n, p]` and integer item values `[n, m]` (float32)."""
    _check_generator_args(num_data, num_features, deg, noise_width)
    rnd = np.random.RandomState(seed)
    weights = rnd.choice(range(300, 800), size=(dim, num_items)) / 100  # [dim, m]
    values, features = _polynomial_costs(rnd, num_data, num_features, num_items, deg)
    values *= 5
    values /= 3.5**deg
    values *= rnd.uniform(1 - noise_width, 1 + noise_width, (num_data, num_items))
    return weights, features, np.ceil(values).astype(np.float32)


def _check_generator_args(num_data: int, num_features: int, deg: int, noise_width: float) -> None:
    for name, value in (("num_data", num_data), ("num_features", num_features), ("deg", deg)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"Expected a positive integer, received: {name}={value!r}")
    if not noise_width >= 0:
        raise ValueError(f"Expected noise_width ≥ 0, received: noise_width={noise_width!r}")


def split_indices(num_data: int, num_test: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Training and test indices of `train_test_split(…, test_size=num_test, random_state=seed)`."""
    order = np.random.RandomState(seed).permutation(num_data)
    return order[num_test:], order[:num_test]


# ----------------------------------------------------------------------------- exact solvers


def dag_shortest_paths(costs: np.ndarray, senders: np.ndarray, receivers: np.ndarray) -> np.ndarray:
    """0/1 arc indicators `[N, E]` of a shortest path from vertex 0 to the last vertex.

    The vertices must be numbered in a topological order (every arc goes from a lower
    to a higher number, as on PyEPO's grid); costs may be negative. Dynamic programming
    over the vertices in that order; among equal distances the arc listed first wins.
    """
    costs = np.asarray(costs, np.float64)
    if np.any(senders >= receivers):
        raise ValueError("Expected arcs from lower- to higher-numbered vertices (a topological order).")
    num, num_vertices = costs.shape[0], int(receivers.max()) + 1
    distance = np.full((num, num_vertices), np.inf)
    distance[:, 0] = 0.0
    best_arc = np.full((num, num_vertices), -1)
    for vertex in range(1, num_vertices):
        incoming = np.flatnonzero(receivers == vertex)
        candidates = distance[:, senders[incoming]] + costs[:, incoming]  # [N, in-degree]
        choice = np.argmin(candidates, axis=1)
        distance[:, vertex] = candidates[np.arange(num), choice]
        best_arc[:, vertex] = incoming[choice]
    paths = np.zeros(costs.shape, np.float32)
    vertex = np.full(num, num_vertices - 1)
    rows = np.arange(num)
    while np.any(vertex > 0):
        active = vertex > 0
        arc = best_arc[rows[active], vertex[active]]
        paths[rows[active], arc] = 1.0
        vertex[active] = senders[arc]
    return paths


def knapsack_selections(values: np.ndarray, weights: Sequence[int], capacity: int, chunk: int = 256) -> np.ndarray:
    """0/1 selections `[N, m]` of largest value with Σ weights ≤ capacity (integer weights).

    Dynamic programming over the capacity; an item is taken only when that is strictly
    better, so ties leave later items out (the rule of `tf_perturbed.solvers.knapsack`).
    """
    values = np.asarray(values, np.float64)
    weights = [int(weight) for weight in weights]
    out = np.zeros(values.shape, np.float32)
    for start in range(0, values.shape[0], chunk):
        block = values[start : start + chunk]  # [b, m]
        best = np.zeros((block.shape[0], capacity + 1))  # best value within each capacity
        taken = np.zeros((len(weights), block.shape[0], capacity + 1), bool)
        for item, weight in enumerate(weights):
            if weight > capacity:
                continue
            candidate = best[:, : capacity + 1 - weight] + block[:, item : item + 1]  # [b, C + 1 − w]
            better = candidate > best[:, weight:]
            taken[item, :, weight:] = better
            best[:, weight:] = np.where(better, candidate, best[:, weight:])
        room = np.full(block.shape[0], capacity)
        rows = np.arange(block.shape[0])
        for item in range(len(weights) - 1, -1, -1):
            chosen = taken[item, rows, room]
            out[start + rows[chosen], item] = 1.0
            room[chosen] -= weights[item]
    return out


def feasible_selections(weights: np.ndarray, capacity: Sequence[int]) -> np.ndarray:
    """Every 0/1 selection `[F, m]` (uint8) within the capacities, the empty one first.

    weights `[k, m]` and capacity `[k]` integers; depth-first over the items in order,
    pruned as soon as a resource overflows (the number of selections must be small).
    """
    weights = np.asarray(weights, np.int64)
    capacity = np.asarray(capacity, np.int64)
    found: List[List[int]] = []

    def extend(start: int, used: np.ndarray, chosen: List[int]) -> None:
        found.append(list(chosen))
        for item in range(start, weights.shape[1]):
            total = used + weights[:, item]
            if np.all(total <= capacity):
                chosen.append(item)
                extend(item + 1, total, chosen)
                chosen.pop()

    extend(0, np.zeros(weights.shape[0], np.int64), [])
    selections = np.zeros((len(found), weights.shape[1]), np.uint8)
    for row, chosen in enumerate(found):
        selections[row, chosen] = 1
    return selections


def best_selections(values: np.ndarray, selections: np.ndarray) -> np.ndarray:
    """The selection of largest value `[N, m]` (float32) among `selections` `[F, m]`, the first on ties."""
    totals = np.asarray(values, np.float64) @ selections.T.astype(np.float64)  # [N, F]
    return selections[np.argmax(totals, axis=1)].astype(np.float32)


def knapsack_integer_weights(weights: np.ndarray, capacity: float) -> Tuple[List[int], int]:
    """One dimension's weights and capacity in hundredths, as integers (checked exact)."""
    weights = np.asarray(weights, np.float64).reshape(-1)
    scaled = np.rint(weights * 100)
    if np.max(np.abs(scaled - weights * 100)) > 1e-6 or abs(capacity * 100 - round(capacity * 100)) > 1e-9:
        raise ValueError(f"Expected weights and capacity in whole hundredths, received: {weights}, {capacity}")
    return [int(weight) for weight in scaled], int(round(capacity * 100))


# ----------------------------------------------------------------------------- data sets


def data_path(problem: str, deg: int, seed: int, num_train: int = NUM_TRAIN) -> pathlib.Path:
    """Where the instances of one experiment live: `data/<problem>_n<train>_deg<deg>_seed<seed>.npz`."""
    return DATA_DIR / f"{problem}_n{num_train}_deg{deg}_seed{seed}.npz"


def make_dataset(problem: str, deg: int, seed: int, num_train: int = NUM_TRAIN) -> Dict[str, np.ndarray]:
    """One experiment of PyEPO's paper: the split instances, their optimal solutions and values.

    Keys: x_train, c_train, w_train, z_train, x_test, c_test, w_test, z_test (w: optimal
    0/1 solutions by our exact solvers, z: their objective values), and the problem:
    `senders`, `receivers`, `grid` (shortest path, minimised) or `weights` (float,
    `[k, m]`), `capacity` `[k]`, `weights_int` (`[m]` for one dimension, `[k, m]` for
    more), `capacity_int` (knapsack, maximised), and for `ks2` the `selections` `[F, m]`.
    """
    num_data = num_train + NUM_TEST
    if problem == "sp":
        features, costs = shortest_path_data(num_data, NUM_FEATURES, GRID, deg, NOISE_WIDTH, seed)
        senders, receivers = grid_arcs(GRID)
        extra = {"senders": senders, "receivers": receivers, "grid": np.asarray(GRID)}

        def solve(c):
            return dag_shortest_paths(c, senders, receivers)

    elif problem == "ks":
        weights, features, costs = knapsack_data(
            num_data, NUM_FEATURES, KNAPSACK_ITEMS, KNAPSACK_DIM[problem], deg, NOISE_WIDTH, seed
        )
        weights_int, capacity_int = knapsack_integer_weights(weights[0], KNAPSACK_CAPACITY)
        extra = {
            "weights": weights,
            "capacity": np.asarray([KNAPSACK_CAPACITY], np.float64),
            "weights_int": np.asarray(weights_int),
            "capacity_int": np.asarray(capacity_int),
        }

        def solve(c):
            return knapsack_selections(c, weights_int, capacity_int)

    elif problem == "ks2":
        weights, features, costs = knapsack_data(
            num_data, NUM_FEATURES, KNAPSACK_ITEMS, KNAPSACK_DIM[problem], deg, NOISE_WIDTH, seed
        )
        weights_int = np.asarray([knapsack_integer_weights(row, KNAPSACK_CAPACITY)[0] for row in weights])
        capacity_int = knapsack_integer_weights(weights[0], KNAPSACK_CAPACITY)[1]
        selections = feasible_selections(weights_int, [capacity_int] * len(weights))
        extra = {
            "weights": weights,
            "capacity": np.full(len(weights), KNAPSACK_CAPACITY, np.float64),
            "weights_int": weights_int,
            "capacity_int": np.asarray(capacity_int),
            "selections": selections,
        }

        def solve(c):
            return best_selections(c, selections)

    else:
        raise ValueError(f"Expected problem in {PROBLEMS}, received: problem={problem!r}")
    train, test = split_indices(num_data, NUM_TEST, seed)
    dataset = dict(extra)
    for part, index in (("train", train), ("test", test)):
        solutions = solve(costs[index])
        dataset[f"x_{part}"] = features[index]
        dataset[f"c_{part}"] = costs[index]
        dataset[f"w_{part}"] = solutions
        dataset[f"z_{part}"] = np.sum(solutions.astype(np.float64) * costs[index], axis=1)
    return dataset


def load_or_make(problem: str, deg: int, seed: int, num_train: int = NUM_TRAIN) -> pathlib.Path:
    """The `.npz` of one experiment, written first if missing; returns its path."""
    path = data_path(problem, deg, seed, num_train)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **make_dataset(problem, deg, seed, num_train))
    return path


def normalized_regret(chosen: np.ndarray, costs: np.ndarray, optimal_values: np.ndarray, maximize: bool) -> float:
    """PyEPO's metric: Σ_i regret_i / Σ_i |z*_i|, regret_i = ⟨c_i, ŵ_i⟩ − z*_i (minimising)."""
    values = np.sum(np.asarray(chosen, np.float64) * costs, axis=1)
    regrets = optimal_values - values if maximize else values - optimal_values
    return float(np.sum(regrets) / np.sum(np.abs(optimal_values)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--problem", nargs="+", default=["sp", "ks"], choices=list(PROBLEMS))
    parser.add_argument("--deg", nargs="+", type=int, default=list(DEGREES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--train", type=int, default=NUM_TRAIN)
    args = parser.parse_args()
    for problem in args.problem:
        for deg in args.deg:
            for seed in args.seeds:
                path = load_or_make(problem, deg, seed, args.train)
                with np.load(path) as data:
                    shapes = {key: data[key].shape for key in ("x_train", "c_train", "x_test")}
                print(path.relative_to(pathlib.Path.cwd()) if path.is_relative_to(pathlib.Path.cwd()) else path,
                      json.dumps({k: list(v) for k, v in shapes.items()}))


if __name__ == "__main__":
    main()
