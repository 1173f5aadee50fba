"""Warcraft at every size: five methods on maps of 12×12 to 30×30 vertices, one table, one figure.

Trains `tutorials.warcraft` with each method at each size (8 pixels per vertex: images of 96
to 240 pixels a side) under one budget, the `PRESET`: the same maps, epochs and steps at every
size, so that only the map grows. Each (size, method) run is `warcraft.main` with the preset's
flags (any other flag of `tutorials.warcraft` given here is passed on and overrides it); its
metrics row, with the per-epoch wall and CPU seconds, is appended to OUTPUT_DIR/runs.jsonl as
the run ends (`--resume` skips the runs already there, so an interrupted grid can be finished).

The preset: 280 training maps, 5 epochs in batches of 14 (100 steps), 50 validation and 200
test maps, test metrics on the network's own costs (single view), no export; everything else
is `tutorials.warcraft`'s default.

Outputs in `--output-dir` (default outputs/warcraft_sizes): runs.jsonl, one folder per run
(its metrics.json and figures), and from all rows: results.json (machine, command, one summary
row per run), table.md and sizes.png (perfect paths, cost ratio and seconds per epoch against
the size). `--publish` also writes them into the page docs/tutorials/warcraft_sizes.md (the
table between its markers), docs/tutorials/figures/warcraft_sizes.png and
docs/tutorials/results/warcraft_sizes.json.

Run: `python -m tutorials.warcraft_sizes` (all 20 runs), `--sizes 12 --methods imle` (a part),
`--report` (rebuild the outputs from runs.jsonl without training).
"""

import argparse
import json
import os
import pathlib
import platform
import re
import shlex
import sys
import time
from typing import Dict, List, Optional, Sequence

import matplotlib.ticker
import numpy as np

from tutorials import shared

SIZES = (12, 18, 24, 30)
METHODS = ("fenchel_young", "spo_plus", "imle", "blackbox", "squared")
PRESET = {
    "--num-train": "280", "--num-val": "50", "--num-test": "200", "--epochs": "5", "--batch-size": "14",
}  # fmt: skip
PRESET_FLAGS = ("--no-symmetric-views", "--no-export")
REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = REPO / "docs" / "tutorials"
# Where --publish writes: the page (its table between the markers), its figure and the raw results.
PUBLISHED = {
    "page": PAGES / "warcraft_sizes.md",
    "figure": PAGES / "figures" / "warcraft_sizes.png",
    "json": PAGES / "results" / "warcraft_sizes.json",
}
PAGE_MARKER = "warcraft-sizes-table"
FLOOR = "squared"  # no solver in its training step: the other methods' time is given against it


def cpu_model() -> str:
    """The processor's name from /proc/cpuinfo, or platform.processor()."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_argv(size: int, method: str, output_dir: pathlib.Path, seed: int, extra: Sequence[str]) -> List[str]:
    """`warcraft.py`'s arguments for one run: the preset, then the flags passed on (which win)."""
    argv = ["--grid-size", str(size), "--methods", method, "--seed", str(seed), "--verbose", "0"]
    argv += ["--output-dir", str(output_dir / f"{size}x{size}_{method}"), "--data-dir", str(output_dir / "data")]
    for flag, value in PRESET.items():
        if flag not in extra:
            argv += [flag, value]
    return argv + [flag for flag in PRESET_FLAGS if flag not in extra] + list(extra)


