"""The solver registry: names a layer's config can hold, bound to solver functions.

A `Solver` binds a function `theta -> y` to what the estimators need to know
about it: how many trailing axes of θ form one problem (`event_ndims`) and of y
one solution (`output_ndims`), whether it maximises scores or minimises costs,
whether XLA can compile it, the smallest input it accepts, and the
hyper-parameters (such as `k`) that it is called with. Every call checks that the
solution has θ's batch axes followed by `output_ndims` axes, so that a callable
that returns another shape fails with an error instead of a wrong gradient.
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import tensorflow as tf

from tf_perturbed._src.base import tf_compat, validate

PERTURBATIONS = ("additive", "multiplicative")


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    """How a solver is called; see `register_solver`.

    `output_ndims` is None only for an unregistered callable whose solution axes
    were not declared: they are then read off the first traced solution.

    `domain` is None, or computes `domain_min` from the hyper-parameters (after
    `check_params`) for a solver whose domain depends on them; the registration then
    holds `domain_min=None` and each bound `Solver`'s spec holds its own value.
    """

    name: str
    fn: Callable[..., tf.Tensor]
    event_ndims: int = 1
    output_ndims: Optional[int] = 1
    maximize: bool = True
    jit_compatible: bool = True
    params: Sequence[str] = ()
    output_shape: Optional[Callable[[tuple], tuple]] = None
    check_params: Optional[Callable[[dict], dict]] = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    perturbation: str = "additive"
    domain_min: Optional[float] = None
    domain: Optional[Callable[[dict], Optional[float]]] = None

    @property
    def linear_output(self) -> Optional[bool]:
        """Whether y has θ's shape, so that ⟨y, θ⟩ is defined (None: known once traced)."""
        if self.output_ndims is None:
            return None
        if self.output_ndims != self.event_ndims:
            return False
        if self.output_shape is None:
            return True
        # Two probes with no size in common: a fixed output shape (a solver that always
        # returns 2 numbers, say) can equal one of them, never both.
        probes = (tuple(range(2, 2 + self.event_ndims)), tuple(range(11, 11 + self.event_ndims)))
        return all(tuple(self.output_shape(probe)) == probe for probe in probes)


@dataclasses.dataclass(frozen=True, eq=False)
class Solver:
    """A solver bound to its hyper-parameters: `solver(theta)` returns y*(theta).

    Attributes:
      spec: the registration (or an ad-hoc spec for an unregistered callable).
      kwargs: hyper-parameters passed to `spec.fn`, e.g. `{"k": 3}`.
      registered: whether `spec.name` can be looked up again (needed to save).
    """

    spec: SolverSpec
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    registered: bool = True

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def event_ndims(self) -> int:
        return self.spec.event_ndims

    @property
    def output_ndims(self) -> Optional[int]:
        return self.spec.output_ndims

    @property
    def maximize(self) -> bool:
        return self.spec.maximize

    @property
    def domain_min(self) -> Optional[float]:
        return self.spec.domain_min

    def __call__(self, theta: tf.Tensor) -> tf.Tensor:
        """y*(θ), after checking that y has θ's batch axes and `output_ndims` more."""
        if not self.spec.jit_compatible and tf_compat.in_xla_context():
            raise ValueError(
                f"The solver {self.name!r} is registered with jit_compatible=False (it runs host "
                "code) and cannot be compiled with XLA: use jit_compile=False, or a built-in TF solver."
            )
        theta = tf.convert_to_tensor(theta)
        y = tf.convert_to_tensor(self.spec.fn(theta, **self.kwargs))
        check_solution(self, theta, y)
        return y

    def output_shape(self, input_shape: tuple) -> tuple:
        """The shape of y*(θ) for θ of `input_shape` (traced once for an unregistered callable)."""
        input_shape = tuple(input_shape)
        if self.spec.output_shape is not None:
            return tuple(self.spec.output_shape(input_shape))
        if self.registered:
            return input_shape
        spec = tf.TensorSpec(input_shape, tf.float32)
        traced = tf.function(self.__call__, autograph=False).get_concrete_function(spec)
        return tuple(traced.structured_outputs.shape)

    def config(self) -> dict:
        """`{"solver": name, "solver_kwargs": {...}}`, or an error if unregistered."""
        if not self.registered:
            raise ValueError(
                f"Cannot serialize the unregistered solver {self.spec.fn!r}: a saved "
                "model stores solvers by name. Register it first with "
                "`tf_perturbed.solvers.register_solver('my_solver', fn, ...)` "
                "and pass `solver='my_solver'`."
            )
        return {"solver": self.spec.name, "solver_kwargs": dict(self.kwargs)}


