"""The perturbed maximizer ŷ_ε(θ) = E[y*(θ + εZ)] and the perturbed maximum F_ε(θ).

One Monte-Carlo op with a custom gradient: the forward pass runs the solver
once on all M·B perturbed problems; the backward pass is the integration-by-
parts Jacobian, so the solver itself is never differentiated.
"""

import dataclasses
import numbers
from typing import Callable, Optional, Union

import tensorflow as tf

from tf_perturbed._src import noise as noise_lib
from tf_perturbed._src import seeds as seeds_lib
from tf_perturbed._src.solvers import _checks, registry

PERTURBATIONS = ("additive", "multiplicative")
CONTROL_VARIATES = ("hard", "leave_one_out")


def check_sigma(sigma, name: str = "sigma") -> float:
    """Returns `sigma` as a positive finite float, or raises naming `name`."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"Expected `{name}` to be a positive number, received: {name}={sigma!r}")
    if not (sigma > 0 and sigma < float("inf")):
        raise ValueError(f"Expected `{name}` > 0 and finite, received: {name}={sigma!r}")
    return float(sigma)


def check_control_variate(control_variate, num_samples: int):
    """Resolves `control_variate` to None, "hard" or "leave_one_out".

    True picks the leave-one-out mean when M ≥ 2 (it needs no extra solve and does
    not depend on σ) and y*(θ) when M = 1.
    """
    if control_variate is True:
        return "leave_one_out" if num_samples >= 2 else "hard"
    if control_variate is False or control_variate is None:
        return None
    if control_variate not in CONTROL_VARIATES:
        raise ValueError(
            f"Expected `control_variate` to be a bool or one of {CONTROL_VARIATES}, "
            f"received: control_variate={control_variate!r}"
        )
    if control_variate == "leave_one_out" and num_samples < 2:
        raise ValueError(
            "The leave-one-out control variate needs num_samples ≥ 2, received: "
            f"num_samples={num_samples}"
        )
    return control_variate


def check_perturbation(perturbation) -> str:
    if perturbation not in PERTURBATIONS:
        raise ValueError(
            f"Expected `perturbation` in {PERTURBATIONS}, received: perturbation={perturbation!r}"
        )
    return perturbation


@dataclasses.dataclass(frozen=True)
class PerturbationConfig:
    """The hyper-parameters of a perturbed op, checked once at construction."""

    solver: registry.Solver
    num_samples: int
    sigma: float
    noise: noise_lib.Noise
    perturbation: str
    control_variate: Optional[str]
    chunk_size: Optional[int] = None

    @classmethod
    def create(
        cls,
        solver,
        num_samples,
        sigma,
        noise,
        perturbation,
        control_variate,
        solver_kwargs=None,
        chunk_size=None,
    ) -> "PerturbationConfig":
        num_samples = _checks.positive_int(num_samples, "num_samples")
        solver = registry.get_solver(solver, solver_kwargs)
        if perturbation is None:
            perturbation = solver.spec.perturbation
        return cls(
            solver=solver,
            num_samples=num_samples,
            sigma=check_sigma(sigma),
            noise=noise_lib.get_noise(noise),
            perturbation=check_perturbation(perturbation),
            control_variate=check_control_variate(control_variate, num_samples),
            chunk_size=None if chunk_size is None else _checks.positive_int(chunk_size, "chunk_size"),
        )


def _check_theta(theta: tf.Tensor, solver: registry.Solver) -> tf.Tensor:
    theta = tf.convert_to_tensor(theta)
    if not theta.dtype.is_floating:
        raise TypeError(f"Expected `theta` of a float dtype, received: theta.dtype={theta.dtype.name}")
    rank = theta.shape.rank
    if rank is not None and rank < solver.event_ndims:
        raise ValueError(
            f"Expected `theta` of rank ≥ {solver.event_ndims} for solver {solver.name!r} "
            f"(batch axes, then the problem's axes), received: theta.shape={theta.shape}"
        )
    return theta


def _split_shape(theta: tf.Tensor, event_ndims: int):
    """Dynamic (batch_shape, event_shape) of theta."""
    shape = tf.shape(theta)
    cut = tf.rank(theta) - event_ndims
    return shape[:cut], shape[cut:]


def _perturb(theta, z, config: PerturbationConfig):
    """θ' for noise z `[M, *theta.shape]`: θ + εz, or θ ⊙ exp(εz − ε²/2) (normal) / θ ⊙ exp(εz)."""
    if config.perturbation == "additive":
        return theta + config.sigma * z  # [M, *batch, *event]
    shift = 0.5 * config.sigma**2 if isinstance(config.noise, noise_lib.Normal) else 0.0
    return theta * tf.exp(config.sigma * z - shift)  # [M, *batch, *event]


