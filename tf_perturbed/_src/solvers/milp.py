"""Linear and mixed-integer linear programs as a solver, through SciPy's HiGHS.

`milp(a_ub=…, b_ub=…, a_eq=…, b_eq=…)` turns a polytope given by its constraints into a
solver of every estimator in tf_perturbed: for scores (costs) θ it returns the optimal
vertex argmin ⟨θ, y⟩ (or argmax), one `scipy.optimize.milp` call per problem on the host,
through `numpy_solver`. It is the counterpart of PyEPO's and InferOpt's models defined
by constraints, for problems with no batched TF solver: multi-dimensional knapsacks with
large capacities, assignments with side constraints, any LP whose vertices are the
solutions. Like every `numpy_solver`, it runs eagerly and in `tf.function`, not under
XLA nor in an exported SavedModel.
"""

from typing import Optional

import numpy as np
import tensorflow as tf

from tf_perturbed._src.solvers import registry
from tf_perturbed._src.solvers.numpy_adapter import host_solver, numpy_solver


def _matrix(value, name: str, columns: Optional[int]) -> Optional[np.ndarray]:
    """`value` as a finite float64 matrix `[m, n]` (n = `columns` when known), or raises naming `name`."""
    if value is None:
        return None
    matrix = np.asarray(value, np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] == 0:
        raise ValueError(f"Expected `{name}` to be a non-empty matrix [constraints, variables], received shape {matrix.shape}")
    if columns is not None and matrix.shape[1] != columns:
        raise ValueError(
            f"Expected `{name}` to have one column per variable ({columns}), received shape {matrix.shape}"
        )
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"Expected `{name}` to be finite, received: {name}={value!r}")
    return matrix


def _vector(value, name: str, size: int, *, finite: bool = True) -> np.ndarray:
    """`value` (a number or `[size]`) as a float64 vector `[size]`, or raises naming `name`."""
    vector = np.asarray(value, np.float64)
    if vector.ndim == 0:
        vector = np.full(size, float(vector))
    if vector.shape != (size,):
        raise ValueError(f"Expected `{name}` to be a number or {size} numbers, received: {name}={value!r}")
    if np.any(np.isnan(vector)) or (finite and not np.all(np.isfinite(vector))):
        raise ValueError(f"Expected `{name}` to be {'finite' if finite else 'numbers, not NaN'}, received: {name}={value!r}")
    return vector