def check_solution(solver: Solver, theta: tf.Tensor, y: tf.Tensor) -> int:
    """The number of solution axes of y = y*(θ), after checking y against θ and the declaration.

    y must have θ's batch axes (all but the last `event_ndims`) followed by
    `output_ndims` axes. Shapes are checked where they are static.

    Raises:
      ValueError: naming `event_ndims` and `output_ndims` when y does not fit them.
    """
    event_ndims, declared = solver.event_ndims, solver.output_ndims
    if theta.shape.rank is None or y.shape.rank is None:
        if declared is None:
            raise ValueError(
                f"The solver {solver.name!r} returned a solution of unknown rank; declare its "
                "solution axes with `output_ndims=`."
            )
        return declared
    batch_rank = theta.shape.rank - event_ndims
    found = y.shape.rank - batch_rank
    fits = found >= 0 and (declared is None or found == declared)
    fits = fits and y.shape[:batch_rank].is_compatible_with(theta.shape[:batch_rank])
    if fits and solver.spec.linear_output:
        fits = y.shape[batch_rank:].is_compatible_with(theta.shape[batch_rank:])
    if not fits:
        wanted = "its own axes" if declared is None else f"{declared} solution axes (output_ndims={declared})"
        raise ValueError(
            f"The solver {solver.name!r} returned y.shape={y.shape} for theta.shape={theta.shape}: "
            f"with event_ndims={event_ndims} (the problem's axes, the last of theta) y must have "
            f"theta's {batch_rank} batch axes {theta.shape[:batch_rank]} followed by {wanted}. "
            "Declare the axes of a callable with `event_ndims=` and `output_ndims=` (for example "
            "output_ndims=0 for one number per problem), or make it keep the batch axes."
        )
    return found


def check_linear(solver: Solver, what: str) -> None:
    """Raises unless the solver's output has its input's shape (⟨y, θ⟩ is defined), as far as declared."""
    if solver.spec.linear_output is False:
        raise ValueError(
            f"{what} needs ⟨y, θ⟩, so the solver's output must have the shape of its "
            f"input; solver {solver.name!r} returns another shape "
            f"(output_ndims={solver.output_ndims}, event_ndims={solver.event_ndims})."
        )


def check_linear_solution(solver: Solver, theta: tf.Tensor, y: tf.Tensor, what: str) -> None:
    """Raises unless y has θ's shape, as ⟨y, θ⟩ needs (for callables, known only once traced)."""
    if not y.shape.is_compatible_with(theta.shape):
        raise ValueError(
            f"{what} needs ⟨y, θ⟩, so the solver's output must have the shape of its input; "
            f"the solver {solver.name!r} returned y.shape={y.shape} for theta.shape={theta.shape}."
        )


_REGISTRY: dict = {}


def output_ndims(output_shape, event_ndims: int) -> int:
    if output_shape is None:
        return event_ndims
    return len(tuple(output_shape(tuple(range(2, 2 + event_ndims)))))


