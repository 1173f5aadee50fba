"""Noise distributions for perturbations, and their registry."""

from tf_perturbed._src.noise import Gumbel, Noise, Normal, get_noise, register_noise, registered_noises

__all__ = ["Gumbel", "Noise", "Normal", "get_noise", "register_noise", "registered_noises"]
