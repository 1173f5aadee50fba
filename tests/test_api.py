"""The public API: exported names are pinned, and the README's example runs."""

import pathlib
import re

import numpy as np

import tf_perturbed as tp

PUBLIC = {
    "DirectLossGradient",
    "FenchelYoungLoss",
    "ImplicitMLE",
    "LearnedNoiseScale",
    "PerturbedArgmax",
    "PerturbedMatching",
    "PerturbedOptimizer",
    "PerturbedRanks",
    "PerturbedShortestPath",
    "PerturbedTopK",
    "RepeatSamples",
    "SPOPlusLoss",
    "__version__",
    "direct_categorical_gradient",
    "direct_loss_gradient",
    "distribute",
    "fenchel_young_loss",
    "implicit_mle",
    "noise",
    "perturbed",
    "perturbed_max",
    "repeat_samples",
    "seeds",
    "solvers",
    "spo_plus_loss",
}

SOLVERS = {
    "Solver",
    "SolverSpec",
    "argmax",
    "assignment",
    "get_solver",
    "get_spec",
    "graph_shortest_path",
    "grid_graph_edges",
    "knapsack",
    "milp",
    "numpy_solver",
    "ranks",
    "register_solver",
    "registered_solvers",
    "shortest_path",
    "sort_permutation",
    "top_k",
}

NOISE = {
    "Gumbel",
    "Logistic",
    "Noise",
    "Normal",
    "SumOfGamma",
    "ZeroMeanGumbel",
    "get_noise",
    "register_noise",
    "registered_noises",
    "stateless_gamma",
    "uniform_from_bits",
    "uniform_open",
}

DISTRIBUTE = {"TESTED_KERAS", "is_patched", "patch_keras_fit", "unpatch_keras_fit", "worker_backup_dir"}


def test_exported_names_are_pinned():
    assert set(tp.__all__) == PUBLIC
    assert set(tp.solvers.__all__) == SOLVERS
    assert set(tp.distribute.__all__) == DISTRIBUTE
    assert set(tp.noise.__all__) == NOISE
    for name in tp.__all__:
        assert hasattr(tp, name), name
    for name in tp.solvers.__all__:
        assert hasattr(tp.solvers, name), name


def test_registered_solvers_and_noises():
    assert set(tp.solvers.registered_solvers()) >= {
        "argmax", "top_k", "ranks", "sort_permutation", "shortest_path", "assignment", "knapsack",
        "graph_shortest_path",
    }
    assert set(tp.noise.registered_noises()) >= {"normal", "gumbel"}
    assert not tp.solvers.get_solver("shortest_path").maximize


def test_readme_example_runs_and_learns():
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    # The ranking model learned: a random ranking of 10 labels gets each rank
    # right with probability 0.1; the trained one gets about half of them.
    predicted = namespace["ranking"].predict(namespace["x"][:200], verbose=0)
    assert np.mean(predicted == namespace["y"][:200]) > 0.3
