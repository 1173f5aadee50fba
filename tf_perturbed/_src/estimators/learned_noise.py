"""A learned noise scale σ(x) > 0 for randomly perturbed predictors (Indelman et al.).

Formula:
  σ(x) = softplus(h(x)) + σ_min,     θ' = θ + σ(x)·γ in training, θ at inference
  with the direct estimator downstream (g = ∂L/∂θ'):
    ∇θ = g,   ∇σ = ⟨γ, g⟩ per example (or γ ⊙ g per entry)
  so σ → 0 is direct loss minimization (Hazan et al.) and σ = 1 with Gumbel noise
  the Gumbel-max setting (Lorberbom et al.).

The scale of σ's learning rate (the paper trains σ far more slowly than θ) is set
without touching the optimizer: `learning_rate_scaled` for weights of a built-in
head, `gradient_scaled` for the output of any sub-model.
"""

import math

import numpy as np
import tensorflow as tf

from tf_perturbed._src.base import noise as noise_lib


def inverse_softplus(x: float) -> float:
    """h with softplus(h) = x > 0, stable for large and small x."""
    return x + math.log(-math.expm1(-x))


def learning_rate_scaled(weight: tf.Tensor, scale: float) -> tf.Tensor:
    """s·U in the forward pass, with the gradient of W = s·U passed to U unchanged.

    Every optimizer step on U then moves W by s times the step it would make: the
    learning rate of W is scaled by s for SGD, momentum, Adam and RMSprop alike.
    """
    if scale == 1.0:
        return weight
    return weight + tf.stop_gradient((scale - 1.0) * weight)


def gradient_scaled(h: tf.Tensor, scale: float) -> tf.Tensor:
    """h in the forward pass, its gradient multiplied by s (a learning-rate scale for plain SGD)."""
    if scale == 1.0:
        return h
    return scale * h + (1.0 - scale) * tf.stop_gradient(h)


def noise_scale(h: tf.Tensor, scores: tf.Tensor, min_sigma: float) -> tf.Tensor:
    """σ = softplus(h) + σ_min in float32, shaped to broadcast against the scores.

    Args:
      h: `[B, ...]` pre-activations: one value per example, or one per entry of an
        example's scores.
      scores: `[B, *event]`.
      min_sigma: σ_min > 0.

    Returns:
      σ `[B, 1, …, 1]` (one per example) or `[B, *event]` (one per entry), float32.

    Raises:
      ValueError: for any other number of values per example, naming both shapes.
    """
    size = static_size(h.shape[1:], "sigma_model outputs")
    entries = scores.shape[1:]
    per_entry_size = None if any(d is None for d in entries) else int(np.prod(entries, dtype=np.int64))
    if size == 1:
        target = tf.concat([tf.shape(scores)[:1], tf.ones([scores.shape.rank - 1], tf.int32)], 0)
    elif size == per_entry_size:
        target = tf.shape(scores)
    else:
        raise ValueError(
            "Expected σ's head to give 1 value per example or one per score entry "
            f"({per_entry_size}), received: {size} values per example (h.shape={h.shape}, "
            f"scores.shape={scores.shape})"
        )
    sigma = tf.nn.softplus(tf.cast(h, tf.float32)) + min_sigma
    return tf.reshape(sigma, target)  # [B, 1, …, 1] or [B, *event]


def static_size(shape, what: str) -> int:
    """The number of entries of a fully known shape, or a ValueError naming `what`."""
    dims = tuple(shape)
    if any(d is None for d in dims):
        raise ValueError(f"Expected {what} with known non-batch dimensions, received shape {tuple(shape)}")
    return int(np.prod(dims, dtype=np.int64))


def perturb_scores(scores: tf.Tensor, sigma: tf.Tensor, seed: tf.Tensor, noise: noise_lib.Noise) -> tf.Tensor:
    """θ' = θ + σ·γ in the scores' dtype (noise drawn and added in float32 for half precision)."""
    return tf.cast(noise_lib.add_scaled_noise(scores, sigma, seed, noise), scores.dtype)
