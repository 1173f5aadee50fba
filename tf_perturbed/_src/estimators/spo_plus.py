"""The SPO+ loss (Elmachtoub & Grigas 2022): a convex surrogate of the decision regret, no noise."""

from typing import Optional

import tensorflow as tf

from tf_perturbed._src.base import validate
from tf_perturbed._src.estimators.perturbed import engine
from tf_perturbed._src.estimators.perturbed.api import SolverLike
from tf_perturbed._src.solvers import registry


def spo_plus_loss(
    theta_true: tf.Tensor,
    theta_pred: tf.Tensor,
    solver: SolverLike,
    *,
    y_true: Optional[tf.Tensor] = None,
    maximize: Optional[bool] = None,
    solver_kwargs: Optional[dict] = None,
    event_ndims: Optional[int] = None,
    clip_to_domain: bool = False,
) -> tf.Tensor:
    """SPO+ loss per example, with its subgradient: for predicted and true scores (or costs).

    Formula (minimising costs c, as in the paper; ĉ the prediction, w*(c) the solution):
      ℓ(ĉ, c) = −min_w ⟨2ĉ − c, w⟩ + 2⟨ĉ, w*(c)⟩ − ⟨c, w*(c)⟩ ≥ 0,  ℓ(c, c) = 0
      ∂ĉ ℓ ∋ 2 (w*(c) − w*(2ĉ − c))
      maximising scores θ (θ = −c): ℓ(θ̂, θ) = max_y ⟨2θ̂ − θ, y⟩ − 2⟨θ̂, y*(θ)⟩ + ⟨θ, y*(θ)⟩,
      ∂θ̂ ℓ ∋ 2 (y*(2θ̂ − θ) − y*(θ))

    One solver call solves every 2θ̂ − θ and, when `y_true` is not given, every θ.
    No gradient reaches `theta_true` (it is data).

    Solvers with a domain. 2ĉ − c leaves a domain such as costs ≥ 0 (`"shortest_path"`:
    on a grid with cycles, negative costs have no shortest path). By default such a
    solver is rejected. `clip_to_domain=True` solves s' = max(2ĉ − c, m) instead (m the
    domain's bound) and returns ℓ = ⟨2ĉ − c, w*(c) − w*(s')⟩ (minimising; maximising:
    the same with θ), whose gradient is 2(w*(c) − w*(s')): equal to SPO+ where
    2ĉ − c ≥ m, a surrogate elsewhere (it can be negative there); its gradient still
    pushes up the predicted costs of the vertices on w*(s') and not on w*(c).

    Args:
      theta_true: true scores (or costs) θ, `[..., *event]`.
      theta_pred: predicted scores (or costs) θ̂, the same shape.
      solver: a registered name, a `Solver` or a callable `theta -> y` (see
        `tf_perturbed.perturbed`); its output must have θ's shape. A solver with a
        domain (`"shortest_path"`: costs ≥ 0) is rejected: 2θ̂ − θ leaves it.
      y_true: y*(θ) if already known (e.g. stored with the data), else computed.
      maximize: whether the solver maximises ⟨y, θ⟩ (True: scores) or minimises
        ⟨y, c⟩ (False: costs); None follows the solver's registration.
      solver_kwargs: hyper-parameters of the solver, e.g. `{"k": 3}`.
      event_ndims: for a callable solver, the problem's trailing axes (default 1).
      clip_to_domain: for a solver with a domain, solve max(2θ̂ − θ, bound) (above);
        default False (such a solver raises).

    Returns:
      The loss per example, `[...]` (θ's batch shape), in θ̂'s dtype (computed in
      float32 for float16/bfloat16).

    Raises:
      ValueError: for shapes that differ, a solver whose output is not θ's shape, a
        solver with a domain, or bad arguments (naming them).

    Example:
      >>> spo_plus_loss(tf.constant([[1.0, 2.0, 0.5]]), tf.constant([[1.0, 2.0, 0.5]]), "argmax").numpy()
      array([0.], dtype=float32)

    References:
      Elmachtoub, Grigas (2022), Smart "Predict, then Optimize", Management Science 68(1).
    """
    solver = registry.get_solver(solver, solver_kwargs, event_ndims=event_ndims)
    bound = check_solver(solver, validate.boolean(clip_to_domain, "clip_to_domain"))
    maximize = solver.maximize if maximize is None else bool(maximize)
    theta_pred = validate.theta(theta_pred, solver.event_ndims, solver.name, name="theta_pred")
    theta_true = validate.theta(theta_true, solver.event_ndims, solver.name, name="theta_true")
    if not theta_true.shape.is_compatible_with(theta_pred.shape):
        raise ValueError(
            f"Expected `theta_true` and `theta_pred` of one shape, received: theta_true.shape="
            f"{theta_true.shape}, theta_pred.shape={theta_pred.shape}"
        )
    event = solver.event_ndims
    out_dtype, compute = theta_pred.dtype, validate.compute_dtype(theta_pred.dtype)  # half precision: float32
    theta_true = tf.stop_gradient(tf.cast(theta_true, compute))  # the data, at full precision
    if y_true is not None:
        y_true = tf.stop_gradient(tf.cast(tf.convert_to_tensor(y_true), compute))
        if not y_true.shape.is_compatible_with(theta_pred.shape):
            raise ValueError(
                f"Expected `y_true` of theta's shape, received: y_true.shape={y_true.shape}, "
                f"theta_pred.shape={theta_pred.shape}"
            )

    @tf.custom_gradient
    def loss(pred):
        shifted = 2.0 * pred - theta_true  # 2θ̂ − θ
        solved = shifted
        if bound is not None:  # clip_to_domain; NaN stays, for the solver to reject
            solved = tf.where(shifted <= bound, tf.constant(bound, shifted.dtype), shifted)
        if y_true is None:  # one call for both: [2, ...]
            both = solver(tf.stack([solved, theta_true]))
            registry.check_linear_solution(solver, solved, both[0], "The SPO+ loss")
            y_shifted, y_star = tf.unstack(tf.cast(both, pred.dtype))
        else:
            y_shifted, y_star = tf.cast(solver(solved), pred.dtype), y_true
            registry.check_linear_solution(solver, solved, y_shifted, "The SPO+ loss")
        # Maximising: ⟨2θ̂ − θ, y*(2θ̂ − θ)⟩ − ⟨2θ̂ − θ, y*(θ)⟩ (= the formula, regrouped);
        # minimising (costs): the same with the signs of both terms reversed.
        value = engine.inner(shifted, y_shifted - y_star, event)
        sign = 1.0 if maximize else -1.0
        gradient = 2.0 * sign * (y_shifted - y_star)

        def grad(upstream):
            return engine.expand(tf.cast(upstream, gradient.dtype), event) * gradient

        return sign * value, grad

    return tf.cast(loss(tf.cast(theta_pred, compute)), out_dtype)


def check_solver(solver: registry.Solver, clip_to_domain: bool) -> Optional[float]:
    """The bound 2θ̂ − θ is clipped to (None: none), or an error for a solver SPO+ cannot take."""
    registry.check_linear(solver, "The SPO+ loss")
    bound = solver.domain_min
    if bound is not None and not clip_to_domain:
        raise ValueError(
            f"The SPO+ loss solves the problem at 2θ̂ − θ, which leaves the domain of solver "
            f"{solver.name!r} (inputs ≥ {bound}); received: solver={solver.name!r}, clip_to_domain=False. "
            "Pass clip_to_domain=True to solve max(2θ̂ − θ, bound) (a surrogate), or use the "
            "Fenchel-Young loss or the direct estimator there."
        )
    return bound
