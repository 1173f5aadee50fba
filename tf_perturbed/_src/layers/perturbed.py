"""Perturbed-optimizer layers: the perturbed mean in training, the hard solution at inference."""

from typing import Optional

import keras
import tensorflow as tf

from tf_perturbed._src import perturbed as perturbed_lib
from tf_perturbed._src.layers import common
from tf_perturbed._src.solvers import registry


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedOptimizer(keras.layers.Layer):
    """Any registered solver as a layer: ŷ_ε(θ) = E[y*(θ + εZ)] in training.

    Formula:
      training:  ŷ_ε(θ) ≈ (1/M) Σ_m y*(θ + εZ_m), gradient by the Monte-Carlo Jacobian
      inference: y*(θ) (`inference="hard"`) or ŷ_ε(θ) (`inference="perturbed"`)

    Args:
      solver: a registered solver name (see `tf_perturbed.solvers.registered_solvers()`).
      num_samples: M ≥ 1, noise draws per call. Default 100.
      sigma: ε > 0, the noise scale. Default 1.0.
      noise: `"normal"` or `"gumbel"` (or another registered name).
      perturbation: `"additive"` or `"multiplicative"` (for positive inputs);
        None takes the solver's default.
      control_variate: a baseline in the Jacobian (lower variance, no bias):
        True, False, `"leave_one_out"` or `"hard"` (see `tf_perturbed.perturbed`).
      inference: `"hard"` or `"perturbed"`, what the layer returns outside training.
      seed: int or None; each call draws new noise from a `keras.random.SeedGenerator`.
      solver_kwargs: the solver's hyper-parameters, e.g. `{"k": 3}`.
      chunk_size: None or C ≥ 1: solve at most C of the M samples at a time,
        forward and backward, to bound memory (see `tf_perturbed.perturbed`).

    Input shape: `[..., *event]` (event: `[d]`, or `[H, W]` / `[n, n]` for 2-D solvers).
    Output shape: the solver's (`[..., d]`, or `[..., d, d]` for sort permutations).

    Example:
      >>> layer = PerturbedOptimizer("argmax", num_samples=10, seed=0)
      >>> layer(tf.constant([[1.0, 3.0, 2.0]]), training=True).shape
      TensorShape([1, 3])

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers.
    """

    def __init__(
        self,
        solver: str,
        num_samples: int = 100,
        sigma: float = 1.0,
        noise: str = "normal",
        perturbation: Optional[str] = None,
        control_variate: bool = True,
        inference: str = "hard",
        seed: Optional[int] = None,
        solver_kwargs: Optional[dict] = None,
        chunk_size: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._config = perturbed_lib.PerturbationConfig.create(
            solver, num_samples, sigma, noise, perturbation, control_variate, solver_kwargs, chunk_size
        )
        self.control_variate = control_variate
        self.inference = common.check_inference(inference)
        self.seed = common.check_layer_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    @property
    def solver(self) -> registry.Solver:
        return self._config.solver

    def call(self, inputs, training=None):
        inputs = common.float_inputs(inputs, self.compute_dtype)
        if training or self.inference == "perturbed":
            seed = common.next_seed(self.seed_generator)
            return perturbed_lib.perturbed_mean(inputs, seed, self._config)
        return tf.cast(self.solver(inputs), inputs.dtype)

    def compute_output_shape(self, input_shape):
        return self.solver.output_shape(tuple(input_shape))

    def _base_config(self) -> dict:
        config = super().get_config()
        config.update(
            num_samples=self._config.num_samples,
            sigma=self._config.sigma,
            noise=common.noise_name(self._config.noise),
            perturbation=self._config.perturbation,
            control_variate=self.control_variate,
            inference=self.inference,
            seed=self.seed,
            chunk_size=self._config.chunk_size,
        )
        return config

    def get_config(self):
        config = self._base_config()
        config.update(self.solver.config())
        return config


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedArgmax(PerturbedOptimizer):
    """Perturbed one-hot argmax: a smooth, trainable `argmax` over the last axis.

    With Gumbel noise its training output is softmax(θ/σ). Input `[..., d]`,
    output `[..., d]`. Arguments as `PerturbedOptimizer`, without `solver`.

    Example:
      >>> PerturbedArgmax(num_samples=10, seed=0)(tf.constant([[1.0, 3.0]]), training=True).shape
      TensorShape([1, 2])
    """

    def __init__(
        self,
        num_samples=100,
        sigma=1.0,
        noise="normal",
        perturbation="additive",
        control_variate=True,
        inference="hard",
        seed=None,
        **kwargs,
    ):
        super().__init__(
            "argmax", num_samples, sigma, noise, perturbation, control_variate, inference, seed, **kwargs
        )

    def get_config(self):
        return self._base_config()


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedTopK(PerturbedOptimizer):
    """Perturbed k-hot selection of the k largest scores over the last axis.

    Args:
      k: number of selected entries, 1 ≤ k ≤ d.
      Others as `PerturbedOptimizer`.

    Input `[..., d]`, output `[..., d]` (entries in [0, 1] summing to k).

    Example:
      >>> PerturbedTopK(k=2, num_samples=10, seed=0)(tf.constant([[1.0, 3.0, 2.0]])).shape
      TensorShape([1, 3])
    """

    def __init__(
        self,
        k: int,
        num_samples=100,
        sigma=1.0,
        noise="normal",
        perturbation="additive",
        control_variate=True,
        inference="hard",
        seed=None,
        **kwargs,
    ):
        super().__init__(
            "top_k",
            num_samples,
            sigma,
            noise,
            perturbation,
            control_variate,
            inference,
            seed,
            solver_kwargs={"k": k},
            **kwargs,
        )
        self.k = self.solver.kwargs["k"]

    def build(self, input_shape):
        d = input_shape[-1]
        if d is not None and self.k > d:
            raise ValueError(f"Expected `k` ≤ d = {d} (the input's last axis), received: k={self.k}")
        super().build(input_shape)

    def get_config(self):
        config = self._base_config()
        config["k"] = self.k
        return config


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedRanks(PerturbedOptimizer):
    """Perturbed ascending ranks (0 … d−1) over the last axis: differentiable ranking.

    Input `[..., d]`, output `[..., d]` (expected ranks). Arguments as
    `PerturbedOptimizer`, without `solver`.

    Example:
      >>> PerturbedRanks(num_samples=10, seed=0)(tf.constant([[0.5, -1.0, 2.0]])).numpy()
      array([[1., 0., 2.]], dtype=float32)
    """

    def __init__(
        self,
        num_samples=100,
        sigma=1.0,
        noise="normal",
        perturbation="additive",
        control_variate=True,
        inference="hard",
        seed=None,
        **kwargs,
    ):
        super().__init__(
            "ranks", num_samples, sigma, noise, perturbation, control_variate, inference, seed, **kwargs
        )

    def get_config(self):
        return self._base_config()
