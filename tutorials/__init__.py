"""Runnable examples of tf_perturbed: the papers' experiments at laptop scale.

Each tutorial is a module of this package, run from the repository root:

    python -m tutorials.warcraft --quick --methods fenchel_young
    python -m tutorials.label_ranking --quick

and also importable (`from tutorials import warcraft_model`), so that its pieces can be
read, reused and tested. Every tutorial exposes `main(argv=None) -> dict` and shares the
command line and the metrics.json layout of `tutorials.shared`. Pages: docs/tutorials/index.md.
"""

import os

# Before TensorFlow is imported by any tutorial module: quiet C++ logs, the TF backend.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
