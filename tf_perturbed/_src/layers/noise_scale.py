"""A learned, input-dependent noise scale σ(x) for randomly perturbed predictors."""

import math
import numbers
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from tf_perturbed._src import noise as noise_lib
from tf_perturbed._src.layers import common


def _positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected `{name}` to be a positive number, received: {name}={value!r}")
    if not (0 < value < float("inf")):
        raise ValueError(f"Expected `{name}` > 0 and finite, received: {name}={value!r}")
    return float(value)


def _inverse_softplus(x: float) -> float:
    """h with softplus(h) = x > 0, stable for large and small x."""
    return x + math.log(-math.expm1(-x))


def _static_size(shape, what: str) -> int:
    dims = tuple(shape)
    if any(d is None for d in dims):
        raise ValueError(f"Expected {what} with known non-batch dimensions, received shape {tuple(shape)}")
    return int(np.prod(dims, dtype=np.int64))


@keras.saving.register_keras_serializable(package="tf_perturbed")
class LearnedNoiseScale(keras.layers.Layer):
    """Adds σ(x)·γ to scores in training, with σ(x) > 0 learned from features x.

    Formula:
      training:   θ' = θ + σ(x)·γ,   γ ~ Gumbel (zero mode) or Normal
      inference:  θ' = θ
      σ(x) = softplus(h(x)) + min_sigma,   h(x) = flatten(x)·W + b  (built-in head)
                                           or h(x) = sigma_model(x)
      Followed by `DirectLossGradient`, the chain rule gives
      ∇θ = a·(y_ε − y₀)/ε and ∇σ = ⟨γ, ∇θ⟩ = a·(⟨γ, y_ε⟩ − ⟨γ, y₀⟩)/ε, so
      σ → 0 is direct loss minimization (Hazan et al.) and σ = 1 with Gumbel
      noise the Gumbel-max setting of Lorberbom et al.

    Shapes. Called on `[scores, features]`: scores `[B, *event]`; features any
    shape the head accepts (the built-in head flattens `[B, ...]` to `[B, f]`).
    σ has one value per example when h gives one number per example, or one per
    score entry when h gives as many numbers as the entries of one example's
    scores (built-in head: `per_entry=True`); it is reshaped to `[B, 1, …, 1]`
    or to the scores' shape accordingly. Any other size raises a ValueError.

    Learning-rate scale. The paper trains σ much more slowly than the scores
    (SGD at 1e-6 against Adam at 1e-1 for the scores). `sigma_lr_scale = s`:
      built-in head: the weights are stored as U and used as W = U +
        stop_gradient((s − 1)·U) = s·U in the forward pass, so U receives the
        gradient of W unchanged and every optimizer step on U moves W by s
        times the step it would make: the learning rate is scaled by s for SGD,
        momentum, Adam and RMSprop alike. (U starts at W₀/s.)
      sigma_model: the gradient reaching the sub-model is multiplied by s
        (h ↦ s·h + (1 − s)·stop_gradient(h)). That is a learning-rate scale
        for plain SGD only: Adam-type optimizers divide the scale out.

    σ over training. In training the layer updates a `keras.metrics.Mean` named
    `"<layer name>_sigma"` with the mean σ of the batch: `model.fit` reports it
    and `history.history["<layer name>_sigma"]` holds one value per epoch.
    `return_sigma=True` also returns σ (in training and at inference).

    Args:
      noise: `"gumbel"` (default) or `"normal"` (or another registered name).
      min_sigma: floor > 0 added to the softplus, so σ > 0 always. Default 1e-3.
      initial_sigma: σ at initialisation of the built-in head (W = 0), > min_sigma.
        Default 1.0.
      per_entry: built-in head only: one σ per score entry instead of per example.
      sigma_model: None (built-in head) or a Keras layer/model mapping features
        to h(x) (softplus and the floor are applied to its output).
      sigma_lr_scale: s > 0, see above. Default 1.0.
      return_sigma: return `(scores', σ)` instead of `scores'`.
      seed: int or None; each training call draws new noise.

    Example:
      >>> layer = LearnedNoiseScale(seed=0)
      >>> scores, features = tf.zeros([4, 3]), tf.ones([4, 5])
      >>> layer([scores, features], training=True).shape
      TensorShape([4, 3])
      >>> bool(tf.reduce_all(layer([scores, features], training=False) == scores))
      True

    References:
      Indelman et al., Learning Randomly Perturbed Structured Predictors for Direct
        Loss Minimization, §4.3.
    """

    def __init__(
        self,
        noise: str = "gumbel",
        min_sigma: float = 1e-3,
        initial_sigma: float = 1.0,
        per_entry: bool = False,
        sigma_model: Optional[keras.layers.Layer] = None,
        sigma_lr_scale: float = 1.0,
        return_sigma: bool = False,
        seed: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._noise = noise_lib.get_noise(noise)
        self.min_sigma = _positive_float(min_sigma, "min_sigma")
        self.initial_sigma = _positive_float(initial_sigma, "initial_sigma")
        if self.initial_sigma <= self.min_sigma:
            raise ValueError(
                "Expected `initial_sigma` > `min_sigma`, received: "
                f"initial_sigma={initial_sigma!r}, min_sigma={min_sigma!r}"
            )
        if not isinstance(per_entry, bool):
            raise TypeError(f"Expected `per_entry` to be a bool, received: per_entry={per_entry!r}")
        if isinstance(sigma_model, dict):
            sigma_model = keras.saving.deserialize_keras_object(sigma_model)
        if sigma_model is not None and not isinstance(sigma_model, keras.layers.Layer):
            raise TypeError(
                f"Expected `sigma_model` to be None or a Keras layer/model, received: sigma_model={sigma_model!r}"
            )
        if sigma_model is not None and per_entry:
            raise ValueError(
                "Expected `per_entry=False` with a `sigma_model` (the size of its output decides), "
                f"received: per_entry={per_entry!r}"
            )
        if not isinstance(return_sigma, bool):
            raise TypeError(f"Expected `return_sigma` to be a bool, received: return_sigma={return_sigma!r}")
        self.per_entry = per_entry
        self.sigma_model = sigma_model
        self.sigma_lr_scale = _positive_float(sigma_lr_scale, "sigma_lr_scale")
        self.return_sigma = return_sigma
        self.seed = common.check_layer_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.sigma_metric = keras.metrics.Mean(name=f"{self.name}_sigma")

    @staticmethod
    def _split(inputs, what="inputs"):
        if not isinstance(inputs, (list, tuple)) or len(inputs) != 2:
            raise ValueError(
                f"Expected `{what}` to be a list [scores, features], received: {what}={inputs!r}"
            )
        return inputs[0], inputs[1]

    def build(self, input_shape):
        scores_shape, features_shape = self._split(input_shape, "input_shape")
        if self.sigma_model is None:
            features = _static_size(features_shape[1:], "features")
            units = _static_size(scores_shape[1:], "scores") if self.per_entry else 1
            bias = _inverse_softplus(self.initial_sigma - self.min_sigma) / self.sigma_lr_scale
            self.sigma_kernel = self.add_weight(
                name="sigma_kernel", shape=(features, units), initializer="zeros"
            )
            self.sigma_bias = self.add_weight(
                name="sigma_bias", shape=(units,), initializer=keras.initializers.Constant(bias)
            )
        elif not self.sigma_model.built:
            self.sigma_model.build(tuple(features_shape))

    def _lr_scaled(self, weight):
        """s·U forward, the gradient of W = s·U passed to U unchanged."""
        s = self.sigma_lr_scale
        if s == 1.0:
            return weight
        return weight + tf.stop_gradient((s - 1.0) * weight)

    def _pre_activation(self, features):
        if self.sigma_model is None:
            batch = tf.shape(features)[0]
            x = tf.reshape(features, [batch, -1])  # [B, f]
            kernel = tf.cast(self._lr_scaled(self.sigma_kernel), x.dtype)
            bias = tf.cast(self._lr_scaled(self.sigma_bias), x.dtype)
            return tf.matmul(x, kernel) + bias  # [B, units]
        h = self.sigma_model(features)  # [B, ...]
        s = self.sigma_lr_scale
        if s != 1.0:
            h = s * h + (1.0 - s) * tf.stop_gradient(h)
        return h

    def _sigma(self, features, scores):
        """σ(x), reshaped to broadcast against scores: `[B, 1, …]` or the scores' shape."""
        h = self._pre_activation(features)
        size = _static_size(h.shape[1:], "sigma_model outputs")
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
        sigma = tf.nn.softplus(tf.cast(h, tf.float32)) + self.min_sigma
        return tf.reshape(sigma, target)  # [B, 1, …, 1] or [B, *event]

    def call(self, inputs, training=None):
        scores, features = self._split(inputs)
        scores = common.float_inputs(scores, self.compute_dtype, "scores")
        features = common.float_inputs(features, self.compute_dtype, "features")
        if not (training or self.return_sigma):
            return scores
        sigma = self._sigma(features, scores)  # float32
        out = scores
        if training:
            seed = common.next_seed(self.seed_generator)
            noise_dtype = tf.float32 if scores.dtype in (tf.float16, tf.bfloat16) else scores.dtype
            gamma = self._noise.sample(tf.shape(scores), seed, noise_dtype)  # [B, *event]
            out = scores + tf.cast(tf.cast(sigma, noise_dtype) * gamma, scores.dtype)
            self.sigma_metric.update_state(sigma)
        if self.return_sigma:
            return out, tf.cast(sigma, scores.dtype)
        return out

    def _sigma_shape(self, scores_shape, features_shape):
        if self.sigma_model is None:
            per_entry = self.per_entry
        else:
            h_shape = self.sigma_model.compute_output_shape(tuple(features_shape))
            per_entry = _static_size(h_shape[1:], "sigma_model outputs") != 1
        if per_entry:
            return tuple(scores_shape)
        return (scores_shape[0],) + (1,) * (len(scores_shape) - 1)

    def compute_output_shape(self, input_shape):
        scores_shape, features_shape = self._split(input_shape, "input_shape")
        if not self.return_sigma:
            return tuple(scores_shape)
        return tuple(scores_shape), self._sigma_shape(scores_shape, features_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            noise=common.noise_name(self._noise),
            min_sigma=self.min_sigma,
            initial_sigma=self.initial_sigma,
            per_entry=self.per_entry,
            sigma_model=(
                None if self.sigma_model is None else keras.saving.serialize_keras_object(self.sigma_model)
            ),
            sigma_lr_scale=self.sigma_lr_scale,
            return_sigma=self.return_sigma,
            seed=self.seed,
        )
        return config
