"""Batched combinatorial solvers in TensorFlow ops, and the solver registry.

Every solver maps scores (or costs) with any leading batch axes to a vertex of
its polytope, as a deterministic function of its input, and compiles with XLA,
except `numpy_solver`, which wraps a host function, and `milp`, a linear program
given by its constraints and solved on the host by SciPy's HiGHS. Argmax, top-k, ranks and sort
permutations break ties towards the lowest index; a shortest path, an assignment or a
knapsack selection among several optima is the one the algorithm reaches, the same for
the same input.
"""

from tf_perturbed._src.solvers.assignment import assignment
from tf_perturbed._src.solvers.core import argmax, ranks, sort_permutation, top_k
from tf_perturbed._src.solvers.graph import graph_shortest_path, grid_graph_edges
from tf_perturbed._src.solvers.knapsack import knapsack
from tf_perturbed._src.solvers.milp import milp
from tf_perturbed._src.solvers.numpy_adapter import numpy_solver
from tf_perturbed._src.solvers.registry import (
    Solver,
    SolverSpec,
    get_solver,
    get_spec,
    register_solver,
    registered_solvers,
)
from tf_perturbed._src.solvers.shortest_path import shortest_path

__all__ = [
    "Solver",
    "SolverSpec",
    "argmax",
    "assignment",
    "get_solver",
    "get_spec",
    "graph_shortest_path",
    "grid_graph_edges",
    "knapsack",
    "milp",
    "numpy_solver",
    "ranks",
    "register_solver",
    "registered_solvers",
    "shortest_path",
    "sort_permutation",
    "top_k",
]
