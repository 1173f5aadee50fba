"""Sum-of-Gamma noise (Niepert et al. 2021, §4) and the stateless Gamma draws it is built from.

TensorFlow's `tf.random.stateless_gamma` has no XLA kernel; `stateless_gamma` here
draws Gamma variables from the package's philox uniforms by Marsaglia and Tsang's
rejection method, so the noise compiles with XLA and is the same in eager, graph and
XLA (up to the rounding of `ndtri`, as the normal noise).
"""

import math

import tensorflow as tf

from tf_perturbed._src.base import noise as noise_lib
from tf_perturbed._src.base import seeds, validate

MAX_ROUNDS = 64  # rejection rounds; each accepts with probability ≥ 0.95, so 64 never run out in practice


def stateless_gamma(shape, alpha: float, seed: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Gamma(α, 1) samples of `shape` (shape α > 0, scale 1) from an `int32[2]` seed.

    Formula (Marsaglia & Tsang 2000, for a = α ≥ 1, or a = α + 1 when α < 1):
      d = a − 1/3, c = 1/√(9d);  x ~ N(0, 1), v = (1 + c·x)³, u ~ U(0, 1)
      accept d·v when v > 0 and log u < x²/2 + d − d·v + d·log v (else draw again)
      α < 1:  Gamma(α) = Gamma(α + 1) · U^{1/α}
    Each coordinate keeps its first accepted proposal; a round accepts with
    probability ≥ 0.95, and after `MAX_ROUNDS` rounds (probability < 0.05⁶⁴ per
    coordinate) a coordinate keeps its last proposal.
    """
    alpha = float(alpha)
    boost = alpha < 1.0
    a = alpha + 1.0 if boost else alpha
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    proposals_seed, boost_seed = tf.unstack(seeds.split(seed, 2))

    def proposal(round_index):
        u = noise_lib.uniform_open(tf.concat([[2], shape], 0), seeds.fold_in(proposals_seed, round_index), dtype)
        x = tf.math.ndtri(u[0])  # [*shape]
        v = (1.0 + c * x) ** 3
        safe_v = tf.where(v > 0, v, tf.ones_like(v))
        accept = tf.logical_and(v > 0, tf.math.log(u[1]) < 0.5 * x * x + d - d * safe_v + d * tf.math.log(safe_v))
        return accept, d * safe_v

    def pending(round_index, done, value):
        return tf.logical_not(tf.reduce_all(done))

    def draw(round_index, done, value):
        accept, candidate = proposal(round_index)
        value = tf.where(done, value, candidate)
        return round_index + 1, tf.logical_or(done, accept), value

    accept, value = proposal(tf.constant(0))
    _, _, value = tf.while_loop(
        pending, draw, (tf.constant(1), accept, value), maximum_iterations=MAX_ROUNDS - 1
    )
    if boost:
        u = noise_lib.uniform_open(shape, boost_seed, dtype)
        value = value * tf.exp(tf.math.log(u) / alpha)  # U^{1/α}
    return value


class SumOfGamma(noise_lib.Noise):
    """Sum-of-Gamma noise: κ independent draws of it sum to (nearly) a standard Gumbel.

    Formula (s = `num_terms`, Gamma(shape, rate)):
      Z = (1/κ) (Σ_{i=1}^{s} G_i − log s),   G_i ~ Gamma(1/κ, i/κ)
      Σ_{j=1}^{κ} Z_j = Σ_i E_i/i − log s with E_i ~ Exp(1): Gumbel as s → ∞ (mean γ − O(1/s))

    Perturbing each of d scores with it and taking the top κ samples (nearly) from
    the exponential family of κ-subsets, as a Gumbel perturbation does for κ = 1
    (Niepert et al. 2021, Theorem 1). Its density has no closed form
    (`has_density = False`): it serves `ImplicitMLE`, `DirectLossGradient` and
    `LearnedNoiseScale`, which only draw it, not the perturbed ops.

    Args:
      k: κ > 0, the number of non-zero entries of a solution (`k` of a top-k). Default 1.
      num_terms: s ≥ 1, the terms of the truncated sum. Default 10 (the paper's).

    Example:
      >>> z = SumOfGamma(k=5).sample([2, 3], tf.constant([0, 1]))
      >>> z.shape
      TensorShape([2, 3])

    References:
      Niepert, Minervini, Franceschi (2021), Implicit MLE: Backpropagating Through
        Discrete Exponential Family Distributions, §4 (Sum-of-Gamma perturbations).
    """

    name = "sum_of_gamma"
    has_density = False

    def __init__(self, k: float = 1.0, num_terms: int = 10):
        self.k = validate.real(k, "k", above=0.0)
        self.num_terms = validate.integer(num_terms, "num_terms")

    def sample(self, shape, seed, dtype=tf.float32):
        compute = validate.compute_dtype(dtype)
        shape = tf.convert_to_tensor(shape, tf.int32)
        draws = stateless_gamma(tf.concat([[self.num_terms], shape], 0), 1.0 / self.k, seed, compute)  # [s, *shape]
        rates = tf.range(1, self.num_terms + 1, dtype=compute) / self.k  # [s]
        rates = tf.reshape(rates, tf.concat([[self.num_terms], tf.ones_like(shape)], 0))  # [s, 1…]
        total = tf.reduce_sum(draws / rates, axis=0)  # [*shape]
        return tf.cast((total - math.log(self.num_terms)) / self.k, dtype)

    def grad_log_density(self, z):
        raise NotImplementedError(
            "The sum-of-Gamma noise has no closed-form density, so no ∇ν: use it with `ImplicitMLE`, "
            "`DirectLossGradient` or `LearnedNoiseScale`, or another noise with the perturbed ops."
        )

    def with_k(self, k: float) -> "SumOfGamma":
        """The same noise with κ = `k` (the implicit-MLE layer binds κ to its solver's k)."""
        return SumOfGamma(k=k, num_terms=self.num_terms)

    def __repr__(self) -> str:
        return f"SumOfGamma(k={self.k}, num_terms={self.num_terms})"


noise_lib.register_noise(SumOfGamma())
