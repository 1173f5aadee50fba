"""The solver registry: names a layer's config can hold, bound to solver functions.

A `Solver` binds a function `theta -> y` to what the estimators need to know
about it: how many trailing axes form one problem (`event_ndims`), whether it
maximises scores or minimises costs, whether XLA can compile it, and the
hyper-parameters (such as `k`) that it is called with.
"""

import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class SolverSpec:
    """How a registered solver is called; see `register_solver`."""

    name: str
    fn: Callable[..., tf.Tensor]
    event_ndims: int = 1
    maximize: bool = True
    jit_compatible: bool = True
    params: Sequence[str] = ()
    output_shape: Optional[Callable[[tuple], tuple]] = None
    linear_output: bool = True
    check_params: Optional[Callable[[dict], dict]] = None
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    perturbation: str = "additive"


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
    def maximize(self) -> bool:
        return self.spec.maximize

    def __call__(self, theta: tf.Tensor) -> tf.Tensor:
        return self.spec.fn(theta, **self.kwargs)

    def output_shape(self, input_shape: tuple) -> tuple:
        if self.spec.output_shape is None:
            return tuple(input_shape)
        return tuple(self.spec.output_shape(tuple(input_shape)))

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


_REGISTRY: dict = {}


def register_solver(
    name: str,
    fn: Callable[..., tf.Tensor],
    *,
    event_ndims: int = 1,
    maximize: bool = True,
    jit_compatible: bool = True,
    params: Sequence[str] = (),
    output_shape: Optional[Callable[[tuple], tuple]] = None,
    linear_output: bool = True,
    check_params: Optional[Callable[[dict], dict]] = None,
    defaults: Optional[Mapping[str, Any]] = None,
    perturbation: str = "additive",
    overwrite: bool = False,
) -> SolverSpec:
    """Registers `fn` under `name` so that layers, losses and configs can use it.

    Args:
      name: the name layers and losses accept, e.g. `"my_solver"`.
      fn: `fn(theta, **params) -> y`, batched over the leading axes of theta.
      event_ndims: how many trailing axes of theta form one problem (1 for a
        vector of scores, 2 for a grid of costs or a matrix of scores).
      maximize: True if `fn` maximises ⟨y, θ⟩ (scores); False if it minimises
        ⟨y, c⟩ (costs, as for shortest paths).
      jit_compatible: False for solvers that XLA cannot compile (host callbacks).
      params: names of the keyword hyper-parameters `fn` requires (e.g. `("k",)`).
      output_shape: maps theta's shape to y's; identity when omitted.
      linear_output: True if y has theta's shape, so ⟨y, θ⟩ (the Fenchel-Young
        loss, the perturbed maximum) is defined.
      check_params: validates the hyper-parameters when a layer or loss is
        built (returns them, possibly converted; raises naming the bad one).
      defaults: optional hyper-parameters and their default values.
      perturbation: the perturbation layers and losses use when none is given
        (`"multiplicative"` keeps positive costs positive).
      overwrite: allow replacing an existing registration.

    Returns:
      The registered `SolverSpec`.

    Raises:
      ValueError: if `name` is taken and `overwrite` is False.
      TypeError: if `fn` is not callable or `name` not a string.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"Expected `name` to be a non-empty string, received: name={name!r}")
    if not callable(fn):
        raise TypeError(f"Expected `fn` to be callable, received: fn={fn!r}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"A solver named {name!r} is already registered; pass overwrite=True to replace it.")
    if isinstance(event_ndims, bool) or not isinstance(event_ndims, int) or event_ndims < 1:
        raise ValueError(
            f"Expected `event_ndims` to be an integer ≥ 1, received: event_ndims={event_ndims!r}"
        )
    spec = SolverSpec(
        name=name,
        fn=fn,
        event_ndims=event_ndims,
        maximize=bool(maximize),
        jit_compatible=bool(jit_compatible),
        params=tuple(params),
        output_shape=output_shape,
        linear_output=bool(linear_output),
        check_params=check_params,
        defaults=dict(defaults or {}),
        perturbation=perturbation,
    )
    _REGISTRY[name] = spec
    return spec


def registered_solvers() -> tuple:
    """The names of all registered solvers, sorted."""
    return tuple(sorted(_REGISTRY))


def get_solver(
    solver: Union[str, Solver, Callable[..., tf.Tensor]],
    solver_kwargs: Optional[Mapping[str, Any]] = None,
    **kwargs,
) -> Solver:
    """Resolves a name, a `Solver` or a plain callable to a bound `Solver`.

    Args:
      solver: a registered name (see `registered_solvers()`), a `Solver`, or a
        callable `theta -> y` maximising ⟨y, θ⟩ over the last axis (such a
        callable works everywhere except in saved configs).
      solver_kwargs: hyper-parameters for the solver, e.g. `{"k": 3}`.
      **kwargs: more hyper-parameters, merged into `solver_kwargs`.

    Raises:
      ValueError: for an unknown name, a missing or unexpected hyper-parameter.
      TypeError: if `solver` is none of the accepted kinds.
    """
    params = dict(solver_kwargs or {})
    params.update(kwargs)
    if isinstance(solver, Solver):
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
        if spec.check_params is not None:
            params = dict(spec.check_params(params))
        return Solver(spec=spec, kwargs=params, registered=True)
    if callable(solver):
        name = getattr(solver, "__name__", type(solver).__name__)
        spec = SolverSpec(name=name, fn=solver)
        return Solver(spec=spec, kwargs=params, registered=False)
    raise TypeError(
        f"Expected `solver` to be a registered name, a `Solver` or a callable, received: solver={solver!r}"
    )
