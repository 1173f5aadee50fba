"""Direct loss minimization: the hard solution forward, a loss-perturbed solve backward.

The forward pass returns y₀ = y*(θ). Given the upstream gradient g = ∂L/∂y at
y₀, the backward pass solves once more at θ + ε·g and returns (y_ε − y₀)/ε, a
finite difference of the perturbed maximizer along g (Hazan et al. 2010;
Lorberbom et al. 2019; Indelman et al.). No derivative of the solver is used.
"""

import dataclasses
from typing import Callable, Optional, Union

import tensorflow as tf

from tf_perturbed._src.base import noise as noise_lib
from tf_perturbed._src.base import validate
from tf_perturbed._src.estimators.first_order import first_order_only
from tf_perturbed._src.solvers import registry

NORMALIZATIONS = ("max_abs", "none")


@dataclasses.dataclass(frozen=True)
class DirectLossConfig:
    """The hyper-parameters of the direct estimator, checked once at construction.

    Attributes:
      solver: the bound solver; its output must have its input's shape.
      epsilon: ε ≠ 0, the step of the loss-perturbed solve.
      normalize: "max_abs" or "none".
      epsilon_growth: None or a factor > 1 (the escape from zero gradients).
      max_growth_steps: bound on the escape's retries.
      min_perturbed_value: lower bound of the problems handed to the solver
        (None: the solver's `domain_min`, e.g. 0 for shortest paths).
      sigma: σ ≥ 0, noise added to θ in training (0: none, Hazan et al.).
      noise: the noise of σγ.
      method: the estimator's name in error messages ("Direct loss minimization", or
        "Implicit MLE" for the config inside an `IMLEConfig`).
    """

    solver: registry.Solver
    epsilon: float
    normalize: str = "max_abs"
    epsilon_growth: Optional[float] = None
    max_growth_steps: int = 30
    min_perturbed_value: Optional[float] = None
    sigma: float = 0.0
    noise: noise_lib.Noise = dataclasses.field(default_factory=lambda: noise_lib.get_noise("gumbel"))
    method: str = "Direct loss minimization"

    @classmethod
    def create(
        cls,
        solver,
        epsilon,
        normalize="max_abs",
        epsilon_growth=None,
        max_growth_steps=30,
        solver_kwargs=None,
        min_perturbed_value=None,
        sigma=0.0,
        noise="gumbel",
        *,
        method="Direct loss minimization",
    ) -> "DirectLossConfig":
        solver = registry.get_solver(solver, solver_kwargs)
        if solver.spec.linear_output is False:
            raise ValueError(
                f"{method} solves again with the scores moved along ∂L/∂y, so the solver's output must "
                f"have the shape of its input; received: solver={solver.name!r}, whose output has "
                "another shape (for permutation matrices, use a solver on score matrices such as "
                "'assignment')."
            )
        return cls(
            solver=solver,
            epsilon=validate.real(epsilon, "epsilon", nonzero=True),
            normalize=validate.choice(normalize, "normalize", NORMALIZATIONS),
            epsilon_growth=validate.optional_real(epsilon_growth, "epsilon_growth", above=1.0),
            max_growth_steps=validate.integer(max_growth_steps, "max_growth_steps"),
            min_perturbed_value=validate.optional_real(min_perturbed_value, "min_perturbed_value"),
            sigma=validate.real(sigma, "sigma", at_least=0.0),
            noise=noise_lib.get_noise(noise),
            method=method,
        )

    @property
    def lower_bound(self) -> Optional[float]:
        """The bound the problems handed to the solver are clipped to, if any."""
        if self.min_perturbed_value is not None:
            return self.min_perturbed_value
        return self.solver.domain_min

    def arguments(self) -> dict:
        """The constructor arguments that rebuild this config (for Keras `get_config`)."""
        return dict(
            **self.solver.config(),
            epsilon=self.epsilon,
            normalize=self.normalize,
            epsilon_growth=self.epsilon_growth,
            max_growth_steps=self.max_growth_steps,
            min_perturbed_value=self.min_perturbed_value,
            sigma=self.sigma,
            noise=noise_lib.noise_name(self.noise),
        )