def _plain(value):
    """JSON for NumPy scalars and arrays and paths."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def read_rows(path: pathlib.Path) -> List[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_all(args, extra: Sequence[str], command: str) -> None:
    """Runs every (size, method) not yet in runs.jsonl, appending one row per finished run.

    The runner's command lines are appended to OUTPUT_DIR/commands.txt (one per start).
    """
    import keras  # noqa: PLC0415  (not needed by --report)

    from tutorials import warcraft  # noqa: PLC0415

    runs, commands = args.output_dir / "runs.jsonl", args.output_dir / "commands.txt"
    if not args.resume:
        runs.unlink(missing_ok=True)
        commands.unlink(missing_ok=True)
    with commands.open("a", encoding="utf-8") as file:
        file.write(command + "\n")
    done = {(row["grid_size"], row["method"]) for row in read_rows(runs)}
    for size in args.sizes:
        for method in args.methods:
            if (size, method) in done:
                continue
            argv = run_argv(size, method, args.output_dir, args.seed, extra)
            load_start, start = load_average(), time.perf_counter()
            payload = warcraft.main(argv)
            row = dict(payload["results"][0])
            row.update(
                grid_size=size,
                command=payload["command"],
                run_seconds=time.perf_counter() - start,
                data_seconds=payload["data_seconds"],
                load_average_start=load_start,
                load_average_end=load_average(),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            )
            row["val_perfect_path_accuracy"] = [v["perfect_path_accuracy"] for v in payload["curves"][method]["val"]]
            row.pop("cost_by_terrain", None)
            with runs.open("a", encoding="utf-8") as file:
                file.write(json.dumps(row, default=_plain) + "\n")
            keras.backend.clear_session()  # the next run builds its models afresh


def epoch_time(row: dict, key: str = "epoch_seconds") -> float:
    """Median seconds of the epochs after the first (which also traces the step), or the only one."""
    seconds = row[key][1:] or row[key]
    return float(np.median(seconds))


def summarize(rows: List[dict]) -> List[dict]:
    """One summary row per run, with its epoch time against the floor's run at the same size."""
    floor = {row["grid_size"]: epoch_time(row, "epoch_cpu_seconds") for row in rows if row["method"] == FLOOR}
    floor_wall = {row["grid_size"]: epoch_time(row) for row in rows if row["method"] == FLOOR}
    summary = []
    for row in sorted(rows, key=lambda r: (r["grid_size"], METHODS.index(r["method"]))):
        size = row["grid_size"]
        cpu, wall = epoch_time(row, "epoch_cpu_seconds"), epoch_time(row)
        summary.append(
            {
                "grid_size": size,
                "method": row["method"],
                "perfect_path_accuracy": row["perfect_path_accuracy"],
                "exact_match": row["exact_match"],
                "cost_ratio": row["cost_ratio"],
                "symmetric_views": row["symmetric_views"],
                "val_perfect_path_accuracy": row["val_perfect_path_accuracy"],
                "epoch_seconds": wall,
                "epoch_cpu_seconds": cpu,
                "cpu_ratio_to_floor": cpu / floor[size] if size in floor else None,
                "wall_ratio_to_floor": wall / floor_wall[size] if size in floor_wall else None,
                "run_seconds": row["run_seconds"],
                "num_train": row["num_train"],
                "num_test": row["num_test"],
                "epochs": row["epochs"],
                "batch_size": row["batch_size"],
                "load_average_start": row["load_average_start"],
                "command": row["command"],
            }
        )
    return summary


def accuracy_cell(p: float, n: int) -> str:
    """p ± its binomial standard error √(p(1 − p)/n); at 0, the 95 % upper bound 3/n instead."""
    if p == 0.0:
        return f"0 (< {3.0 / n:.3f})"
    return f"{p:.3f} ± {np.sqrt(p * (1.0 - p) / n):.3f}"


def markdown_table(summary: List[dict]) -> str:
    header = (
        "| size | method | perfect paths (± s.e.) | cost ratio | s / epoch | CPU s / epoch | CPU time ÷ squared |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines = [header]
    for row in summary:
        ratio = row["cpu_ratio_to_floor"]
        lines.append(
            f"| {row['grid_size']}×{row['grid_size']} | `{row['method']}` | "
            f"{accuracy_cell(row['perfect_path_accuracy'], row['num_test'])} | {row['cost_ratio']:.4f} | "
            f"{row['epoch_seconds']:.1f} | {row['epoch_cpu_seconds']:.1f} | "
            f"{'—' if ratio is None else f'{ratio:.2f}'} |"
        )
    return "\n".join(lines)


def plot_sizes(summary: List[dict], path: pathlib.Path) -> None:
    """Perfect paths, cost ratio − 1 and CPU seconds per epoch against the grid size, per method."""
    fig, axes = shared.figure(1, 3, width=3.6, height=3.0)
    panels = (
        ("perfect_path_accuracy", "perfect-path accuracy (test)", "linear"),
        ("cost_ratio", "cost ratio to the optimum − 1", "log"),
        ("epoch_cpu_seconds", "CPU seconds per epoch", "log"),
    )
    for ax, (key, title, scale) in zip(axes[0], panels, strict=True):
        for method in METHODS:
            points = sorted((r["grid_size"], r[key]) for r in summary if r["method"] == method)
            if not points:
                continue
            x, y = zip(*points, strict=True)
            y = np.asarray(y) - (1.0 if key == "cost_ratio" else 0.0)
            ax.plot(x, y, marker="o", label=method)
        ax.set(title=title, xlabel="grid size g (g × g vertices)", yscale=scale, xticks=list(SIZES))
        ax.grid(alpha=0.3)
    floor = sorted((r["grid_size"], r["epoch_cpu_seconds"]) for r in summary if r["method"] == FLOOR)
    if floor:  # the pixels of a map grow as g²: time ∝ g² from the floor's smallest size
        g0, t0 = floor[0]
        sizes = np.linspace(min(SIZES), max(SIZES), 50)
        (line,) = axes[0, 2].plot(sizes, t0 * (sizes / g0) ** 2, ":", color="grey", label=f"∝ g² (from {FLOOR})")
        axes[0, 2].legend(handles=[line], fontsize=8)
    axes[0, 2].yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=2.0))
    axes[0, 2].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    axes[0, 2].yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0, 0].set_ylim(bottom=0.0)
    axes[0, 0].legend(fontsize=8)
    fig.set_dpi(90)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def machine() -> dict:
    facts = shared.versions()
    facts.update(cpu=cpu_model(), interpreter=sys.executable)
    return facts


