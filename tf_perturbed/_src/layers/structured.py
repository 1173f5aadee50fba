"""Perturbed layers over the structured solvers: grid shortest paths and assignment."""

from typing import Optional

import keras

from tf_perturbed._src.layers.perturbed import PerturbedOptimizer


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedShortestPath(PerturbedOptimizer):
    """Perturbed shortest path on a grid of positive vertex costs.

    The path runs from the top-left to the bottom-right vertex and pays the cost
    of every vertex it visits (the Warcraft setting). In training the layer
    returns the mean path mask E[y*(c')], where c' perturbs the costs:

    Formula:
      multiplicative (default): c' = c ⊙ exp(εZ − ε²/2), Z ~ N(0, I); the
        Jacobian divides by ε·c, so costs must be > 0 (e.g. softplus(·) + 1e-3).
      additive: c' = max(c + εZ, 0) when `clip_negative` (default for additive).

    Args:
      num_samples: M ≥ 1. Default 100.
      sigma: ε > 0. Default 1.0 — for multiplicative noise a relative scale,
        0.1–1 is typical.
      noise: `"normal"` or `"gumbel"`.
      perturbation: `"multiplicative"` (default) or `"additive"`.
      neighbourhood: 8 (king moves, default) or 4.
      clip_negative: clip perturbed costs at 0; default True for additive noise.
      control_variate, inference, seed: as `PerturbedOptimizer`.

    Input shape: costs `[..., H, W]`. Output shape: path masks `[..., H, W]`.

    Example:
      >>> layer = PerturbedShortestPath(num_samples=20, sigma=0.5, seed=0)
      >>> layer(tf.ones([1, 4, 4]), training=True).shape
      TensorShape([1, 4, 4])

    References:
      Berthet et al. (2020) §5.3; Vlastelica et al. (2020).
    """

    def __init__(
        self,
        num_samples: int = 100,
        sigma: float = 1.0,
        noise: str = "normal",
        perturbation: str = "multiplicative",
        neighbourhood: int = 8,
        clip_negative: Optional[bool] = None,
        control_variate=True,
        inference: str = "hard",
        seed: Optional[int] = None,
        **kwargs,
    ):
        clip = (perturbation == "additive") if clip_negative is None else clip_negative
        super().__init__(
            "shortest_path",
            num_samples,
            sigma,
            noise,
            perturbation,
            control_variate,
            inference,
            seed,
            solver_kwargs={"neighbourhood": neighbourhood, "clip_negative": clip},
            **kwargs,
        )
        self.neighbourhood = self.solver.kwargs["neighbourhood"]
        self.clip_negative = clip_negative

    def get_config(self):
        config = self._base_config()
        config.update(neighbourhood=self.neighbourhood, clip_negative=self.clip_negative)
        return config


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedMatching(PerturbedOptimizer):
    """Perturbed bipartite matching: the mean of exact assignments of S + εZ.

    Formula:
      ŷ_ε(S) = E[argmax_P ⟨P, S + εZ⟩], P over n × n permutation matrices
      (a doubly-stochastic matrix in training, a permutation at inference)

    Args:
      As `PerturbedOptimizer`, without `solver`.

    Input shape: scores `[..., n, n]`. Output shape: `[..., n, n]`.

    Example:
      >>> PerturbedMatching(num_samples=10, seed=0)(tf.eye(3)[None], training=True).shape
      TensorShape([1, 3, 3])
    """

    def __init__(
        self,
        num_samples: int = 100,
        sigma: float = 1.0,
        noise: str = "normal",
        perturbation: str = "additive",
        control_variate=True,
        inference: str = "hard",
        seed: Optional[int] = None,
        **kwargs,
    ):
        super().__init__(
            "assignment", num_samples, sigma, noise, perturbation, control_variate, inference, seed, **kwargs
        )

    def get_config(self):
        return self._base_config()
