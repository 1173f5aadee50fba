"""The public perturbed ops: `perturbed` (the maximizer ŷ_ε) and `perturbed_max` (the maximum F_ε)."""

from typing import Callable, Optional, Union

import tensorflow as tf

from tf_perturbed._src.base import noise as noise_lib
from tf_perturbed._src.base import seeds as seeds_lib
from tf_perturbed._src.estimators.perturbed import config as config_lib
from tf_perturbed._src.estimators.perturbed import jacobian, maximum
from tf_perturbed._src.solvers import registry

SolverLike = Union[str, registry.Solver, Callable[..., tf.Tensor]]


def _seeded(op, config, seed):
    """`fn(theta, seed=None)` calling `op(theta, seed, config)`, `seed` defaulting to the builder's."""
    default_seed = None if seed is None else seeds_lib.sanitize_seed(seed)

    def fn(theta, seed=None):
        seed = default_seed if seed is None else seed
        return op(theta, seeds_lib.sanitize_seed(seed), config)

    fn.config = config
    return fn


def perturbed(
    solver: SolverLike,
    num_samples: int = config_lib.DEFAULT_NUM_SAMPLES,
    sigma: float = config_lib.DEFAULT_SIGMA,
    noise: Union[str, noise_lib.Noise] = config_lib.DEFAULT_NOISE,
    perturbation: Optional[str] = None,
    control_variate: Union[bool, str] = config_lib.DEFAULT_CONTROL_VARIATE,
    seed=None,
    *,
    solver_kwargs: Optional[dict] = None,
    chunk_size: Optional[int] = None,
    event_ndims: Optional[int] = None,
    output_ndims: Optional[int] = None,
) -> Callable[..., tf.Tensor]:
    """Turns a solver into the differentiable perturbed maximizer θ ↦ ŷ_ε(θ).

    Formula:
      ŷ_ε(θ) = E[y*(θ + εZ)] ≈ (1/M) Σ_m y*(θ + εZ_m)
      VJP:  gθ = (1/M) Σ_m ⟨y*(θ + εZ_m) − b, g⟩ ∇ν(Z_m) / ε   (b: the control variate)
      multiplicative: θ' = θ ⊙ exp(εZ − ε²/2) (normal noise), the VJP divided by θ too.
      A solver with a domain (`domain_min`, e.g. costs ≥ 0 for "shortest_path") is
      given max(θ', domain_min): the op is the mean of y*(max(θ', m)), exactly.

    Args:
      solver: a registered name (`"argmax"`, `"top_k"`, `"ranks"`, …), a
        `tf_perturbed.solvers.Solver`, or a callable `theta -> y` maximising ⟨y, θ⟩.
      num_samples: M ≥ 1, the number of noise draws. Default 100 (the package's
        one default; the reason is in `tf_perturbed._src.estimators.perturbed.config`:
        a standard error ≤ 0.05 per coordinate at 100 solves per example).
      sigma: ε > 0, the noise scale. Default 1.0.
      noise: `"normal"` (default), `"gumbel"` or a `tf_perturbed.noise.Noise`.
      perturbation: `"additive"` or `"multiplicative"` (θ ≠ 0); None takes the
        solver's default (multiplicative for shortest paths, additive otherwise).
      control_variate: a baseline b subtracted from each sample in the Jacobian:
        unbiased (b does not depend on that sample's noise), lower variance.
        True (default): the mean of the other M − 1 samples (`"leave_one_out"`, no
        extra solve) when M ≥ 2, y*(θ) when M = 1; `"hard"`: y*(θ) (one more solve
        of the B unperturbed problems; best when ε is small next to the gaps
        between scores); False: none.
      seed: int, None or `int32[2]`; the default seed of every call (None: a new
        random seed per call).
      solver_kwargs: hyper-parameters of the solver, e.g. `{"k": 3}`.
      chunk_size: None (solve all M samples at once) or C ≥ 1: solve at most C
        samples at a time in a `tf.while_loop`, forward and backward (the
        backward pass solves them again), so that memory does not grow with M
        beyond the noise `[M, *batch, *event]`. The result does not depend on C
        (up to the order of float additions).
      event_ndims: for a callable solver, how many trailing axes of θ form one
        problem (default 1; registered solvers have their own).
      output_ndims: for a callable solver, how many trailing axes of y form one
        solution; default: read off the first traced solution, whose leading axes
        must be θ's batch axes. E.g. `output_ndims=0` for `lambda t: tf.reduce_max(t, -1)`.

    Returns:
      `fn(theta, seed=None)`: θ `[..., *event]` ↦ ŷ_ε(θ) `[..., *out]` in θ's dtype,
      with the Monte-Carlo Jacobian as gradient; `seed` overrides the default seed.
      A second derivative of ŷ_ε raises `NotImplementedError` (that of the
      perturbed maximum, `perturbed_max`, works).

    Raises:
      ValueError, TypeError: for bad arguments, naming the argument and value; a
        ValueError naming `event_ndims`/`output_ndims` when a callable's output
        does not have θ's batch axes followed by its declared solution axes.

    Example:
      >>> soft_argmax = perturbed("argmax", num_samples=1000, sigma=0.5, seed=0)
      >>> soft_argmax(tf.constant([1.0, 2.0, 0.5])).shape
      TensorShape([3])
      >>> smooth_max = perturbed(lambda t: tf.reduce_max(t, -1), output_ndims=0, seed=0)
      >>> smooth_max(tf.constant([[1.0, 2.0, 0.5]])).shape
      TensorShape([1])

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers.
    """
    config = config_lib.PerturbationConfig.create(
        solver, num_samples, sigma, noise, perturbation, control_variate, solver_kwargs, chunk_size,
        event_ndims, output_ndims,
    )
    return _seeded(jacobian.perturbed_mean, config, seed)