def _solve(config: PerturbationConfig, theta_pert: tf.Tensor, theta: Optional[tf.Tensor]):
    """Solves the M·B perturbed problems (and the B unperturbed ones) in one call.

    Args:
      theta_pert: `[M, *batch, *event]`.
      theta: `[*batch, *event]` or None (then no hard solution is returned).

    Returns:
      `(y_pert [M, *batch, *out], y_hard [*batch, *out] or None)`.
    """
    solver = config.solver
    event_ndims = solver.event_ndims
    batch_shape, event_shape = _split_shape(theta_pert[0], event_ndims)
    flat = tf.reshape(theta_pert, tf.concat([[-1], event_shape], 0))  # [M·B, *event]
    rows = tf.shape(flat)[0]
    if theta is not None:
        flat = tf.concat([flat, tf.reshape(theta, tf.concat([[-1], event_shape], 0))], 0)  # [M·B + B, *event]
    y = solver(flat)  # [M·B (+ B), *out]
    out_shape = tf.shape(y)[1:]
    num_samples = tf.shape(theta_pert)[0]
    y_pert = tf.reshape(y[:rows], tf.concat([[num_samples], batch_shape, out_shape], 0))  # [M, *batch, *out]
    if theta is None:
        return y_pert, None
    y_hard = tf.reshape(y[rows:], tf.concat([batch_shape, out_shape], 0))  # [*batch, *out]
    return y_pert, y_hard


def _inner(a: tf.Tensor, b: tf.Tensor, event_ndims: int) -> tf.Tensor:
    """⟨a, b⟩ over the last `event_ndims` axes."""
    return tf.reduce_sum(a * b, axis=list(range(-event_ndims, 0)))


def _out_ndims(config: PerturbationConfig) -> int:
    """Number of trailing axes of one solution (d for sort permutations: 2)."""
    spec = config.solver.spec
    if spec.output_shape is None:
        return config.solver.event_ndims
    probe = tuple(range(2, 2 + config.solver.event_ndims))
    return len(spec.output_shape(probe))


