"""Keras losses: the Fenchel-Young loss bound to a solver, its noise and a seed."""

from typing import Optional

import keras

from tf_perturbed._src import fenchel_young as fy_lib
from tf_perturbed._src import perturbed as perturbed_lib
from tf_perturbed._src.layers import common


@keras.saving.register_keras_serializable(package="tf_perturbed")
class FenchelYoungLoss(keras.losses.Loss):
    """Fenchel-Young loss of a perturbed solver, `y_pred` being scores (or costs).

    Formula:
      L_ε(θ; y) = F_ε(θ) − ⟨θ, y⟩,   ∇θ L_ε = ŷ_ε(θ) − y
      costs (minimising solvers such as `"shortest_path"`): L = ⟨c, y⟩ − F_ε(c)

    The value is the real loss up to the constant εΩ(y), never a stand-in.

    With multiplicative noise θ' = θ ⊙ exp(εZ − ε²/2) the loss is 1-homogeneous,
    L(αθ; y) = αL(θ; y) for α > 0, while y*(αθ) = y*(θ): a model can lower it by
    shrinking all its scores towards 0 without changing a single solution. Fix the
    scale of the scores, e.g. divide each example's costs by their mean (the Warcraft
    tutorial's `normalize_costs`), or use additive noise.

    Args:
      solver: a registered name: `"argmax"`, `"top_k"` (with `k=`), `"ranks"`,
        `"shortest_path"`, `"assignment"`, … (or a callable, which cannot be saved).
      num_samples: M ≥ 1 noise draws per call. Default 100.
      sigma: ε > 0.
      noise: `"normal"` or `"gumbel"`.
      perturbation: `"additive"`, `"multiplicative"`, or None for the solver's
        default (multiplicative for `"shortest_path"`, additive otherwise).
      seed: int or None; each call draws new noise.
      maximize: None to follow the solver's registration, or True/False.
      chunk_size: None or C ≥ 1: solve at most C of the M samples at a time
        to bound memory (see `tf_perturbed.perturbed`).
      solver_kwargs: the solver's hyper-parameters; keyword arguments not
        listed here (such as `k=3`) are added to them.
      reduction, name, dtype: as for every Keras loss.

    Example:
      >>> loss = FenchelYoungLoss("argmax", num_samples=10, seed=0)
      >>> float(loss(tf.constant([[0.0, 1.0]]), tf.constant([[0.0, 3.0]]))) >= 0.0
      True

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers, §4.
    """

    def __init__(
        self,
        solver="argmax",
        num_samples: int = 100,
        sigma: float = 1.0,
        noise: str = "normal",
        perturbation: Optional[str] = None,
        seed: Optional[int] = None,
        maximize: Optional[bool] = None,
        solver_kwargs: Optional[dict] = None,
        chunk_size: Optional[int] = None,
        reduction: str = "sum_over_batch_size",
        name: str = "fenchel_young_loss",
        dtype=None,
        **params,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        merged = dict(solver_kwargs or {})
        merged.update(params)
        self._config = perturbed_lib.PerturbationConfig.create(
            solver, num_samples, sigma, noise, perturbation, False, merged, chunk_size
        )
        self.maximize = None if maximize is None else bool(maximize)
        self.seed = common.check_layer_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def call(self, y_true, y_pred):
        seed = common.next_seed(self.seed_generator)
        return fy_lib.fenchel_young_value(y_true, y_pred, seed, self._config, self.maximize)

    def get_config(self):
        config = super().get_config()
        solver_config = self._config.solver.config()
        config.update(
            solver=solver_config["solver"],
            solver_kwargs=solver_config["solver_kwargs"],
            num_samples=self._config.num_samples,
            sigma=self._config.sigma,
            noise=common.noise_name(self._config.noise),
            perturbation=self._config.perturbation,
            seed=self.seed,
            maximize=self.maximize,
            chunk_size=self._config.chunk_size,
        )
        return config
