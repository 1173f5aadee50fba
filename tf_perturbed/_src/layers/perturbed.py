"""Perturbed-optimizer layers: the perturbed mean in training, the hard solution at inference."""

from typing import Any, ClassVar, Optional, TypedDict, Union

try:
    from typing import Unpack
except ImportError:  # Python 3.10
    from typing_extensions import Unpack

import keras

from tf_perturbed._src.base import validate
from tf_perturbed._src.estimators.perturbed import config as config_lib
from tf_perturbed._src.estimators.perturbed import jacobian
from tf_perturbed._src.layers.base import INFERENCE_MODES, SolverLayer
from tf_perturbed._src.solvers import registry

_DEFAULTS = config_lib


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedOptimizer(SolverLayer):
    """Any solver as a layer: ŷ_ε(θ) = E[y*(θ + εZ)] in training, y*(θ) at inference.

    Formula:
      training:  ŷ_ε(θ) ≈ (1/M) Σ_m y*(θ + εZ_m), gradient by the Monte-Carlo Jacobian
      inference: y*(θ) (`inference="hard"`) or ŷ_ε(θ) (`inference="perturbed"`)

    Exactly `tf_perturbed.perturbed(solver, …)(θ, seed=s)` in training, s being the
    call's seed (see `SeededLayer`).

    Args:
      solver: a registered solver name (see `tf_perturbed.solvers.registered_solvers()`),
        a `Solver`, or a callable (which works but cannot be saved).
      num_samples: M ≥ 1, noise draws per call. Default 100.
      sigma: ε > 0, the noise scale. Default 1.0.
      noise: `"normal"` (default) or `"gumbel"` (or another registered name).
      perturbation: `"additive"` or `"multiplicative"`; None takes the solver's default.
      control_variate: True (default: the mean of the other M − 1 samples),
        `"hard"` (y*(θ)), `"leave_one_out"` or False; see `tf_perturbed.perturbed`.
      inference: `"hard"` (default) or `"perturbed"`, what the layer returns outside training.
      seed: int or None; each call draws new noise from a `keras.random.SeedGenerator`.
      solver_kwargs: the solver's hyper-parameters, e.g. `{"k": 3}`.
      chunk_size: None or C ≥ 1: solve at most C of the M samples at a time,
        forward and backward, to bound memory (see `tf_perturbed.perturbed`).
      event_ndims, output_ndims: the axes of a callable solver (see `tf_perturbed.perturbed`).

    Input shape: `[..., *event]` (event: `[d]`, or `[H, W]` / `[n, n]` for 2-D solvers).
    Output shape: the solver's (`[..., d]`, or `[..., d, d]` for sort permutations).

    Example:
      >>> layer = PerturbedOptimizer("argmax", num_samples=10, seed=0)
      >>> layer(tf.constant([[1.0, 3.0, 2.0]]), training=True).shape
      TensorShape([1, 3])

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers.
    """

    SOLVER: ClassVar[Optional[str]] = None  # the solver of a subclass bound to one

    def __init__(
        self,
        solver: Union[str, registry.Solver, object],
        *,
        num_samples: int = _DEFAULTS.DEFAULT_NUM_SAMPLES,
        sigma: float = _DEFAULTS.DEFAULT_SIGMA,
        noise: str = _DEFAULTS.DEFAULT_NOISE,
        perturbation: Optional[str] = None,
        control_variate: Union[bool, str] = _DEFAULTS.DEFAULT_CONTROL_VARIATE,
        inference: str = "hard",
        seed: Optional[int] = None,
        solver_kwargs: Optional[dict] = None,
        chunk_size: Optional[int] = None,
        event_ndims: Optional[int] = None,
        output_ndims: Optional[int] = None,
        **kwargs,
    ):
        config = config_lib.PerturbationConfig.create(
            solver, num_samples, sigma, noise, perturbation, control_variate, solver_kwargs, chunk_size,
            event_ndims, output_ndims,
        )
        super().__init__(config, seed=seed, **kwargs)
        self.inference = validate.choice(inference, "inference", INFERENCE_MODES)

    @property
    def control_variate(self):
        """The control variate in use: "leave_one_out", "hard" or None."""
        return self._config.control_variate

    def call(self, inputs, training=None):
        theta = self.float_inputs(inputs)
        if training or self.inference == "perturbed":
            return jacobian.perturbed_mean(theta, self.next_seed(), self._config)
        return jacobian.hard_solution(theta, self._config)

    def arguments(self) -> dict:
        arguments = dict(self._config.arguments(), inference=self.inference)
        if self.SOLVER is not None:  # a subclass bound to one solver takes its hyper-parameters directly
            del arguments["solver"]
            arguments.update(arguments.pop("solver_kwargs"))
        return arguments


class PerturbedArguments(TypedDict, total=False):
    """The keyword arguments of a perturbed layer bound to one solver (see `PerturbedOptimizer`)."""

    num_samples: int
    sigma: float
    noise: str
    perturbation: Optional[str]
    control_variate: Union[bool, str]
    inference: str
    seed: Optional[int]
    chunk_size: Optional[int]
    name: Optional[str]
    dtype: Any
    trainable: bool


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedArgmax(PerturbedOptimizer):
    """Perturbed one-hot argmax: a smooth, trainable `argmax` over the last axis.

    With Gumbel noise its training output is softmax(θ/σ). Input `[..., d]`,
    output `[..., d]`. Arguments as `PerturbedOptimizer`, keyword-only, without `solver`.

    Example:
      >>> PerturbedArgmax(num_samples=10, seed=0)(tf.constant([[1.0, 3.0]]), training=True).shape
      TensorShape([1, 2])
    """

    SOLVER = "argmax"

    def __init__(self, **kwargs: Unpack[PerturbedArguments]):
        super().__init__(self.SOLVER, **kwargs)


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedTopK(PerturbedOptimizer):
    """Perturbed k-hot selection of the k largest scores over the last axis.

    Args:
      k: number of selected entries, 1 ≤ k ≤ d.
      **kwargs: as `PerturbedOptimizer`, keyword-only, without `solver`.

    Input `[..., d]`, output `[..., d]` (entries in [0, 1] summing to k).

    Example:
      >>> PerturbedTopK(k=2, num_samples=10, seed=0)(tf.constant([[1.0, 3.0, 2.0]])).shape
      TensorShape([1, 3])
    """

    SOLVER = "top_k"

    def __init__(self, *, k: int, **kwargs: Unpack[PerturbedArguments]):
        super().__init__(self.SOLVER, solver_kwargs={"k": k}, **kwargs)
        self.k = self.solver.kwargs["k"]

    def build(self, input_shape):
        d = input_shape[-1]
        if d is not None and self.k > d:
            raise ValueError(f"Expected `k` ≤ d = {d} (the input's last axis), received: k={self.k}")
        super().build(input_shape)


@keras.saving.register_keras_serializable(package="tf_perturbed")
class PerturbedRanks(PerturbedOptimizer):
    """Perturbed ascending ranks (0 … d−1) over the last axis: differentiable ranking.

    Input `[..., d]`, output `[..., d]` (expected ranks). Arguments as
    `PerturbedOptimizer`, keyword-only, without `solver`.

    Example:
      >>> PerturbedRanks(num_samples=10, seed=0)(tf.constant([[0.5, -1.0, 2.0]])).numpy()
      array([[1., 0., 2.]], dtype=float32)
    """

    SOLVER = "ranks"

    def __init__(self, **kwargs: Unpack[PerturbedArguments]):
        super().__init__(self.SOLVER, **kwargs)
