"""Helpers shared by the benchmarks: machine facts, timing, and result files.

Nothing here imports TensorFlow or JAX, so that both the TensorFlow benchmarks and
the JAX peer process (`peers_jax.py`, run by another interpreter) can use it.

Timing protocol: every candidate is warmed up (compiled) first, then the
candidates are timed in rounds, A B C A B C …, so that a slow spell of the
machine (other jobs share its cores) hits all of them alike; the median over all
rounds is reported, with the interquartile range as a noise figure.
"""

import datetime
import importlib
import importlib.metadata
import json
import os
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence

RESULTS_DIR = pathlib.Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or `platform.processor()` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def core_count() -> int:
    """Cores this process may run on (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def load_average() -> Optional[List[float]]:
    """1-, 5- and 15-minute load averages, or None where the OS has none."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def package_versions(names: Iterable[str]) -> Dict[str, str]:
    """Versions of the modules `names` in this interpreter: `module.__version__`, else the
    installed distribution's version (tensorflow-cpu installs the module `tensorflow`)."""
    versions = {}
    for name in names:
        try:
            versions[name] = str(importlib.import_module(name).__version__)
            continue
        except (ImportError, AttributeError):
            pass
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def machine_info(packages: Iterable[str] = ()) -> dict:
    """The machine and software facts a result must carry."""
    return {
        "cpu": cpu_model(),
        "cores": core_count(),
        "load_average": load_average(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": package_versions(packages),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def time_once(fn: Callable[[], object]) -> float:
    """Seconds taken by one call of `fn`, which must block until its result is ready."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved_times(
    candidates: Mapping[str, Callable[[], object]],
    rounds: int,
    repeats: int = 1,
    warmup: int = 1,
    cpu_times: Optional[Dict[str, List[float]]] = None,
) -> Dict[str, List[float]]:
    """Times each candidate in `rounds` rounds of `repeats` calls, alternating candidates.

    Args:
      candidates: name → a blocking zero-argument callable.
      rounds: how many times the candidates take turns.
      repeats: calls per candidate per turn.
      warmup: untimed calls per candidate before the first round (compilation).
      cpu_times: None, or a dict that receives name → the process's CPU time of
        each call (all threads), which other jobs on the machine distort less.

    Returns:
      name → the `rounds · repeats` wall-clock call times in seconds.
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in candidates}
    if cpu_times is not None:
        cpu_times.update({name: [] for name in candidates})
    for _ in range(rounds):
        for name, fn in candidates.items():
            for _ in range(repeats):
                start_cpu = time.process_time()
                times[name].append(time_once(fn))
                if cpu_times is not None:
                    cpu_times[name].append(time.process_time() - start_cpu)
    return times


def summarize(times: Sequence[float]) -> dict:
    """Median, quartiles and count of `times` (seconds), in milliseconds."""
    values = sorted(times)
    if len(values) >= 2:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    else:
        q1 = q3 = values[0]
    return {
        "median_ms": 1e3 * statistics.median(values),
        "q1_ms": 1e3 * q1,
        "q3_ms": 1e3 * q3,
        "min_ms": 1e3 * values[0],
        "n": len(values),
    }


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub markdown table; floats are printed with 3 significant digits."""

    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_markdown(info: Mapping, command: str) -> str:
    """Machine, versions and the command, as a markdown bullet list."""
    versions = ", ".join(f"{name} {version}" for name, version in info["versions"].items())
    lines = [
        f"- command: `{command}`",
        f"- date: {info['date']}",
        f"- CPU: {info['cpu']}, {info['cores']} cores; load average at start {info['load_average']}",
        f"- Python {info['python']} on {info['platform']}",
        f"- {versions}",
    ]
    for extra_name, extra in info.get("peers", {}).items():
        lines.append(f"- {extra_name}: " + ", ".join(f"{n} {v}" for n, v in extra.items()))
    return "\n".join(lines)


def write_json(name: str, payload: Mapping) -> pathlib.Path:
    """Writes `payload` to `benchmarks/results/<name>.json`; returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return path


def write_markdown(name: str, text: str) -> pathlib.Path:
    """Writes `text` to `benchmarks/results/<name>.md`; returns the path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(text.rstrip() + "\n", encoding="utf-8")
    return path


def replace_marked_block(path: pathlib.Path, marker: str, text: str) -> bool:
    """Replaces the text between `<!-- marker:begin -->` and `<!-- marker:end -->` in `path`.

    Returns False (and leaves the file alone) when the markers are missing.
    """
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    content = path.read_text(encoding="utf-8")
    if begin not in content or end not in content:
        return False
    head, rest = content.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{begin}\n{text.rstrip()}\n{end}{tail}", encoding="utf-8")
    return True


def command_line() -> str:
    """The command that started this process, as typed from the repository root."""
    script = pathlib.Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(pathlib.Path.cwd())
    except ValueError:
        pass
    return " ".join(["python", str(script), *sys.argv[1:]])
