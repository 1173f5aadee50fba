"""Monte-Carlo means with the integration-by-parts Jacobian as their gradient.

For a term s(θ') of one perturbed problem (the solution y*(θ'), or y*(θ') ⊙ ∂θ'/∂θ
for the gradient of the perturbed maximum) the mean E[s] has the
vector-Jacobian product

    gθ = E[⟨s(θ') − b, g⟩ ∇ν(Z)] / ε          (additive)
    gθ = E[⟨s(θ') − b, g⟩ ∇ν(Z)] / (ε θ)      (multiplicative, entrywise)

with a baseline b independent of the sample's noise (E[b ∇ν(Z)] = 0): b = y*(θ)
("hard"), the mean of the other M − 1 samples ("leave_one_out"), or 0. The solver
is never differentiated. For the gradient of the perturbed maximum with
multiplicative noise, ∇F_ε = E[y*(θ') ⊙ θ']/θ, the explicit 1/θ adds −g ⊙ ∇F_ε/θ.

These vector-Jacobian products are first derivatives only: differentiating one
again (a second derivative of ŷ_ε) raises a clear error instead of returning a
partial, wrong, derivative.
"""

from typing import Optional

import tensorflow as tf

from tf_perturbed._src.base import validate
from tf_perturbed._src.estimators.first_order import first_order_only
from tf_perturbed._src.estimators.perturbed import engine, sampling
from tf_perturbed._src.estimators.perturbed.config import PerturbationConfig

SOLUTION = "solution"  # s = y*(θ'): the perturbed maximizer ŷ_ε
GRADIENT = "gradient"  # s = y*(θ') ⊙ ∂θ'/∂θ: the gradient of the perturbed maximum F_ε


def sample_term(kind: str, perturbed: sampling.Perturbed, y: tf.Tensor) -> tf.Tensor:
    """s for a chunk `[c, *batch, *out]`."""
    if kind == GRADIENT and perturbed.slope is not None:
        return y * perturbed.slope
    return y


