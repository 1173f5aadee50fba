"""The hyper-parameters of a perturbed op, their defaults, and their checks.

One set of defaults serves the ops (`perturbed`, `perturbed_max`,
`fenchel_young_loss`), the layers and the losses:

- `num_samples` M = 100. The perturbed mean of M samples has a standard error of at
  most 0.5/√M = 0.05 per coordinate of a 0/1 solution, and its Monte-Carlo
  Jacobian's error falls like 1/√M, while the cost grows like M (one batched solve
  of M·B problems). Training averages over many steps, so M = 10–100 is the usual
  range (the Fenchel-Young gradient ŷ_ε − y is unbiased at any M: M = 1 trains
  too, Berthet et al. §5); estimates read once, outside training, want more.
- `sigma` ε = 1.0, relative to scores of order 1 (for multiplicative noise, a
  relative scale of the costs).
- `noise` = "normal", whose ∇ν(z) = z makes the Jacobian the best-conditioned.
- `control_variate` = True: the leave-one-out baseline (below).
"""

import dataclasses
from typing import Optional

from tf_perturbed._src.base import noise as noise_lib
from tf_perturbed._src.base import validate
from tf_perturbed._src.solvers import registry

DEFAULT_NUM_SAMPLES = 100
DEFAULT_SIGMA = 1.0
DEFAULT_NOISE = "normal"
DEFAULT_CONTROL_VARIATE = True

PERTURBATIONS = registry.PERTURBATIONS
CONTROL_VARIATES = ("leave_one_out", "hard")

CONTROL_VARIATE_DOC = """control_variate: a baseline b subtracted from each sample in the Monte-Carlo
        Jacobian, E[(y*(θ + εZ) − b) ∇ν(Z)ᵀ]/ε: unbiased (b does not depend on that
        sample's noise) and of lower variance. True (default): the mean of the
        other M − 1 samples ("leave_one_out", no extra solve) when M ≥ 2, y*(θ)
        when M = 1; "hard": y*(θ) (one more solve of the B unperturbed problems,
        best when ε is small next to the gaps between scores); False: none."""


def check_control_variate(control_variate, num_samples: int) -> Optional[str]:
    """Resolves `control_variate` to None, "hard" or "leave_one_out" (see CONTROL_VARIATE_DOC)."""
    if control_variate is True:
        return "leave_one_out" if num_samples >= 2 else "hard"
    if control_variate is False or control_variate is None:
        return None
    validate.choice(control_variate, "control_variate", (True, False) + CONTROL_VARIATES)
    if control_variate == "leave_one_out" and num_samples < 2:
        raise ValueError(
            "The leave-one-out control variate needs num_samples ≥ 2, received: "
            f"num_samples={num_samples}"
        )
    return control_variate


@dataclasses.dataclass(frozen=True)
class PerturbationConfig:
    """The hyper-parameters of a perturbed op, checked once at construction.

    Attributes:
      solver: the bound solver.
      num_samples: M ≥ 1.
      sigma: ε > 0.
      noise: a `Noise` instance.
      perturbation: "additive" (θ + εZ) or "multiplicative" (θ ⊙ exp(εZ − ε²/2)).
      control_variate: None, "leave_one_out" or "hard" (resolved).
      chunk_size: None, or solve at most this many samples at a time.
    """

    solver: registry.Solver
    num_samples: int
    sigma: float
    noise: noise_lib.Noise
    perturbation: str
    control_variate: Optional[str]
    chunk_size: Optional[int] = None

    @classmethod
    def create(
        cls,
        solver,
        num_samples=DEFAULT_NUM_SAMPLES,
        sigma=DEFAULT_SIGMA,
        noise=DEFAULT_NOISE,
        perturbation=None,
        control_variate=DEFAULT_CONTROL_VARIATE,
        solver_kwargs=None,
        chunk_size=None,
        event_ndims=None,
        output_ndims=None,
    ) -> "PerturbationConfig":
        num_samples = validate.integer(num_samples, "num_samples")
        solver = registry.get_solver(solver, solver_kwargs, event_ndims=event_ndims, output_ndims=output_ndims)
        if perturbation is None:
            perturbation = solver.spec.perturbation
        return cls(
            solver=solver,
            num_samples=num_samples,
            sigma=validate.real(sigma, "sigma", above=0.0),
            noise=noise_lib.check_density(noise_lib.get_noise(noise), "A perturbed op (its Jacobian)"),
            perturbation=validate.choice(perturbation, "perturbation", PERTURBATIONS),
            control_variate=check_control_variate(control_variate, num_samples),
            chunk_size=validate.optional_integer(chunk_size, "chunk_size"),
        )

    def check_linear(self, what: str) -> None:
        """Raises unless the solver's output has its input's shape (⟨y, θ⟩ is defined)."""
        registry.check_linear(self.solver, what)

    def arguments(self) -> dict:
        """The constructor arguments that rebuild this config (for Keras `get_config`)."""
        return dict(
            **self.solver.config(),
            num_samples=self.num_samples,
            sigma=self.sigma,
            noise=noise_lib.noise_name(self.noise),
            perturbation=self.perturbation,
            control_variate=self.control_variate or False,
            chunk_size=self.chunk_size,
        )
