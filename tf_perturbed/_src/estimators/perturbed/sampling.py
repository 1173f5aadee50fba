"""Noise draws and the perturbed problems θ' built from them.

The M draws are taken at once, `[M, *batch, *event]`, so that sample m's noise
does not depend on how the samples are later chunked. A perturbed problem is
θ' = θ + εZ (additive) or θ' = θ ⊙ exp(εZ − ε²/2) (multiplicative; exp(εZ) for
noise other than normal), then clipped to the solver's domain (`domain_min`, e.g.
costs ≥ 0 for shortest paths): the solver sees max(θ', m). The estimators then
estimate the derivatives of E[y*(max(θ', m))], exactly the smoothing they compute.
"""

import dataclasses
from typing import Optional

import tensorflow as tf

from tf_perturbed._src.base import noise as noise_lib
from tf_perturbed._src.estimators.perturbed.config import PerturbationConfig


def sample_noise(theta: tf.Tensor, seed: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """All M draws at once, `[M, *batch, *event]`."""
    shape = tf.concat([[config.num_samples], tf.shape(theta)], 0)
    return noise_lib.draw(config.noise, shape, seed, theta.dtype)  # [M, *batch, *event]


@dataclasses.dataclass(frozen=True)
class Perturbed:
    """Perturbed problems `[c, *batch, *event]` and what the estimators need of them.

    Attributes:
      problems: θ', clipped to the solver's domain: what the solver is given.
      delta: problems − θ, computed without cancellation (εZ for additive noise).
      slope: ∂problems/∂θ entrywise, or None where it is 1 (additive, unclipped).
    """

    problems: tf.Tensor
    delta: tf.Tensor
    slope: Optional[tf.Tensor]


def _multiplier_exponent(z: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """εz − ε²/2 for normal noise (so that E[θ'] = θ), εz otherwise."""
    shift = 0.5 * config.sigma**2 if isinstance(config.noise, noise_lib.Normal) else 0.0
    return config.sigma * z - shift


def _expm1(x: tf.Tensor, exp_x: tf.Tensor) -> tf.Tensor:
    """e^x − 1 to ~1e-6 relative, given e^x: a Taylor polynomial for |x| < 0.1, else e^x − 1.

    `tf.math.expm1` is as accurate but, fused under XLA on CPU, made the forward pass of
    the multiplicative Fenchel-Young loss 40 % slower (Warcraft shapes, 35 maps × 10
    samples); this costs a few multiplications. The polynomial's truncation error is below
    |x|⁵/720 < 2e-8 relative; e^x − 1 for |x| ≥ 0.1 loses ~2⁻²⁴/0.1 ≈ 6e-7 relative
    (measured: at most 1.1e-6 in float32, eagerly and under XLA).
    """
    taylor = x * (1.0 + x / 2.0 * (1.0 + x / 3.0 * (1.0 + x / 4.0 * (1.0 + x / 5.0))))
    return tf.where(tf.abs(x) < 0.1, taylor, exp_x - 1.0)


def perturb(theta: tf.Tensor, z: tf.Tensor, config: PerturbationConfig) -> Perturbed:
    """The perturbed problems for noise z `[c, *theta.shape]`."""
    if config.perturbation == "additive":
        delta = config.sigma * z  # [c, *batch, *event]
        problems, slope = theta + delta, None
    else:
        exponent = _multiplier_exponent(z, config)
        slope = tf.exp(exponent)  # [c, *batch, *event]
        problems = theta * slope
        delta = theta * _expm1(exponent, slope)
    low = config.solver.domain_min
    if low is None:
        return Perturbed(problems, delta, slope)
    low = tf.constant(low, theta.dtype)
    inside = tf.logical_not(problems <= low)  # [c, *batch, *event]; NaN stays, for the solver to reject
    inside_float = tf.cast(inside, theta.dtype)
    return Perturbed(
        problems=tf.where(inside, problems, low),
        delta=tf.where(inside, delta, low - theta),
        slope=inside_float if slope is None else slope * inside_float,
    )


def clip_to_domain(theta: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """max(θ, domain_min) for a solver with a domain, θ otherwise (the unperturbed problems).

    The estimators hand every problem to such a solver clipped, so that an op, a loss
    and a layer built on one solver behave alike; calling the solver itself with an
    input outside its domain raises.
    """
    low = config.solver.domain_min
    if low is None:
        return theta
    low = tf.constant(low, theta.dtype)
    return tf.where(theta <= low, low, theta)  # NaN stays, for the solver to reject


def jacobian_scale(theta: tf.Tensor, config: PerturbationConfig) -> tf.Tensor:
    """The divisor of the Monte-Carlo Jacobian: ε, or ε·θ for multiplicative noise.

    A multiplicative perturbation never moves an entry θ_i = 0, so the samples say
    nothing about ∂/∂θ_i: its gradient is NaN (not ±inf or 0, which would look valid).
    """
    if config.perturbation == "additive":
        return tf.constant(config.sigma, theta.dtype)
    return tf.where(tf.equal(theta, 0.0), tf.constant(float("nan"), theta.dtype), config.sigma * theta)


# Bounded memory. With `chunk_size` C < M the M perturbed problems are solved C at a
# time inside a `tf.while_loop` (one iteration alive at a time), the loop carrying
# only sums of the shape of one solution; the backward pass solves the same
# perturbed problems again, chunk by chunk, instead of keeping the M solutions. The
# noise is drawn once for all M samples (`[M, *batch, *event]`, the size of θ times
# M, against M times the size of a solution — d times more for permutation
# matrices), so a sample's noise, hence the result, does not depend on C.


def chunks(config: PerturbationConfig):
    """(number of chunks n, samples per chunk c): n·c ≥ M > (n − 1)·c, c ≤ chunk_size."""
    num = config.num_samples
    if config.chunk_size is None or config.chunk_size >= num:
        return 1, num
    count = -(-num // config.chunk_size)
    return count, -(-num // count)


def chunk(z: tf.Tensor, index, size: int, config: PerturbationConfig):
    """Samples [index·c, index·c + c) of z and a 0/1 mask of those < M.

    The last chunk may run past M: its extra rows repeat sample M − 1 (so that
    every chunk has one static shape, as XLA needs) and get mask 0.

    Returns:
      `(z_chunk [c, *batch, *event], mask [c])`, the mask in z's dtype.
    """
    positions = index * size + tf.range(size)  # [c]
    z_chunk = tf.gather(z, tf.minimum(positions, config.num_samples - 1))  # [c, *batch, *event]
    return z_chunk, tf.cast(positions < config.num_samples, z.dtype)
