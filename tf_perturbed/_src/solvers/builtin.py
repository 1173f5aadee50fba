"""Registers the built-in solvers under the names layers and losses accept."""

from tf_perturbed._src.base import validate
from tf_perturbed._src.solvers import core
from tf_perturbed._src.solvers import graph as graph_lib
from tf_perturbed._src.solvers import knapsack as knapsack_lib
from tf_perturbed._src.solvers.assignment import assignment
from tf_perturbed._src.solvers.registry import register_solver
from tf_perturbed._src.solvers.shortest_path import shortest_path


def _permutation_matrix_shape(shape: tuple) -> tuple:
    return tuple(shape) + (shape[-1],)


def _check_top_k(params: dict) -> dict:
    return {"k": validate.integer(params["k"], "k")}


def _check_knapsack(params: dict) -> dict:
    weights, capacity = knapsack_lib.check_arguments(params["weights"], params["capacity"])
    if isinstance(capacity, int):  # one resource
        return {"weights": list(weights), "capacity": capacity}  # a list: the form a JSON config holds
    return {"weights": [list(row) for row in weights], "capacity": list(capacity)}


def _check_graph_shortest_path(params: dict) -> dict:
    graph = graph_lib.check_graph(**params)
    return {  # lists: the form a JSON config holds
        "senders": list(graph.senders),
        "receivers": list(graph.receivers),
        "source": graph.source,
        "target": graph.target,
        "num_vertices": params["num_vertices"] if params["num_vertices"] is None else graph.num_vertices,
    }


def _graph_shortest_path_domain(params: dict):
    """Costs ≥ 0 on a graph with cycles (negative cycles); any costs on an acyclic graph."""
    return None if graph_lib.check_graph(**params).acyclic else 0.0


def _check_shortest_path(params: dict) -> dict:
    return {"neighbourhood": int(validate.choice(params["neighbourhood"], "neighbourhood", (4, 8)))}


register_solver("argmax", core.argmax)
register_solver("top_k", core.top_k, params=("k",), check_params=_check_top_k)
register_solver("ranks", core.ranks)
register_solver("sort_permutation", core.sort_permutation, output_shape=_permutation_matrix_shape)
register_solver(
    "shortest_path",
    shortest_path,
    event_ndims=2,
    maximize=False,
    defaults={"neighbourhood": 8},
    check_params=_check_shortest_path,
    perturbation="multiplicative",
    domain_min=0.0,
)
register_solver("assignment", assignment, event_ndims=2)
register_solver("knapsack", knapsack_lib.knapsack, params=("weights", "capacity"), check_params=_check_knapsack)
register_solver(
    "graph_shortest_path",
    graph_lib.graph_shortest_path,
    maximize=False,
    params=("senders", "receivers", "source", "target"),
    defaults={"num_vertices": None},
    check_params=_check_graph_shortest_path,
    domain=_graph_shortest_path_domain,
)
