"""The base of every tf_perturbed layer: a seed and its generator, float inputs, config from arguments."""

from typing import Optional

import keras
import tensorflow as tf

from tf_perturbed._src.base import seeds, validate
from tf_perturbed._src.solvers import registry

INFERENCE_MODES = ("hard", "perturbed")


class SeededLayer(keras.layers.Layer):
    """A Keras layer that draws a new stateless seed per call from a seed it was given.

    Subclasses keep their maths in an op of `tf_perturbed._src.estimators` and list
    their constructor arguments in `arguments()`, from which `get_config` is built.

    Args:
      seed: int in [0, 2⁶³) or None. The layer owns a `keras.random.SeedGenerator`
        seeded with it; each call that draws noise takes the generator's next seed,
        with the replica id folded in under `tf.distribute`.
      **kwargs: the base Keras layer's arguments (`name`, `dtype`, …).
    """

    def __init__(self, *, seed: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = validate.layer_seed(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def next_seed(self) -> tf.Tensor:
        """A fresh `int32[2]` seed for this call, distinct per replica under tf.distribute."""
        return seeds.next_seed(self.seed_generator)

    def float_inputs(self, inputs, name: str = "inputs") -> tf.Tensor:
        """Inputs as floats: integers cast to the compute dtype, other dtypes rejected."""
        return validate.float_inputs(inputs, self.compute_dtype, name)

    def arguments(self) -> dict:
        """The constructor arguments of the subclass (besides `seed` and Keras's own)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(self.arguments(), seed=self.seed)
        return config

    def save_own_variables(self, store) -> None:
        """The layer's weights and its seed generator's state (see `seeds.save_state`)."""
        super().save_own_variables(store)
        seeds.save_state(self.seed_generator, store)

    def load_own_variables(self, store) -> None:
        super().load_own_variables(seeds.load_state(self.seed_generator, store))


class SolverLayer(SeededLayer):
    """A seeded layer around one solver, its hyper-parameters held in the checked config its op takes.

    The config (`PerturbationConfig`, `DirectLossConfig`, `IMLEConfig`) has the bound
    `solver` and the `arguments()` that rebuild it; the layer's output has the
    solver's output shape.

    Args:
      config: the checked config.
      seed, **kwargs: as `SeededLayer`.
    """

    def __init__(self, config, *, seed: Optional[int] = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self._config = config

    @property
    def solver(self) -> registry.Solver:
        """The bound solver: `layer.solver(theta)` is the hard solution."""
        return self._config.solver

    @property
    def config(self):
        """The checked hyper-parameters, as the op takes them."""
        return self._config

    def compute_output_shape(self, input_shape):
        return self.solver.output_shape(tuple(input_shape))

    def arguments(self) -> dict:
        return self._config.arguments()
