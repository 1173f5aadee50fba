"""What the two runners of the PyEPO comparison share: their command line and results file.

Plain Python and NumPy, imported by `run_ours.py` (project venv) and `run_pyepo.py`
(`.venv-pyepo`). A results file holds JSON lines: `{"meta": machine facts}` for each invocation,
then one line per run (problem, degree, seed, method), appended as each run ends so
that an interrupted run keeps what it finished; `--resume` skips the runs already
there and appends.
"""

import argparse
import json
import pathlib
import sys
import time
from typing import Callable, Sequence

import data
import numpy as np

RESULTS_DIR = pathlib.Path(__file__).resolve().parent.parent / "results"


def make_parser(description: str, methods: Sequence[str], epochs: int) -> argparse.ArgumentParser:
    """The arguments both runners take (a runner adds its own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--problem", nargs="+", default=["sp"], choices=list(data.PROBLEMS))
    parser.add_argument("--deg", nargs="+", type=int, default=list(data.DEGREES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--methods", nargs="+", default=list(methods), choices=methods)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--quick", action="store_true", help="sp, degree 4, seed 0, 2 epochs")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the results file")
    parser.add_argument("--eval", default="every", choices=["every", "final"],
                        help="test regret after every epoch, or before training and after the last only "
                             "(the table needs the last; PyEPO's per-instance solves make each evaluation slow)")
    parser.add_argument("--output", default=None, help="results file (default results/<name>[_quick].jsonl)")
    return parser


def apply_quick(args: argparse.Namespace) -> argparse.Namespace:
    if args.quick:
        args.problem, args.deg, args.seeds, args.epochs = ["sp"], [4], [0], 2
    return args


def run_all(
    args: argparse.Namespace,
    side: str,
    name: str,
    machine: Callable[[], dict],
    run_one: Callable[[str, str, dict, int], dict],
) -> pathlib.Path:
    """Runs `run_one(method, problem, stored, seed)` for every experiment asked, writing rows.

    Args:
      args: the parsed command line (`make_parser`).
      side: `"ours"` or `"pyepo"`, recorded in each row.
      name: the results file's stem, e.g. `"pyepo_ours"` (`_quick` added with --quick).
      machine: the machine facts, written as the file's first line (not with --resume).
      run_one: one training run; returns the row's results (`epoch_s` or `fit_s`, `regret`, …).

    Returns:
      The results file.
    """
    output = pathlib.Path(args.output) if args.output else RESULTS_DIR / f"{name}{'_quick' if args.quick else ''}.jsonl"
    output.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.resume and output.exists():
        for line in output.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "method" in row:
                done.add((row["problem"], row["deg"], row["seed"], row["method"]))
    else:
        output.write_text("", encoding="utf-8")
    facts = machine()
    facts.update(interpreter=sys.executable, args=vars(args))
    with output.open("a", encoding="utf-8") as handle:  # one machine line per invocation
        handle.write(json.dumps({"meta": facts}) + "\n")
    for problem in args.problem:
        for deg in args.deg:
            for seed in args.seeds:
                with np.load(data.load_or_make(problem, deg, seed)) as stored:
                    stored = dict(stored)
                for method in args.methods:
                    if (problem, deg, seed, method) in done:
                        continue
                    start = time.perf_counter()
                    result = run_one(method, problem, stored, seed)
                    row = {"side": side, "problem": problem, "deg": deg, "seed": seed, "method": method}
                    row.update(result, wall_s=time.perf_counter() - start)
                    with output.open("a", encoding="utf-8") as handle:
                        handle.write(json.dumps(row) + "\n")
                    print(summary(row), flush=True)
    print(f"Results: {output}")
    return output


def summary(row: dict) -> str:
    """One line per run: its regret and its time per epoch."""
    if "epoch_s" in row:
        epochs = row["epoch_s"]
        timing = f"{np.median(epochs[1:] or epochs):.2f} s/epoch after the first ({epochs[0]:.1f} s)"
    else:
        timing = f"fit {row['fit_s']:.2f} s"
    return (
        f"{row['problem']} deg={row['deg']} seed={row['seed']} {row['method']:13s} "
        f"regret {row['regret'][-1]:.4f}  {timing}  ({row['wall_s']:.0f} s in all)"
    )
