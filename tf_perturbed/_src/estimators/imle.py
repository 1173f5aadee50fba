"""Implicit maximum-likelihood estimation (I-MLE, Niepert et al. 2021).

Forward: perturbed MAP states y*(θ + τγ). Backward: the same noise γ, a target
θ' = θ − λ·∂L/∂y, and the difference of the two MAP states as the gradient. It is
the direct loss-perturbed difference of `direct.py` at step ε = −λ on noisy
scores, averaged over S noise draws, so it is built on `loss_perturbed_gradient`.
"""

import dataclasses
from typing import Callable, Optional, Union

import tensorflow as tf

from tf_perturbed._src.base import noise as noise_lib
from tf_perturbed._src.base import seeds, sum_of_gamma, validate
from tf_perturbed._src.estimators import direct
from tf_perturbed._src.estimators.first_order import first_order_only
from tf_perturbed._src.solvers import registry

DEFAULT_LAMBDA = 10.0
DEFAULT_NOISE = "sum_of_gamma"


@dataclasses.dataclass(frozen=True)
class IMLEConfig:
    """The hyper-parameters of implicit MLE, checked once at construction.

    Attributes:
      direct: the loss-perturbed solve (solver, ε = −λ, normalisation, escape,
        domain bound, τ as `sigma`, the registered noise).
      num_samples: S ≥ 1 noise draws per call.
      two_sided: whether the backward pass solves at θ ± λg (central difference).
      rescale: whether the difference is divided by λ.
      kappa: κ of the sum-of-Gamma noise (None: the solver's `k`, else the noise's own).
    """

    direct: direct.DirectLossConfig
    num_samples: int = 1
    two_sided: bool = False
    rescale: bool = True
    kappa: Optional[float] = None

    @classmethod
    def create(
        cls,
        solver,
        lambda_=DEFAULT_LAMBDA,
        num_samples=1,
        sigma=1.0,
        noise=DEFAULT_NOISE,
        kappa=None,
        two_sided=False,
        rescale=True,
        normalize="none",
        min_perturbed_value=None,
        solver_kwargs=None,
    ) -> "IMLEConfig":
        lambda_ = validate.real(lambda_, "lambda_", above=0.0)
        config = direct.DirectLossConfig.create(
            solver, -lambda_, normalize, solver_kwargs=solver_kwargs, min_perturbed_value=min_perturbed_value,
            sigma=sigma, noise=noise, method="Implicit MLE",
        )
        kappa = validate.optional_real(kappa, "kappa", above=0.0)
        if kappa is not None and not isinstance(config.noise, sum_of_gamma.SumOfGamma):
            raise ValueError(
                f"`kappa` sets κ of the sum-of-Gamma noise; received: kappa={kappa} with "
                f"noise={noise_lib.noise_name(config.noise)!r}"
            )
        return cls(
            direct=config,
            num_samples=validate.integer(num_samples, "num_samples"),
            two_sided=validate.boolean(two_sided, "two_sided"),
            rescale=validate.boolean(rescale, "rescale"),
            kappa=kappa,
        )

    @property
    def solver(self) -> registry.Solver:
        return self.direct.solver

    @property
    def lambda_(self) -> float:
        return -self.direct.epsilon

    @property
    def sigma(self) -> float:
        return self.direct.sigma

    @property
    def noise(self) -> noise_lib.Noise:
        """The noise drawn: the sum-of-Gamma noise with κ bound (see `kappa`), any other as registered."""
        noise = self.direct.noise
        if not isinstance(noise, sum_of_gamma.SumOfGamma):
            return noise
        if self.kappa is not None:
            return noise.with_k(self.kappa)
        k = self.solver.kwargs.get("k")
        return noise.with_k(k) if k is not None else noise

    def arguments(self) -> dict:
        """The constructor arguments that rebuild this config (for Keras `get_config`)."""
        return dict(
            **self.solver.config(),
            lambda_=self.lambda_,
            num_samples=self.num_samples,
            sigma=self.sigma,
            noise=noise_lib.noise_name(self.direct.noise),
            kappa=self.kappa,
            two_sided=self.two_sided,
            rescale=self.rescale,
            normalize=self.direct.normalize,
            min_perturbed_value=self.direct.min_perturbed_value,
        )


def imle_solution(theta: tf.Tensor, config: IMLEConfig, seed: Optional[tf.Tensor] = None) -> tf.Tensor:
    """The mean of S perturbed MAP states in θ's dtype, with the I-MLE gradient.

    Args:
      theta: `[*batch, *event]`, any float dtype (half precision runs in float32).
      config: an `IMLEConfig`.
      seed: an `int32[2]` seed for the noise, or None: no noise (y*(θ), one state),
        as at inference.

    Returns:
      `[*batch, *event]`: (1/S) Σ_s y*(θ + τγ_s), or y*(θ) without a seed.
    """
    theta, out_dtype = direct.prepare_theta(theta, config.direct)
    if seed is None or config.sigma == 0:  # one state, the MAP of θ
        samples = 1
        noisy = theta[tf.newaxis]  # [1, *batch, *event]
    else:
        samples = config.num_samples
        shape = tf.concat([[samples], tf.shape(theta)], 0)
        gamma = noise_lib.draw(config.noise, shape, seed, theta.dtype)  # [S, *batch, *event]
        noisy = theta[tf.newaxis] + validate.as_dtype(config.sigma, theta.dtype) * gamma  # [S, *batch, *event]

    @tf.custom_gradient
    def _op(noisy_in):
        noisy = tf.stop_gradient(noisy_in)
        states = direct.solve_in_domain(config.direct, noisy)  # [S, *batch, *event]

        def grad(g):
            guard = first_order_only(noisy_in, "the implicit-MLE estimator")
            # Every state's target moves by λg (λ means the same at any S); the mean's
            # 1/S weights the differences.
            g = tf.broadcast_to(g[tf.newaxis], tf.shape(states))  # [S, *batch, *event]
            # towards the target θ − λg: s·(y*(θ) − y*(θ − s·λg))/λ, s = ±1 for max/min
            estimate = direct.loss_perturbed_gradient(noisy, states, g, config.direct)
            if config.two_sided:  # and away from it, θ + λg: the central difference
                away = direct.loss_perturbed_gradient(
                    noisy, states, g, config.direct, epsilon=tf.constant(config.lambda_, noisy.dtype)
                )
                estimate = (estimate + away) / 2.0
            if not config.rescale:
                estimate = estimate * config.lambda_
            return estimate / samples + guard  # [S, *batch, *event]: d mean / d state

        return tf.reduce_mean(states, axis=0), grad

    return tf.cast(_op(noisy), out_dtype)


