"""Stateless seeds: an int, None or an int32[2] tensor, split and salted per use.

Every random draw in tf_perturbed is a `tf.random.stateless_*` call with an
explicit `int32[2]` seed, so the same seed gives the same noise in eager mode,
in graphs and under XLA. Layers own a `keras.random.SeedGenerator` and draw a
new seed per call; under `tf.distribute` the replica id is folded in so that
replicas draw different noise while the run stays reproducible.
"""

import numbers
from typing import Optional, Union

import numpy as np
import tensorflow as tf

SeedLike = Optional[Union[int, tf.Tensor, np.ndarray, tuple, list]]

_INT32_MAX = np.iinfo(np.int32).max


def sanitize_seed(seed: SeedLike, name: str = "seed") -> tf.Tensor:
    """Converts `seed` to an `int32[2]` stateless seed.

    Args:
      seed: an int (≥ 0), a pair of ints or an `int32[2]`/`int64[2]`/`uint32[2]`
        tensor, or None for a fresh random seed (not reproducible).
      name: the argument's name in error messages.

    Returns:
      An `int32[2]` tensor.

    Raises:
      TypeError, ValueError: for anything else, naming `name` and the value.
    """
    if seed is None:
        # Unseeded: draw from TF's global generator once, then stay stateless.
        return tf.random.uniform([2], minval=0, maxval=_INT32_MAX, dtype=tf.int32)
    if isinstance(seed, bool):
        raise TypeError(
            f"Expected `{name}` to be an int, None or an int32[2] tensor, received: {name}={seed!r}"
        )
    if isinstance(seed, numbers.Integral):
        if seed < 0:
            raise ValueError(f"Expected `{name}` ≥ 0, received: {name}={seed!r}")
        return tf.constant([int(seed) % (_INT32_MAX + 1), int(seed) >> 31], dtype=tf.int32)
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise TypeError(f"Expected `{name}` of an integer dtype, received: {name}.dtype={seed.dtype.name}")
    if seed.shape.rank is not None and seed.shape.as_list() != [2]:
        raise ValueError(f"Expected `{name}` of shape [2], received: {name}.shape={seed.shape}")
    if seed.dtype != tf.int32:
        # Keep the low 31 bits of each word so that uint32/int64 seeds map to valid int32s.
        seed = tf.cast(tf.math.floormod(tf.cast(seed, tf.int64), _INT32_MAX + 1), tf.int32)
    return seed


def fold_in(seed: tf.Tensor, salt) -> tf.Tensor:
    """A new `int32[2]` seed from `seed` and an integer `salt` (a use, a replica)."""
    salt = tf.cast(salt, tf.int32)
    mixed = tf.stack([seed[0], tf.bitwise.bitwise_xor(seed[1], salt)])
    return tf.random.experimental.stateless_split(mixed, num=1, alg="philox")[0]


def split(seed: tf.Tensor, num: int = 2) -> tf.Tensor:
    """`num` independent `int32[2]` seeds from `seed`, as an `int32[num, 2]` tensor."""
    return tf.random.experimental.stateless_split(seed, num=num, alg="philox")


def replica_id() -> tf.Tensor:
    """The replica id in sync group under `tf.distribute` (0 outside it)."""
    context = tf.distribute.get_replica_context()
    if context is None:  # cross-replica context
        return tf.constant(0, tf.int32)
    return tf.cast(context.replica_id_in_sync_group, tf.int32)


def per_replica(seed: tf.Tensor) -> tf.Tensor:
    """Folds the replica id into `seed`; the identity outside `tf.distribute`."""
    if not tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context():
        return seed
    if tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return seed
    return fold_in(seed, replica_id())


def next_seed(generator) -> tf.Tensor:
    """A fresh `int32[2]` seed from a `keras.random.SeedGenerator`, distinct per replica.

    What every layer and loss of the package calls once per call: the k-th call of
    an object seeded with s uses `per_replica(sanitize_seed(g.next()))` for the k-th
    `next()` of `keras.random.SeedGenerator(s)`.
    """
    return per_replica(sanitize_seed(tf.convert_to_tensor(generator.next())))


STATE_KEY = "seed_generator_state"  # the generator's state among an object's saved variables


def save_state(generator, store) -> None:
    """Adds a `keras.random.SeedGenerator`'s state to a Keras weights store.

    Keras saves a layer's own weights only, not its generators' states (nor a loss's),
    so an object restored from a `.keras` file, `save_weights` or `BackupAndRestore`
    would draw its first call's noise again. The layers and losses of the package save
    the state with their weights, so a restored object continues where it stopped, as
    one loaded from the SavedModel of `model.export` does.
    """
    store[STATE_KEY] = generator.state


def load_state(generator, store):
    """Restores what `save_state` saved; returns the rest of the store, as a dict.

    A store without the state (a file of tf_perturbed 0.1) leaves the generator as it is.
    """
    names = list(store.keys())
    if STATE_KEY in names:
        generator.state.assign(np.asarray(store[STATE_KEY]))
    return {name: store[name] for name in names if name != STATE_KEY}