def _event_axes(config: DirectLossConfig) -> list:
    return list(range(-config.solver.event_ndims, 0))


def solve_in_domain(config: DirectLossConfig, theta: tf.Tensor) -> tf.Tensor:
    """y*(max(θ, bound)) in θ's dtype: the problem clipped to the solver's domain."""
    bound = config.lower_bound
    if bound is not None:
        bound = tf.constant(bound, theta.dtype)
        theta = tf.where(theta <= bound, bound, theta)  # NaN stays, for the solver to reject
    y = config.solver(theta)
    registry.check_linear_solution(config.solver, theta, y, config.method)
    return tf.cast(y, theta.dtype)


def loss_perturbed_gradient(
    theta: tf.Tensor, y0: tf.Tensor, g: tf.Tensor, config: DirectLossConfig, epsilon=None
) -> tf.Tensor:
    """The direct estimate of ∂L/∂θ from y₀ = y*(θ) and the upstream gradient g.

    Formula (s = +1 for a maximising solver, −1 for a minimising one on costs):
      a = max_i |g_i| per problem (`normalize="max_abs"`) or 1 (`"none"`)
      y_ε = y*(θ + s·ε·g/a),     ∂L/∂θ ≈ s·a·(y_ε − y₀)/ε
    With `epsilon_growth`, problems where y_ε = y₀ while g ≠ 0 retry with
    |ε| multiplied by the factor, at most `max_growth_steps` times. With
    a lower bound m (`min_perturbed_value`, or the solver's `domain_min`), the
    loss-perturbed problem is max(θ + s·ε·g/a, m).

    Args:
      theta: `[*batch, *event]` scores (or costs), already in the compute dtype.
      y0: `[*batch, *event]`, y*(θ) in theta's dtype.
      g: `[*batch, *event]`, the upstream gradient at y₀.
      config: a `DirectLossConfig`.
      epsilon: None (use `config.epsilon`) or a scalar tensor ε ≠ 0 that replaces it.

    Returns:
      `[*batch, *event]`, the gradient estimate in theta's dtype.
    """
    axes = _event_axes(config)
    sign = 1.0 if config.solver.maximize else -1.0
    g = tf.cast(g, theta.dtype)
    active = tf.reduce_any(tf.not_equal(g, 0), axis=axes, keepdims=True)  # [*batch, 1…]
    if config.normalize == "max_abs":
        scale = tf.reduce_max(tf.abs(g), axis=axes, keepdims=True)  # [*batch, 1…]
    else:
        scale = tf.ones_like(tf.reduce_sum(g, axis=axes, keepdims=True))  # [*batch, 1…]
    direction = tf.math.divide_no_nan(g, scale)  # [*batch, *event]; 0 where g = 0
    epsilon = validate.as_dtype(config.epsilon if epsilon is None else epsilon, theta.dtype)
    epsilon = tf.fill(tf.shape(scale), epsilon)  # [*batch, 1…]

    def solve_perturbed(epsilon):
        return solve_in_domain(config, theta + sign * epsilon * direction)  # [*batch, *event]

    y_eps = solve_perturbed(epsilon)

    if config.epsilon_growth is not None:
        growth = tf.constant(config.epsilon_growth, theta.dtype)

        def stuck(y):  # [*batch, 1…]: the loss-perturbed solution did not move
            same = tf.reduce_all(tf.equal(y, y0), axis=axes, keepdims=True)
            return tf.logical_and(same, active)

        def cond(epsilon, y):
            return tf.reduce_any(stuck(y))

        def body(epsilon, y):
            retry = stuck(y)
            epsilon = tf.where(retry, epsilon * growth, epsilon)
            y_new = solve_perturbed(epsilon)
            return epsilon, tf.where(retry, y_new, y)

        epsilon, y_eps = tf.while_loop(
            cond, body, (epsilon, y_eps), maximum_iterations=config.max_growth_steps
        )
    estimate = sign * scale * (y_eps - y0) / epsilon  # [*batch, *event]
    return tf.where(active, estimate, tf.zeros_like(estimate))  # g = 0: exactly 0, whatever the solver


