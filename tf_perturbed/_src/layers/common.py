"""Pieces shared by the Keras wrappers: argument checks, seeds, noise names and input dtypes."""

import numbers

import keras
import tensorflow as tf

from tf_perturbed._src import noise as noise_lib
from tf_perturbed._src import seeds as seeds_lib

INFERENCE_MODES = ("hard", "perturbed")


_SEED_LIMIT = 2**63  # a `keras.random.SeedGenerator` keeps its state in int64


def check_layer_seed(seed):
    """Layers and losses take an int in [0, 2⁶³) or None (a config must hold plain values)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"Expected `seed` to be an int in [0, 2**63) or None, received: seed={seed!r}")
    return int(seed)


def check_inference(inference):
    if inference not in INFERENCE_MODES:
        raise ValueError(f"Expected `inference` in {INFERENCE_MODES}, received: inference={inference!r}")
    return inference


def noise_name(noise: noise_lib.Noise) -> str:
    """The registered name of `noise`, or an error saying how to register it."""
    registered = noise_lib.registered_noises()
    if noise.name in registered and noise_lib.get_noise(noise.name) is noise:
        return noise.name
    raise ValueError(
        f"Cannot serialize the unregistered noise {noise!r}: configs store noise by name. "
        "Register it with `tf_perturbed.noise.register_noise(...)` and pass its name."
    )


def next_seed(generator: keras.random.SeedGenerator) -> tf.Tensor:
    """A fresh `int32[2]` seed for this call, distinct per replica under tf.distribute."""
    seed = seeds_lib.sanitize_seed(tf.convert_to_tensor(generator.next()))
    return seeds_lib.per_replica(seed)


def float_inputs(inputs, dtype, name: str = "inputs") -> tf.Tensor:
    """Scores as a float tensor: integers are cast to `dtype` (the layer's compute dtype).

    Keras casts float inputs to the compute dtype itself and leaves integers alone;
    without this, a layer would return integers at inference and reject them in
    training. Anything neither float nor integer (bool, complex, string) raises.

    Raises:
      TypeError: naming `name` and the dtype received.
    """
    inputs = tf.convert_to_tensor(inputs)
    if inputs.dtype.is_floating:
        return inputs
    if inputs.dtype.is_integer:
        return tf.cast(inputs, dtype)
    raise TypeError(
        f"Expected `{name}` of a float or integer dtype, received: {name}.dtype={inputs.dtype.name}"
    )