def register_solver(
    name: str,
    fn: Callable[..., tf.Tensor],
    *,
    event_ndims: int = 1,
    output_shape: Optional[Callable[[tuple], tuple]] = None,
    maximize: bool = True,
    jit_compatible: bool = True,
    params: Sequence[str] = (),
    defaults: Optional[Mapping[str, Any]] = None,
    check_params: Optional[Callable[[dict], dict]] = None,
    perturbation: str = "additive",
    domain_min: Optional[float] = None,
    domain: Optional[Callable[[dict], Optional[float]]] = None,
    overwrite: bool = False,
) -> SolverSpec:
    """Registers `fn` under `name` so that layers, losses and configs can use it.

    Args:
      name: the name layers and losses accept, e.g. `"my_solver"`.
      fn: `fn(theta, **params) -> y`, batched over the leading axes of theta.
      event_ndims: how many trailing axes of theta form one problem (1 for a
        vector of scores, 2 for a grid of costs or a matrix of scores).
      output_shape: maps theta's shape to y's (batch axes included); None when y
        has theta's shape. y's number of solution axes follows from it. Only a
        solver whose y has theta's shape has ⟨y, θ⟩, which the Fenchel-Young loss,
        the perturbed maximum and direct loss minimization need.
      maximize: True if `fn` maximises ⟨y, θ⟩ (scores); False if it minimises
        ⟨y, c⟩ (costs, as for shortest paths).
      jit_compatible: False for solvers that XLA cannot compile (host callbacks):
        calling them under `jit_compile=True` raises a clear error.
      params: names of the keyword hyper-parameters `fn` requires (e.g. `("k",)`).
      defaults: optional hyper-parameters and their default values.
      check_params: validates the hyper-parameters when a layer or loss is
        built (returns them, possibly converted; raises naming the bad one).
      perturbation: the perturbation estimators use when none is given
        (`"multiplicative"` keeps positive costs positive).
      domain_min: None, or the smallest input the solver accepts (0.0 for
        non-negative costs): additively perturbed inputs, and the loss-perturbed
        inputs of direct loss minimization, are clipped to it.
      domain: instead of `domain_min`, for a solver whose domain depends on its
        hyper-parameters: `domain(params) -> domain_min` (None or a number), called
        with the checked hyper-parameters each time the solver is bound to them.
      overwrite: allow replacing an existing registration.

    Returns:
      The registered `SolverSpec`.

    Raises:
      ValueError: if `name` is taken and `overwrite` is False, or for a bad argument
        (`domain` together with `domain_min` too).
      TypeError: if `fn` or `domain` is not callable, or `name` not a string.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"Expected `name` to be a non-empty string, received: name={name!r}")
    if not callable(fn):
        raise TypeError(f"Expected `fn` to be callable, received: fn={fn!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"A solver named {name!r} is already registered; pass overwrite=True to replace it.")
    if domain is not None and not callable(domain):
        raise TypeError(f"Expected `domain` to be None or a callable params -> domain_min, received: domain={domain!r}")
    if domain is not None and domain_min is not None:
        raise ValueError(
            "Expected either `domain_min` or `domain` (which computes it from the hyper-parameters), "
            f"received both: domain_min={domain_min!r}, domain={domain!r}"
        )
    event_ndims = validate.integer(event_ndims, "event_ndims")
    spec = SolverSpec(
        name=name,
        fn=fn,
        event_ndims=event_ndims,
        output_ndims=output_ndims(output_shape, event_ndims),
        maximize=validate.boolean(maximize, "maximize"),
        jit_compatible=validate.boolean(jit_compatible, "jit_compatible"),
        params=tuple(params),
        output_shape=output_shape,
        check_params=check_params,
        defaults=dict(defaults or {}),
        perturbation=validate.choice(perturbation, "perturbation", PERTURBATIONS),
        domain_min=validate.optional_real(domain_min, "domain_min"),
        domain=domain,
    )
    _REGISTRY[name] = spec
    return spec


def registered_solvers() -> tuple:
    """The names of all registered solvers, sorted."""
    return tuple(sorted(_REGISTRY))


def get_spec(name: str) -> SolverSpec:
    """The registration of `name` (its axes, direction, domain, hyper-parameters), unbound.

    Raises:
      ValueError: for an unknown name (the message lists the registered ones).
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown solver name: solver={name!r}. Registered solvers: {', '.join(registered_solvers())}"
        )
    return _REGISTRY[name]


