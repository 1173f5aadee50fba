"""The perturbed maximum F_ε(θ) = E[⟨y*(θ'), θ'⟩], with a gradient that is differentiable.

Formula (per example; r a reference solution, 0 for the plain maximum):

    value  = (1/M) Σ_m ⟨y*(θ'_m), θ'_m⟩ − ⟨r, θ⟩
           = (1/M) Σ_m [⟨y_m − r, θ⟩ + ⟨y_m, θ'_m − θ⟩]     (the form summed here)
    ∇θ     = ∇F_ε(θ) − r,   ∇F_ε(θ) = E[y*(θ') ⊙ ∂θ'/∂θ]    (envelope theorem)
    ∇r     = −θ
    ∇²F_ε  = J ∇F_ε, the Monte-Carlo Jacobian (`jacobian.vjp`, kind GRADIENT)

Summing ⟨y_m − r, θ⟩ + ⟨y_m, θ'_m − θ⟩ rather than ⟨y_m, θ'_m⟩ and subtracting ⟨r, θ⟩
afterwards keeps the Fenchel-Young loss (r = the target) accurate when it is small
next to F_ε: with ε → 0 and r = y*(θ) every term is ⟨y, εZ_m⟩, not a difference of
two numbers near max θ. For a minimising solver the same formula gives the perturbed
minimum.
"""

from typing import Optional

import tensorflow as tf

from tf_perturbed._src.estimators.perturbed import engine, jacobian, sampling
from tf_perturbed._src.estimators.perturbed.config import PerturbationConfig
from tf_perturbed._src.solvers import registry


def check_target_shape(y_true: tf.Tensor, theta: tf.Tensor) -> None:
    """Raises a ValueError naming `y_true` when its static shape cannot match theta's."""
    if not y_true.shape.is_compatible_with(theta.shape):
        raise ValueError(
            "Expected `y_true` of the shape of the scores (one solution per example), "
            f"received: y_true.shape={y_true.shape}, scores shape={theta.shape}"
        )


def perturbed_maximum(
    theta: tf.Tensor,
    seed: tf.Tensor,
    config: PerturbationConfig,
    reference: Optional[tf.Tensor] = None,
) -> tf.Tensor:
    """F_ε(θ) − ⟨r, θ⟩ per example `[*batch]`, in θ's dtype (see the module's formula).

    Args:
      theta: `[*batch, *event]`, any float dtype (half precision runs in float32).
      seed: an `int32[2]` stateless seed.
      config: a `PerturbationConfig` whose solver returns y of θ's shape.
      reference: None, or r `[*batch, *event]` (the Fenchel-Young loss's target).
    """
    config.check_linear("The perturbed maximum")
    theta, out_dtype = jacobian.prepare_theta(theta, config)
    if reference is None:
        reference = tf.zeros_like(theta)
    reference = tf.cast(tf.convert_to_tensor(reference), theta.dtype)
    check_target_shape(reference, theta)
    event_ndims = config.solver.event_ndims

    @tf.custom_gradient
    def _op(theta_in, reference_in):
        theta, reference = tf.stop_gradient(theta_in), tf.stop_gradient(reference_in)

        def terms(z_c, perturbed, y):  # [c, *batch], [c, *batch, *event]
            registry.check_linear_solution(config.solver, perturbed.problems, y, "The perturbed maximum")
            value = engine.inner(y - reference, theta, event_ndims) + engine.inner(y, perturbed.delta, event_ndims)
            return value, jacobian.sample_term(jacobian.GRADIENT, perturbed, y)

        z = sampling.sample_noise(theta, seed, config)  # [M, *batch, *event]
        (value_sum, grad_sum), kept, _ = engine.sample_sums(theta, z, config, lambda *first_chunk: terms)
        grad_f = grad_sum / config.num_samples  # ∇F_ε(θ) `[*batch, *event]`

        def grad(g):
            g = engine.expand(g, event_ndims)  # [*batch, 1…]
            grad_f_of_theta = jacobian.mean_with_jacobian(theta_in, grad_f, z, config, jacobian.GRADIENT, kept)
            return g * (grad_f_of_theta - reference_in), -g * theta_in

        return value_sum / config.num_samples, grad

    return tf.cast(_op(theta, reference), out_dtype)
