"""The direct loss-minimization layer: hard solutions forward, loss-perturbed solves backward."""

from typing import Optional, Union

import keras

from tf_perturbed._src.estimators import direct
from tf_perturbed._src.layers.base import SolverLayer
from tf_perturbed._src.solvers import registry


@keras.saving.register_keras_serializable(package="tf_perturbed")
class DirectLossGradient(SolverLayer):
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
      min_perturbed_value: None (default: the solver's domain, e.g. costs ≥ 0 for
        `"shortest_path"`, to which every problem handed to the solver is clipped)
        or another lower bound.
      sigma: σ ≥ 0, a fixed noise scale added in training only. Default 0.
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
        solver: Union[str, registry.Solver],
        *,
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
        config = direct.DirectLossConfig.create(
            solver, epsilon, normalize, epsilon_growth, max_growth_steps, solver_kwargs, min_perturbed_value,
            sigma, noise,
        )
        super().__init__(config, seed=seed, **kwargs)

    @property
    def sigma(self) -> float:
        """σ, the scale of the noise added in training (0: none)."""
        return self._config.sigma

    def call(self, inputs, training=None):
        seed = self.next_seed() if training and self._config.sigma > 0 else None
        return direct.direct_solution(self.float_inputs(inputs), self._config, seed)