def implicit_mle(
    solver: Union[str, registry.Solver, Callable[..., tf.Tensor]],
    *,
    lambda_: float = DEFAULT_LAMBDA,
    num_samples: int = 1,
    sigma: float = 1.0,
    noise: str = DEFAULT_NOISE,
    kappa: Optional[float] = None,
    two_sided: bool = False,
    rescale: bool = True,
    normalize: str = "none",
    min_perturbed_value: Optional[float] = None,
    solver_kwargs: Optional[dict] = None,
) -> Callable[..., tf.Tensor]:
    """Turns a solver into θ ↦ perturbed MAP states whose gradient is the I-MLE estimate.

    Formula (maximising solvers; g = ∂L/∂y, γ_s drawn from `noise`, τ = `sigma`):
      forward:   y = (1/S) Σ_s y*(θ + τγ_s)       (no seed: y*(θ))
      backward:  ∂L/∂θ ≈ (1/S) Σ_s (y*(θ + τγ_s) − y*(θ − λg + τγ_s)) / λ
      two_sided: ∂L/∂θ ≈ (1/S) Σ_s (y*(θ + λg + τγ_s) − y*(θ − λg + τγ_s)) / (2λ)
      rescale=False drops the division by λ (Algorithm 1 of the paper returns y − y').
      Minimising solvers (costs c): the same rules on θ = −c, i.e. the target
      c + λg and ∂L/∂c ≈ (y*(c + λg + τγ) − y*(c + τγ))/λ.

    The target θ' = θ − λg is the maximum-likelihood target of the paper: the
    distribution whose MAP state lowers the loss; λ sets how far it moves (large λ:
    a coarser, less biased-to-zero difference; small λ: more zero gradients).
    The per-sample differences are the direct estimator's at ε = −λ
    (`tf_perturbed.direct_loss_gradient` with `normalize="none"`): I-MLE with τ = 0
    and S = 1 is the blackbox gradient of Vlastelica et al. with their λ.
    `normalize="max_abs"` makes λ the largest change of any score, whatever the
    batch size and the loss reduction (see `direct_loss_gradient`).

    Noise. The default, `"sum_of_gamma"`, with κ the solver's `k` (a top-k) or
    `kappa`, makes the top-κ of the perturbed scores (nearly) a sample of the
    κ-subset exponential family; `"gumbel"`, `"zero_mean_gumbel"`, `"logistic"` and
    `"normal"` are the other choices. A solver with a domain (costs ≥ 0 for
    `"shortest_path"`) is given the noisy and target problems clipped to it.

    Args:
      solver: a registered name, a `tf_perturbed.solvers.Solver`, or a callable
        maximising ⟨y, θ⟩; its output must have θ's shape.
      lambda_: λ > 0, the step to the target. Default 10.0.
      num_samples: S ≥ 1 noise draws per call. Default 1.
      sigma: τ ≥ 0, the noise temperature (0: no noise). Default 1.0.
      noise: a registered noise name. Default `"sum_of_gamma"`.
      kappa: κ > 0 of the sum-of-Gamma noise; None (default): the solver's `k` if
        it has one, else 1.
      two_sided: the central difference above. Default False.
      rescale: divide by λ (default True).
      normalize: `"none"` (default, the paper's λ·g) or `"max_abs"`.
      min_perturbed_value: a lower bound of the problems solved (None: the solver's domain).
      solver_kwargs: the solver's hyper-parameters, e.g. `{"k": 3}`.

    Returns:
      `fn(theta, seed=None)`: θ `[..., *event]` ↦ `[..., *event]` in θ's dtype;
      `seed` is an int, a pair or an `int32[2]` tensor, or None for a new random
      seed per call, as for `tf_perturbed.perturbed` (`sigma=0`: no noise, y*(θ)).

    Raises:
      ValueError, TypeError: for bad arguments, naming the argument and the value.

    Example:
      >>> top2 = implicit_mle("top_k", lambda_=1.0, sigma=0.0, solver_kwargs={"k": 2})
      >>> theta = tf.Variable([[1.0, 3.0, 2.0]])
      >>> with tf.GradientTape() as tape:
      ...     loss = tf.reduce_sum(top2(theta) * [[-1.0, 0.0, 1.0]])
      >>> tape.gradient(loss, theta).numpy()
      array([[-1.,  0.,  1.]], dtype=float32)

    References:
      Niepert, Minervini, Franceschi (2021), Implicit MLE: Backpropagating Through
        Discrete Exponential Family Distributions, NeurIPS.
    """
    config = IMLEConfig.create(
        solver, lambda_, num_samples, sigma, noise, kappa, two_sided, rescale, normalize,
        min_perturbed_value, solver_kwargs,
    )

    def fn(theta, seed=None):
        return imle_solution(theta, config, seeds.sanitize_seed(seed))

    fn.config = config
    return fn