def prepare_theta(theta, config: DirectLossConfig):
    """(θ checked and cast to the compute dtype, θ's own dtype)."""
    theta = validate.theta(theta, config.solver.event_ndims, config.solver.name)
    return tf.cast(theta, validate.compute_dtype(theta.dtype)), theta.dtype


def direct_solution(theta: tf.Tensor, config: DirectLossConfig, seed: Optional[tf.Tensor] = None) -> tf.Tensor:
    """y₀ = y*(θ [+ σγ]) in θ's dtype, with the direct loss-perturbed estimate as its gradient.

    Args:
      theta: `[*batch, *event]`, any float dtype (half precision runs in float32).
      config: a `DirectLossConfig`.
      seed: None (no noise: y*(θ)), or an `int32[2]` seed for the noise σγ when σ > 0.
    """
    theta, out_dtype = prepare_theta(theta, config)
    if seed is not None and config.sigma > 0:
        theta = noise_lib.add_scaled_noise(theta, config.sigma, seed, config.noise)

    @tf.custom_gradient
    def _op(theta_in):
        theta = tf.stop_gradient(theta_in)
        y0 = solve_in_domain(config, theta)

        def grad(g):
            guard = first_order_only(theta_in, "the direct loss-minimization estimator")
            return loss_perturbed_gradient(theta, y0, g, config) + guard

        return y0, grad

    return tf.cast(_op(theta), out_dtype)


