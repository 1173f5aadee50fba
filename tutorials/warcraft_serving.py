"""Warcraft shortest paths, serving: export image → path as a SavedModel and serve it.

`build_path_model` puts `tf_perturbed.PerturbedShortestPath` after the cost network (at
inference it solves the costs without noise); `export_and_serve` exports it with
`model.export`, then a fresh Python process that imports only TensorFlow and NumPy loads it
and returns the paths of a few test maps, which are checked against the in-process model.
"""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np

import tf_perturbed

# Run by a fresh Python process: it imports TensorFlow and NumPy only (not tf_perturbed, not
# Keras), loads the SavedModel and asks it for the paths of the images in an .npz file.
SERVE_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf

export_dir, images_path, out_path = sys.argv[1:4]
model = tf.saved_model.load(export_dir)
images = np.load(images_path)["images"]  # uint8 [N, S, S, 3]
paths = model.serve(tf.constant(images, tf.float32)).numpy()  # hard 0/1 masks [N, g, g]
assert "tf_perturbed" not in sys.modules, "serving must not need tf_perturbed"
np.save(out_path, paths)
print("fresh process: path of test map 0 from the SavedModel (# = on the path)")
for row in paths[0]:
    print("  " + " ".join("#" if v > 0.5 else "." for v in row))
"""


def build_path_model(cost_model: keras.Model) -> keras.Model:
    """Images `[B, S, S, 3]` (0–255) → hard shortest-path masks `[B, g, g]` at inference.

    `tf_perturbed.PerturbedShortestPath` returns the unperturbed solver's path when called
    with `training=False`, which is what `model.export` traces.
    """
    path = tf_perturbed.PerturbedShortestPath(num_samples=1, sigma=0.1, name="shortest_path")
    return keras.Model(cost_model.input, path(cost_model.output), name="warcraft_paths")


def export_and_serve(cost_model: keras.Model, images: np.ndarray, export_dir: pathlib.Path) -> dict:
    """Exports image → path as a SavedModel, reloads it in a fresh process and asks for paths.

    Returns a dict with the export folder, the number of maps served and whether the served
    paths `[N, g, g]` equal those of the in-process model.
    """
    path_model = build_path_model(cost_model)
    expected = path_model.predict(images.astype(np.float32), verbose=0)  # [N, g, g]
    path_model.export(str(export_dir), format="tf_saved_model", verbose=False)
    images_path, out_path = export_dir / "serve_images.npz", export_dir / "served_paths.npy"
    np.savez(images_path, images=images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, str(export_dir), str(images_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout, end="")
    if result.returncode != 0:
        raise RuntimeError(f"Expected the fresh serving process to succeed, received:\n{result.stderr[-2000:]}")
    served = np.load(out_path)
    agree = bool(np.array_equal(served, expected))
    print(f"served paths equal the in-process model's: {agree} ({len(images)} test maps)")
    return {"export_dir": export_dir, "served_maps": len(images), "served_equal_in_process": agree}


