"""The perturbed maximizer ŷ_ε(θ) = E[y*(θ + εZ)] and the perturbed maximum F_ε(θ).

One Monte-Carlo op with a custom gradient: the forward pass runs the solver
once on all M·B perturbed problems (or C·B at a time with `chunk_size` C, to
bound memory); the backward pass is the integration-by-parts Jacobian, so the
solver itself is never differentiated.
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
    if rank is not None and any(size == 0 for size in theta.shape[rank - solver.event_ndims :]):
        raise ValueError(
            f"Expected `theta` with non-empty problem axes (the last {solver.event_ndims}), "
            f"received: theta.shape={theta.shape}"
        )
    return theta


def _split_shape(theta: tf.Tensor, event_ndims: int):
    """Dynamic (batch_shape, event_shape) of theta."""
    shape = tf.shape(theta)
    cut = tf.rank(theta) - event_ndims
    return shape[:cut], shape[cut:]


def _multiplier(z, config: PerturbationConfig):
    """exp(εz − ε²/2) for normal noise, exp(εz) otherwise: θ'/θ for multiplicative noise."""
    shift = 0.5 * config.sigma**2 if isinstance(config.noise, noise_lib.Normal) else 0.0
    return tf.exp(config.sigma * z - shift)  # [C, *batch, *event]


def _perturb(theta, z, config: PerturbationConfig):
    """θ' for noise z `[C, *theta.shape]`: θ + εz, or θ ⊙ exp(εz − ε²/2) (normal) / θ ⊙ exp(εz)."""
    if config.perturbation == "additive":
        return theta + config.sigma * z  # [C, *batch, *event]
    return theta * _multiplier(z, config)  # [C, *batch, *event]


def _solve(config: PerturbationConfig, theta_pert: tf.Tensor, theta: Optional[tf.Tensor]):
    """Solves the C·B perturbed problems (and the B unperturbed ones) in one call.

    Args:
      theta_pert: `[C, *batch, *event]`.
      theta: `[*batch, *event]` or None (then no hard solution is returned).

    Returns:
      `(y_pert [C, *batch, *out], y_hard [*batch, *out] or None)`, in θ's dtype.
    """
    solver = config.solver
    event_ndims = solver.event_ndims
    batch_shape, event_shape = _split_shape(theta_pert[0], event_ndims)
    flat = tf.reshape(theta_pert, tf.concat([[-1], event_shape], 0))  # [C·B, *event]
    rows = tf.shape(flat)[0]
    if theta is not None:
        flat = tf.concat([flat, tf.reshape(theta, tf.concat([[-1], event_shape], 0))], 0)  # [C·B + B, *event]
    y = tf.cast(solver(flat), theta_pert.dtype)  # [C·B (+ B), *out]
    out_shape = tf.shape(y)[1:]
    num_samples = tf.shape(theta_pert)[0]
    y_pert = tf.reshape(y[:rows], tf.concat([[num_samples], batch_shape, out_shape], 0))  # [C, *batch, *out]
    if theta is None:
        return y_pert, None
    y_hard = tf.reshape(y[rows:], tf.concat([batch_shape, out_shape], 0))  # [*batch, *out]
    return y_pert, y_hard


def _hard_solution(config: PerturbationConfig, theta: tf.Tensor) -> tf.Tensor:
    """y*(θ) `[*batch, *out]` in θ's dtype."""
    return tf.cast(config.solver(theta), theta.dtype)


def _inner(a: tf.Tensor, b: tf.Tensor, event_ndims: int) -> tf.Tensor:
    """⟨a, b⟩ over the last `event_ndims` axes."""
    return tf.reduce_sum(a * b, axis=list(range(-event_ndims, 0)))


def _expand(v: tf.Tensor, ndims: int) -> tf.Tensor:
    """v with `ndims` trailing axes of size 1 (to broadcast over an event)."""
    return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([ndims], tf.int32)], 0))


def _out_ndims(config: PerturbationConfig) -> int:
    """Number of trailing axes of one solution (d for sort permutations: 2)."""
    spec = config.solver.spec
    if spec.output_shape is None:
        return config.solver.event_ndims
    probe = tuple(range(2, 2 + config.solver.event_ndims))
    return len(spec.output_shape(probe))


