"""Perturbed layers over the structured solvers: grid shortest paths and assignment."""

import keras

from tf_perturbed._src.layers.perturbed import PerturbedArguments, PerturbedOptimizer, Unpack


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedShortestPath(PerturbedOptimizer):
    """Perturbed shortest path on a grid of vertex costs.

    The path runs from the top-left to the bottom-right vertex and pays the cost
    of every vertex it visits (the Warcraft setting). In training the layer
    returns the mean path mask E[y*(c')], where c' perturbs the costs:

    Formula:
      multiplicative (default): c' = c ⊙ exp(εZ − ε²/2), Z ~ N(0, I); the
        Jacobian divides by ε·c, so costs must be > 0 (e.g. softplus(·) + 1e-3).
      additive: c' = max(c + εZ, 0): the solver's domain is costs ≥ 0, and the
        perturbed costs are clipped to it, as in `tf_perturbed.perturbed` and
        `FenchelYoungLoss("shortest_path")` (at inference, y*(max(c, 0))).

    Args:
      neighbourhood: 8 (king moves, default) or 4.
      **kwargs: as `PerturbedOptimizer`, keyword-only, without `solver`. `sigma`
        (default 1.0) is a relative scale for multiplicative noise: 0.1–1 is typical.

    Input shape: costs `[..., H, W]`. Output shape: path masks `[..., H, W]`.

    Example:
      >>> layer = PerturbedShortestPath(num_samples=20, sigma=0.5, seed=0)
      >>> layer(tf.ones([1, 4, 4]), training=True).shape
      TensorShape([1, 4, 4])

    References:
      Berthet et al. (2020) §5.3; Vlastelica et al. (2020).
    """

    SOLVER = "shortest_path"

    def __init__(self, *, neighbourhood: int = 8, **kwargs: Unpack[PerturbedArguments]):
        super().__init__(self.SOLVER, solver_kwargs={"neighbourhood": neighbourhood}, **kwargs)
        self.neighbourhood = self.solver.kwargs["neighbourhood"]

    @classmethod
    def from_config(cls, config):
        # Configs written by tf_perturbed 0.1 hold `clip_negative`: perturbed costs are now
        # always clipped to the solver's domain (costs ≥ 0), which is what it chose.
        config = dict(config)
        config.pop("clip_negative", None)
        return cls(**config)


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedMatching(PerturbedOptimizer):
    """Perturbed bipartite matching: the mean of exact assignments of S + εZ.

    Formula:
      ŷ_ε(S) = E[argmax_P ⟨P, S + εZ⟩], P over n × n permutation matrices
      (a doubly-stochastic matrix in training, a permutation at inference)

    Args:
      **kwargs: as `PerturbedOptimizer`, keyword-only, without `solver`.

    Input shape: scores `[..., n, n]`. Output shape: `[..., n, n]`.

    Example:
      >>> PerturbedMatching(num_samples=10, seed=0)(tf.eye(3)[None], training=True).shape
      TensorShape([1, 3, 3])
    """

    SOLVER = "assignment"

    def __init__(self, **kwargs: Unpack[PerturbedArguments]):
        super().__init__(self.SOLVER, **kwargs)
