"""The solver contract: every registered solver held to the same checks, one line each.

A solver is described by one `Case` line in `CASES`: the solver (bound to its
hyper-parameters), the `Problem` it solves (how to draw valid inputs of a given
batch shape, with ties on demand, and a reference in NumPy or by brute force that
gives the optimal objective value, checks that an output is a vertex, and, for
solvers that document it, the solution with ties broken towards the lowest index),
and what the solver documents for bad inputs. A solver added later joins by one
line; `test_every_built_in_solver_has_a_line` fails until it has one.

The contracts, each parametrized over the cases:
1. optimality: a vertex whose objective is the reference optimum (exactly for
   integer-valued scores, within the arithmetic's rounding otherwise);
2. ties: the output is a deterministic function of the problem (whatever its place
   in the batch), the lowest-index solution where the solver documents that rule;
3. leading batch axes: none, one, two and an empty batch give the per-problem results;
4. dtypes: half, single and double precision and integers, output dtype by the rule;
5. modes: eager = `tf.function` = `jit_compile=True`, bit for bit (a solver running
   host code raises a clear ValueError under XLA);
6. bad input: errors naming the argument; NaN and ±inf as each solver documents.

Every call solves `BATCH` problems of one fixed shape, so that each solver compiles
few programs (the structured solvers compile their loops with XLA even eagerly), and
the `tf.function`s are built once per case. The structured solvers' deep checks
(thousands of SciPy comparisons, simple paths on zero costs, large batches, dynamic
shapes) are in tests/test_shortest_path.py, tests/test_assignment.py and
tests/test_graph_shortest_path.py.
"""

import dataclasses
import functools
from typing import Callable, Optional

import numpy as np
import pytest
import references
import scipy.ndimage
import tensorflow as tf
from scipy.optimize import linear_sum_assignment

import tf_perturbed as tp

BATCH = 24  # problems per call: below the sizes (32, 64, 128) where the structured solvers change method
NAN, INF = float("nan"), float("inf")

# ---------------------------------------------------------------------------
# Inputs


def _scores(rng: np.random.Generator, shape: tuple, ties: bool) -> np.ndarray:
    """float32 scores: Gaussian, or integers in [−2, 2] (many ties, exact in every dtype)."""
    if ties:
        return rng.integers(-2, 3, shape).astype(np.float32)
    return rng.normal(size=shape).astype(np.float32)


def _costs(rng: np.random.Generator, shape: tuple, ties: bool) -> np.ndarray:
    """float32 costs ≥ 0: uniform in [0.1, 10), or integers in [0, 3] (ties and zero-cost plateaus)."""
    if ties:
        return rng.integers(0, 4, shape).astype(np.float32)
    return rng.uniform(0.1, 10.0, shape).astype(np.float32)


# ---------------------------------------------------------------------------
# References: optimal values by brute force or Dijkstra, vertices, lowest-index solutions


def _best_over(vertices: np.ndarray, x: np.ndarray) -> np.ndarray:
    """max over the rows v of `vertices` [V, d] of ⟨v, x⟩, for x [N, d]: [N], float64."""
    return np.max(x.astype(np.float64) @ vertices.T.astype(np.float64), axis=-1)


def _one_hots(d: int) -> np.ndarray:
    return np.eye(d)


def _k_hots(k: int) -> Callable[[int], np.ndarray]:
    return lambda d: references.k_hots(d, k)


_permutations = references.permutations


def _rank_vectors(d: int) -> np.ndarray:
    return _permutations(d).astype(float)


def _stable_ranks(x: np.ndarray) -> np.ndarray:
    """Ascending ranks, ties towards the lowest index: (value, index) order, as a stable sort."""
    return np.argsort(np.argsort(x, axis=-1, kind="stable"), axis=-1, kind="stable")


def _lowest_argmax(x: np.ndarray) -> np.ndarray:
    return np.eye(x.shape[-1])[np.argmax(x, axis=-1)]  # NumPy returns the first maximum


def _lowest_top_k(k: int) -> Callable[[np.ndarray], np.ndarray]:
    def solution(x: np.ndarray) -> np.ndarray:
        chosen = np.argsort(-x, axis=-1, kind="stable")[..., :k]  # descending, ties by index
        return np.eye(x.shape[-1])[chosen].sum(axis=-2)

    return solution


