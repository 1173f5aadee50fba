"""Seconds per epoch, ours against PyEPO, with the two sides' runs alternated.

The machine is shared: in one sequential run the load of other jobs moved PyEPO's
epochs by 9× between degrees. Here each method runs a few epochs on one side, then on
the other, round after round (A B A B …), so that a slow spell hits both alike, as
`common.interleaved_times` does within one process. Each run is a fresh process of
`run_ours.py` or `run_pyepo.py` (so each pays its start-up, not timed); only the
epochs after the first are counted (the first traces and compiles ours).

Usage (from the repository root; any Python 3):

    python3 benchmarks/pyepo/timing.py                  # sp, degree 4, 3 rounds of 5 epochs
    python3 benchmarks/pyepo/timing.py --rounds 2 --epochs 4 --problem ks

Results: `benchmarks/results/pyepo_timing[_ks][_torchNthreads].{json,md}` (the json with
every run's epoch times); for the shortest path, README.md's timing tables.
"""

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402

sys.path.insert(0, str(HERE))
from report import PAIRS  # noqa: E402


def run(side: str, method: str, args, output: pathlib.Path) -> dict:
    """One run of one side's runner; returns its results row."""
    if side == "ours":
        command = [str(ROOT / ".venv/bin/python"), str(HERE / "run_ours.py"), "--verbose", "0"]
    else:
        command = [str(ROOT / ".venv-pyepo/bin/python"), str(HERE / "run_pyepo.py")]
    command += ["--problem", args.problem, "--deg", str(args.deg), "--methods", method,
                "--epochs", str(args.epochs), "--output", str(output)]
    if side == "pyepo" and args.torch_threads:
        command += ["--torch-threads", str(args.torch_threads)]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    return rows[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--problem", default="sp", choices=["sp", "ks", "ks2"])
    parser.add_argument("--deg", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--torch-threads", type=int, default=None, help="PyEPO's torch.set_num_threads")
    parser.add_argument("--methods", nargs="+", default=[ours for ours, _ in PAIRS], choices=[o for o, _ in PAIRS])
    args = parser.parse_args()
    info = common.machine_info([])
    times, runs = {}, []
    with tempfile.TemporaryDirectory() as folder:
        for round_index in range(args.rounds):
            for ours, theirs in PAIRS:
                if ours not in args.methods:
                    continue
                for side, method in (("ours", ours), ("pyepo", theirs)):
                    output = pathlib.Path(folder) / f"{side}_{method}_r{round_index}.jsonl"
                    row = run(side, method, args, output)
                    entry = times.setdefault((ours, side), {"wall": [], "cpu": []})
                    entry["wall"] += row["epoch_s"][1:]
                    entry["cpu"] += row["epoch_cpu_s"][1:]
                    runs.append({key: row[key] for key in ("side", "method", "epoch_s", "epoch_cpu_s")})
                    runs[-1]["round"] = round_index
                    print(f"round {round_index} {side:5s} {method:13s} "
                          f"{statistics.median(row['epoch_s'][1:]):.3f} s/epoch", flush=True)
    rows, summary = [], {}
    for ours, theirs in PAIRS:
        if ours not in args.methods:
            continue
        mine, peer = times[(ours, "ours")], times[(ours, "pyepo")]
        cells = {key: (statistics.median(mine[key]), statistics.median(peer[key])) for key in ("wall", "cpu")}
        summary[ours] = {"pyepo_method": theirs, **{f"{k}_s": v for k, v in cells.items()}, "epochs": len(mine["wall"])}
        rows.append([f"{ours} / {theirs}", cells["wall"][0], cells["wall"][1], cells["wall"][1] / cells["wall"][0],
                     cells["cpu"][0], cells["cpu"][1], cells["cpu"][1] / cells["cpu"][0]])
    headers = ["method (ours / PyEPO)", "ours wall (s)", "PyEPO wall (s)", "PyEPO / ours wall",
               "ours CPU (s)", "PyEPO CPU (s)", "PyEPO / ours CPU"]
    command = "python3 benchmarks/pyepo/timing.py " + " ".join(sys.argv[1:])
    text = (
        f"Seconds per training epoch, {args.problem}, degree {args.deg}: medians over {args.rounds} alternated "
        f"rounds × {args.epochs - 1} epochs (the first of each run left out); PyEPO's torch threads: "
        f"{args.torch_threads or 'default (2)'}.\n\n"
        + common.markdown_table(headers, rows)
        + f"\n\n- command: `{command.strip()}`\n- date: {info['date']}\n"
        f"- CPU: {info['cpu']}, {info['cores']} cores; load average at start {info['load_average']}"
    )
    stem = "pyepo_timing" + ("" if args.problem == "sp" else f"_{args.problem}")
    stem += f"_torch{args.torch_threads}threads" if args.torch_threads else ""
    common.write_json(stem, {"machine": info, "args": vars(args), "summary": summary, "runs": runs})
    common.write_markdown(stem, text)
    marker = "pyepo-timing" + (f"-torch{args.torch_threads}" if args.torch_threads else "")
    if args.problem == "sp" and common.replace_marked_block(HERE / "README.md", marker, text):
        print("README.md updated")
    print(text)


if __name__ == "__main__":
    main()
