"""Any NumPy/SciPy solver as a TF solver, through `tf.numpy_function`.

The host function runs outside the graph, so such a solver works eagerly and
in `tf.function`, with `perturbed`, the Fenchel-Young loss and the direct-loss
layer, but not under XLA and not inside an exported SavedModel: both raise a
clear error rather than failing later.
"""

from typing import Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from tf_perturbed._src.base import tf_compat, validate
from tf_perturbed._src.solvers import registry

ShapeLike = Union[None, Sequence[int], Callable[[tuple], tuple]]


def _out_event_shape(output_shape: ShapeLike, event_shape: tuple) -> tuple:
    if output_shape is None:
        return tuple(event_shape)
    if callable(output_shape):
        return tuple(output_shape(tuple(event_shape)))
    return tuple(output_shape)


def numpy_solver(
    fn: Callable[[np.ndarray], np.ndarray],
    output_shape: ShapeLike = None,
    output_dtype=np.float32,
    *,
    event_ndims: int = 1,
    maximize: bool = True,
    batched: bool = False,
    name: Optional[str] = None,
) -> registry.Solver:
    """Wraps a NumPy function as a solver usable by every estimator in tf_perturbed.

    Args:
      fn: the host solver. With `batched=False` it maps one problem (an array of
        the event shape) to its solution; with `batched=True` it maps a stack
        `[N, *event]` to `[N, *out]`.
      output_shape: the solution's shape for one problem: None (the problem's
        shape), a tuple, or a callable from the problem's shape to it.
      output_dtype: the NumPy dtype `fn` returns; the result is cast to the
        scores' float dtype.
      event_ndims: trailing axes forming one problem (1: vector, 2: matrix/grid).
      maximize: True if `fn` maximises ⟨y, θ⟩, False if it minimises costs.
      batched: whether `fn` takes a stack of problems.
      name: register the solver under this name, so that layers and losses
        using it can be saved (the registration must be repeated before loading).

    Returns:
      A `tf_perturbed.solvers.Solver`.

    Raises:
      TypeError: if `fn` is not callable.
      ValueError: when called under XLA (`jit_compile=True`) or while exporting
        a SavedModel, which cannot run host code.

    Example:
      >>> from scipy.optimize import linear_sum_assignment
      >>> def assign(s):
      ...     rows, cols = linear_sum_assignment(s, maximize=True)
      ...     p = np.zeros_like(s); p[rows, cols] = 1; return p
      >>> solver = numpy_solver(assign, event_ndims=2)
      >>> float(solver(tf.eye(3)).numpy().sum())
      3.0
    """
    if not callable(fn):
        raise TypeError(f"Expected `fn` to be callable, received: fn={fn!r}")
    event_ndims = validate.integer(event_ndims, "event_ndims")
    np_dtype = np.dtype(output_dtype)
    label = name or getattr(fn, "__name__", type(fn).__name__)

    def host(stack: np.ndarray, out_shape: np.ndarray) -> np.ndarray:
        if stack.shape[0] == 0:  # an empty batch: nothing for `fn` to solve
            return np.zeros((0,) + tuple(int(size) for size in out_shape), np_dtype)
        if batched:
            result = np.asarray(fn(stack), dtype=np_dtype)
        else:
            result = np.stack([np.asarray(fn(problem), dtype=np_dtype) for problem in stack])
        expected = (stack.shape[0],) + tuple(int(size) for size in out_shape)
        if result.shape != expected:
            raise ValueError(
                f"The NumPy solver {label!r} returned shape {result.shape}, expected {expected} "
                "(declare it with `output_shape=`)."
            )
        return result

    def solve(theta: tf.Tensor) -> tf.Tensor:
        if tf_compat.in_save_context():
            raise ValueError(
                f"The NumPy solver {label!r} runs Python code on the host and cannot be exported "
                "to a SavedModel: export a model whose inference path uses a TF solver instead."
            )
        theta, dtype = validate.scores(theta, "theta", min_rank=event_ndims)
        event_shape = tuple(theta.shape[-event_ndims:])
        if any(size is None for size in event_shape):
            raise ValueError(
                f"The NumPy solver {label!r} needs a static problem shape, received: theta.shape={theta.shape}"
            )
        out_event = _out_event_shape(output_shape, event_shape)
        flat = tf.reshape(theta, (-1,) + event_shape)  # [N, *event]
        y = tf.numpy_function(
            host, [flat, tf.constant(out_event, tf.int64)], tf.as_dtype(np_dtype), stateful=False
        )
        y.set_shape((None,) + out_event)  # [N, *out]
        batch_shape = tf.shape(theta)[: theta.shape.rank - event_ndims]  # rank static: checked above
        y = tf.reshape(y, tf.concat([batch_shape, out_event], 0))  # [*batch, *out]
        return tf.cast(y, dtype)

    return host_solver(solve, label=label, name=name, event_ndims=event_ndims, maximize=maximize,
                       output_shape=output_shape)


def host_solver(
    solve: Callable[[tf.Tensor], tf.Tensor],
    *,
    label: str,
    name: Optional[str],
    event_ndims: int,
    maximize: bool,
    output_shape: ShapeLike = None,
) -> registry.Solver:
    """A `Solver` (registered under `name` when given) for a TF function that calls host code."""

    def full_output_shape(shape: tuple) -> tuple:
        batch, event = tuple(shape[: len(shape) - event_ndims]), tuple(shape[len(shape) - event_ndims :])
        return batch + _out_event_shape(output_shape, event)

    spec_args = dict(
        event_ndims=event_ndims,
        maximize=maximize,
        jit_compatible=False,
        output_shape=None if output_shape is None else full_output_shape,
    )
    if name is not None:
        spec = registry.register_solver(name, solve, overwrite=True, **spec_args)
        return registry.Solver(spec=spec, kwargs={}, registered=True)
    spec = registry.SolverSpec(
        name=label, fn=solve, output_ndims=registry.output_ndims(spec_args["output_shape"], event_ndims), **spec_args
    )
    return registry.Solver(spec=spec, kwargs={}, registered=False)
