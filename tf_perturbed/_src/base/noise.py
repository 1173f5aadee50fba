"""Noise distributions for perturbations: Normal, Gumbel, and a registry.

A noise object draws samples with a stateless seed and knows the gradient of
its negative log-density, ∇ν(z), which the Monte-Carlo Jacobian needs:
for Z with density ∝ exp(−ν(z)),  ∇θ E[f(θ + εZ)] = E[f(θ + εZ) ∇ν(Z)] / ε.
"""

from typing import Sequence, Union

import tensorflow as tf

from tf_perturbed._src.base import validate


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
    the public API accepts (see `register_noise`).
    """

    name: str = ""

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
register_noise(Gumbel())


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
    return theta + tf.cast(scale, theta.dtype) * gamma
