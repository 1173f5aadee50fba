"""Noise distributions for perturbations: Normal, Gumbel, and a registry.

A noise object draws samples with a stateless seed and knows the gradient of
its negative log-density, ∇ν(z), which the Monte-Carlo Jacobian needs:
for Z with density ∝ exp(−ν(z)),  ∇θ E[f(θ + εZ)] = E[f(θ + εZ) ∇ν(Z)] / ε.
"""

from typing import Sequence, Union

import numpy as np
import tensorflow as tf


class Noise:
    """Base class of noise distributions with independent coordinates.

    Subclasses implement `sample` and `grad_log_density`; `name` is the string
    the public API accepts, `symmetric` says whether Z and −Z have one law.
    """

    name: str = ""
    symmetric: bool = False

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
    symmetric = True

    def sample(self, shape, seed, dtype=tf.float32):
        return tf.random.stateless_normal(shape, seed=seed, dtype=dtype, alg="philox")

    def grad_log_density(self, z):
        return z


class Gumbel(Noise):
    """Standard (zero-mode) Gumbel noise, mean Euler's constant γ ≈ 0.5772.

    Formula:
      ν(z) = Σ_i z_i + e^{−z_i},   ∇ν(z) = 1 − e^{−z}

    With this noise the perturbed argmax is softmax(θ/ε) (Gumbel-max trick).
    """

    name = "gumbel"
    symmetric = False

    def sample(self, shape, seed, dtype=tf.float32):
        # Uniform on (tiny, 1): both logs stay finite.
        tiny = np.finfo(dtype.as_numpy_dtype).tiny
        u = tf.random.stateless_uniform(shape, seed=seed, minval=tiny, maxval=1.0, dtype=dtype, alg="philox")
        return -tf.math.log(-tf.math.log(u))

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