def milp(
    *,
    a_ub=None,
    b_ub=None,
    a_eq=None,
    b_eq=None,
    lower=0.0,
    upper=1.0,
    integrality=1,
    maximize: bool = False,
    name: Optional[str] = None,
) -> registry.Solver:
    """A solver for linear programs with integer or continuous variables (SciPy's HiGHS).

    Formula:
        y*(θ) = argmin_{y ∈ P} ⟨θ, y⟩ (argmax with `maximize=True`), where
        P = {y : A_ub y ≤ b_ub, A_eq y = b_eq, lower ≤ y ≤ upper, y_i integer where integrality_i = 1}

    Args:
        a_ub, b_ub: inequality constraints, `[m, n]` and `[m]` (both or neither).
        a_eq, b_eq: equality constraints, `[p, n]` and `[p]` (both or neither). At least
            one of the two matrices is needed; its columns are the n variables.
        lower, upper: bounds of the variables, a number or n numbers (±inf allowed;
            default 0 and 1: the 0/1 programs of combinatorial problems).
        integrality: 1 (every variable integer), 0 (a linear program: HiGHS returns a
            vertex) or n zeros and ones.
        maximize: whether the scores are maximised (values) or minimised (costs).
        name: register the solver under this name, so that layers and losses using it
            can be saved (the registration must be repeated before loading, with the
            same constraints).

    Returns:
        A `tf_perturbed.solvers.Solver` on scores `[..., n]`, returning `[..., n]` in
        the scores' float dtype; integer variables are rounded to the nearest integer.
        A problem that is infeasible, unbounded or not solved, or has a NaN or infinite
        score, fails at run time with an error naming HiGHS's status (or the score) and
        the problem's index in the batch. Integer programs are solved to optimality
        (relative gap 0, not HiGHS's default 0.01 %).

    Raises:
        ImportError: if SciPy (≥ 1.9, for `scipy.optimize.milp`) is missing.
        ValueError: for a constraint matrix without its right-hand side (or the
            reverse), shapes that disagree, non-finite constraints, NaN bounds or an
            integrality other than 0/1.

    Example:
        A knapsack with two resources, maximised:

        >>> solver = milp(a_ub=[[1, 2, 3], [3, 1, 2]], b_ub=[5, 3], maximize=True)
        >>> solver(tf.constant([[6.0, 10.0, 12.0]])).numpy()
        array([[0., 1., 1.]], dtype=float32)
    """
    try:
        from scipy import optimize
    except ImportError as error:  # pragma: no cover - scipy is installed with the test extra
        raise ImportError("`tf_perturbed.solvers.milp` needs SciPy ≥ 1.9: pip install scipy") from error
    if not hasattr(optimize, "milp"):  # pragma: no cover
        raise ImportError("`tf_perturbed.solvers.milp` needs SciPy ≥ 1.9 (scipy.optimize.milp): pip install -U scipy")
    if (a_ub is None) != (b_ub is None) or (a_eq is None) != (b_eq is None):
        raise ValueError(
            "Expected each constraint matrix with its right-hand side (a_ub with b_ub, a_eq with b_eq), received: "
            f"a_ub {'given' if a_ub is not None else 'None'}, b_ub={b_ub!r}, "
            f"a_eq {'given' if a_eq is not None else 'None'}, b_eq={b_eq!r}"
        )
    if a_ub is None and a_eq is None:
        raise ValueError("Expected `a_ub` or `a_eq` (a matrix whose columns are the variables), received neither")
    a_ub = _matrix(a_ub, "a_ub", None)
    a_eq = _matrix(a_eq, "a_eq", None if a_ub is None else a_ub.shape[1])
    num_variables = (a_ub if a_ub is not None else a_eq).shape[1]
    constraints = []
    if a_ub is not None:
        constraints.append(optimize.LinearConstraint(a_ub, -np.inf, _vector(b_ub, "b_ub", a_ub.shape[0])))
    if a_eq is not None:
        rhs = _vector(b_eq, "b_eq", a_eq.shape[0])
        constraints.append(optimize.LinearConstraint(a_eq, rhs, rhs))
    bounds = optimize.Bounds(
        _vector(lower, "lower", num_variables, finite=False), _vector(upper, "upper", num_variables, finite=False)
    )
    integral = _vector(integrality, "integrality", num_variables)
    if not np.all(np.isin(integral, (0.0, 1.0))):
        raise ValueError(f"Expected `integrality` to be 0, 1 or n zeros and ones, received: integrality={integrality!r}")
    sign = -1.0 if maximize else 1.0

    def solve(scores: np.ndarray) -> np.ndarray:
        solutions = np.empty(scores.shape, np.float64)
        for index, theta in enumerate(scores.astype(np.float64)):
            if not np.all(np.isfinite(theta)):
                raise ValueError(f"milp: problem {index} of the batch has a NaN or infinite score: {theta}")
            # mip_rel_gap=0: solved to optimality, not within HiGHS's default 0.01 % gap.
            result = optimize.milp(sign * theta, constraints=constraints, bounds=bounds, integrality=integral,
                                   options={"mip_rel_gap": 0.0})
            if result.status != 0 or result.x is None:
                raise ValueError(
                    f"milp: problem {index} of the batch not solved to optimality: HiGHS status {result.status} "
                    f"({result.message})"
                )
            solutions[index] = np.where(integral == 1, np.rint(result.x), result.x)
        return solutions

    solve.__name__ = "milp"  # the name host-solver errors give
    inner = numpy_solver(solve, output_dtype=np.float64, maximize=maximize, batched=True, name=None)

    def solve_checked(theta: tf.Tensor) -> tf.Tensor:
        theta = tf.convert_to_tensor(theta)
        size = theta.shape[-1] if theta.shape.rank else None  # None: unknown until run
        if size is not None and size != num_variables:
            raise ValueError(
                f"Expected scores with {num_variables} entries (the constraints' columns) on their last axis, "
                f"received: theta.shape={theta.shape}"
            )
        return inner(theta)

    return host_solver(solve_checked, label="milp", name=name, event_ndims=1, maximize=maximize)