def _lowest_sort_permutation(x: np.ndarray) -> np.ndarray:
    # P[i, j] = 1 where rank_j = i.
    return np.swapaxes(np.eye(x.shape[-1])[_stable_ranks(x)], -1, -2)


def _check_hot(count: int) -> Callable[[np.ndarray, np.ndarray], None]:
    """0/1 vectors with `count` ones."""

    def check(y: np.ndarray, x: np.ndarray) -> None:
        assert np.isin(y, [0.0, 1.0]).all(), y
        np.testing.assert_array_equal(y.sum(-1), count)

    return check


def _check_rank_vector(y: np.ndarray, x: np.ndarray) -> None:
    np.testing.assert_array_equal(np.sort(y, axis=-1), np.broadcast_to(np.arange(y.shape[-1]), y.shape))


def _check_permutation_matrix(y: np.ndarray, x: np.ndarray) -> None:
    assert np.isin(y, [0.0, 1.0]).all(), y
    np.testing.assert_array_equal(y.sum(-1), 1.0)
    np.testing.assert_array_equal(y.sum(-2), 1.0)


def _inner(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """⟨y, x⟩ per problem, float64 (all axes after the first are the problem's)."""
    return np.sum((y.astype(np.float64) * x).reshape(len(x), -1), axis=-1)


def _sorting_objective(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """⟨P, w xᵀ⟩ with w = (0, 1, …, d−1), which the sort permutation maximises."""
    return np.einsum("nij,nj,i->n", y.astype(np.float64), x, np.arange(x.shape[-1], dtype=np.float64))


def _path_optimum(neighbourhood: int) -> Callable[[np.ndarray], np.ndarray]:
    def optimum(x: np.ndarray) -> np.ndarray:
        return np.array([references.dijkstra(grid, neighbourhood) for grid in x.astype(np.float64)])

    return optimum


def _check_path(neighbourhood: int) -> Callable[[np.ndarray, np.ndarray], None]:
    """0/1 masks holding both corners, in one piece (neighbours by the solver's moves)."""
    structure = np.ones((3, 3)) if neighbourhood == 8 else scipy.ndimage.generate_binary_structure(2, 1)

    def check(y: np.ndarray, x: np.ndarray) -> None:
        assert np.isin(y, [0.0, 1.0]).all(), y
        assert (y[:, 0, 0] == 1).all() and (y[:, -1, -1] == 1).all(), y
        for mask in y:
            assert scipy.ndimage.label(mask, structure=structure)[1] == 1, mask

    return check


def _matching_optimum(x: np.ndarray) -> np.ndarray:
    """max over permutations π of Σ_i x[i, π_i], by brute force: [N], float64."""
    n = x.shape[-1]
    perms = _permutations(n)  # [n!, n]
    return np.max(x.astype(np.float64)[:, np.arange(n), perms].sum(-1), axis=-1)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A family of problems and its reference.

    Attributes:
      event: the problem's shape in the suite; `smallest`: the smallest problem.
      sample: `(rng, shape, ties) -> float32 array of that shape`, valid inputs.
      objective: `(y, x) -> [N]` float64, the value of solutions y `[N, *out]` on x `[N, *event]`.
      optimum: `x -> [N]`, the best objective (reference: brute force, Dijkstra).
      check_vertex: `(y, x) -> None`, raises unless every y is a vertex of the polytope.
      lowest_index: `x -> y`, the solution with ties broken towards the lowest index.
      maximize: whether the optimum is the largest objective.
      rounding: bound on |objective − optimum| / Σ|x| per problem for non-integer x,
        from the arithmetic the solver compares in (0 for integer x).
    """

    event: tuple
    smallest: tuple
    sample: Callable[[np.random.Generator, tuple, bool], np.ndarray]
    objective: Callable[[np.ndarray, np.ndarray], np.ndarray]
    optimum: Callable[[np.ndarray], np.ndarray]
    check_vertex: Callable[[np.ndarray, np.ndarray], None]
    lowest_index: Optional[Callable[[np.ndarray], np.ndarray]] = None
    maximize: bool = True
    # Float64 sums of ≤ 49 terms of weight < 8 err by < 2·49·8·2⁻⁵³ < 1e-13 relative to Σ|x|.
    rounding: float = 1e-12

    def draw(self, rng: np.random.Generator, batch_shape: tuple, ties: bool, event=None) -> np.ndarray:
        return self.sample(rng, tuple(batch_shape) + tuple(event or self.event), ties)


def _vector_problem(vertices, objective, check_vertex, lowest_index, smallest=(1,)) -> Problem:
    d = 7
    return Problem(
        event=(d,),
        smallest=smallest,
        sample=_scores,
        objective=objective,
        optimum=lambda x: _best_over(vertices(x.shape[-1]), x),
        check_vertex=check_vertex,
        lowest_index=lowest_index,
    )


def _path_problem(neighbourhood: int) -> Problem:
    h, w = 5, 6
    return Problem(
        event=(h, w),
        smallest=(1, 1),
        sample=_costs,
        objective=_inner,
        optimum=_path_optimum(neighbourhood),
        check_vertex=_check_path(neighbourhood),
        maximize=False,
        # Distances are float32 sums along paths of ≤ H·W vertices, each within H·W·2⁻²⁴·Σc of
        # the exact cost: the chosen path is within 2·H·W·2⁻²⁴·Σc of the optimum.
        rounding=2 * h * w * 2.0**-24,
    )


K = 3
ARGMAX = _vector_problem(_one_hots, _inner, _check_hot(1), _lowest_argmax)
TOP_K = _vector_problem(_k_hots(K), _inner, _check_hot(K), _lowest_top_k(K), smallest=(K,))
RANKS = _vector_problem(_rank_vectors, _inner, _check_rank_vector, _stable_ranks)
SORT = _vector_problem(_rank_vectors, _sorting_objective, _check_permutation_matrix, _lowest_sort_permutation)
PATH_8, PATH_4 = _path_problem(8), _path_problem(4)
MATCHING = Problem((7, 7), (1, 1), _scores, _inner, _matching_optimum, _check_permutation_matrix)
ITEM_WEIGHTS, CAPACITY = (3, 1, 4, 1, 5, 2, 6), 9  # some items never fit together, one fits alone


def _selections(d: int) -> np.ndarray:
    """Every 0/1 selection of the 7 items within the capacity: [V, 7]."""
    return references.selections(ITEM_WEIGHTS[:d], CAPACITY)


def _check_selection(y: np.ndarray, x: np.ndarray) -> None:
    assert np.isin(y, [0.0, 1.0]).all(), y
    assert (y @ np.array(ITEM_WEIGHTS) <= CAPACITY).all(), y


KNAPSACK = dataclasses.replace(
    _vector_problem(_selections, _inner, _check_selection, None), smallest=(len(ITEM_WEIGHTS),)
)
GRID_EDGES = tp.solvers.grid_graph_edges(5, 5)  # PyEPO's 5 × 5 grid: 40 edges right and down, 0 → 24


def _check_graph_path(y: np.ndarray, x: np.ndarray) -> None:
    for path in y:
        assert references.is_simple_path(path, *GRID_EDGES, 0, 24), path


GRAPH_PATH = Problem(
    event=(40,),
    smallest=(40,),
    sample=_scores,  # the graph is acyclic: costs of any sign
    objective=_inner,
    optimum=lambda x: references.graph_distances(x, *GRID_EDGES, 0, 24),
    check_vertex=_check_graph_path,
    maximize=False,
    # Distances are float32 sums of ≤ 8 edge costs, each within 8·2⁻²⁴·Σ|c| of the exact
    # cost: the chosen path is within 2·8·2⁻²⁴·Σ|c| of the optimum.
    rounding=2 * 8 * 2.0**-24,
)


# ---------------------------------------------------------------------------
# Host solvers, wrapped with tp.solvers.numpy_solver


def _numpy_argmax(theta: np.ndarray) -> np.ndarray:
    return np.eye(theta.shape[-1], dtype=np.float32)[np.argmax(theta)]


def _scipy_assignment(scores: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(scores, maximize=True)
    perm = np.zeros(scores.shape, np.float32)
    perm[rows, cols] = 1.0
    return perm


# ---------------------------------------------------------------------------
# The cases: one line per solver


@dataclasses.dataclass(frozen=True)
class Case:
    """A solver and what it promises.

    Attributes:
      id: the test id.
      solver: a `tp.solvers.Solver`, hyper-parameters bound.
      problem: the problems it solves, with their reference.
      argument: the name its errors give the input.
      lowest_index: whether it documents ties broken towards the lowest index.
      non_finite: its documented policy: "nan_rows" (a problem with a NaN gets a NaN
        solution, ±inf are scores like any other) or "raise" (InvalidArgumentError
        outside XLA, a NaN solution under XLA); None: not documented.
      invalid: the values that make a problem invalid under the "raise" policy.
      xla: whether it compiles with XLA.
    """

    id: str
    solver: tp.solvers.Solver
    problem: Problem
    argument: str = "theta"
    lowest_index: bool = False
    non_finite: Optional[str] = None
    invalid: tuple = ()
    xla: bool = True


get = tp.solvers.get_solver
CASES = [
    Case("argmax", get("argmax"), ARGMAX, lowest_index=True, non_finite="nan_rows"),
    Case("top_k", get("top_k", k=K), TOP_K, lowest_index=True, non_finite="nan_rows"),
    Case("ranks", get("ranks"), RANKS, lowest_index=True, non_finite="nan_rows"),
    Case("sort_permutation", get("sort_permutation"), SORT, lowest_index=True, non_finite="nan_rows"),
    Case("shortest_path_8", get("shortest_path", neighbourhood=8), PATH_8, "costs", non_finite="raise", invalid=(NAN, INF, -1.0)),
    Case("shortest_path_4", get("shortest_path", neighbourhood=4), PATH_4, "costs", non_finite="raise", invalid=(NAN, INF, -1.0)),
    Case("assignment", get("assignment"), MATCHING, "scores", non_finite="raise", invalid=(NAN, INF, -INF)),
    Case("knapsack", get("knapsack", weights=ITEM_WEIGHTS, capacity=CAPACITY), KNAPSACK, "values", non_finite="raise",
         invalid=(NAN, INF, -INF)),
    Case("graph_shortest_path", get("graph_shortest_path", senders=GRID_EDGES[0], receivers=GRID_EDGES[1], source=0,
                                    target=24), GRAPH_PATH, "costs", non_finite="raise", invalid=(NAN, INF, -INF)),
    Case("numpy_argmax", tp.solvers.numpy_solver(_numpy_argmax), ARGMAX, lowest_index=True, xla=False),
    Case("scipy_assignment", tp.solvers.numpy_solver(_scipy_assignment, event_ndims=2), MATCHING, xla=False),
]  # fmt: skip


def _cases(*, where: Callable[[Case], bool] = lambda case: True) -> list:
    """The cases (those `where` accepts) as pytest parameters."""
    return [pytest.param(case, id=case.id) for case in CASES if where(case)]


@functools.cache
def _graph(case: Case):
    return tf.function(case.solver)


@functools.cache
def _xla(case: Case):
    return tf.function(case.solver, jit_compile=True)


def _solve(fn, x) -> np.ndarray:
    return fn(tf.constant(x)).numpy()


def _mixed(case: Case, rng: np.random.Generator) -> np.ndarray:
    """`[BATCH, *event]` float32: half continuous problems, half with ties."""
    half = BATCH // 2
    return np.concatenate([case.problem.draw(rng, (half,), ties=False), case.problem.draw(rng, (half,), ties=True)])


def _assert_optimal(case: Case, y: np.ndarray, x: np.ndarray, exact: bool) -> None:
    """Every solution in y `[N, *out]` is a vertex with the reference's optimal value on x `[N, *event]`."""
    problem = case.problem
    x = x.astype(np.float64)
    problem.check_vertex(y, x)
    gap = problem.objective(y, x) - problem.optimum(x)
    if not problem.maximize:
        gap = -gap
    tolerance = 0.0 if exact else problem.rounding * np.abs(x).reshape(len(x), -1).sum(-1)
    bad = np.flatnonzero(np.abs(gap) > tolerance)
    assert bad.size == 0, (case.id, bad, gap[bad], x[bad[:1]], y[bad[:1]])


def _assert_bitwise_equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    unsigned = np.dtype(f"u{a.dtype.itemsize}")
    np.testing.assert_array_equal(a.view(unsigned), b.view(unsigned))


# ---------------------------------------------------------------------------
# The registry: every built-in solver has a line


def test_every_built_in_solver_has_a_line():
    covered = {case.solver.name for case in CASES if case.solver.registered}
    missing = []
    for name in tp.solvers.registered_solvers():
        if name in covered:
            continue
        fn = tp.solvers.get_spec(name).fn
        # Built-ins are defined in the package; a named numpy_solver (some tests register
        # one) wraps its host function in a closure defined there too.
        if fn.__module__.startswith("tf_perturbed") and "<locals>" not in fn.__qualname__:
            missing.append(name)
    assert not missing, f"registered solvers with no line in CASES: {missing}"


@pytest.mark.parametrize("case", _cases())
def test_the_line_fits_the_solver(case):
    assert len(case.problem.event) == case.solver.event_ndims
    assert case.problem.maximize == case.solver.maximize
    assert case.xla == case.solver.spec.jit_compatible


# ---------------------------------------------------------------------------
# 1. Optimality


@pytest.mark.parametrize("case", _cases())
def test_optimal_vertex_against_the_reference(case):
    # 12 calls of 24 problems: 144 continuous, 144 integer-valued with many ties.
    rng = np.random.default_rng(0)
    for ties in (False, True) * 6:
        x = case.problem.draw(rng, (BATCH,), ties)
        y = case.solver(tf.constant(x))
        assert y.dtype == tf.float32 and tuple(y.shape) == case.solver.output_shape(x.shape)
        _assert_optimal(case, y.numpy(), x, exact=ties)


@pytest.mark.parametrize("case", _cases())
def test_smallest_problem(case):
    x = case.problem.draw(np.random.default_rng(1), (3,), ties=False, event=case.problem.smallest)
    y = _solve(case.solver, x)
    assert y.shape == case.solver.output_shape(x.shape)
    _assert_optimal(case, y, x, exact=False)
    if case.lowest_index:
        np.testing.assert_array_equal(y, case.problem.lowest_index(x))


# ---------------------------------------------------------------------------
# 2. Ties


@pytest.mark.parametrize("case", _cases())
def test_ties_are_broken_deterministically(case):
    rng = np.random.default_rng(2)
    x = case.problem.draw(rng, (BATCH,), ties=True)
    x[:2], x[2:4] = 0.0, 1.0  # every vertex optimal
    y = _solve(case.solver, x)
    _assert_optimal(case, y, x, exact=True)
    np.testing.assert_array_equal(_solve(case.solver, x), y)
    order = rng.permutation(BATCH)  # a problem's solution does not depend on its place in the batch
    np.testing.assert_array_equal(_solve(case.solver, x[order]), y[order])
    if case.lowest_index:
        np.testing.assert_array_equal(y, case.problem.lowest_index(x))


# ---------------------------------------------------------------------------
# 3. Leading batch axes


@pytest.mark.parametrize("case", _cases())
def test_leading_batch_axes(case):
    x = _mixed(case, np.random.default_rng(3))  # [24, *event]
    flat = _solve(case.solver, x)  # [24, *out]
    single = [_solve(case.solver, problem) for problem in x]  # unbatched: [*out] each
    assert single[0].shape == flat.shape[1:]
    np.testing.assert_array_equal(np.stack(single), flat)
    for batch_shape in [(6, 4), (2, 3, 4)]:
        nested = x.reshape(batch_shape + case.problem.event)
        y = _solve(case.solver, nested)
        assert y.shape == case.solver.output_shape(nested.shape)
        np.testing.assert_array_equal(y.reshape(flat.shape), flat)


@pytest.mark.parametrize("case", _cases())
def test_empty_batch(case):
    for batch_shape in [(0,), (3, 0)]:
        x = np.zeros(batch_shape + case.problem.event, np.float32)
        y = case.solver(tf.constant(x))
        assert y.dtype == tf.float32 and tuple(y.shape) == case.solver.output_shape(x.shape)


# ---------------------------------------------------------------------------
# 4. Dtypes


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16, tf.float32, tf.float64, tf.int32, tf.int64], ids=lambda dtype: dtype.name)
@pytest.mark.parametrize("case", _cases())
def test_dtypes(case, dtype):
    # Small integers: exact in every dtype, so every dtype has the same optima.
    x = case.problem.draw(np.random.default_rng(4), (BATCH,), ties=True)
    y = case.solver(tf.cast(x, dtype))
    assert y.dtype == (tf.float32 if dtype.is_integer else dtype)  # the input's float dtype
    y = tf.cast(y, tf.float64).numpy()
    _assert_optimal(case, y, x, exact=True)
    if case.lowest_index:
        np.testing.assert_array_equal(y, case.problem.lowest_index(x))
    if dtype in (tf.float16, tf.bfloat16):  # half precision is solved in float32
        np.testing.assert_array_equal(y, _solve(case.solver, x))


