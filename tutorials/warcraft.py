"""Warcraft shortest paths: learn terrain costs from map images through a shortest-path solver.

Berthet et al. (2020, §5.3, App. C.3) on the setup of Vlastelica et al. (2019): a network reads
a 96×96 image of a 12×12 grid of terrain tiles and outputs one positive cost per vertex; its
prediction is the shortest path (top-left to bottom-right, 8-neighbour moves) under those
costs. This module is the command line; the pieces are in

  warcraft_data      the generated maps (or the original .npy files with `--original-dir`);
  warcraft_model     the cost network and the methods (`build_method`);
  warcraft_training  augmentation, the learning-rate schedule, `run_method` and the metrics;
  warcraft_serving   the SavedModel export and the fresh-process serving.

Each method in `--methods` is trained with `model.fit` and scored on the test split; the
first one with a solver is exported (image → path) and served from a fresh process (`--no-export` skips
it). Outputs in `--output-dir`: metrics.json, curves.png, paths_<method>.png, the SavedModel,
and the generated maps cached under data/warcraft/ (`--data-dir`).

Run from the repository root:

    python -m tutorials.warcraft --quick --methods fenchel_young   # the demo
    python -m tutorials.warcraft --quick                            # three methods
    python -m tutorials.warcraft --methods fenchel_young            # 10,000 maps, 12 epochs

Results and timings: docs/tutorials/warcraft.md.
"""

import argparse
import pathlib
from typing import List, Optional

from tutorials import shared, warcraft_data
from tutorials.warcraft_model import DEFAULT_METHODS, MASK_METHODS, METHODS, REDUCTIONS
from tutorials.warcraft_serving import export_and_serve
from tutorials.warcraft_training import plot_training, run_method

# Both presets depart from the paper's protocol (50 epochs of 70 at 5e-4) where the validation
# split said so (docs/notes/2026-12-04-tutorials-history.md): a 4× learning rate, batches of 35,
# M = 10 noise draws, augmentation; the long run stops after 12 epochs (16 did worse) and
# halves ε.
FULL = {
    "num_train": 10000, "num_val": 1000, "num_test": 1000, "epochs": 12, "learning_rate": 2e-3,
    "batch_size": 35, "num_samples": 10, "sigma": 0.05, "augment": True,
    "imle_sigma": 0.1, "imle_noise": "gumbel", "imle_samples": 1, "imle_normalize": 1,
}  # fmt: skip
QUICK = {**FULL, "num_train": 1400, "num_val": 200, "num_test": 200, "epochs": 5, "sigma": 0.1}


def _add_arguments(parser) -> None:
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="cache of generated maps (default OUTPUT_DIR/data/warcraft)",
    )
    parser.add_argument(
        "--original-dir", type=pathlib.Path, default=None, help="the original {split}_maps.npy, …"
    )
    parser.add_argument("--grid-size", type=int, default=12, help="vertices per side: 12, 18, 24 or 30")
    parser.add_argument("--num-train", type=int, default=None, help="default 10,000 (1,400 with --quick)")
    parser.add_argument("--num-val", type=int, default=None, help="default 1,000 (200 with --quick)")
    parser.add_argument("--num-test", type=int, default=None, help="default 1,000 (200 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="default 12 (5 with --quick); the paper: 50")
    parser.add_argument("--batch-size", type=int, default=None, help="default 35; the paper: 70")
    parser.add_argument("--learning-rate", type=float, default=None, help="Adam; default 2e-3; the paper: 5e-4")
    parser.add_argument("--num-samples", type=int, default=None, help="M, Fenchel-Young draws; default 10")
    parser.add_argument(
        "--sigma", type=float, default=None, help="ε, Fenchel-Young noise scale; default 0.05 (0.1 with --quick)"
    )
    parser.add_argument("--perturbation", default="multiplicative", choices=("additive", "multiplicative"))
    parser.add_argument(
        "--blackbox-lambda", type=float, default=20.0, help="λ of Vlastelica et al.; the step is ε = −λ/70"
    )
    parser.add_argument("--imle-sigma", type=float, default=None, help="τ, I-MLE noise temperature")
    parser.add_argument(
        "--imle-noise", default=None, help="I-MLE noise: sum_of_gamma, gumbel, zero_mean_gumbel, logistic, normal"
    )
    parser.add_argument(
        "--imle-kappa", type=float, default=None, help="κ of the sum-of-Gamma noise; default the mean path length"
    )
    parser.add_argument("--imle-samples", type=int, default=None, help="S, I-MLE noise draws per step")
    parser.add_argument(
        "--imle-normalize",
        type=int,
        default=None,
        choices=(0, 1),
        help="I-MLE: divide each map's costs by their mean before the layer (1) or not (0)",
    )
    parser.add_argument(
        "--blackbox-normalize",
        type=int,
        default=1,
        choices=(0, 1),
        help="blackbox: divide each map's costs by their mean before the layer (1, default) or not (0)",
    )
    parser.add_argument(
        "--normalize",
        type=int,
        default=1,
        choices=(0, 1),
        help="Fenchel-Young: divide each map's costs by their mean (1, default) or not (0)",
    )
    parser.add_argument("--reduction", default="conv", choices=REDUCTIONS, help="channels → vertex cost")
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train on maps transposed and/or rotated by 180° at random (the corners stay in place); default on",
    )
    parser.add_argument(
        "--symmetric-views",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="test metrics and the exported model average the costs of the 8 turned maps (default on)",
    )
    parser.add_argument("--no-export", action="store_true", help="skip the SavedModel export and serving")
    parser.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")


