"""Serving: one model with every layer and loss head is exported with `model.export`
and answers through `tf.saved_model.load` in a fresh process that does not import
tf_perturbed, and through `saved_model_cli run`. (`.keras` files with `safe_mode=True`:
tests/test_hostile_input.py, and per layer tests/test_layers.py and
tests/test_structured_layers.py.)

At inference the layers return the hard solution y*(θ) by default, so the served
outputs must equal the model's own inference output (up to 1e-6). A layer built with
`inference="perturbed"` keeps drawing noise when served: its SeedGenerator state is
a variable of the SavedModel, so two loads of the same export give the same first
answer, and successive calls give new noise.

Runtime on 2 shared cores: about 35 s of CPU time (two fresh processes: one
loading the SavedModels, one `saved_model_cli`).
"""

import os
import subprocess
import sys
import textwrap

import keras
import layer_harness as harness
import numpy as np

import tf_perturbed as tp

_SERVE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    hard_dir, soft_dir, inputs_path, out_path = sys.argv[1:5]
    inputs = dict(np.load(inputs_path))
    hard = tf.saved_model.load(hard_dir)
    served = {k: np.asarray(v) for k, v in hard.serve({k: tf.constant(v) for k, v in inputs.items()}).items()}
    # Two independent loads of the perturbed-inference export, called twice each.
    x = tf.constant(inputs["vec"])
    first, second = tf.saved_model.load(soft_dir), tf.saved_model.load(soft_dir)
    served["soft_a1"] = np.asarray(first.serve(x))
    served["soft_a2"] = np.asarray(first.serve(x))
    served["soft_b1"] = np.asarray(second.serve(x))
    assert "tf_perturbed" not in sys.modules, "the SavedModel must not need tf_perturbed"
    np.savez(out_path, **served)
    """
)


def _soft_model():
    inputs = keras.Input((harness.ALL_D,), name="vec")
    scores = keras.layers.Dense(harness.ALL_D)(inputs)
    return keras.Model(inputs, tp.PerturbedArgmax(num_samples=50, sigma=1.0, inference="perturbed", seed=0)(scores))


def test_every_layer_exports_and_serves_without_tf_perturbed(tmp_path):
    keras.utils.set_random_seed(0)
    model, _ = harness.all_layers_model(num_samples=4, sigma=0.5, seed=0)
    x, _ = harness.all_layers_data(8)
    expected = {name: value.numpy() for name, value in model(x, training=False).items()}

    # SavedModel in a fresh process, without tf_perturbed
    hard_dir, soft_dir = str(tmp_path / "hard"), str(tmp_path / "soft")
    model.export(hard_dir, verbose=False)
    soft = _soft_model()
    soft.export(soft_dir, verbose=False)
    inputs_path, out_path = str(tmp_path / "inputs.npz"), str(tmp_path / "served.npz")
    np.savez(inputs_path, **x)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_SCRIPT, hard_dir, soft_dir, inputs_path, out_path],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = dict(np.load(out_path))
    for name in harness.ALL_HEADS:
        np.testing.assert_allclose(served[name], expected[name], rtol=1e-6, atol=1e-6, err_msg=name)

    # perturbed inference: a mean of one-hots, reproducible per load, new noise per call
    for key in ("soft_a1", "soft_a2", "soft_b1"):
        y = served[key]
        assert np.all((y >= 0) & (y <= 1)), key
        np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(served["soft_a1"], served["soft_b1"])
    assert not np.array_equal(served["soft_a1"], served["soft_a2"])

    # saved_model_cli, the command-line client
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    paths = {}
    for name, value in x.items():
        paths[name] = str(tmp_path / f"{name}.npy")
        np.save(paths[name], value)
    out_dir = tmp_path / "cli"
    result = subprocess.run(
        [cli, "run", "--dir", hard_dir, "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", ";".join(f"{name}={path}" for name, path in paths.items()),
         "--outdir", str(out_dir), "--overwrite"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for name in harness.ALL_HEADS:
        np.testing.assert_allclose(np.load(out_dir / f"{name}.npy"), expected[name], rtol=1e-6, atol=1e-6)