def _jacobian_scale(theta: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """The divisor of the Monte-Carlo Jacobian: ε, or ε·θ for multiplicative noise.

    A multiplicative perturbation never moves an entry θ_i = 0, so the samples say
    nothing about ∂/∂θ_i: its gradient is NaN (not ±inf or 0, which would look valid).
    """
    if config.perturbation == "additive":
        return tf.constant(config.sigma, theta.dtype)
    return tf.where(tf.equal(theta, 0.0), tf.constant(float("nan"), theta.dtype), config.sigma * theta)


def _compute_dtype(theta: tf.Tensor) -> tf.DType:
    return tf.float32 if theta.dtype in (tf.float16, tf.bfloat16) else theta.dtype


def _sample_noise(theta: tf.Tensor, seed: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """All M draws at once, `[M, *batch, *event]`: sample m's noise does not depend on chunking."""
    shape = tf.concat([[config.num_samples], tf.shape(theta)], 0)
    return config.noise.sample(shape, seed, theta.dtype)  # [M, *batch, *event]


# Bounded memory. With `chunk_size` C < M the M perturbed problems are solved C at a
# time inside a `tf.while_loop` (one iteration alive at a time), the loop carrying
# only sums of the shape of one solution; the backward pass solves the same
# perturbed problems again, chunk by chunk, instead of keeping the M solutions. The
# noise is drawn once for all M samples (`[M, *batch, *event]`, the size of θ times
# M, against M times the size of a solution — d times more for permutation
# matrices), so a sample's noise, hence the result, does not depend on C.


def _chunks(config: PerturbationConfig):
    """(number of chunks n, samples per chunk c): n·c ≥ M > (n − 1)·c, c ≤ chunk_size."""
    num = config.num_samples
    if config.chunk_size is None or config.chunk_size >= num:
        return 1, num
    count = -(-num // config.chunk_size)
    return count, -(-num // count)


def _chunk(z: tf.Tensor, index, size: int, config: PerturbationConfig):
    """Samples [index·c, index·c + c) of z and a 0/1 mask of those < M.

    The last chunk may run past M: its extra rows repeat sample M − 1 (so that
    every chunk has one static shape, as XLA needs) and get mask 0.

    Returns:
      `(z_chunk [c, *batch, *event], mask [c])`, the mask in z's dtype.
    """
    positions = index * size + tf.range(size)  # [c]
    z_chunk = tf.gather(z, tf.minimum(positions, config.num_samples - 1))  # [c, *batch, *event]
    return z_chunk, tf.cast(positions < config.num_samples, z.dtype)


def _sum_over_chunks(fn, count: int, first=None):
    """Σ_i fn(i) for i < count, a tuple of tensors, one chunk alive at a time.

    The first chunk (`first`, or fn(0)) is taken out of the loop: it gives the
    sums their (dynamic) shapes, so no output shape has to be known in advance.
    """
    if first is None:
        first = fn(tf.constant(0))
    if count == 1:
        return first

    def body(index, totals):
        return index + 1, tuple(t + p for t, p in zip(totals, fn(index), strict=True))

    _, totals = tf.while_loop(
        lambda index, totals: index < count,
        body,
        (tf.constant(1), first),
        maximum_iterations=count - 1,
        parallel_iterations=1,
    )
    return totals


def _weights(y_pert, y_hard, g, config: PerturbationConfig) -> tf.Tensor:
    """w_m = ⟨y*(θ'_m), g⟩, minus ⟨y*(θ), g⟩ for the "hard" baseline: `[c, *batch]`."""
    out_ndims = _out_ndims(config)
    weight = _inner(y_pert, g, out_ndims)  # [c, *batch]
    if config.control_variate == "hard":
        weight = weight - _inner(y_hard, g, out_ndims)[None]
    return weight


def _vjp_sums(z, weight, mask, shift, config: PerturbationConfig):
    """Sums over a chunk of samples that the VJP of the perturbed mean needs.

    A = Σ w_m ∇ν(Z_m) `[*batch, *event]`; for leave-one-out, with weights
    shifted by `shift` `[*batch]` (w_m − c), also W = Σ (w_m − c) `[*batch]` and
    S = Σ ∇ν(Z_m) `[*batch, *event]`. Samples with mask 0 count for nothing.
    """
    event_ndims = config.solver.event_ndims
    if shift is not None:
        weight = weight - shift[None]
    dnu = config.noise.grad_log_density(z)  # [c, *batch, *event]
    if mask is not None:
        mask = tf.reshape(mask, tf.concat([tf.shape(mask), tf.ones([tf.rank(weight) - 1], tf.int32)], 0))
        weight = weight * mask  # [c, *batch]
        dnu = dnu * _expand(mask, event_ndims)
    total = tf.reduce_sum(_expand(weight, event_ndims) * dnu, axis=0)  # [*batch, *event]
    if config.control_variate != "leave_one_out":
        return (total,)
    return total, tf.reduce_sum(weight, axis=0), tf.reduce_sum(dnu, axis=0)


def _vjp_from_sums(theta, sums, config: PerturbationConfig):
    """gθ = E[⟨y*(θ') − b, g⟩ ∇ν(Z)] / scale from the sums of `_vjp_sums`.

    The baseline b is independent of each sample's noise, so E[b ∇ν(Z)] = 0:
    b = y*(θ) ("hard"), the mean of the other M − 1 samples ("leave_one_out"), or 0.
    Leave-one-out, for any shift c (w̄ − c = W/M):
      (1/M) Σ_m ⟨y_m − (Σ_k y_k − y_m)/(M − 1), g⟩ ∇ν_m = Σ_m (w_m − w̄) ∇ν_m / (M − 1)
                                                      = (A − (W/M)·S) / (M − 1).
    A shift c close to w̄ keeps A and (W/M)·S small, so that their difference
    loses no precision to cancellation: c = w̄ when all samples are solved at
    once, the mean weight of the first chunk otherwise.
    """
    num = config.num_samples
    if config.control_variate == "leave_one_out":
        total, weight_sum, dnu_sum = sums
        grad = (total - _expand(weight_sum / num, config.solver.event_ndims) * dnu_sum) / (num - 1)
    else:
        grad = sums[0] / num
    return grad / _jacobian_scale(theta, config)  # [*batch, *event]


def perturbed_mean(theta: tf.Tensor, seed: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """ŷ_ε(θ) with the Monte-Carlo Jacobian as its gradient (θ's dtype in and out).

    Half-precision θ is computed in float32 (noise, solver, sums) and the result
    cast back. With `config.chunk_size` the samples are solved in chunks, in the
    forward pass and again in the backward pass (see `_chunks`).
    """
    theta = _check_theta(theta, config.solver)
    out_dtype = theta.dtype
    theta = tf.cast(theta, _compute_dtype(theta))
    count, size = _chunks(config)
    hard = config.control_variate == "hard"
    loo = config.control_variate == "leave_one_out"

    @tf.custom_gradient
    def _op(theta):
        theta = tf.stop_gradient(theta)  # the gradient is `grad`: record nothing inside
        z = _sample_noise(theta, seed, config)  # [M, *batch, *event]

        def chunk_solutions(index):
            z_c, mask = _chunk(z, index, size, config)
            y_c, _ = _solve(config, _perturb(theta, z_c, config), None)  # [c, *batch, *out]
            return z_c, mask, y_c

        if count == 1:
            y_pert, y_hard = _solve(config, _perturb(theta, z, config), theta if hard else None)
            y_sum = tf.reduce_sum(y_pert, axis=0)  # [*batch, *out]
        else:
            y_hard = _hard_solution(config, theta) if hard else None

            def chunk_sum(index):
                _, mask, y_c = chunk_solutions(index)
                return (tf.tensordot(mask, y_c, axes=1),)  # [*batch, *out]

            (y_sum,) = _sum_over_chunks(chunk_sum, count)
        y_mean = y_sum / config.num_samples

        def grad(g):
            if count == 1:
                weight = _weights(y_pert, y_hard, g, config)  # [M, *batch]
                shift = tf.reduce_mean(weight, axis=0) if loo else None
                sums = _vjp_sums(z, weight, None, shift, config)
            else:  # the same perturbed problems, solved again chunk by chunk
                z_0, mask_0, y_0 = chunk_solutions(tf.constant(0))
                weight_0 = _weights(y_0, y_hard, g, config)  # [c, *batch]; chunk 0 is all real samples
                shift = tf.reduce_mean(weight_0, axis=0) if loo else None

                def chunk_sums(index):
                    z_c, mask, y_c = chunk_solutions(index)
                    return _vjp_sums(z_c, _weights(y_c, y_hard, g, config), mask, shift, config)

                first = _vjp_sums(z_0, weight_0, mask_0, shift, config)
                sums = _sum_over_chunks(chunk_sums, count, first)
            return _vjp_from_sums(theta, sums, config)

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

    No gradient flows through this function (use `perturbed_max_value`); with
    `config.chunk_size` the samples are solved in chunks and only the sums are kept.

    Returns:
      `(value [*batch], grad [*batch, *event])`: grad is ŷ_ε(θ) for additive
      noise and E[y*(θ') ⊙ θ'/θ] for multiplicative noise (both exact gradients
      of the Monte-Carlo value by the envelope theorem).
    """
    _check_linear(config, "The perturbed maximum")
    theta = tf.stop_gradient(_check_theta(theta, config.solver))
    z = _sample_noise(theta, seed, config)  # [M, *batch, *event]
    event_ndims = config.solver.event_ndims
    count, size = _chunks(config)

    def chunk_sums(index):
        if count == 1:
            z_c, mask = z, None
        else:
            z_c, mask = _chunk(z, index, size, config)
        theta_pert = _perturb(theta, z_c, config)  # [c, *batch, *event]
        y_pert, _ = _solve(config, theta_pert, None)
        # ∂⟨y, θ'⟩/∂θ = y ⊙ θ'/θ, computed as y ⊙ exp(εz − …): finite at θ = 0 too
        part = y_pert if config.perturbation == "additive" else y_pert * _multiplier(z_c, config)
        value = _inner(y_pert, theta_pert, event_ndims)  # [c, *batch]
        if mask is None:
            return tf.reduce_sum(value, axis=0), tf.reduce_sum(part, axis=0)
        return tf.tensordot(mask, value, axes=1), tf.tensordot(mask, part, axes=1)

    value, grad = _sum_over_chunks(chunk_sums, count)
    return value / config.num_samples, grad / config.num_samples


def perturbed_max_value(theta: tf.Tensor, seed: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """F_ε(θ) per example (shape: batch) with gradient ∇F_ε(θ)."""
    theta = _check_theta(theta, config.solver)
    out_dtype = theta.dtype
    theta = tf.cast(theta, _compute_dtype(theta))

    @tf.custom_gradient
    def _op(theta):
        value, grad_theta = perturbed_optimum(theta, seed, config)

        def grad(g):
            return _expand(g, config.solver.event_ndims) * grad_theta

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
    chunk_size: Optional[int] = None,
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
      chunk_size: None (solve all M samples at once) or C ≥ 1: solve at most C
        samples at a time in a `tf.while_loop`, forward and backward (the
        backward pass solves them again), so that memory does not grow with M
        beyond the noise `[M, *batch, *event]`. The result does not depend on C
        (up to the order of float additions).

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
        solver, num_samples, sigma, noise, perturbation, control_variate, solver_kwargs, chunk_size
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
    chunk_size: Optional[int] = None,
) -> Callable[..., tf.Tensor]:
    """The perturbed maximum θ ↦ F_ε(θ) = E[max_y ⟨y, θ + εZ⟩], gradient ŷ_ε(θ).

    Formula:
      F_ε(θ) ≈ (1/M) Σ_m ⟨y*(θ + εZ_m), θ + εZ_m⟩,   ∇F_ε(θ) = ŷ_ε(θ)
      (for a minimising solver, F_ε is the perturbed minimum, same formula)

    Args:
      As `perturbed` (including `chunk_size`); the solver must return y of theta's shape.

    Returns:
      `fn(theta, seed=None)`: θ `[..., *event]` ↦ F_ε(θ) `[...]`.

    Example:
      >>> smooth_max = perturbed_max("argmax", num_samples=1000, sigma=0.5, seed=0)
      >>> smooth_max(tf.constant([[1.0, 2.0, 0.5]])).shape
      TensorShape([1])

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers.
    """
    config = PerturbationConfig.create(
        solver, num_samples, sigma, noise, perturbation, None, solver_kwargs, chunk_size
    )
    _check_linear(config, "perturbed_max")
    default_seed = seed if seed is None else seeds_lib.sanitize_seed(seed)

    def fn(theta, seed=None):
        return perturbed_max_value(theta, _resolve_seed(default_seed, seed), config)

    fn.config = config
    return fn
