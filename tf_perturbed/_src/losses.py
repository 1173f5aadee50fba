"""Keras losses: the Fenchel-Young loss (a solver, its noise and a seed) and the SPO+ loss (a solver)."""

from typing import Optional, Union

import keras

from tf_perturbed._src.base import seeds, validate
from tf_perturbed._src.estimators import fenchel_young, spo_plus
from tf_perturbed._src.estimators.perturbed import config as config_lib
from tf_perturbed._src.solvers import registry


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
      num_samples: M ≥ 1 noise draws per call. Default 100 (the package's one default).
      sigma: ε > 0. Default 1.0.
      noise: `"normal"` (default) or `"gumbel"`.
      perturbation: `"additive"`, `"multiplicative"`, or None for the solver's
        default (multiplicative for `"shortest_path"`, additive otherwise). The
        solver's domain is kept: additive noise on `"shortest_path"` solves
        max(c + εZ, 0), as the op and the layers do.
      seed: int or None; each call draws new noise.
      maximize: whether the solver maximises ⟨y, θ⟩ (scores) or minimises (costs);
        None follows the solver's registration.
      control_variate: the baseline of the loss's second derivative (see
        `tf_perturbed.perturbed`); the loss and its gradient do not use it.
      chunk_size: None or C ≥ 1: solve at most C of the M samples at a time
        to bound memory (see `tf_perturbed.perturbed`).
      solver_kwargs: the solver's hyper-parameters; keyword arguments not
        listed here (such as `k=3`) are added to them.
      event_ndims: the problem's axes of a callable solver (see `tf_perturbed.perturbed`).
      reduction, name, dtype: as for every Keras loss.

    Example:
      >>> loss = FenchelYoungLoss("argmax", num_samples=1000, seed=0)
      >>> scores = tf.constant([[0.0, 3.0]])
      >>> round(float(loss(tf.constant([[0.0, 1.0]]), scores)), 2)  # the label is the argmax
      0.01
      >>> round(float(loss(tf.constant([[1.0, 0.0]]), scores)), 2)  # the other one: 3 more
      3.01

      (Exactly: E[max(Z₁, 3 + Z₂)] − 3 = 0.0088 and 3.0088 with ε = 1; each call
      draws new noise.)

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers, §4.
    """

    def __init__(
        self,
        solver: Union[str, registry.Solver] = "argmax",
        *,
        num_samples: int = config_lib.DEFAULT_NUM_SAMPLES,
        sigma: float = config_lib.DEFAULT_SIGMA,
        noise: str = config_lib.DEFAULT_NOISE,
        perturbation: Optional[str] = None,
        seed: Optional[int] = None,
        maximize: Optional[bool] = None,
        control_variate: Union[bool, str] = config_lib.DEFAULT_CONTROL_VARIATE,
        solver_kwargs: Optional[dict] = None,
        chunk_size: Optional[int] = None,
        event_ndims: Optional[int] = None,
        reduction: str = "sum_over_batch_size",
        name: str = "fenchel_young_loss",
        dtype=None,
        **params,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._config = config_lib.PerturbationConfig.create(
            solver, num_samples, sigma, noise, perturbation, control_variate, {**(solver_kwargs or {}), **params},
            chunk_size, event_ndims,
        )
        self._config.check_linear("The Fenchel-Young loss")
        self.maximize = None if maximize is None else validate.boolean(maximize, "maximize")
        self.seed = validate.layer_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    @property
    def solver(self) -> registry.Solver:
        """The bound solver."""
        return self._config.solver

    @property
    def config(self) -> config_lib.PerturbationConfig:
        """The checked hyper-parameters, as the op takes them."""
        return self._config

    def call(self, y_true, y_pred):
        seed = seeds.next_seed(self.seed_generator)
        return fenchel_young.fenchel_young_value(y_true, y_pred, seed, self._config, self.maximize)

    def save_own_variables(self, store) -> None:
        """The seed generator's state, saved with the model's weights (see `seeds.save_state`)."""
        seeds.save_state(self.seed_generator, store)

    def load_own_variables(self, store) -> None:
        seeds.load_state(self.seed_generator, store)

    def get_config(self):
        config = super().get_config()
        config.update(self._config.arguments(), seed=self.seed, maximize=self.maximize)
        return config


@keras.saving.register_keras_serializable(package="tf_perturbed")
class SPOPlusLoss(keras.losses.Loss):
    """SPO+ loss of a solver, `y_true` being the true costs (or scores) and `y_pred` predicted ones.

    Formula (minimising costs c, ĉ the prediction, w*(c) the solution):
      ℓ(ĉ, c) = −min_w ⟨2ĉ − c, w⟩ + 2⟨ĉ, w*(c)⟩ − ⟨c, w*(c)⟩ ≥ 0,  ∂ĉ ℓ ∋ 2(w*(c) − w*(2ĉ − c))
      maximising scores: the same on θ = −c (see `tf_perturbed.spo_plus_loss`)

    A convex upper bound of the decision regret ⟨c, w*(ĉ)⟩ − ⟨c, w*(c)⟩ that needs the
    true costs, not only the true solutions. It draws no noise (no seed) and calls
    the solver once per batch on the 2B problems [2ĉ − c; c].

    Args:
      solver: a registered name: `"argmax"`, `"top_k"` (with `k=`), `"ranks"`,
        `"knapsack"`, `"graph_shortest_path"`, … (or a callable, which cannot be saved).
      maximize: whether the solver maximises ⟨y, θ⟩ (scores) or minimises (costs);
        None follows the solver's registration.
      clip_to_domain: for a solver with a domain (`"shortest_path"`: costs ≥ 0),
        solve max(2ĉ − c, 0): a surrogate equal to SPO+ where 2ĉ − c ≥ 0 (see
        `tf_perturbed.spo_plus_loss`). Default False: such a solver raises.
      solver_kwargs: the solver's hyper-parameters; keyword arguments not listed
        here (such as `k=3`) are added to them.
      event_ndims: the problem's axes of a callable solver.
      reduction, name, dtype: as for every Keras loss.

    Example:
      >>> loss = SPOPlusLoss("argmax")
      >>> float(loss(tf.constant([[1.0, 2.0, 0.5]]), tf.constant([[2.0, 1.0, 0.5]])))
      3.0

    References:
      Elmachtoub, Grigas (2022), Smart "Predict, then Optimize", Management Science 68(1).
    """

    def __init__(
        self,
        solver: Union[str, registry.Solver] = "argmax",
        *,
        maximize: Optional[bool] = None,
        clip_to_domain: bool = False,
        solver_kwargs: Optional[dict] = None,
        event_ndims: Optional[int] = None,
        reduction: str = "sum_over_batch_size",
        name: str = "spo_plus_loss",
        dtype=None,
        **params,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self._solver = registry.get_solver(solver, {**(solver_kwargs or {}), **params}, event_ndims=event_ndims)
        self.maximize = None if maximize is None else validate.boolean(maximize, "maximize")
        self.clip_to_domain = validate.boolean(clip_to_domain, "clip_to_domain")
        spo_plus.check_solver(self._solver, self.clip_to_domain)

    @property
    def solver(self) -> registry.Solver:
        """The bound solver."""
        return self._solver

    def call(self, y_true, y_pred):
        return spo_plus.spo_plus_loss(
            y_true, y_pred, self._solver, maximize=self.maximize, clip_to_domain=self.clip_to_domain
        )

    def get_config(self):
        config = super().get_config()
        config.update(self._solver.config(), maximize=self.maximize, clip_to_domain=self.clip_to_domain)
        return config
