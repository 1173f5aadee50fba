"""Noise distributions for perturbations, their registry, and uniform draws to build new ones."""

from tf_perturbed._src.base.noise import (
    Gumbel,
    Noise,
    Normal,
    get_noise,
    register_noise,
    registered_noises,
    uniform_from_bits,
    uniform_open,
)

__all__ = [
    "Gumbel",
    "Noise",
    "Normal",
    "get_noise",
    "register_noise",
    "registered_noises",
    "uniform_from_bits",
    "uniform_open",
]
