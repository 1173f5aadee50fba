"""The implicit-MLE layer: perturbed MAP states forward, the I-MLE difference backward."""

from typing import Optional, Union

import keras

from tf_perturbed._src.estimators import imle
from tf_perturbed._src.layers.base import SolverLayer
from tf_perturbed._src.solvers import registry


@keras.saving.register_keras_serializable(package="tf_perturbed")
class ImplicitMLE(SolverLayer):
    """Any registered solver as a layer trained by implicit maximum-likelihood estimation.

    Formula (maximising solvers; g = ∂L/∂y, γ_s drawn from `noise`, τ = `sigma`):
      forward (training):  y = (1/S) Σ_s y*(θ + τγ_s)
      forward (inference): y*(θ)
      backward:            ∂L/∂θ ≈ (1/S) Σ_s (y*(θ + τγ_s) − y*(θ − λg + τγ_s)) / λ
      (two-sided, unscaled and minimising variants: see `tf_perturbed.implicit_mle`)

    Args:
      solver: a registered solver name whose output has its input's shape.
      lambda_: λ > 0, the step to the target distribution θ − λg. Default 10.0.
      num_samples: S ≥ 1 noise draws per training call. Default 1.
      sigma: τ ≥ 0, the noise temperature. Default 1.0.
      noise: a registered noise name. Default `"sum_of_gamma"` (κ: `kappa`, or
        the solver's `k`, or 1).
      kappa: None (default) or κ > 0 of the sum-of-Gamma noise.
      two_sided: the central difference between θ + λg and θ − λg. Default False.
      rescale: divide the difference by λ. Default True.
      normalize: `"none"` (default) or `"max_abs"` (λ relative to max |g| per problem).
      min_perturbed_value: None (default: the solver's domain) or a lower bound of
        the problems solved.
      seed: int or None; each training call draws new noise.
      solver_kwargs: the solver's hyper-parameters, e.g. `{"k": 3}`.

    Input shape: `[..., *event]`. Output shape: the same (y in the input's dtype).

    Example:
      >>> layer = ImplicitMLE("top_k", lambda_=5.0, solver_kwargs={"k": 2}, seed=0)
      >>> layer(tf.constant([[1.0, 3.0, 2.0]])).numpy()
      array([[0., 1., 1.]], dtype=float32)

    References:
      Niepert, Minervini, Franceschi (2021), Implicit MLE: Backpropagating Through
        Discrete Exponential Family Distributions, NeurIPS.
    """

    def __init__(
        self,
        solver: Union[str, registry.Solver],
        *,
        lambda_: float = imle.DEFAULT_LAMBDA,
        num_samples: int = 1,
        sigma: float = 1.0,
        noise: str = imle.DEFAULT_NOISE,
        kappa: Optional[float] = None,
        two_sided: bool = False,
        rescale: bool = True,
        normalize: str = "none",
        min_perturbed_value: Optional[float] = None,
        seed: Optional[int] = None,
        solver_kwargs: Optional[dict] = None,
        **kwargs,
    ):
        config = imle.IMLEConfig.create(
            solver, lambda_, num_samples, sigma, noise, kappa, two_sided, rescale, normalize,
            min_perturbed_value, solver_kwargs,
        )
        super().__init__(config, seed=seed, **kwargs)

    def call(self, inputs, training=None):
        seed = self.next_seed() if training and self._config.sigma > 0 else None
        return imle.imle_solution(self.float_inputs(inputs), self._config, seed)

