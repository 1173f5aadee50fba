"""Test set-up: keep Keras's files out of the home folder and TF quiet."""

import os
import pathlib
import tempfile

os.environ.setdefault("KERAS_HOME", str(pathlib.Path(tempfile.gettempdir()) / "tf_perturbed_keras_home"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
