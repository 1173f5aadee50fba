"""Argument checks shared by the solvers (no Keras, no noise)."""

import numbers

import tensorflow as tf


def positive_int(value, name: str) -> int:
    """Returns `value` as an int ≥ 1, or raises an error naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected `{name}` to be an integer ≥ 1, received: {name}={value!r}")
    if value < 1:
        raise ValueError(f"Expected `{name}` to be an integer ≥ 1, received: {name}={value!r}")
    return int(value)


def float_dtype(dtype: tf.DType) -> tf.DType:
    """The float dtype a solver returns for inputs of `dtype`."""
    return dtype if dtype.is_floating else tf.float32


def scores(theta, name: str, min_rank: int):
    """Converts `theta` to a tensor the solvers can work on.

    Returns `(theta, output_dtype)`: theta is float32 when given half precision or
    integers (the solvers compare in at least float32), output_dtype is theta's
    own float dtype (float32 for integer input).
    """
    theta = tf.convert_to_tensor(theta)
    if not (theta.dtype.is_floating or theta.dtype.is_integer):
        raise TypeError(
            f"Expected `{name}` of a float or integer dtype, received: {name}.dtype={theta.dtype.name}"
        )
    rank = theta.shape.rank
    if rank is not None and rank < min_rank:
        raise ValueError(
            f"Expected `{name}` of rank ≥ {min_rank} (batch axes then the problem's axes), "
            f"received: {name}.shape={theta.shape}"
        )
    if rank is not None and any(size == 0 for size in theta.shape[rank - min_rank :]):
        raise ValueError(
            f"Expected `{name}` with non-empty problem axes, received: {name}.shape={theta.shape}"
        )
    dtype = float_dtype(theta.dtype)
    if theta.dtype in (tf.float16, tf.bfloat16) or theta.dtype.is_integer:
        theta = tf.cast(theta, tf.float32)
    return theta, dtype


def nan_rows(theta: tf.Tensor, y: tf.Tensor, extra_ndims: int = 0) -> tf.Tensor:
    """y with the solution of every problem whose scores hold a NaN set to NaN.

    A NaN score has no place in an order, and argmax, top-k and sorts each treat
    it differently (XLA and the TF kernels differ too), so the solvers mark such
    problems as NaN instead of returning a vertex that silently depends on it.

    Args:
      theta: scores `[..., d]` (integer scores hold no NaN and are returned as is).
      y: solutions `[..., d, (extra axes)]` of a float dtype.
      extra_ndims: trailing axes of y beyond theta's last (1 for permutation matrices).
    """
    if not theta.dtype.is_floating:
        return y
    bad = tf.reduce_any(tf.math.is_nan(theta), axis=-1)  # [...]
    bad = tf.reshape(bad, tf.concat([tf.shape(bad), tf.ones([1 + extra_ndims], tf.int32)], 0))  # [..., 1(, 1)]
    return tf.where(bad, tf.constant(float("nan"), y.dtype), y)