def parse_args(argv: Optional[List[str]] = None):
    args = shared.parse_args(
        "warcraft",
        argv,
        METHODS,
        description=__doc__.split("\n")[0],
        default_methods=DEFAULT_METHODS,
        add_arguments=_add_arguments,
        presets=(QUICK, FULL),
    )
    return args




def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    timer = shared.Timer()
    data_dir = args.data_dir or args.output_dir / "data" / "warcraft"
    data = warcraft_data.load_warcraft(
        args.grid_size, args.num_train, args.num_val, args.num_test, args.seed, data_dir, args.original_dir
    )
    data_seconds = timer()
    sizes = ", ".join(f"{split} {len(arrays['images'])}" for split, arrays in data.items())
    print(f"data: {sizes} maps ({data_seconds:.1f} s)")
    runs = {method: run_method(method, data, args) for method in args.methods}
    plot_training(runs, args.output_dir / "curves.png")
    rows = [run["row"] for run in runs.values()]
    print("\ntest metrics:")
    shared.print_table(
        [{**row, "single_view_perfect": row["single_view"]["perfect_path_accuracy"]} for row in rows],
        ["method", "perfect_path_accuracy", "exact_match", "cost_ratio", "single_view_perfect", "seconds_per_epoch"],
    )
    for row in rows:
        if row["cost_by_terrain"]:
            spread = ", ".join(
                f"{name} {v['true']:.2f}: {v['mean']:.2f} [{v['p5']:.2f}, {v['p95']:.2f}]"
                for name, v in row["cost_by_terrain"].items()
            )
            print(f"{row['method']} cost / map mean, true: predicted mean [5th, 95th percentile]: {spread}")
    serving = {}
    solver_methods = [m for m in args.methods if m not in MASK_METHODS]
    if not args.no_export and solver_methods:
        # The first method with a solver is exported (Fenchel-Young in `make demo`).
        method = solver_methods[0]
        print(f"\nexporting the {method} model (image → path) and serving it from a fresh process:")
        serving = export_and_serve(
            runs[method]["model"], data["test"]["images"][:8], args.output_dir / f"saved_model_{method}"
        )
        serving["method"] = method
    source = (
        "original" if args.original_dir else f"generated (warcraft_data v{warcraft_data.GENERATOR_VERSION})"
    )
    return shared.write_metrics(
        args.output_dir,
        rows,
        args.command,
        timer(),
        data_source=source,
        data_seconds=data_seconds,
        grid_size=args.grid_size,
        curves={m: {"loss": run["loss"], "val": run["val"]} for m, run in runs.items()},
        serving=serving,
        figures=["curves.png"] + [f"paths_{m}.png" for m in runs],
    )


if __name__ == "__main__":
    main()
