"""The Fenchel-Young loss of a perturbed optimizer, with its true value."""

from typing import Callable, Optional, Union

import tensorflow as tf

from tf_perturbed._src import noise as noise_lib
from tf_perturbed._src import perturbed as perturbed_lib
from tf_perturbed._src import seeds as seeds_lib
from tf_perturbed._src.solvers import registry


def check_target_shape(y_true: tf.Tensor, theta: tf.Tensor) -> None:
    """Raises a ValueError naming `y_true` when its static shape cannot match theta's."""
    if not y_true.shape.is_compatible_with(theta.shape):
        raise ValueError(
            "Expected `y_true` of the shape of the scores (one solution per example), "
            f"received: y_true.shape={y_true.shape}, scores shape={theta.shape}"
        )


def fenchel_young_value(
    y_true: tf.Tensor,
    theta: tf.Tensor,
    seed: tf.Tensor,
    config: perturbed_lib.PerturbationConfig,
    maximize: Optional[bool] = None,
) -> tf.Tensor:
    """Per-example Fenchel-Young loss for an already checked configuration.

    For a maximising solver: L = F_ε(θ) − ⟨θ, y⟩ with ∇θ L = ∇F_ε(θ) − y.
    For a minimising one (costs c): L = ⟨c, y⟩ − F_ε(c) with ∇c L = y − ∇F_ε(c).
    """
    perturbed_lib._check_linear(config, "The Fenchel-Young loss")  # noqa: SLF001
    theta = perturbed_lib._check_theta(theta, config.solver)  # noqa: SLF001
    out_dtype = theta.dtype
    compute_dtype = perturbed_lib._compute_dtype(theta)  # noqa: SLF001
    theta = tf.cast(theta, compute_dtype)
    y_true = tf.cast(tf.convert_to_tensor(y_true), compute_dtype)
    check_target_shape(y_true, theta)
    maximize = config.solver.maximize if maximize is None else bool(maximize)
    sign = 1.0 if maximize else -1.0
    event_ndims = config.solver.event_ndims
    axes = list(range(-event_ndims, 0))

    @tf.custom_gradient
    def _op(theta, y_true):
        value, grad_f = perturbed_lib.perturbed_optimum(theta, seed, config)
        loss = sign * (value - tf.reduce_sum(theta * y_true, axis=axes))  # [*batch]

        def grad(g):
            g = tf.reshape(g, tf.concat([tf.shape(g), tf.ones([event_ndims], tf.int32)], 0))
            return sign * g * (grad_f - y_true), -sign * g * theta

        return loss, grad

    return tf.cast(_op(theta, y_true), out_dtype)


def fenchel_young_loss(
    y_true: tf.Tensor,
    theta: tf.Tensor,
    solver: Union[str, registry.Solver, Callable[..., tf.Tensor]],
    num_samples: int = 1,
    sigma: float = 1.0,
    noise: Union[str, noise_lib.Noise] = "normal",
    perturbation: Optional[str] = None,
    seed=None,
    *,
    maximize: Optional[bool] = None,
    solver_kwargs: Optional[dict] = None,
    chunk_size: Optional[int] = None,
) -> tf.Tensor:
    """Fenchel-Young loss of the perturbed optimizer, per example.

    Formula:
      L_ε(θ; y) = F_ε(θ) − ⟨θ, y⟩     (≥ −εΩ(y); the constant εΩ(y) is omitted)
      ∇θ L_ε   = ŷ_ε(θ) − y
      minimisation (costs c): L = ⟨c, y⟩ − F_ε(c), ∇c L = y − ŷ_ε(c), where F_ε is
      the perturbed minimum; multiplicative noise replaces ŷ_ε by E[y*(θ') ⊙ θ'/θ],
      the exact gradient of its F_ε.

    Args:
      y_true: target solutions, the shape of theta (e.g. one-hot, ranks, paths).
      theta: scores (or costs for a minimising solver), `[..., *event]`.
      solver: a registered name, a `Solver` or a callable (see `perturbed`).
      num_samples: M ≥ 1 noise draws.
      sigma: ε > 0.
      noise: `"normal"`, `"gumbel"` or a `Noise`.
      perturbation: `"additive"`, `"multiplicative"`, or None for the solver's
        default (multiplicative for `"shortest_path"`, additive otherwise).
      seed: int, None or `int32[2]`.
      maximize: overrides the solver's registration (True: scores, False: costs).
      solver_kwargs: hyper-parameters of the solver, e.g. `{"k": 3}`.
      chunk_size: None or C ≥ 1: solve at most C of the M samples at a time to
        bound memory (see `tf_perturbed.perturbed`).

    Returns:
      The loss per example, `[...]` (theta's batch shape), in theta's dtype.

    Raises:
      ValueError: if y_true's shape differs from theta's, or for bad arguments.

    Example:
      >>> y = tf.constant([[0.0, 1.0, 0.0]])
      >>> fenchel_young_loss(y, tf.constant([[1.0, 2.0, 0.5]]), "argmax", num_samples=100, seed=0).shape
      TensorShape([1])

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers, §4.
    """
    config = perturbed_lib.PerturbationConfig.create(
        solver, num_samples, sigma, noise, perturbation, False, solver_kwargs, chunk_size
    )
    return fenchel_young_value(y_true, theta, seeds_lib.sanitize_seed(seed), config, maximize)
