"""A learned, input-dependent noise scale σ(x) for randomly perturbed predictors."""

from typing import Optional

import keras
import tensorflow as tf

from tf_perturbed._src.base import noise as noise_lib
from tf_perturbed._src.base import validate
from tf_perturbed._src.estimators import learned_noise
from tf_perturbed._src.layers.base import SeededLayer


@keras.saving.register_keras_serializable(package="tf_perturbed")
class LearnedNoiseScale(SeededLayer):
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

    - built-in head: the weights are stored as U and used as W = U +
      stop_gradient((s − 1)·U) = s·U in the forward pass, so U receives the
      gradient of W unchanged and every optimizer step on U moves W by s
      times the step it would make: the learning rate is scaled by s for SGD,
      momentum, Adam and RMSprop alike. (U starts at W₀/s.)
    - sigma_model: the gradient reaching the sub-model is multiplied by s
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
        *,
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
        super().__init__(seed=seed, **kwargs)
        self._noise = noise_lib.get_noise(noise)
        self.min_sigma = validate.real(min_sigma, "min_sigma", above=0.0)
        self.initial_sigma = validate.real(initial_sigma, "initial_sigma", above=0.0)
        if self.initial_sigma <= self.min_sigma:
            raise ValueError(
                "Expected `initial_sigma` > `min_sigma`, received: "
                f"initial_sigma={initial_sigma!r}, min_sigma={min_sigma!r}"
            )
        self.per_entry = validate.boolean(per_entry, "per_entry")
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
        self.sigma_model = sigma_model
        self.sigma_lr_scale = validate.real(sigma_lr_scale, "sigma_lr_scale", above=0.0)
        self.return_sigma = validate.boolean(return_sigma, "return_sigma")
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
            features = learned_noise.static_size(features_shape[1:], "features")
            units = learned_noise.static_size(scores_shape[1:], "scores") if self.per_entry else 1
            bias = learned_noise.inverse_softplus(self.initial_sigma - self.min_sigma) / self.sigma_lr_scale
            self.sigma_kernel = self.add_weight(
                name="sigma_kernel", shape=(features, units), initializer="zeros"
            )
            self.sigma_bias = self.add_weight(
                name="sigma_bias", shape=(units,), initializer=keras.initializers.Constant(bias)
            )
        elif not self.sigma_model.built:
            self.sigma_model.build(tuple(features_shape))

    def _pre_activation(self, features):
        """h(x) `[B, units]` (built-in head) or the sub-model's output, with σ's learning-rate scale."""
        s = self.sigma_lr_scale
        if self.sigma_model is None:
            x = tf.reshape(features, [tf.shape(features)[0], -1])  # [B, f]
            kernel = tf.cast(learned_noise.learning_rate_scaled(self.sigma_kernel, s), x.dtype)
            bias = tf.cast(learned_noise.learning_rate_scaled(self.sigma_bias, s), x.dtype)
            return tf.matmul(x, kernel) + bias  # [B, units]
        return learned_noise.gradient_scaled(self.sigma_model(features), s)  # [B, ...]

    def call(self, inputs, training=None):
        scores, features = self._split(inputs)
        scores = self.float_inputs(scores, "scores")
        features = self.float_inputs(features, "features")
        if not (training or self.return_sigma):
            return scores
        sigma = learned_noise.noise_scale(self._pre_activation(features), scores, self.min_sigma)  # float32
        out = scores
        if training:
            out = learned_noise.perturb_scores(scores, sigma, self.next_seed(), self._noise)
            self.sigma_metric.update_state(sigma)
        if self.return_sigma:
            return out, tf.cast(sigma, scores.dtype)
        return out

    def _sigma_shape(self, scores_shape, features_shape):
        if self.sigma_model is None:
            per_entry = self.per_entry
        else:
            h_shape = self.sigma_model.compute_output_shape(tuple(features_shape))
            per_entry = learned_noise.static_size(h_shape[1:], "sigma_model outputs") != 1
        if per_entry:
            return tuple(scores_shape)
        return (scores_shape[0],) + (1,) * (len(scores_shape) - 1)

    def compute_output_shape(self, input_shape):
        scores_shape, features_shape = self._split(input_shape, "input_shape")
        if not self.return_sigma:
            return tuple(scores_shape)
        return tuple(scores_shape), self._sigma_shape(scores_shape, features_shape)

    def arguments(self) -> dict:
        return dict(
            noise=noise_lib.noise_name(self._noise),
            min_sigma=self.min_sigma,
            initial_sigma=self.initial_sigma,
            per_entry=self.per_entry,
            sigma_model=(
                None if self.sigma_model is None else keras.saving.serialize_keras_object(self.sigma_model)
            ),
            sigma_lr_scale=self.sigma_lr_scale,
            return_sigma=self.return_sigma,
        )
