"""Checks every tf_perturbed layer and loss must pass (DESIGN.md §5), reusable per layer."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf


def config_round_trip(layer):
    """from_config(get_config()) rebuilds an equal config; the config is plain JSON."""
    config = layer.get_config()
    json.dumps(config)  # no callables, no tensors
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    return clone


def serialize_round_trip(obj):
    """keras.saving.serialize/deserialize through the registered name."""
    data = keras.saving.serialize_keras_object(obj)
    json.dumps(data)
    clone = keras.saving.deserialize_keras_object(data)
    assert type(clone) is type(obj)
    assert clone.get_config() == obj.get_config()
    return clone


def modes_agree(fn, *inputs, rtol=1e-4, atol=1e-5):
    """fn gives the same result eagerly, in a tf.function and under XLA.

    XLA and the TF kernels draw the same philox bits but round `ndtri`, `log`
    and `exp` differently (measured: up to 2e-5 on standard normals), so
    gradients, which scale the noise, agree to about 1e-5 relative, not exactly.
    """
    eager = fn(*inputs)
    graph = tf.function(fn)(*inputs)
    xla = tf.function(fn, jit_compile=True)(*inputs)
    np.testing.assert_allclose(np.asarray(graph), np.asarray(eager), rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.asarray(xla), np.asarray(eager), rtol=rtol, atol=atol)
    return np.asarray(eager)


def keras_file_round_trip(model, x, tmp_path, safe_mode=True):
    """`.keras` save/load gives a model with the same inference output."""
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=safe_mode)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    return loaded


_SERVE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    x = np.load(sys.argv[2])
    loaded = tf.saved_model.load(sys.argv[1])
    y = loaded.serve(tf.constant(x))
    assert "tf_perturbed" not in sys.modules, "the SavedModel must not need tf_perturbed"
    np.save(sys.argv[3], np.asarray(y))
    """
)


def export_and_serve_in_fresh_process(model, x, tmp_path):
    """`model.export` then `tf.saved_model.load(...).serve` in a process without tf_perturbed."""
    export_dir = os.path.join(str(tmp_path), "exported")
    model.export(export_dir, verbose=False)
    x_path = os.path.join(str(tmp_path), "x.npy")
    y_path = os.path.join(str(tmp_path), "y.npy")
    np.save(x_path, x)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_SCRIPT, export_dir, x_path, y_path],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(y_path)
    np.testing.assert_allclose(served, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    return served


def fit_lowers_loss(model, x, y, loss, epochs=8, jit_compile=True, learning_rate=0.05, batch_size=32):
    """model.fit lowers the training loss (first epoch vs last epoch)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, jit_compile=jit_compile)
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    return losses
