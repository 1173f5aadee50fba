"""Registers the built-in solvers under the names layers and losses accept."""

import tensorflow as tf

from tf_perturbed._src.solvers import _checks, core
from tf_perturbed._src.solvers.assignment import assignment
from tf_perturbed._src.solvers.registry import register_solver
from tf_perturbed._src.solvers.shortest_path import shortest_path


def _permutation_matrix_shape(shape: tuple) -> tuple:
    return tuple(shape) + (shape[-1],)


register_solver("argmax", core.argmax)
def _check_top_k(params: dict) -> dict:
    return {"k": _checks.positive_int(params["k"], "k")}


register_solver("top_k", core.top_k, params=("k",), check_params=_check_top_k)
register_solver("ranks", core.ranks)
register_solver(
    "sort_permutation",
    core.sort_permutation,
    output_shape=_permutation_matrix_shape,
    linear_output=False,
)


def _grid_shortest_path(costs: tf.Tensor, neighbourhood: int = 8, clip_negative: bool = False) -> tf.Tensor:
    """`shortest_path`, optionally on max(costs, 0) (for additively perturbed costs)."""
    if clip_negative:
        costs = tf.nn.relu(costs)
    return shortest_path(costs, neighbourhood=neighbourhood)


def _check_shortest_path(params: dict) -> dict:
    neighbourhood = params["neighbourhood"]
    if neighbourhood not in (4, 8) or isinstance(neighbourhood, bool):
        raise ValueError(f"Expected `neighbourhood` in (4, 8), received: neighbourhood={neighbourhood!r}")
    if not isinstance(params["clip_negative"], bool):
        raise TypeError(f"Expected `clip_negative` to be a bool, received: clip_negative={params['clip_negative']!r}")
    return {"neighbourhood": int(neighbourhood), "clip_negative": params["clip_negative"]}


register_solver(
    "shortest_path",
    _grid_shortest_path,
    event_ndims=2,
    maximize=False,
    defaults={"neighbourhood": 8, "clip_negative": False},
    check_params=_check_shortest_path,
    perturbation="multiplicative",
)
register_solver("assignment", assignment, event_ndims=2)