# ---------------------------------------------------------------------------
# 5. Modes


@pytest.mark.parametrize("case", _cases())
def test_eager_graph_and_xla_agree_bit_for_bit(case):
    x = _mixed(case, np.random.default_rng(5))
    eager = _solve(case.solver, x)
    _assert_bitwise_equal(_solve(_graph(case), x), eager)
    if case.xla:
        _assert_bitwise_equal(_solve(_xla(case), x), eager)
    else:
        with pytest.raises(ValueError, match="cannot be compiled with XLA"):
            _xla(case)(tf.constant(x))


# ---------------------------------------------------------------------------
# 6. Bad input


@pytest.mark.parametrize("case", _cases())
def test_bad_input_names_the_argument(case):
    name, event = case.argument, case.problem.event
    with pytest.raises(ValueError, match=rf"{name}\.shape="):  # rank below the problem's
        case.solver(tf.zeros(event[1:]))
    for axis in range(len(event)):  # an empty problem axis
        shape = [2, *event]
        shape[1 + axis] = 0
        with pytest.raises(ValueError, match=rf"{name}\.shape="):
            case.solver(tf.zeros(shape))
    for bad in (tf.zeros((2, *event), tf.bool), tf.fill((2, *event), "a")):
        with pytest.raises(TypeError, match=rf"{name}\.dtype={bad.dtype.name}"):
            case.solver(bad)