def _jacobian_scale(theta: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """The divisor of the Monte-Carlo Jacobian: ε, or ε·θ for multiplicative noise."""
    if config.perturbation == "additive":
        return tf.constant(config.sigma, theta.dtype)
    return config.sigma * theta


def _compute_dtype(theta: tf.Tensor) -> tf.DType:
    return tf.float32 if theta.dtype in (tf.float16, tf.bfloat16) else theta.dtype


def _sample_noise(theta: tf.Tensor, seed: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    shape = tf.concat([[config.num_samples], tf.shape(theta)], 0)
    return config.noise.sample(shape, seed, theta.dtype)  # [M, *batch, *event]


def _mean_solution_vjp(theta, z, y_pert, y_hard, g, config: PerturbationConfig):
    """gθ = E[⟨y*(θ') − b, g⟩ ∇ν(Z)] / scale, the VJP of the perturbed mean.

    The baseline b is independent of each sample's noise, so E[b ∇ν(Z)] = 0:
    b = y*(θ) ("hard"), the mean of the other M − 1 samples ("leave_one_out"), or 0.
    """
    out_ndims = _out_ndims(config)
    weight = _inner(y_pert, g, out_ndims)  # [M, *batch]
    if config.control_variate == "hard":
        weight = weight - _inner(y_hard, g, out_ndims)[None]
    elif config.control_variate == "leave_one_out":
        # ⟨y_m − (S − y_m)/(M − 1), g⟩ = M/(M − 1) · (w_m − mean(w))
        num = config.num_samples
        weight = (weight - tf.reduce_mean(weight, axis=0, keepdims=True)) * (num / (num - 1))
    weight = tf.reshape(
        weight, tf.concat([tf.shape(weight), tf.ones([config.solver.event_ndims], tf.int32)], 0)
    )
    grad = tf.reduce_mean(weight * config.noise.grad_log_density(z), axis=0)  # [*batch, *event]
    return grad / _jacobian_scale(theta, config)


def perturbed_mean(theta: tf.Tensor, seed: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """ŷ_ε(θ) with the Monte-Carlo Jacobian as its gradient (θ's dtype in and out)."""
    theta = _check_theta(theta, config.solver)
    out_dtype = theta.dtype
    theta = tf.cast(theta, _compute_dtype(theta))

    @tf.custom_gradient
    def _op(theta):
        z = _sample_noise(theta, seed, config)  # [M, *batch, *event]
        theta_pert = _perturb(theta, z, config)
        y_pert, y_hard = _solve(config, theta_pert, theta if config.control_variate == "hard" else None)
        y_pert = tf.cast(y_pert, theta.dtype)
        y_mean = tf.reduce_mean(y_pert, axis=0)  # [*batch, *out]

        def grad(g):
            y_h = None if y_hard is None else tf.cast(y_hard, theta.dtype)
            return _mean_solution_vjp(theta, z, y_pert, y_h, g, config)

        return y_mean, grad

    return tf.cast(_op(theta), out_dtype)


def _check_linear(config: PerturbationConfig, what: str) -> None:
    if not config.solver.spec.linear_output:
        raise ValueError(
            f"{what} needs ⟨y, θ⟩, so the solver's output must have the shape of its "
            f"input; solver {config.solver.name!r} returns another shape."
        )


def perturbed_optimum(theta: tf.Tensor, seed: tf.Tensor, config: PerturbationConfig):
    """F_ε(θ) = E[⟨y*(θ'), θ'⟩] per example, and its gradient as a second output.

    Returns:
      `(value [*batch], grad [*batch, *event])`: grad is ŷ_ε(θ) for additive
      noise and E[y*(θ') ⊙ θ'/θ] for multiplicative noise (both exact gradients
      of the Monte-Carlo value by the envelope theorem).
    """
    _check_linear(config, "The perturbed maximum")
    theta = _check_theta(theta, config.solver)
    z = _sample_noise(theta, seed, config)
    theta_pert = _perturb(theta, z, config)  # [M, *batch, *event]
    y_pert, _ = _solve(config, theta_pert, None)
    y_pert = tf.cast(y_pert, theta.dtype)
    event_ndims = config.solver.event_ndims
    value = tf.reduce_mean(_inner(y_pert, theta_pert, event_ndims), axis=0)  # [*batch]
    if config.perturbation == "additive":
        grad = tf.reduce_mean(y_pert, axis=0)
    else:
        grad = tf.reduce_mean(y_pert * (theta_pert / theta), axis=0)
    return value, grad


def perturbed_max_value(theta: tf.Tensor, seed: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """F_ε(θ) per example (shape: batch) with gradient ∇F_ε(θ)."""
    theta = _check_theta(theta, config.solver)
    out_dtype = theta.dtype
    theta = tf.cast(theta, _compute_dtype(theta))

    @tf.custom_gradient
    def _op(theta):
        value, grad_theta = perturbed_optimum(theta, seed, config)

        def grad(g):
            g = tf.reshape(g, tf.concat([tf.shape(g), tf.ones([config.solver.event_ndims], tf.int32)], 0))
            return g * grad_theta

        return value, grad

    return tf.cast(_op(theta), out_dtype)


def _resolve_seed(default_seed, seed):
    if seed is not None:
        return seeds_lib.sanitize_seed(seed)
    return seeds_lib.sanitize_seed(default_seed)


def perturbed(
    solver: Union[str, registry.Solver, Callable[..., tf.Tensor]],
    num_samples: int = 1000,
    sigma: float = 1.0,
    noise: Union[str, noise_lib.Noise] = "normal",
    perturbation: Optional[str] = None,
    control_variate: bool = True,
    seed=None,
    *,
    solver_kwargs: Optional[dict] = None,
) -> Callable[..., tf.Tensor]:
    """Turns a solver into the differentiable perturbed maximizer θ ↦ ŷ_ε(θ).

    Formula:
      ŷ_ε(θ) = E[y*(θ + εZ)] ≈ (1/M) Σ_m y*(θ + εZ_m)
      VJP:  gθ = (1/M) Σ_m ⟨y*(θ + εZ_m) − y*(θ), g⟩ ∇ν(Z_m) / ε
      multiplicative: θ' = θ ⊙ exp(εZ − ε²/2) (normal), the VJP divided by θ too.

    Args:
      solver: a registered name (`"argmax"`, `"top_k"`, `"ranks"`, …), a
        `tf_perturbed.solvers.Solver`, or a callable `theta -> y`.
      num_samples: M ≥ 1, the number of noise draws.
      sigma: ε > 0, the noise scale.
      noise: `"normal"`, `"gumbel"` or a `tf_perturbed.noise.Noise`.
      perturbation: `"additive"` or `"multiplicative"` (needs θ > 0); None
        takes the solver's default (multiplicative for shortest paths, whose
        costs must stay ≥ 0; additive otherwise).
      control_variate: subtract a baseline in the Jacobian (unbiased, lower
        variance): True picks the mean of the other M − 1 samples (M ≥ 2) or
        y*(θ) (M = 1); or name one, `"leave_one_out"` or `"hard"` (y*(θ), one
        more solve, best when σ is small next to the gaps between scores).
      seed: int, None or `int32[2]`; the default seed of every call.
      solver_kwargs: hyper-parameters of the solver, e.g. `{"k": 3}`.

    Returns:
      `fn(theta, seed=None)`: θ `[..., *event]` ↦ ŷ_ε(θ) `[..., *out]`, with the
      Monte-Carlo Jacobian as gradient; `seed` overrides the default seed.

    Raises:
      ValueError, TypeError: for bad arguments, naming the argument and value.

    Example:
      >>> soft_argmax = perturbed("argmax", num_samples=1000, sigma=0.5, seed=0)
      >>> soft_argmax(tf.constant([1.0, 2.0, 0.5])).shape
      TensorShape([3])

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers.
    """
    config = PerturbationConfig.create(
        solver, num_samples, sigma, noise, perturbation, control_variate, solver_kwargs
    )
    default_seed = seed if seed is None else seeds_lib.sanitize_seed(seed)

    def fn(theta, seed=None):
        return perturbed_mean(theta, _resolve_seed(default_seed, seed), config)

    fn.config = config
    return fn


def perturbed_max(
    solver: Union[str, registry.Solver, Callable[..., tf.Tensor]],
    num_samples: int = 1000,
    sigma: float = 1.0,
    noise: Union[str, noise_lib.Noise] = "normal",
    perturbation: Optional[str] = None,
    seed=None,
    *,
    solver_kwargs: Optional[dict] = None,
) -> Callable[..., tf.Tensor]:
    """The perturbed maximum θ ↦ F_ε(θ) = E[max_y ⟨y, θ + εZ⟩], gradient ŷ_ε(θ).

    Formula:
      F_ε(θ) ≈ (1/M) Σ_m ⟨y*(θ + εZ_m), θ + εZ_m⟩,   ∇F_ε(θ) = ŷ_ε(θ)
      (for a minimising solver, F_ε is the perturbed minimum, same formula)

    Args:
      As `perturbed`; the solver must return y of theta's shape.

    Returns:
      `fn(theta, seed=None)`: θ `[..., *event]` ↦ F_ε(θ) `[...]`.

    Example:
      >>> smooth_max = perturbed_max("argmax", num_samples=1000, sigma=0.5, seed=0)
      >>> smooth_max(tf.constant([[1.0, 2.0, 0.5]])).shape
      TensorShape([1])

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers.
    """
    config = PerturbationConfig.create(solver, num_samples, sigma, noise, perturbation, None, solver_kwargs)
    _check_linear(config, "perturbed_max")
    default_seed = seed if seed is None else seeds_lib.sanitize_seed(seed)

    def fn(theta, seed=None):
        return perturbed_max_value(theta, _resolve_seed(default_seed, seed), config)

    fn.config = config
    return fn