def _check_declared_axes(spec: SolverSpec, event_ndims, output_ndims) -> None:
    """A registered solver's axes are fixed: a different declaration is an error."""
    for argument, value, fixed in (
        ("event_ndims", event_ndims, spec.event_ndims),
        ("output_ndims", output_ndims, spec.output_ndims),
    ):
        if value is not None and value != fixed:
            raise ValueError(
                f"The solver {spec.name!r} has {argument}={fixed}; `{argument}` declares the axes "
                f"of a plain callable only, received: {argument}={value!r}"
            )


def _bind(spec: SolverSpec, params: dict) -> Solver:
    """The registered `spec` bound to `params`: checked, and with its domain where it depends on them."""
    if spec.check_params is not None:
        params = dict(spec.check_params(params))
    if spec.domain is not None:
        spec = dataclasses.replace(spec, domain_min=validate.optional_real(spec.domain(params), "domain_min"))
    return Solver(spec=spec, kwargs=params, registered=True)


def get_solver(
    solver: Union[str, Solver, Callable[..., tf.Tensor]],
    solver_kwargs: Optional[Mapping[str, Any]] = None,
    *,
    event_ndims: Optional[int] = None,
    output_ndims: Optional[int] = None,
    **kwargs,
) -> Solver:
    """Resolves a name, a `Solver` or a plain callable to a bound `Solver`.

    Args:
      solver: a registered name (see `registered_solvers()`), a `Solver`, or a
        callable `theta -> y` maximising ⟨y, θ⟩ (such a callable works everywhere
        except in saved configs).
      solver_kwargs: hyper-parameters for the solver, e.g. `{"k": 3}`.
      event_ndims: for a callable, how many trailing axes of theta form one
        problem (default 1).
      output_ndims: for a callable, how many trailing axes of y form one solution
        (default: read off the traced solution, whose leading axes must be theta's
        batch axes); e.g. 0 for `lambda t: tf.reduce_max(t, -1)`.
      **kwargs: more hyper-parameters, merged into `solver_kwargs`.

    Raises:
      ValueError: for an unknown name, a missing or unexpected hyper-parameter,
        or axes declared for a solver that has its own.
      TypeError: if `solver` is none of the accepted kinds.
    """
    params = dict(solver_kwargs or {})
    params.update(kwargs)
    event_ndims = validate.optional_integer(event_ndims, "event_ndims")
    output_ndims = validate.optional_integer(output_ndims, "output_ndims", minimum=0)
    if isinstance(solver, Solver):
        _check_declared_axes(solver.spec, event_ndims, output_ndims)
        if params and solver.spec.domain is not None:  # the domain follows the new hyper-parameters
            return _bind(solver.spec, {**solver.kwargs, **params})
        if params:
            return dataclasses.replace(solver, kwargs={**solver.kwargs, **params})
        return solver
    if isinstance(solver, str):
        if solver not in _REGISTRY:
            raise ValueError(
                f"Unknown solver name: solver={solver!r}. Registered solvers: "
                f"{', '.join(registered_solvers())}; add one with "
                "`tf_perturbed.solvers.register_solver`."
            )
        spec = _REGISTRY[solver]
        _check_declared_axes(spec, event_ndims, output_ndims)
        accepted = list(spec.params) + list(spec.defaults)
        unexpected = sorted(set(params) - set(accepted))
        if unexpected:
            raise ValueError(
                f"Solver {solver!r} takes the hyper-parameters {accepted}, "
                f"received unexpected: {unexpected}"
            )
        params = {**spec.defaults, **params}
        missing = sorted(set(spec.params) - set(params))
        if missing:
            raise ValueError(
                f"Solver {solver!r} needs the hyper-parameters {missing}; pass them as "
                f"keyword arguments (e.g. {missing[0]}=...), received: {params}"
            )
        return _bind(spec, params)
    if callable(solver):
        name = getattr(solver, "__name__", type(solver).__name__)
        spec = SolverSpec(
            name=name, fn=solver, event_ndims=event_ndims or 1, output_ndims=output_ndims
        )
        return Solver(spec=spec, kwargs=params, registered=False)
    raise TypeError(
        f"Expected `solver` to be a registered name, a `Solver` or a callable, received: solver={solver!r}"
    )