def write_table_into_page(path: pathlib.Path, table: str) -> bool:
    """Puts `table` between the page's `<!-- warcraft-sizes-table:begin/end -->` markers; False if absent."""
    begin, end = f"<!-- {PAGE_MARKER}:begin -->", f"<!-- {PAGE_MARKER}:end -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    content = path.read_text(encoding="utf-8") if path.exists() else ""
    if not pattern.search(content):
        return False
    path.write_text(pattern.sub(lambda _: f"{begin}\n{table}\n{end}", content, count=1), encoding="utf-8")
    return True


def report(args, command: str) -> dict:
    """Writes results.json, table.md and sizes.png from runs.jsonl (and to docs/ with --publish)."""
    rows = read_rows(args.output_dir / "runs.jsonl")
    if not rows:
        raise FileNotFoundError(f"Expected finished runs in {args.output_dir / 'runs.jsonl'}, received: none")
    summary = summarize(rows)
    dates = sorted(row["date"] for row in rows)
    commands = args.output_dir / "commands.txt"
    payload = {
        "commands": commands.read_text(encoding="utf-8").splitlines() if commands.exists() else [],
        "report_command": command,
        "preset": {**PRESET, **dict.fromkeys(PRESET_FLAGS, True)},
        "machine": machine(),
        "first_run_ended": dates[0],
        "last_run_ended": dates[-1],
        "total_run_seconds": round(sum(row["run_seconds"] for row in rows), 1),
        "results": summary,
    }
    table = markdown_table(summary)
    outputs = [(args.output_dir / "results.json", args.output_dir / "table.md", args.output_dir / "sizes.png")]
    if args.publish:
        outputs.append((PUBLISHED["json"], None, PUBLISHED["figure"]))
    for json_path, table_path, figure_path in outputs:
        json_path.write_text(json.dumps(payload, indent=2, default=_plain) + "\n", encoding="utf-8")
        if table_path is not None:
            table_path.write_text(table + "\n", encoding="utf-8")
        plot_sizes(summary, figure_path)
    if args.publish and not write_table_into_page(PUBLISHED["page"], table):
        print(f"{PUBLISHED['page']} has no {PAGE_MARKER} markers: table not written there")
    print(table)
    print(f"total run time {payload['total_run_seconds']:.0f} s over {len(rows)} runs")
    return payload


def parse_args(argv: Optional[Sequence[str]] = None):
    parser = argparse.ArgumentParser(prog="python -m tutorials.warcraft_sizes", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=shared.int_list, default=list(SIZES), help="default 12,18,24,30")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=pathlib.Path, default=pathlib.Path("outputs/warcraft_sizes"))
    parser.add_argument("--resume", action="store_true", help="keep the runs already in runs.jsonl")
    parser.add_argument("--report", action="store_true", help="only rebuild the outputs from runs.jsonl")
    parser.add_argument("--publish", action="store_true", help="also write the page docs/tutorials/warcraft_sizes.md, its figure and JSON")
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in args.methods if m not in METHODS] + [s for s in args.sizes if s not in SIZES]
    if unknown:
        parser.error(f"Expected --methods among {METHODS} and --sizes among {SIZES}, received: {unknown}")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    return args, extra, shlex.join(["python", "-m", "tutorials.warcraft_sizes", *argv])


def main(argv: Optional[Sequence[str]] = None) -> Dict:
    args, extra, command = parse_args(argv)
    if not args.report:
        train_all(args, extra, command)
    return report(args, command)


if __name__ == "__main__":
    main()
