"""The ops' seeds (same seed, same noise; new calls, new noise) and errors that name the argument.

Layers and losses keep the same promises, checked by tests/test_layer_contract.py.
"""

import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp

THETA = tf.constant(np.random.default_rng(0).normal(size=(4, 8)), tf.float32)


@pytest.mark.parametrize("seed", [0, 7, 2**40, (3, 4), np.array([1, 2], np.int64), tf.constant([5, 6])])
def test_seed_forms_are_accepted_and_reproducible(seed):
    op = tp.perturbed("ranks", num_samples=5, sigma=1.0, seed=seed)
    np.testing.assert_array_equal(op(THETA).numpy(), op(THETA).numpy())
    s = tp.seeds.sanitize_seed(seed)
    assert s.dtype == tf.int32 and s.shape == (2,)


def test_different_seeds_give_different_noise():
    a = tp.perturbed("ranks", num_samples=5, sigma=1.0, seed=0)(THETA).numpy()
    b = tp.perturbed("ranks", num_samples=5, sigma=1.0, seed=1)(THETA).numpy()
    assert not np.array_equal(a, b)


def test_unseeded_calls_differ():
    op = tp.perturbed("ranks", num_samples=5, sigma=1.0)
    assert not np.array_equal(op(THETA).numpy(), op(THETA).numpy())


def test_fold_in_and_split_give_distinct_seeds():
    base = tp.seeds.sanitize_seed(0)
    folded = [tuple(tp.seeds.fold_in(base, i).numpy()) for i in range(4)]
    assert len(set(folded)) == 4
    assert len({tuple(s) for s in tp.seeds.split(base, 3).numpy()}) == 3


BAD_ARGUMENTS = [
    (dict(num_samples=0), ValueError, "num_samples=0"),
    (dict(num_samples=2.5), TypeError, "num_samples=2.5"),
    (dict(num_samples=True), TypeError, "num_samples=True"),
    (dict(sigma=0.0), ValueError, "sigma=0.0"),
    (dict(sigma=-1), ValueError, "sigma=-1"),
    (dict(sigma=float("nan")), ValueError, "sigma=nan"),
    (dict(sigma="big"), TypeError, "sigma='big'"),
    (dict(noise="cauchy"), ValueError, "noise='cauchy'"),
    (dict(noise=3), TypeError, "noise=3"),
    (dict(perturbation="both"), ValueError, "perturbation='both'"),
    (dict(control_variate="mean"), ValueError, "control_variate='mean'"),
    (dict(num_samples=1, control_variate="leave_one_out"), ValueError, "num_samples=1"),
    (dict(chunk_size=0), ValueError, "chunk_size=0"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_ARGUMENTS)
def test_bad_arguments_name_argument_and_value(kwargs, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        tp.perturbed("argmax", **kwargs)
    with pytest.raises(error, match=message.replace("(", r"\(").replace(".", r"\.")):
        tp.perturbed_max("argmax", **kwargs)


def test_unknown_solver_lists_the_registered_ones():
    with pytest.raises(ValueError, match="solver='simplex'.*argmax"):
        tp.perturbed("simplex")
    with pytest.raises(TypeError, match="solver=3"):
        tp.perturbed(3)


def test_bad_call_inputs():
    with pytest.raises(ValueError, match="theta"):
        tp.perturbed("argmax", num_samples=2)(tf.constant(1.0))
    with pytest.raises(TypeError, match="theta.dtype=int32"):
        tp.perturbed("argmax", num_samples=2)(tf.constant([1, 2]))
    with pytest.raises(ValueError, match=r"y_true.shape=\(2, 3\)"):
        tp.fenchel_young_loss(tf.zeros([2, 3]), tf.zeros([2, 4]), "argmax", num_samples=2)
    with pytest.raises(ValueError, match="y_true"):
        tp.FenchelYoungLoss("ranks", num_samples=2)(tf.zeros([2, 3]), tf.zeros([2, 4]))
    with pytest.raises(ValueError, match="output must have the shape"):
        tp.perturbed_max("sort_permutation", num_samples=2)
    with pytest.raises(ValueError, match="seed.shape"):
        tp.perturbed("argmax", seed=tf.constant([1, 2, 3]))
    with pytest.raises(ValueError, match="seed=-3"):
        tp.perturbed("argmax", seed=-3)
