"""Registers the built-in solvers under the names layers and losses accept."""

from tf_perturbed._src.solvers import core
from tf_perturbed._src.solvers.registry import register_solver


def _permutation_matrix_shape(shape: tuple) -> tuple:
    return tuple(shape) + (shape[-1],)


register_solver("argmax", core.argmax)
register_solver("top_k", core.top_k, params=("k",))
register_solver("ranks", core.ranks)
register_solver(
    "sort_permutation",
    core.sort_permutation,
    output_shape=_permutation_matrix_shape,
    linear_output=False,
)
