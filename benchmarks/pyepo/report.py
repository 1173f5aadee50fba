"""The PyEPO comparison's table, from the JSON lines of `run_ours.py` and `run_pyepo.py`.

For each problem, method and polynomial degree: the normalised test regret after the
last epoch (ours, PyEPO run here; the mean over the seeds run, their number beside),
and the seconds per training epoch, median over the epochs after the first (which
holds our tracing and XLA compilation, shown apart), in wall-clock time and in the
process's CPU time (all threads), which other jobs on a shared machine distort less.

Usage (from the repository root; no TensorFlow or PyTorch needed):

    python3 benchmarks/pyepo/report.py            # results/pyepo.md and README.md's table
    python3 benchmarks/pyepo/report.py --quick    # from the *_quick.jsonl files, print only
"""

import argparse
import json
import pathlib
import statistics
import sys
from collections import defaultdict

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

# ours → PyEPO's name (run_ours.PEER_NAME, without importing TensorFlow), in the table's order.
PAIRS = (
    ("two_stage", "2s_mse"),
    ("spo_plus", "spo+"),
    ("blackbox", "dbb"),
    ("perturbed", "dpo"),
    ("fenchel_young", "pfyl"),
    ("imle", "imle"),
)
ROWS = (("—", "2s"),) + PAIRS  # PyEPO's closed-form 2-stage has no row of ours
PROBLEM_NAMES = {
    "sp": "shortest path, 5×5 grid",
    "ks": "knapsack, 32 items, one dimension, capacity 20",
    "ks2": "knapsack, 32 items, two dimensions, capacity 20 each (PyEPO's paper)",
}


def read(path: pathlib.Path):
    """([meta of each invocation], {(problem, method, deg): [rows]}) of one results file."""
    if not path.exists():
        return [], {}
    metas, runs = [], defaultdict(list)
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if "meta" in row:
            metas.append(row["meta"])
        else:
            runs[(row["problem"], row["method"], row["deg"])].append(row)
    return metas, runs


def regret_cell(rows) -> str:
    if not rows:
        return "—"
    values = [row["regret"][-1] for row in rows]
    mean = statistics.fmean(values)
    return f"{mean:.4f}" + (f" (n = {len(values)})" if len(values) > 1 else "")


def seconds_cell(rows, key: str) -> str:
    """Median over the epochs after the first, all seeds pooled."""
    values = [s for row in rows for s in row.get(key, [])[1:]]
    return f"{statistics.median(values):.2f}" if values else "—"


def first_epoch_cell(rows) -> str:
    values = [row["epoch_s"][0] for row in rows if row.get("epoch_s")]
    return f"{statistics.median(values):.1f}" if values else "—"


def table(problem: str, ours, peer) -> str:
    degrees = sorted({deg for (p, _, deg) in list(ours) + list(peer) if p == problem})
    rows = []
    for our_method, peer_method in ROWS:
        for deg in degrees:
            mine, theirs = ours.get((problem, our_method, deg), []), peer.get((problem, peer_method, deg), [])
            if not mine and not theirs:
                continue
            fit = f"fit {statistics.fmean(r['fit_s'] for r in theirs):.2f} s" if theirs and "fit_s" in theirs[0] else None
            rows.append(
                [
                    f"{our_method} / {peer_method}",
                    deg,
                    regret_cell(mine),
                    regret_cell(theirs),
                    "not found",
                    seconds_cell(mine, "epoch_s"),
                    seconds_cell(mine, "epoch_cpu_s"),
                    first_epoch_cell(mine),
                    fit or seconds_cell(theirs, "epoch_s"),
                    fit or seconds_cell(theirs, "epoch_cpu_s"),
                ]
            )
    headers = [
        "method (ours / PyEPO)",
        "deg",
        "regret ours",
        "regret PyEPO here",
        "regret PyEPO published",
        "s/epoch ours (wall)",
        "s/epoch ours (CPU)",
        "ours 1st epoch (s)",
        "s/epoch PyEPO (wall)",
        "s/epoch PyEPO (CPU)",
    ]
    return f"**{PROBLEM_NAMES[problem]}**\n\n" + common.markdown_table(headers, rows)


def command_of(meta) -> str:
    """The command with its interpreter (`.venv/bin/python`, `.venv-pyepo/bin/python`) where recorded."""
    root = HERE.parent.parent
    interpreter = pathlib.Path(meta.get("interpreter", "python"))
    if not interpreter.is_relative_to(root):
        return meta["command"]
    return meta["command"].replace("python", interpreter.relative_to(root).as_posix(), 1)


def machine_lines(ours_meta, peer_meta) -> str:
    lines = []
    for label, meta in [("ours", meta) for meta in ours_meta] + [("PyEPO", meta) for meta in peer_meta]:
        versions = ", ".join(f"{name} {version}" for name, version in meta["versions"].items())
        extra = f", Gurobi {meta['gurobi']}, torch threads {meta['torch_threads']}" if "gurobi" in meta else ""
        lines.append(
            f"- {label}: `{command_of(meta)}`, started {meta['date']}, load average {meta['load_average']}; "
            f"{meta['cpu']}, {meta['cores']} cores; Python {meta['python']}; {versions}{extra}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    suffix = "_quick" if args.quick else ""
    ours_meta, ours = read(common.RESULTS_DIR / f"pyepo_ours{suffix}.jsonl")
    peer_meta, peer = read(common.RESULTS_DIR / f"pyepo_peer{suffix}.jsonl")
    problems = [p for p in ("sp", "ks", "ks2") if any(key[0] == p for key in list(ours) + list(peer))]
    text = "\n\n".join([table(p, ours, peer) for p in problems] + [machine_lines(ours_meta, peer_meta)])
    print(text)
    if not args.quick:
        common.write_markdown("pyepo", text)
        if common.replace_marked_block(HERE / "README.md", "pyepo", text):
            print("README.md updated")


if __name__ == "__main__":
    main()
