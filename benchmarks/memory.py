"""Peak memory of perturbed permutation matrices, all M samples at once vs in chunks.

The op: ŷ_ε(θ) = mean of M perturbed sort-permutation matrices for θ `[B, d]`, and its
Monte-Carlo gradient (`tf_perturbed.perturbed("sort_permutation", ...)`, forward and
backward in one `tf.function`). All at once, the M·B solutions are M·B·d² floats
(M = 1000, B = 128, d = 100: 5.1 GB, before any intermediate copy); with
`chunk_size=C` only C·B of them exist at a time and the backward pass solves them
again.

Each configuration runs in its own process, which reports its peak resident set
size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`) and its baseline after importing
TensorFlow and tf_perturbed. All-at-once runs are capped (RLIMIT_DATA, default
6 GiB) so that they cannot exhaust a shared machine: a run that hits the cap is
reported as such, and the all-at-once peak at M = 1000 is also extrapolated
linearly from the smaller M that fit.

    python benchmarks/memory.py            # writes benchmarks/results/memory.{json,md}
    python benchmarks/memory.py --quick    # small M only
"""

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
GIB = 2**30


def make_step(num_samples, batch, dim, chunk_size=None, jit=False):
    """θ `[B, d]` and the step that is measured, θ ↦ (Σ ŷ_ε(θ), ∇θ Σ ⟨G, ŷ_ε(θ)⟩) for a fixed
    random G `[B, d, d]`, as a `tf.function` (`jit_compile=jit`); `chunk_size` None: all at once.

    Σ ŷ_ε(θ) is B·d (each permutation matrix holds d ones), the "check" of a result row;
    tests/test_benchmarks.py runs the step on small sizes.
    """
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    import tf_perturbed as tp  # noqa: PLC0415

    rng = np.random.default_rng(0)
    theta = tf.constant(rng.normal(size=(batch, dim)), tf.float32)
    upstream = tf.constant(rng.normal(size=(batch, dim, dim)), tf.float32)
    op = tp.perturbed("sort_permutation", num_samples=num_samples, sigma=0.5, seed=0, chunk_size=chunk_size)

    def step(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            y = op(t)  # [B, d, d]
            value = tf.reduce_sum(y * upstream)
        return tf.reduce_sum(y), tape.gradient(value, t)

    return theta, tf.function(step, jit_compile=jit)


def _child(args):
    """Runs one configuration and prints one JSON line."""
    if args.data_limit_gib:
        limit = int(args.data_limit_gib * GIB)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf  # noqa: PLC0415

    import tf_perturbed  # noqa: F401, PLC0415  (imported before the baseline is read)

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    theta, fn = make_step(args.num_samples, args.batch, args.dim, args.chunk_size or None, args.jit)
    outcome = {"ok": True}
    try:
        total, grad = fn(theta)  # traces, compiles, runs
        start = time.perf_counter()
        total, grad = fn(theta)
        seconds = time.perf_counter() - start
        outcome.update(seconds=seconds, check=float(total), grad_norm=float(tf.norm(grad)))
    except (tf.errors.ResourceExhaustedError, MemoryError, tf.errors.InternalError) as error:
        outcome = {"ok": False, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    outcome.update(peak_bytes=peak, baseline_bytes=baseline)
    print("RESULT " + json.dumps(outcome), flush=True)


def _run(config, data_limit_gib, timeout):
    cmd = [sys.executable, os.path.abspath(__file__), "--child",
           "--num-samples", str(config["num_samples"]), "--chunk-size", str(config["chunk_size"] or 0),
           "--batch", str(config["batch"]), "--dim", str(config["dim"]),
           "--data-limit-gib", str(data_limit_gib)]
    if config["jit"]:
        cmd.append("--jit")
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(config, ok=False, error=f"timeout after {timeout} s")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:  # killed (e.g. std::bad_alloc aborts the process when the cap is hit)
        tail = (proc.stderr or "").strip().splitlines()[-1:] or [""]
        return dict(config, ok=False, error=f"exit code {proc.returncode}: {tail[0][:200]}",
                    wall_seconds=time.perf_counter() - start)
    return dict(config, **json.loads(lines[-1][len("RESULT "):]), wall_seconds=time.perf_counter() - start)


def _versions():
    import numpy as np  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    import tf_perturbed as tp  # noqa: PLC0415

    try:
        import keras  # noqa: PLC0415

        keras_version = keras.__version__
    except ImportError:  # pragma: no cover
        keras_version = None
    with open("/proc/meminfo") as f:
        mem_total = int(f.readline().split()[1]) * 1024
    return {
        "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras_version,
        "numpy": np.__version__, "tf_perturbed": tp.__version__, "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
        "memory_gib": round(mem_total / GIB, 1), "system": platform.platform(),
    }


def _gib(value):
    return f"{value / GIB:.2f}"


def _markdown(results, versions, extrapolated):
    lines = [
        "# Peak memory: perturbed sort permutations, all at once vs in chunks",
        "",
        "`tf_perturbed.perturbed(\"sort_permutation\", sigma=0.5, chunk_size=C)` on θ `[B, d]`, forward",
        "and backward in one `tf.function`; one process per row, peak RSS from `ru_maxrss`;",
        "baseline = RSS after importing TensorFlow and tf_perturbed. Command: `python benchmarks/memory.py`.",
        "Time per step: wall-clock time of the second call, measured while other jobs shared the",
        "machine; compare the rows with each other only.",
        "",
        "| M | B | d | chunk_size | XLA | peak RSS (GiB) | above baseline (GiB) | time per step (s) | outcome |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        peak = _gib(r["peak_bytes"]) if "peak_bytes" in r else "—"
        above = _gib(r["peak_bytes"] - r["baseline_bytes"]) if "peak_bytes" in r else "—"
        seconds = f"{r['seconds']:.2f}" if r.get("seconds") is not None else "—"
        outcome = "ok" if r.get("ok") else r.get("error", "failed").split(":")[0]
        if not r.get("ok") and r.get("data_limit_gib"):
            outcome = f"out of memory under the {r['data_limit_gib']:g} GiB cap ({outcome})"
        lines.append(
            f"| {r['num_samples']} | {r['batch']} | {r['dim']} | {r['chunk_size'] or 'all'} | "
            f"{'yes' if r['jit'] else 'no'} | {peak} | {above} | {seconds} | {outcome} |"
        )
    if extrapolated is not None:
        lines += ["", f"All at once at M = 1000, extrapolated linearly from the smaller M above: "
                      f"{_gib(extrapolated)} GiB peak RSS."]
    infinite = [r for r in results if r.get("ok") and not math.isfinite(r.get("grad_norm", 0.0))]
    if infinite:
        lines += ["", "Gradient not finite in the rows with M = "
                      + ", ".join(sorted({str(r["num_samples"]) for r in infinite}))
                      + ": a bug (the noise and the estimator must stay finite); it does not change the memory."]
    lines += ["", "Machine and versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--chunk-size", type=int, default=0)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--jit", action="store_true")
    parser.add_argument("--data-limit-gib", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="small M only")
    parser.add_argument("--cap-gib", type=float, default=6.0, help="RLIMIT_DATA of the all-at-once runs")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--rewrite-markdown", action="store_true", help="rewrite memory.md from memory.json")
    args = parser.parse_args()
    if args.child:
        _child(args)
        return
    if args.rewrite_markdown:
        with open(os.path.join(RESULTS, "memory.json")) as f:
            stored = json.load(f)
        text = _markdown(stored["results"], stored["versions"], stored["extrapolated_all_at_once_m1000_bytes"])
        with open(os.path.join(RESULTS, "memory.md"), "w") as f:
            f.write(text)
        print(text)
        return
    sizes = dict(batch=args.batch, dim=args.dim)
    big = [100, 200] if args.quick else [1000]
    configs = (
        [dict(num_samples=m, chunk_size=None, jit=False, **sizes) for m in (50, 100, 200)]
        + [dict(num_samples=m, chunk_size=25, jit=jit, **sizes) for m in (100, *big) for jit in (False, True)]
        + ([] if args.quick else [dict(num_samples=1000, chunk_size=None, jit=False, **sizes)])
    )
    results = []
    for config in configs:
        cap = args.cap_gib if config["chunk_size"] is None else 0.0
        result = _run(config, cap, args.timeout)
        result["data_limit_gib"] = cap or None
        print(json.dumps(result), flush=True)
        results.append(result)
    full = [r for r in results if r["chunk_size"] is None and r.get("ok") and r["num_samples"] < 1000]
    extrapolated = None
    if len(full) >= 2:  # peak = a + b·M through the two largest M that fit
        r1, r2 = sorted(full, key=lambda r: r["num_samples"])[-2:]
        slope = (r2["peak_bytes"] - r1["peak_bytes"]) / (r2["num_samples"] - r1["num_samples"])
        extrapolated = r2["peak_bytes"] + slope * (1000 - r2["num_samples"])
    versions = _versions()
    os.makedirs(RESULTS, exist_ok=True)
    name = "memory_quick" if args.quick else "memory"
    with open(os.path.join(RESULTS, f"{name}.json"), "w") as f:
        json.dump({"results": results, "extrapolated_all_at_once_m1000_bytes": extrapolated,
                   "versions": versions}, f, indent=2)
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(_markdown(results, versions, extrapolated))
    print(_markdown(results, versions, extrapolated))


if __name__ == "__main__":
    main()