def direct_loss_gradient(
    solver: Union[str, registry.Solver, Callable[..., tf.Tensor]],
    epsilon: float = -1.0,
    *,
    normalize: str = "max_abs",
    epsilon_growth: Optional[float] = None,
    max_growth_steps: int = 30,
    min_perturbed_value: Optional[float] = None,
    solver_kwargs: Optional[dict] = None,
) -> Callable[[tf.Tensor], tf.Tensor]:
    """Turns a solver into θ ↦ y*(θ) whose gradient is the direct loss-perturbed estimate.

    Formula:
      forward:   y₀ = y*(θ)
      backward:  given g = ∂L/∂y at y₀ (per problem; a = max_i |g_i|),
                 y_ε = y*(θ + ε·g/a),   ∂L/∂θ ≈ a·(y_ε − y₀)/ε
      minimising solvers (costs c, `Solver.maximize` False):
                 y_ε = argmin⟨c − ε·g/a, y⟩,   ∂L/∂c ≈ −a·(y_ε − y₀)/ε
      This is the maximising rule applied to θ = −c. It is the black-box
      gradient of Vlastelica et al., (y_λ − y₀)/λ with y_λ = argmin⟨c + λ·g, y⟩,
      for ε = −λ·a (or ε = −λ with `normalize="none"`).

    What ε means. Dividing g by its largest entry a and multiplying the result
    back by a is the same estimator with an adaptive step ε/a; it makes ε the
    largest change made to any score (or cost) of the problem, whatever the
    batch size B and the loss reduction (a batch-mean loss scales every
    example's g by 1/B, a mean over the entries by 1/d, mixed-precision loss
    scaling by its factor). g = 0 gives a zero gradient. `normalize="none"`
    uses the raw step ε·g instead.
    Translating a raw λ of Vlastelica et al.: their Warcraft Hamming loss,
    Σ_vertices mean_batch |y − y_true|, has g = ±1/B per vertex, so their
    perturbation moves each cost by λ/B; here ε = −λ/B. Their λ = 20 at
    B = 70 over 12×12 maps is ε = −20/70 ≈ −0.286, for any Keras reduction.

    Signs. ε > 0 ("away") solves a loss-augmented problem (y_ε has a higher
    loss); ε < 0 ("towards-best") one whose solution has a lower loss. Both
    estimate the gradient of the expected loss, with an O(ε) bias when noise is
    added to θ (Lorberbom et al., Indelman et al.); ε < 0 tends to work better
    in structured problems (Indelman et al.).

    Escape. When y_ε = y₀ while g ≠ 0 the estimate is zero. With
    `epsilon_growth=γ` such problems retry with |ε|·γ, |ε|·γ², … inside the
    graph (a bounded `tf.while_loop`, XLA-compatible), at most
    `max_growth_steps` times; each problem keeps the first step that moves its
    solution. Off by default: it biases the estimator. The criterion is g ≠ 0,
    not a positive loss (the op sees only g): with losses whose gradient is
    non-zero at a perfect prediction (Hamming, MSE), a problem that is already
    best under the loss uses all the retries when ε < 0 (its gradient stays
    zero, as it should), so keep `max_growth_steps` small with costly solvers.

    Bounded domains. A solver registered with a domain (`domain_min`, e.g. costs
    ≥ 0 for `"shortest_path"`) is given max(c − ε·g/a, 0): the loss-perturbed
    costs dip below 0 once |ε| (or a grown ε) exceeds a cost, and are clipped, as
    the perturbed ops, layers and losses clip theirs. `min_perturbed_value=m`
    sets another bound (any solver).

    Args:
      solver: a registered name (`"argmax"`, `"top_k"`, `"ranks"`,
        `"shortest_path"`, …), a `tf_perturbed.solvers.Solver`, or a callable
        maximising ⟨y, θ⟩. Its output must have θ's shape.
      epsilon: ε ≠ 0. Default −1.0 (towards-best).
      normalize: `"max_abs"` (default, see above) or `"none"`.
      epsilon_growth: None (default) or a factor > 1, e.g. 1.1.
      max_growth_steps: bound on the retries, ≥ 1. Default 30.
      min_perturbed_value: None (default: the solver's domain, if it has one) or
        a lower bound applied to the scores/costs before they are solved.
      solver_kwargs: the solver's hyper-parameters, e.g. `{"k": 3}`.

    Returns:
      `fn(theta)`: θ `[..., *event]` ↦ y*(θ) `[..., *event]` in θ's dtype, with
      the estimate above as its gradient (the solver runs in float32 for
      float16/bfloat16 inputs).

    Raises:
      ValueError, TypeError: for bad arguments (ε = 0, epsilon_growth ≤ 1, a
        solver whose output shape differs from its input's), naming the
        argument and the value.

    Example:
      >>> argmax = direct_loss_gradient("argmax", epsilon=-0.5)
      >>> theta = tf.Variable([[1.0, 0.8, -1.0]])
      >>> with tf.GradientTape() as tape:
      ...     loss = tf.reduce_sum(argmax(theta) * [[1.0, 0.0, 0.5]])
      >>> tape.gradient(loss, theta).numpy()
      array([[ 2., -2.,  0.]], dtype=float32)

    References:
      Hazan, Keshet, McAllester (2010), Direct loss minimization for structured prediction.
      Lorberbom, Gane, Jaakkola, Hazan (2019), Direct Optimization through argmax for
        Discrete Variational Auto-Encoder.
      Indelman et al., Learning Randomly Perturbed Structured Predictors for Direct Loss
        Minimization.
      Vlastelica et al. (2020), Differentiation of Blackbox Combinatorial Solvers.
    """
    config = DirectLossConfig.create(
        solver, epsilon, normalize, epsilon_growth, max_growth_steps, solver_kwargs, min_perturbed_value
    )

    def fn(theta):
        return direct_solution(theta, config)

    fn.config = config
    return fn