def vjp(
    theta: tf.Tensor,
    z: tf.Tensor,
    g: tf.Tensor,
    config: PerturbationConfig,
    kind: str = SOLUTION,
    *,
    kept: Optional[engine.Kept] = None,
    y_hard: Optional[tf.Tensor] = None,
    mean: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    """gθ `[*batch, *event]` for the upstream gradient g `[*batch, *out]` of E[s].

    Args:
      theta: `[*batch, *event]`, in the compute dtype.
      z: the forward pass's noise `[M, *batch, *event]`.
      kept: the forward pass's samples when unchunked (otherwise solved again).
      y_hard: y*(θ) for the "hard" baseline, if the forward pass solved it.
      mean: E[s], needed for kind GRADIENT with multiplicative noise.
    """
    if kind == SOLUTION:
        what = "a perturbed maximizer ŷ_ε(θ) (`tf_perturbed.perturbed`, the perturbed layers)"
        instead = (
            "Second derivatives of the perturbed maximum (`tf_perturbed.perturbed_max`) and of the "
            "Fenchel-Young loss work: ∇²F_ε = J ŷ_ε."
        )
    else:
        what, instead = "the gradient ∇F_ε of a perturbed maximum (a third derivative of F_ε)", ""
    guard = first_order_only(theta, what, instead)
    theta = tf.stop_gradient(theta)
    event_ndims = config.solver.event_ndims
    batch_ndims = theta.shape.rank - event_ndims
    control = config.control_variate
    if control == "hard" and y_hard is None:
        y_hard = engine.hard_solution(theta, config)

    def make_terms(z_0, perturbed_0, y_0):
        out_ndims = y_0.shape.rank - 1 - batch_ndims

        def weights(perturbed, y):  # ⟨s_m − b, g⟩ `[c, *batch]`
            weight = engine.inner(sample_term(kind, perturbed, y), g, out_ndims)
            if control == "hard":
                weight = weight - engine.inner(y_hard, g, out_ndims)[None]
            return weight

        # Leave-one-out subtracts the mean weight below; a shift c near it (the mean over
        # the first chunk) keeps the sums small, so their difference loses no precision.
        shift = tf.reduce_mean(weights(perturbed_0, y_0), axis=0) if control == "leave_one_out" else None

        def terms(z_c, perturbed, y):
            weight = weights(perturbed, y)  # [c, *batch]
            if shift is not None:
                weight = weight - shift[None]
            dnu = config.noise.grad_log_density(z_c)  # [c, *batch, *event]
            total = engine.expand(weight, event_ndims) * dnu  # [c, *batch, *event]
            return (total, weight, dnu) if shift is not None else (total,)

        return terms

    sums, _, _ = engine.sample_sums(theta, z, config, make_terms, kept=kept)
    num = config.num_samples
    if control == "leave_one_out":
        # (1/M) Σ_m ⟨y_m − (Σ_k y_k − y_m)/(M − 1), g⟩ ∇ν_m = Σ_m (w_m − w̄) ∇ν_m / (M − 1),
        # and with weights shifted by c (w̄ − c = W/M): (A − (W/M)·S) / (M − 1).
        total, weight_sum, dnu_sum = sums
        grad = (total - engine.expand(weight_sum / num, event_ndims) * dnu_sum) / (num - 1)
    else:
        grad = sums[0] / num
    grad = grad / sampling.jacobian_scale(theta, config)  # [*batch, *event]
    if kind == GRADIENT and config.perturbation == "multiplicative":
        grad = grad - g * mean / theta
    return grad + guard


def _solution_terms(z_0, perturbed_0, y_0):
    del z_0, perturbed_0, y_0
    return lambda z_c, perturbed, y: (y,)


def prepare_theta(theta, config: PerturbationConfig):
    """(θ checked and cast to the compute dtype, θ's own dtype)."""
    theta = validate.theta(theta, config.solver.event_ndims, config.solver.name)
    return tf.cast(theta, validate.compute_dtype(theta.dtype)), theta.dtype


def perturbed_mean(theta: tf.Tensor, seed: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """ŷ_ε(θ) = (1/M) Σ_m y*(θ'_m) with the Monte-Carlo Jacobian as its gradient.

    θ `[*batch, *event]` of any float dtype; half precision is computed in float32
    (noise, solver, sums) and the result cast back. With `config.chunk_size` the
    samples are solved in chunks, in the forward pass and again in the backward pass.

    Returns:
      `[*batch, *out]` in θ's dtype.
    """
    theta, out_dtype = prepare_theta(theta, config)
    hard = config.control_variate == "hard"

    @tf.custom_gradient
    def _op(theta_in):
        theta = tf.stop_gradient(theta_in)  # the gradient is `grad`: record nothing inside
        z = sampling.sample_noise(theta, seed, config)  # [M, *batch, *event]
        (y_sum,), kept, y_hard = engine.sample_sums(theta, z, config, _solution_terms, hard=hard)

        def grad(g):
            return vjp(theta_in, z, g, config, SOLUTION, kept=kept, y_hard=y_hard)

        return y_sum / config.num_samples, grad

    return tf.cast(_op(theta), out_dtype)


def mean_with_jacobian(theta: tf.Tensor, mean: tf.Tensor, z: tf.Tensor, config: PerturbationConfig,
                       kind: str, kept: Optional[engine.Kept]) -> tf.Tensor:
    """`mean` (an E[s] computed from noise z), as a function of θ with the Monte-Carlo Jacobian."""

    @tf.custom_gradient
    def _op(theta_in):
        def grad(g):
            return vjp(theta_in, z, g, config, kind, kept=kept, mean=mean)

        return tf.identity(mean), grad

    return _op(theta)


def hard_solution(theta: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """y*(θ) in θ's dtype, solved in the compute dtype (θ clipped to the solver's domain)."""
    theta, out_dtype = prepare_theta(theta, config)
    return tf.cast(engine.hard_solution(theta, config), out_dtype)
