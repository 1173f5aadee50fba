"""The direct loss-minimization layer: hard solutions forward, loss-perturbed solves backward."""

import numbers
from typing import Optional

import keras
import tensorflow as tf

from tf_perturbed._src import direct_loss as direct_lib
from tf_perturbed._src import noise as noise_lib
from tf_perturbed._src.layers import common
from tf_perturbed._src.solvers import registry


def check_fixed_sigma(sigma) -> float:
    """σ ≥ 0 and finite (0: no noise, the setting of Hazan et al.)."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"Expected `sigma` to be a number ≥ 0, received: sigma={sigma!r}")
    if not (0 <= sigma < float("inf")):
        raise ValueError(f"Expected `sigma` ≥ 0 and finite, received: sigma={sigma!r}")
    return float(sigma)


@keras.saving.register_keras_serializable(package="tf_perturbed")
class DirectLossGradient(keras.layers.Layer):
    """Any registered solver as a layer trained by direct loss minimization.

    Formula:
      forward (training):  y₀ = y*(θ + σγ)   (σ = 0 by default: y*(θ))
      forward (inference): y*(θ)
      backward, g = ∂L/∂y at y₀, a = max_i |g_i| per problem:
        y_ε = y*(θ + σγ + ε·g/a),   ∂L/∂θ ≈ a·(y_ε − y₀)/ε
      (minimising solvers on costs: the same on θ = −c, see
      `tf_perturbed.direct_loss_gradient`, which documents the signs, the
      normalisation that makes ε independent of the batch size and of the
      loss reduction, and the translation of a raw Vlastelica λ.)

    For a learned noise scale σ(x), put a `LearnedNoiseScale` layer before this
    one and keep `sigma=0` here: the chain rule then gives
    ∇σ = ⟨γ, ∂L/∂θ⟩ = a·(⟨γ, y_ε⟩ − ⟨γ, y₀⟩)/ε.

    Args:
      solver: a registered solver name (see `tf_perturbed.solvers.registered_solvers()`)
        whose output has its input's shape.
      epsilon: ε ≠ 0, the step of the loss-perturbed solve, in units of the
        scores; ε < 0 is "towards-best". Default −1.0.
      normalize: `"max_abs"` (default) or `"none"` (raw ε·g).
      epsilon_growth: None (default, no escape) or a factor > 1: problems whose
        loss-perturbed solution equals y₀ while g ≠ 0 retry with |ε| grown by it.
      max_growth_steps: at most this many retries (≥ 1). Default 30.
      min_perturbed_value: None or a lower bound on the loss-perturbed scores/costs
        (0.0 for solvers that need non-negative costs, such as `"shortest_path"`).
      sigma: σ ≥ 0, a fixed noise scale added in training only. Default 0. (The
        noise is additive: with solvers that need non-negative costs, keep the
        costs away from 0 or leave σ = 0.)
      noise: `"gumbel"` (default) or `"normal"` (or another registered name).
      seed: int or None; each training call draws new noise.
      solver_kwargs: the solver's hyper-parameters, e.g. `{"k": 3}`.

    Input shape: `[..., *event]`. Output shape: the same (y in the input's dtype).

    Example:
      >>> layer = DirectLossGradient("top_k", epsilon=-0.5, solver_kwargs={"k": 2})
      >>> layer(tf.constant([[1.0, 3.0, 2.0]])).numpy()
      array([[0., 1., 1.]], dtype=float32)

    References:
      Hazan, Keshet, McAllester (2010); Lorberbom et al. (2019); Indelman et al.;
      Vlastelica et al. (2020).
    """

    def __init__(
        self,
        solver: str,
        epsilon: float = -1.0,
        normalize: str = "max_abs",
        epsilon_growth: Optional[float] = None,
        max_growth_steps: int = 30,
        min_perturbed_value: Optional[float] = None,
        sigma: float = 0.0,
        noise: str = "gumbel",
        seed: Optional[int] = None,
        solver_kwargs: Optional[dict] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = direct_lib.DirectLossConfig.create(
            solver, epsilon, normalize, epsilon_growth, max_growth_steps, solver_kwargs, min_perturbed_value
        )
        self.sigma = check_fixed_sigma(sigma)
        self._noise = noise_lib.get_noise(noise)
        self.seed = common.check_layer_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    @property
    def solver(self) -> registry.Solver:
        return self._config.solver

    def call(self, inputs, training=None):
        theta = common.float_inputs(inputs, self.compute_dtype)
        if training and self.sigma > 0:
            seed = common.next_seed(self.seed_generator)
            noise_dtype = tf.float32 if theta.dtype in (tf.float16, tf.bfloat16) else theta.dtype
            gamma = self._noise.sample(tf.shape(theta), seed, noise_dtype)  # [..., *event]
            theta = theta + tf.cast(self.sigma * gamma, theta.dtype)
        return direct_lib.direct_solution(theta, self._config)

    def compute_output_shape(self, input_shape):
        return self.solver.output_shape(tuple(input_shape))

    def get_config(self):
        config = super().get_config()
        config.update(self.solver.config())
        config.update(
            epsilon=self._config.epsilon,
            normalize=self._config.normalize,
            epsilon_growth=self._config.epsilon_growth,
            max_growth_steps=self._config.max_growth_steps,
            min_perturbed_value=self._config.min_perturbed_value,
            sigma=self.sigma,
            noise=common.noise_name(self._noise),
            seed=self.seed,
        )
        return config