def direct_categorical_gradient(
    theta: tf.Tensor,
    gumbel: tf.Tensor,
    loss_per_category: tf.Tensor,
    epsilon,
    *,
    normalize: str = "none",
    epsilon_growth: Optional[float] = None,
    max_growth_steps: int = 30,
) -> tf.Tensor:
    """Direct gradient for categorical latents with an explicit loss per category.

    Formula:
      z₀ = one_hot(argmax_k(θ + γ)),   z_ε = one_hot(argmax_k(θ + γ + ε·ℓ))
      ∇θ E_γ[ℓ(z₀)] ≈ (z_ε − z₀)/ε
      where ℓ[..., j, k] is the loss when variable j takes category k (e.g. a
      decoder evaluated with each of the K categories, the others kept at z₀).

    Signs. ℓ is a loss (to minimise) and the result is a gradient to descend.
    Lorberbom et al. write the rule for a log-likelihood f = −ℓ with a positive
    step, argmax(θ + γ + ε'·f): that is ε = −ε' < 0 here ("towards-best").
    ε > 0 (argmax of the loss-augmented scores) estimates the same gradient.
    The bias is O(ε); the limit ε → 0 is unbiased.

    To train an encoder with it, descend on a surrogate whose gradient it is:
    `tf.reduce_sum(tf.stop_gradient(grad) * theta)`.

    Args:
      theta: `[..., n, K]` scores of n categorical variables with K categories.
      gumbel: noise of theta's shape, the draw that produced z₀ (zero-mode
        Gumbel gives z₀ ~ softmax(θ)).
      loss_per_category: `[..., n, K]`, the loss for each category.
      epsilon: ε ≠ 0, a number or a scalar float tensor (e.g. an annealed ε in a
        compiled training step; a tensor ε = 0 or non-finite raises at run time
        outside XLA).
      normalize: `"none"` (default: ε multiplies ℓ as is) or `"max_abs"` (ε
        relative to max_k |ℓ| per variable, and the result scaled back).
      epsilon_growth, max_growth_steps: the escape of `direct_loss_gradient`.

    Returns:
      `[..., n, K]`, the estimate of ∂E[ℓ]/∂θ (no gradient flows through it).

    Raises:
      ValueError, TypeError: for bad arguments, naming the argument and value.

    Example:
      >>> theta = tf.zeros([2, 3, 4])
      >>> gumbel = tp.noise.get_noise("gumbel").sample([2, 3, 4], tf.constant([0, 1]))
      >>> loss = tf.random.stateless_uniform([2, 3, 4], seed=[1, 2])
      >>> direct_categorical_gradient(theta, gumbel, loss, epsilon=-1.0).shape
      TensorShape([2, 3, 4])

    References:
      Lorberbom, Gane, Jaakkola, Hazan (2019), Direct Optimization through argmax for
        Discrete Variational Auto-Encoder, Theorem 1.
    """
    epsilon_tensor = None
    if isinstance(epsilon, (tf.Tensor, tf.Variable)):
        epsilon_tensor = _check_epsilon_tensor(epsilon)
        epsilon = 1.0  # replaced by the tensor in `loss_perturbed_gradient`
    config = DirectLossConfig.create("argmax", epsilon, normalize, epsilon_growth, max_growth_steps)
    theta, out_dtype = prepare_theta(theta, config)
    theta_pert = theta + tf.cast(gumbel, theta.dtype)  # [..., n, K]
    loss_per_category = tf.cast(loss_per_category, theta.dtype)
    if not loss_per_category.shape.is_compatible_with(theta_pert.shape):
        raise ValueError(
            "Expected `loss_per_category` of theta's shape [..., n, K], received: "
            f"loss_per_category.shape={loss_per_category.shape}, theta.shape={theta.shape}"
        )
    theta_pert = tf.stop_gradient(theta_pert)
    z0 = solve_in_domain(config, theta_pert)
    grad = loss_perturbed_gradient(
        theta_pert, z0, tf.stop_gradient(loss_per_category), config, epsilon_tensor
    )
    return tf.cast(grad, out_dtype)


def _check_epsilon_tensor(epsilon) -> tf.Tensor:
    """A scalar float tensor ε, asserted ≠ 0 and finite when the graph runs (not under XLA)."""
    if not epsilon.dtype.is_floating or epsilon.shape.rank != 0:
        raise ValueError(
            "Expected a tensor `epsilon` to be a float scalar, received: "
            f"epsilon.dtype={epsilon.dtype.name}, epsilon.shape={epsilon.shape}"
        )
    epsilon = tf.convert_to_tensor(epsilon)
    valid = tf.logical_and(tf.not_equal(epsilon, 0), tf.math.is_finite(epsilon))
    check = tf.debugging.Assert(valid, ["Expected `epsilon` ≠ 0 and finite, received: epsilon =", epsilon])
    with tf.control_dependencies([check]):
        return tf.identity(epsilon)