def perturbed_max(
    solver: SolverLike,
    num_samples: int = config_lib.DEFAULT_NUM_SAMPLES,
    sigma: float = config_lib.DEFAULT_SIGMA,
    noise: Union[str, noise_lib.Noise] = config_lib.DEFAULT_NOISE,
    perturbation: Optional[str] = None,
    seed=None,
    *,
    control_variate: Union[bool, str] = config_lib.DEFAULT_CONTROL_VARIATE,
    solver_kwargs: Optional[dict] = None,
    chunk_size: Optional[int] = None,
    event_ndims: Optional[int] = None,
) -> Callable[..., tf.Tensor]:
    """The perturbed maximum θ ↦ F_ε(θ) = E[max_y ⟨y, θ + εZ⟩], gradient ŷ_ε(θ), Hessian J ŷ_ε(θ).

    Formula:
      F_ε(θ) ≈ (1/M) Σ_m ⟨y*(θ'_m), θ'_m⟩,   ∇F_ε(θ) = ŷ_ε(θ)   (additive noise)
      multiplicative noise: ∇F_ε(θ) = E[y*(θ') ⊙ θ'/θ], the exact gradient of its F_ε
      ∇²F_ε(θ) = J ∇F_ε(θ): the gradient is itself differentiable, by the
        Monte-Carlo Jacobian of `perturbed` (with `control_variate`), on the same noise
      (for a minimising solver F_ε is the perturbed minimum, same formulas)

    The sums over the M samples are pairwise (and compensated across chunks), so
    F_ε keeps float32's precision at any M: with σ → 0 it is max θ to ~1e-7.

    The arguments are those of `perturbed` (including `chunk_size`); the solver must
    return y of θ's shape. `control_variate` applies to the second derivative.

    Returns:
      `fn(theta, seed=None)`: θ `[..., *event]` ↦ F_ε(θ) `[...]`, in θ's dtype.

    Example:
      >>> smooth_max = perturbed_max("argmax", num_samples=1000, sigma=0.5, seed=0)
      >>> smooth_max(tf.constant([[1.0, 2.0, 0.5]])).shape
      TensorShape([1])

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers.
    """
    config = config_lib.PerturbationConfig.create(
        solver, num_samples, sigma, noise, perturbation, control_variate, solver_kwargs, chunk_size,
        event_ndims,
    )
    config.check_linear("perturbed_max")
    return _seeded(maximum.perturbed_maximum, config, seed)