@pytest.mark.parametrize("case", _cases(where=lambda case: case.non_finite == "nan_rows"))
def test_nan_problems_get_nan_solutions_and_infinities_are_scores(case):
    x = case.problem.draw(np.random.default_rng(6), (BATCH,), ties=True)
    x[3, 1], x[5, 0], x[7, 2], x[9], x[11, [0, 4]], x[13] = NAN, INF, -INF, INF, [NAN, INF], -INF
    nan = np.isnan(x).any(axis=-1)
    for fn in (case.solver, _graph(case), _xla(case)):
        y = _solve(fn, x)
        assert np.isnan(y[nan]).all(), y[nan]
        np.testing.assert_array_equal(y[~nan], case.problem.lowest_index(x[~nan]))


@pytest.mark.parametrize("case", _cases(where=lambda case: case.non_finite == "raise"))
def test_invalid_input_raises_and_gives_nan_under_xla(case):
    clean = _mixed(case, np.random.default_rng(7))
    expected = _solve(case.solver, clean)
    inner = (0,) * (len(case.problem.event) - 1)  # an entry inside the problem, whatever its rank
    for value in case.invalid:
        x = clean.copy()
        x[(17, *inner, 1)] = value
        for fn in (case.solver, _graph(case)):  # eagerly and in graphs the check raises
            with pytest.raises(tf.errors.InvalidArgumentError, match=case.argument):
                fn(tf.constant(x))
    # XLA drops the check: each invalid problem gets a NaN solution, the others are solved.
    x, rows = clean.copy(), [3, 5, 7]
    for row, value in zip(rows, case.invalid, strict=True):
        x[(row, *(-1 for _ in inner), 0)] = value
    y = _solve(_xla(case), x)
    assert np.isnan(y[rows]).all()
    np.testing.assert_array_equal(np.delete(y, rows, 0), np.delete(expected, rows, 0))
