"""Argument and input checks, and the dtype rule, for every module of the package.

Each check returns the value in its canonical form or raises an error that names
the argument and the value received ("Expected …, received: name=value"):
constructor arguments raise `TypeError`/`ValueError` at once, tensors are checked
on their static shape and dtype when the op is built.
"""

import math
import numbers
from typing import Optional, Sequence

import tensorflow as tf

HALF_DTYPES = (tf.float16, tf.bfloat16)


def integer(value, name: str, minimum: int = 1) -> int:
    """`value` as an int ≥ `minimum`, or raises naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected `{name}` to be an integer ≥ {minimum}, received: {name}={value!r}")
    if value < minimum:
        raise ValueError(f"Expected `{name}` to be an integer ≥ {minimum}, received: {name}={value!r}")
    return int(value)


def optional_integer(value, name: str, minimum: int = 1) -> Optional[int]:
    """None, or `integer(value, name, minimum)`."""
    return None if value is None else integer(value, name, minimum)


def real(
    value,
    name: str,
    *,
    above: Optional[float] = None,
    at_least: Optional[float] = None,
    nonzero: bool = False,
) -> float:
    """`value` as a finite float, > `above`, ≥ `at_least` and ≠ 0 as asked, or raises naming `name`.

    Example: `real(sigma, "sigma", above=0.0)` accepts 0.5 and rejects 0, −1, nan, inf
    and "big" (TypeError for a non-number, ValueError otherwise).
    """
    conditions = []
    if above is not None:
        conditions.append(f"> {above:g}")
    if at_least is not None:
        conditions.append(f"≥ {at_least:g}")
    if nonzero:
        conditions.append("≠ 0")
    wanted = " and ".join(conditions + ["finite"])
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected `{name}` to be a number {wanted}, received: {name}={value!r}")
    ok = math.isfinite(value)
    ok = ok and (above is None or value > above)
    ok = ok and (at_least is None or value >= at_least)
    ok = ok and not (nonzero and value == 0)
    if not ok:
        raise ValueError(f"Expected `{name}` {wanted}, received: {name}={value!r}")
    return float(value)


def optional_real(value, name: str, **conditions) -> Optional[float]:
    """None, or `real(value, name, **conditions)`."""
    return None if value is None else real(value, name, **conditions)


def choice(value, name: str, choices: Sequence):
    """`value` if it is one of `choices`, or raises a ValueError listing them."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"Expected `{name}` in {tuple(choices)}, received: {name}={value!r}")
    return value


def boolean(value, name: str) -> bool:
    """`value` if it is a bool, or raises a TypeError naming `name`."""
    if not isinstance(value, bool):
        raise TypeError(f"Expected `{name}` to be a bool, received: {name}={value!r}")
    return value


_LAYER_SEED_LIMIT = 2**63  # a `keras.random.SeedGenerator` keeps its state in int64


def layer_seed(seed) -> Optional[int]:
    """Layers and losses take an int in [0, 2⁶³) or None (a config holds plain values)."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < _LAYER_SEED_LIMIT:
        raise ValueError(f"Expected `seed` to be an int in [0, 2**63) or None, received: seed={seed!r}")
    return int(seed)


# ----------------------------------------------------------------------------- dtypes


def compute_dtype(dtype: tf.DType) -> tf.DType:
    """The dtype estimators and solvers compute in: float32 for half precision, else `dtype`.

    Noise, solvers and Monte-Carlo sums in float16/bfloat16 would lose whole samples
    (a float16 sum stops growing at 2048); results are cast back to the input's dtype.
    """
    dtype = tf.as_dtype(dtype)
    return tf.float32 if dtype in HALF_DTYPES else dtype


def as_dtype(value, dtype: tf.DType) -> tf.Tensor:
    """A number or tensor in `dtype`: a tensor is cast, a Python number converted directly.

    `tf.cast(0.8, tf.float64)` first makes a float32 tensor and so rounds 0.8 to
    0.800000011920929; `tf.constant(0.8, tf.float64)` keeps float64's 0.8.
    """
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return tf.cast(value, dtype)
    return tf.constant(value, dtype)


def output_float_dtype(dtype: tf.DType) -> tf.DType:
    """The float dtype a solver returns for inputs of `dtype` (float32 for integers)."""
    return dtype if dtype.is_floating else tf.float32


# ----------------------------------------------------------------------------- tensors


def _check_axes(tensor: tf.Tensor, name: str, event_ndims: int, what: str) -> None:
    rank = tensor.shape.rank
    if rank is not None and rank < event_ndims:
        raise ValueError(
            f"Expected `{name}` of rank ≥ {event_ndims}{what} (batch axes, then the problem's "
            f"axes), received: {name}.shape={tensor.shape}"
        )
    if rank is not None and any(size == 0 for size in tensor.shape[rank - event_ndims :]):
        raise ValueError(
            f"Expected `{name}` with non-empty problem axes (the last {event_ndims}), "
            f"received: {name}.shape={tensor.shape}"
        )


def theta(value, event_ndims: int, solver_name: Optional[str] = None, name: str = "theta") -> tf.Tensor:
    """Scores (or costs) for an estimator: a float tensor with `event_ndims` non-empty trailing axes."""
    value = tf.convert_to_tensor(value)
    if not value.dtype.is_floating:
        raise TypeError(f"Expected `{name}` of a float dtype, received: {name}.dtype={value.dtype.name}")
    what = "" if solver_name is None else f" for solver {solver_name!r}"
    if value.shape.rank is None:
        raise ValueError(f"Expected `{name}` of a known rank{what}, received: {name}.shape={value.shape}")
    _check_axes(value, name, event_ndims, what)
    return value


def scores(value, name: str, min_rank: int):
    """Scores for a solver: float or integer, `min_rank` non-empty trailing axes.

    Returns `(scores, output_dtype)`: scores in float32 when given half precision or
    integers (solvers compare in at least float32), output_dtype the input's own float
    dtype (float32 for integers).
    """
    value = tf.convert_to_tensor(value)
    if not (value.dtype.is_floating or value.dtype.is_integer):
        raise TypeError(
            f"Expected `{name}` of a float or integer dtype, received: {name}.dtype={value.dtype.name}"
        )
    _check_axes(value, name, min_rank, "")
    dtype = output_float_dtype(value.dtype)
    if value.dtype in HALF_DTYPES or value.dtype.is_integer:
        value = tf.cast(value, tf.float32)
    return value, dtype


def float_inputs(inputs, dtype: tf.DType, name: str = "inputs") -> tf.Tensor:
    """A layer's scores as a float tensor: integers are cast to `dtype` (the compute dtype).

    Keras casts float inputs to the compute dtype itself and leaves integers alone;
    without this, a layer would return integers at inference and reject them in
    training. Anything neither float nor integer (bool, complex, string) raises.
    """
    inputs = tf.convert_to_tensor(inputs)
    if inputs.dtype.is_floating:
        return inputs
    if inputs.dtype.is_integer:
        return tf.cast(inputs, dtype)
    raise TypeError(
        f"Expected `{name}` of a float or integer dtype, received: {name}.dtype={inputs.dtype.name}"
    )
