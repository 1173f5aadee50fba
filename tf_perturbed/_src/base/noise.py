"""Noise distributions for perturbations: Normal, Gumbel, logistic, and a registry.

A noise object draws samples with a stateless seed and knows the gradient of
its negative log-density, ∇ν(z), which the Monte-Carlo Jacobian needs:
for Z with density ∝ exp(−ν(z)),  ∇θ E[f(θ + εZ)] = E[f(θ + εZ) ∇ν(Z)] / ε.
"""

from typing import Sequence, Union

import tensorflow as tf

from tf_perturbed._src.base import validate

EULER_GAMMA = 0.5772156649015329  # the mean of the standard Gumbel distribution


def uniform_open(shape, seed: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Uniform samples in the open interval (0, 1), the same in eager, graph and XLA.

    `tf.random.stateless_uniform` for floats differs between XLA and the TF
    kernels, while its raw uint32 philox bits agree; the floats are built here
    from the bits by `uniform_from_bits`.
    """
    words = 2 if dtype == tf.float64 else 1
    bits = tf.random.stateless_uniform(
        tf.concat([[words], shape], 0), seed=seed, minval=None, maxval=None, dtype=tf.uint32, alg="philox"
    )
    return uniform_from_bits(bits, dtype)


def uniform_from_bits(bits: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
    """Maps uint32 words `[2, ...]` (float64) or `[1, ...]` (other dtypes) into (0, 1).

    float64 takes 53 bits (26 + 27) and float32 24 bits; the value is the centre
    of the bit pattern's bin. The top bin's centre, 1 − 2⁻⁵⁴ (float64) or
    1 − 2⁻²⁵ (float32), is not representable and would round to 1.0 (making
    log(u) = 0 and Gumbel noise +inf), so it is moved to the largest float below 1.
    Narrower dtypes are built in float32, cast, and kept inside (0, 1) in the same way.
    """
    if dtype == tf.float64:
        high = tf.cast(tf.bitwise.right_shift(bits[0], tf.constant(6, tf.uint32)), tf.float64)  # 26 bits
        low = tf.cast(tf.bitwise.right_shift(bits[1], tf.constant(5, tf.uint32)), tf.float64)  # 27 bits
        u = (high * 2.0**27 + low + 0.5) * 2.0**-53
        return tf.minimum(u, 1.0 - 2.0**-53)
    u = (tf.cast(tf.bitwise.right_shift(bits[0], tf.constant(8, tf.uint32)), tf.float32) + 0.5) * 2.0**-24
    u = tf.minimum(u, 1.0 - 2.0**-24)
    if dtype == tf.float32:
        return u
    # (smallest float above 0, largest float below 1) of each narrow type
    bounds = {tf.float16: (2.0**-24, 1.0 - 2.0**-11), tf.bfloat16: (2.0**-25, 1.0 - 2.0**-8)}.get(dtype)
    if bounds is None:
        raise TypeError(f"Expected a floating `dtype` for uniform noise, received: dtype={dtype!r}")
    return tf.clip_by_value(tf.cast(u, dtype), tf.constant(bounds[0], dtype), tf.constant(bounds[1], dtype))


class Noise:
    """Base class of noise distributions with independent coordinates.

    Subclasses implement `sample` and `grad_log_density`; `name` is the string
    the public API accepts (see `register_noise`). A noise whose density has no
    closed form (`has_density = False`, e.g. the sum-of-Gamma noise) serves the
    estimators that only draw it (direct, implicit MLE, a learned noise scale); the
    perturbed ops and the Fenchel-Young loss reject it, as their Jacobian needs ∇ν.
    """

    name: str = ""
    has_density: bool = True

    def sample(self, shape: Sequence[int], seed: tf.Tensor, dtype: tf.DType = tf.float32) -> tf.Tensor:
        """Draws a tensor of `shape` with the stateless `int32[2]` `seed`."""
        raise NotImplementedError

    def grad_log_density(self, z: tf.Tensor) -> tf.Tensor:
        """∇ν(z), where the density is ∝ exp(−ν(z)); same shape as z."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Normal(Noise):
    """Standard normal noise.

    Formula:
      ν(z) = ‖z‖²/2,   ∇ν(z) = z
    """

    name = "normal"

    def sample(self, shape, seed, dtype=tf.float32):
        # Inverse CDF of philox bits: faster than stateless_normal on CPU, and the
        # same draws with and without XLA (up to the rounding of ndtri).
        compute = validate.compute_dtype(dtype)
        return tf.cast(tf.math.ndtri(uniform_open(shape, seed, compute)), dtype)

    def grad_log_density(self, z):
        return z


class Gumbel(Noise):
    """Standard (zero-mode) Gumbel noise, mean Euler's constant γ ≈ 0.5772.

    Formula:
      ν(z) = Σ_i z_i + e^{−z_i},   ∇ν(z) = 1 − e^{−z}

    With this noise the perturbed argmax is softmax(θ/ε) (Gumbel-max trick).
    """

    name = "gumbel"

    def sample(self, shape, seed, dtype=tf.float32):
        compute = validate.compute_dtype(dtype)
        u = uniform_open(shape, seed, compute)  # in (0, 1): both logs stay finite
        return tf.cast(-tf.math.log(-tf.math.log(u)), dtype)

    def grad_log_density(self, z):
        return 1.0 - tf.exp(-z)


class ZeroMeanGumbel(Noise):
    """Gumbel noise shifted to mean 0: the standard Gumbel minus Euler's constant γ.

    Formula:
      Z = G − γ, G standard Gumbel;  ν(z) = Σ_i (z_i + γ) + e^{−(z_i + γ)},
      ∇ν(z) = 1 − e^{−(z + γ)}

    The perturbed argmax is still softmax(θ/ε) (a constant shift of every score
    changes no argmax); solvers that are not invariant to a common shift (a
    shortest path with a varying number of vertices, a knapsack) see unbiased costs.
    """

    name = "zero_mean_gumbel"

    def sample(self, shape, seed, dtype=tf.float32):
        compute = validate.compute_dtype(dtype)
        return tf.cast(_GUMBEL.sample(shape, seed, compute) - EULER_GAMMA, dtype)

    def grad_log_density(self, z):
        return 1.0 - tf.exp(-(z + EULER_GAMMA))


class Logistic(Noise):
    """Standard logistic noise, the difference of two independent Gumbels (mean 0, variance π²/3).

    Formula:
      ν(z) = Σ_i z_i + 2 log(1 + e^{−z_i}),   ∇ν(z) = tanh(z/2)

    With this noise a perturbed step function is the logistic sigmoid: the
    probability that θ_i + εZ_i > 0 is σ(θ_i/ε) (Niepert et al. 2021 use it for
    independent binary variables).
    """

    name = "logistic"

    def sample(self, shape, seed, dtype=tf.float32):
        compute = validate.compute_dtype(dtype)
        u = uniform_open(shape, seed, compute)  # in (0, 1): both logs stay finite
        return tf.cast(tf.math.log(u) - tf.math.log1p(-u), dtype)

    def grad_log_density(self, z):
        return tf.math.tanh(z / 2.0)


_GUMBEL = Gumbel()
_NOISES: dict = {}


def register_noise(noise: Noise, overwrite: bool = False) -> Noise:
    """Registers a `Noise` instance under `noise.name` for the public API.

    Raises:
      TypeError: if `noise` is not a `Noise` instance.
      ValueError: if the name is empty or taken and `overwrite` is False.
    """
    if not isinstance(noise, Noise):
        raise TypeError(f"Expected a `tf_perturbed.noise.Noise` instance, received: noise={noise!r}")
    if not noise.name:
        raise ValueError(f"Expected a noise with a non-empty `name`, received: noise={noise!r}")
    if noise.name in _NOISES and not overwrite:
        raise ValueError(f"A noise named {noise.name!r} is already registered; pass overwrite=True.")
    _NOISES[noise.name] = noise
    return noise


def registered_noises() -> tuple:
    """The names of the registered noise distributions, sorted."""
    return tuple(sorted(_NOISES))


def get_noise(noise: Union[str, Noise]) -> Noise:
    """Looks up a noise by name, or returns a `Noise` instance unchanged.

    Raises:
      ValueError: for an unknown name (the message lists the registered ones).
      TypeError: for anything that is neither a string nor a `Noise`.
    """
    if isinstance(noise, Noise):
        return noise
    if isinstance(noise, str):
        if noise not in _NOISES:
            raise ValueError(
                f"Unknown noise: noise={noise!r}. Accepted names: {', '.join(registered_noises())}; "
                "add one with `tf_perturbed.noise.register_noise`."
            )
        return _NOISES[noise]
    raise TypeError(f"Expected `noise` to be a name or a `Noise` instance, received: noise={noise!r}")


register_noise(Normal())
register_noise(_GUMBEL)
register_noise(ZeroMeanGumbel())
register_noise(Logistic())


def check_density(noise: Noise, what: str) -> Noise:
    """`noise`, or a ValueError naming it if its ∇ν is unknown (`has_density = False`)."""
    if not noise.has_density:
        raise ValueError(
            f"{what} needs the gradient of the noise's log-density, which the noise {noise.name!r} "
            f"does not have in closed form; received: noise={noise.name!r}. Use 'normal', 'gumbel', "
            "'zero_mean_gumbel' or 'logistic' there (the sum-of-Gamma noise serves `ImplicitMLE` "
            "and `DirectLossGradient`)."
        )
    return noise


def noise_name(noise: Noise) -> str:
    """The registered name of `noise` (configs store noise by name), or an error saying how to register it."""
    if noise.name in _NOISES and _NOISES[noise.name] is noise:
        return noise.name
    raise ValueError(
        f"Cannot serialize the unregistered noise {noise!r}: configs store noise by name. "
        "Register it with `tf_perturbed.noise.register_noise(...)` and pass its name."
    )


def draw(noise: Noise, shape, seed: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """Noise of `shape` in the compute dtype of `dtype` (float32 for half precision).

    The one route by which every estimator draws its noise.
    """
    return noise.sample(shape, seed, validate.compute_dtype(dtype))


def add_scaled_noise(theta: tf.Tensor, scale, seed: tf.Tensor, noise: Noise) -> tf.Tensor:
    """θ + scale·γ, γ ~ `noise` drawn with `seed`, in θ's compute dtype.

    `scale` is a number or a tensor broadcasting to θ; the gradient flows to θ and,
    for a tensor scale, to it (∂/∂scale = γ). Half-precision θ comes back in float32.
    """
    theta = tf.cast(theta, validate.compute_dtype(theta.dtype))
    gamma = draw(noise, tf.shape(theta), seed, theta.dtype)  # θ's shape
    return theta + validate.as_dtype(scale, theta.dtype) * gamma
