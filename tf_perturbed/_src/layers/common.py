"""Pieces shared by the Keras wrappers: argument checks, seeds and noise names."""

import numbers

import keras
import tensorflow as tf

from tf_perturbed._src import noise as noise_lib
from tf_perturbed._src import seeds as seeds_lib

INFERENCE_MODES = ("hard", "perturbed")


def check_layer_seed(seed):
    """Layers and losses take an int ≥ 0 or None (a config must hold plain values)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"Expected `seed` to be an int ≥ 0 or None, received: seed={seed!r}")
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
