"""tf_perturbed: trainable discrete decisions for Keras 3 and TensorFlow.

Perturbed optimizers, Fenchel-Young losses and direct loss minimization turn
argmax, top-k, ranking, shortest paths and matchings into Keras layers and
losses that train with `model.fit`, compile with XLA and export to SavedModel.
"""

from tf_perturbed import distribute, noise, seeds, solvers
from tf_perturbed._src.estimators.direct import direct_categorical_gradient, direct_loss_gradient
from tf_perturbed._src.estimators.fenchel_young import fenchel_young_loss
from tf_perturbed._src.estimators.imle import implicit_mle
from tf_perturbed._src.estimators.perturbed.api import perturbed, perturbed_max
from tf_perturbed._src.estimators.spo_plus import spo_plus_loss
from tf_perturbed._src.layers.direct import DirectLossGradient
from tf_perturbed._src.layers.imle import ImplicitMLE
from tf_perturbed._src.layers.noise_scale import LearnedNoiseScale
from tf_perturbed._src.layers.perturbed import (
    PerturbedArgmax,
    PerturbedOptimizer,
    PerturbedRanks,
    PerturbedTopK,
)
from tf_perturbed._src.layers.samples import RepeatSamples, repeat_samples
from tf_perturbed._src.layers.structured import PerturbedMatching, PerturbedShortestPath
from tf_perturbed._src.losses import FenchelYoungLoss, SPOPlusLoss
from tf_perturbed._src.solvers import builtin as _builtin  # noqa: F401  (registers the solvers)

__version__ = "0.1.0"

__all__ = [
    "DirectLossGradient",
    "FenchelYoungLoss",
    "ImplicitMLE",
    "LearnedNoiseScale",
    "PerturbedArgmax",
    "PerturbedMatching",
    "PerturbedOptimizer",
    "PerturbedRanks",
    "PerturbedShortestPath",
    "PerturbedTopK",
    "RepeatSamples",
    "SPOPlusLoss",
    "__version__",
    "direct_categorical_gradient",
    "direct_loss_gradient",
    "distribute",
    "fenchel_young_loss",
    "implicit_mle",
    "noise",
    "perturbed",
    "perturbed_max",
    "repeat_samples",
    "seeds",
    "solvers",
    "spo_plus_loss",
]
