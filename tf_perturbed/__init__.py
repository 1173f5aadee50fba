"""tf_perturbed: trainable discrete decisions for Keras 3 and TensorFlow."""

from tf_perturbed import solvers
from tf_perturbed._src.solvers import builtin as _builtin  # noqa: F401  (registers solvers)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "solvers",
]
