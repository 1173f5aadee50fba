"""Checks `data.py` against PyEPO itself: run with `.venv-pyepo/bin/python` (see `run_pyepo.py`).

1. Generators: for every seed and degree asked, `pyepo.data.shortestpath.genData` and
   `pyepo.data.knapsack.genData` (dimensions 1 and 2) against ours — features, costs
   and weights must be equal to the bit (same draws of one `RandomState`, same
   float64 operations, same NumPy).
2. Split: scikit-learn's `train_test_split(…, test_size=1000, random_state=seed)`
   against `data.split_indices`, to the bit.
3. Labels: on the `.npz` files both runners read, PyEPO's `optDataset` (Gurobi) solves
   every instance; its optimal values must equal ours (1e-5 relative), and its
   solutions ours except where two solutions have the same value (counted).

Usage:

    .venv-pyepo/bin/python benchmarks/pyepo/check_data.py              # seeds 0-2, all degrees
    .venv-pyepo/bin/python benchmarks/pyepo/check_data.py --quick      # seed 0, degree 4, no labels
"""

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import data  # noqa: E402


def check_generators(seeds, degrees) -> int:
    import pyepo

    failures = 0
    for seed in seeds:
        for deg in degrees:
            for noise in (0.0, data.NOISE_WIDTH):
                theirs = pyepo.data.shortestpath.genData(2000, 5, data.GRID, deg=deg, noise_width=noise, seed=seed)
                ours = data.shortest_path_data(2000, 5, data.GRID, deg, noise, seed)
                failures += _report(f"shortest path deg={deg} noise={noise} seed={seed}", theirs, ours)
                for dim in (1, 2):
                    theirs = pyepo.data.knapsack.genData(2000, 5, 32, dim=dim, deg=deg, noise_width=noise, seed=seed)
                    ours = data.knapsack_data(2000, 5, 32, dim, deg, noise, seed)
                    failures += _report(f"knapsack dim={dim} deg={deg} noise={noise} seed={seed}", theirs, ours)
    return failures


def _report(label, theirs, ours) -> int:
    equal = all(a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b) for a, b in zip(theirs, ours))
    if not equal:
        gaps = [float(np.max(np.abs(np.asarray(a, np.float64) - b))) for a, b in zip(theirs, ours)]
        print(f"DIFFERENT {label}: largest gaps {gaps}")
    return int(not equal)


def check_split(seeds) -> int:
    from sklearn.model_selection import train_test_split

    failures = 0
    for seed in seeds:
        index = np.arange(2000)
        train, test = train_test_split(index, test_size=1000, random_state=seed)
        ours_train, ours_test = data.split_indices(2000, 1000, seed)
        if not (np.array_equal(train, ours_train) and np.array_equal(test, ours_test)):
            print(f"DIFFERENT split seed={seed}")
            failures += 1
    return failures


def check_labels(problems, seeds, degrees) -> int:
    import pyepo

    failures = 0
    for problem in problems:
        for deg in degrees:
            for seed in seeds:
                with np.load(data.load_or_make(problem, deg, seed)) as stored:
                    stored = dict(stored)
                if problem == "sp":
                    model = pyepo.model.grb.shortestPathModel(data.GRID)
                    arcs = np.asarray(model.arcs)
                    if not (np.array_equal(arcs[:, 0], stored["senders"]) and np.array_equal(arcs[:, 1], stored["receivers"])):
                        print("DIFFERENT arcs: PyEPO's grid arcs are not data.grid_arcs")
                        failures += 1
                else:
                    model = pyepo.model.grb.knapsackModel(stored["weights"], stored["capacity"])
                for part in ("train", "test"):
                    dataset = pyepo.data.dataset.optDataset(model, stored[f"x_{part}"], stored[f"c_{part}"])
                    solutions = np.asarray(dataset.sols)
                    values = np.asarray(dataset.objs).reshape(-1)
                    gap = np.max(np.abs(values - stored[f"z_{part}"]) / np.maximum(np.abs(values), 1e-9))
                    differ = int(np.sum(np.any(np.abs(solutions - stored[f"w_{part}"]) > 1e-6, axis=1)))
                    print(
                        f"labels {problem} deg={deg} seed={seed} {part}: optimal values' largest relative gap "
                        f"{gap:.2e}; solutions that differ (equal values) {differ} of {len(values)}"
                    )
                    failures += int(gap > 1e-5)
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", nargs="+", type=int, default=None)
    args = parser.parse_args()
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    degrees = [4] if args.quick else list(data.DEGREES)
    failures = check_generators(seeds, degrees) + check_split(seeds)
    print(f"generators and split: {'equal to the bit' if failures == 0 else f'{failures} differences'}")
    if not args.quick:
        failures += check_labels(["sp", "ks", "ks2"], [0], degrees)
    print("OK" if failures == 0 else f"FAILED: {failures}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
