"""Registers the built-in solvers under the names layers and losses accept."""

from tf_perturbed._src.solvers import _checks, core
from tf_perturbed._src.solvers.registry import register_solver


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
