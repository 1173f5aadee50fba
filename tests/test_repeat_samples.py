"""`RepeatSamples` / `repeat_samples`: the sample axis put before a layer that draws noise per entry.

Moved from tutorials/sorting_numbers.py, which trains the direct-loss methods on M copies of
each sequence. Checked: the copies equal the example (values, dtype, static shape), the
argument checks, a config round-trip, graph mode and XLA, and the reason for the layer:
`DirectLossGradient(sigma > 0)` after it draws a different noise for each copy, so the M
copies of one example get different solutions and a loss averaged over them.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp
from tf_perturbed._src.layers.samples import RepeatSamples, repeat_samples


def _inputs(shape=(3, 4, 4), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("num_samples", [1, 5])
@pytest.mark.parametrize("shape", [(3, 4), (3, 4, 4)])
def test_every_copy_equals_its_example(num_samples, shape):
    x = _inputs(shape)
    for out in (repeat_samples(x, num_samples), RepeatSamples(num_samples)(x)):
        out = np.asarray(out)
        assert out.shape == (shape[0], num_samples, *shape[1:])
        for m in range(num_samples):
            np.testing.assert_array_equal(out[:, m], x)


def test_compute_output_shape_keeps_unknown_batch_and_dtype():
    layer = RepeatSamples(3, dtype="float64")
    assert layer.compute_output_shape((None, 5, 5)) == (None, 3, 5, 5)
    assert RepeatSamples(3)(tf.zeros((2, 5), tf.float32)).dtype == tf.float32
    assert layer(np.zeros((2, 5))).dtype == tf.float64


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (2.0, TypeError), (True, TypeError)])
def test_rejects_a_bad_num_samples(bad, error):
    with pytest.raises(error, match="num_samples"):
        RepeatSamples(bad)
    with pytest.raises(error, match="num_samples"):
        repeat_samples(np.zeros((2, 3), "float32"), bad)


def test_config_round_trip():
    layer = RepeatSamples(4, name="copies")
    clone = RepeatSamples.from_config(layer.get_config())
    assert (clone.num_samples, clone.name) == (4, "copies")


def test_saved_in_safe_mode_and_exported(tmp_path):
    # The layer's share of the layer contract (it has no solver and no seed): a model with it
    # loads from its `.keras` file in safe mode and serves from a SavedModel, same outputs.
    inputs = keras.Input((4,))
    model = keras.Model(inputs, RepeatSamples(3)(keras.layers.Dense(2)(inputs)))
    x = _inputs((5, 4))
    expected = model.predict(x, verbose=0)
    assert expected.shape == (5, 3, 2)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), expected)
    model.export(str(tmp_path / "exported"), verbose=False)
    exported = tf.saved_model.load(str(tmp_path / "exported"))  # kept: its variables live as long as it does
    served = exported.serve(tf.constant(x))
    np.testing.assert_allclose(np.asarray(served), expected, rtol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_graph_and_xla_equal_eager(jit_compile):
    x = _inputs()
    layer = RepeatSamples(3)
    compiled = tf.function(lambda t: layer(t), jit_compile=jit_compile)
    np.testing.assert_array_equal(compiled(tf.constant(x)).numpy(), layer(x).numpy())


def test_copies_draw_independent_noise_in_a_direct_layer():
    """Before `DirectLossGradient(sigma=1)`, the 8 copies of one example do not all solve alike.

    With Gumbel noise of scale 1 on 6 scores within about ±0.3 of each other, each copy's
    argmax is any of the 6 with probability at most e^0.6/6 < 0.31, so 8 equal argmaxes in
    one example have probability below 0.31^7 < 4e-4 if the noises are independent; were the
    noise shared by the copies, every example would have one distinct argmax.
    """
    theta = 0.1 * _inputs((4, 6))
    layer = tp.DirectLossGradient("argmax", sigma=1.0, seed=0)
    out = layer(RepeatSamples(8)(theta), training=True).numpy()  # [4, 8, 6] one-hot
    assert out.shape == (4, 8, 6)
    np.testing.assert_array_equal(out.sum(-1), 1.0)
    distinct = [len({int(np.argmax(row)) for row in out[b]}) for b in range(4)]
    assert min(distinct) >= 2, distinct
