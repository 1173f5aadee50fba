"""Noise distributions for perturbations, their registry, and uniform and Gamma draws to build new ones."""

from tf_perturbed._src.base.noise import (
    Gumbel,
    Logistic,
    Noise,
    Normal,
    ZeroMeanGumbel,
    get_noise,
    register_noise,
    registered_noises,
    uniform_from_bits,
    uniform_open,
)
from tf_perturbed._src.base.sum_of_gamma import SumOfGamma, stateless_gamma

__all__ = [
    "Gumbel",
    "Logistic",
    "Noise",
    "Normal",
    "SumOfGamma",
    "ZeroMeanGumbel",
    "get_noise",
    "register_noise",
    "registered_noises",
    "stateless_gamma",
    "uniform_from_bits",
    "uniform_open",
]
