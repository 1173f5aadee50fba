"""The Fenchel-Young loss of a perturbed optimizer, with its true value."""

from typing import Optional, Union

import tensorflow as tf

from tf_perturbed._src.base import noise as noise_lib
from tf_perturbed._src.base import seeds as seeds_lib
from tf_perturbed._src.estimators.perturbed import config as config_lib
from tf_perturbed._src.estimators.perturbed import maximum
from tf_perturbed._src.estimators.perturbed.api import SolverLike


def fenchel_young_value(
    y_true: tf.Tensor,
    theta: tf.Tensor,
    seed: tf.Tensor,
    config: config_lib.PerturbationConfig,
    maximize: Optional[bool] = None,
) -> tf.Tensor:
    """Per-example Fenchel-Young loss for an already checked configuration.

    For a maximising solver: L = F_ε(θ) − ⟨θ, y⟩, ∇θ L = ∇F_ε(θ) − y, ∇y L = −θ.
    For a minimising one (costs c): L = ⟨c, y⟩ − F_ε(c), with F_ε the perturbed minimum.
    Second derivatives work: ∇²θ L = ±J ∇F_ε (see `maximum.perturbed_maximum`).
    """
    config.check_linear("The Fenchel-Young loss")
    maximize = config.solver.maximize if maximize is None else bool(maximize)
    value = maximum.perturbed_maximum(theta, seed, config, reference=y_true)
    return value if maximize else -value


def fenchel_young_loss(
    y_true: tf.Tensor,
    theta: tf.Tensor,
    solver: SolverLike,
    num_samples: int = config_lib.DEFAULT_NUM_SAMPLES,
    sigma: float = config_lib.DEFAULT_SIGMA,
    noise: Union[str, noise_lib.Noise] = config_lib.DEFAULT_NOISE,
    perturbation: Optional[str] = None,
    seed=None,
    *,
    maximize: Optional[bool] = None,
    control_variate: Union[bool, str] = config_lib.DEFAULT_CONTROL_VARIATE,
    solver_kwargs: Optional[dict] = None,
    chunk_size: Optional[int] = None,
    event_ndims: Optional[int] = None,
) -> tf.Tensor:
    """Fenchel-Young loss of the perturbed optimizer, per example.

    Formula:
      L_ε(θ; y) = F_ε(θ) − ⟨θ, y⟩     (≥ −εΩ(y); the constant εΩ(y) is omitted)
      ∇θ L_ε   = ŷ_ε(θ) − y,          ∇²θ L_ε = J ŷ_ε(θ)
      minimisation (costs c): L = ⟨c, y⟩ − F_ε(c), ∇c L = y − ŷ_ε(c), where F_ε is
      the perturbed minimum; multiplicative noise replaces ŷ_ε by E[y*(θ') ⊙ θ'/θ],
      the exact gradient of its F_ε.

    The value is summed as (1/M) Σ_m ⟨y*(θ'_m), θ'_m⟩ − ⟨θ, y⟩ term by term, so it
    stays accurate when it is small: with ε → 0 and y = y*(θ) it is ~ε/√M, not the
    rounding error of F_ε.

    Args:
      y_true: target solutions, the shape of theta (e.g. one-hot, ranks, paths).
      theta: scores (or costs for a minimising solver), `[..., *event]`.
      solver: a registered name, a `Solver` or a callable (see `tf_perturbed.perturbed`).
      num_samples: M ≥ 1 noise draws. Default 100 (the package's one default).
      sigma: ε > 0. Default 1.0.
      noise: `"normal"` (default), `"gumbel"` or a `Noise`.
      perturbation: `"additive"`, `"multiplicative"`, or None for the solver's
        default (multiplicative for `"shortest_path"`, additive otherwise).
        A solver's domain is kept: additive noise on "shortest_path" solves
        max(c + εZ, 0), as in the layers and the Keras loss.
      seed: int, None or `int32[2]`.
      maximize: whether the solver maximises ⟨y, θ⟩ (True: scores) or minimises
        ⟨y, c⟩ (False: costs); None follows the solver's registration (a plain
        callable: True).
      control_variate: the baseline of the second derivative's Monte-Carlo
        Jacobian (see `tf_perturbed.perturbed`); the loss and its gradient do not
        use it.
      solver_kwargs: hyper-parameters of the solver, e.g. `{"k": 3}`.
      chunk_size: None or C ≥ 1: solve at most C of the M samples at a time to
        bound memory (see `tf_perturbed.perturbed`).
      event_ndims: for a callable solver, the problem's trailing axes (default 1).

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
    config = config_lib.PerturbationConfig.create(
        solver, num_samples, sigma, noise, perturbation, control_variate, solver_kwargs, chunk_size, event_ndims
    )
    return fenchel_young_value(y_true, theta, seeds_lib.sanitize_seed(seed), config, maximize)
