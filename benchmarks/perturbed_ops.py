"""Forward+backward time of tf_perturbed's perturbed ops against a floor, a textbook
implementation and the JAX peers (jaxopt, optax), measured in one run.

What is timed, for each problem (solver, batch B, dimension d, samples M, Normal
noise, σ = 0.5), on θ `[B, d]` and a random linear functional L(θ) = Σ ⟨W, ŷ_ε(θ)⟩:

- ours: `tf_perturbed.perturbed(solver, num_samples=M, sigma=σ, seed=0)` inside a
  `tf.function` that returns L and `tape.gradient(L, θ)` — forward and backward —
  in graph mode and with `jit_compile=True` (XLA);
- floor: what any perturbed op must do at least, forward only: draw the `[M, B, d]`
  noise, solve all M·B perturbed problems in one batched call, average; timed in
  graph mode and under XLA, each in its own `tf.function`;
- textbook: the paper's formulas written plainly (`_textbook_perturbed`): the
  forward pass as above; the backward pass draws the noise again, calls the solver
  again and forms the Jacobian J_b = (1/M) Σ_m y*(θ_b + εZ_m) Z_mᵀ / ε of every
  example (`[B, d_out, d]`) before multiplying it by the upstream gradient;
- peers: jaxopt's `make_perturbed_argmax` and optax's `make_perturbed_fun` on the
  same θ and W, jitted, in a separate process (`peers_jax.py`, run by the
  `.venv-bench` interpreter); the TF and JAX timings alternate round by round.

Before timing, each problem is checked: the textbook value must equal ours (same
noise stream, same solver), and the textbook gradient must equal ours with
`control_variate=False` (the same estimator without a baseline).

Usage (from the repository root):

    .venv/bin/python benchmarks/perturbed_ops.py            # ≈ 5 min; updates README.md
    .venv/bin/python benchmarks/perturbed_ops.py --quick    # ≈ 1 min; results/*_quick.*
    options: --no-peers, --peer-python PATH, --no-readme, --rounds N

The JAX interpreter is `.venv-bench/bin/python`; when it is missing the script
creates it (`python3 -m venv .venv-bench` and `pip install` of
`peers_jax.REQUIREMENTS`). Results: `benchmarks/results/perturbed_ops.{md,json}`
and `perturbed_ops_vs_M.png`, `perturbed_ops_vs_d.png`.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_perturbed as tp  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402
import peers_jax  # noqa: E402  (only its REQUIREMENTS: JAX is imported in the peer process)

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / ".venv-bench"
SIGMA = 0.5
SEED = (0, 0)  # the int32[2] seed that `perturbed(..., seed=0)` uses


@dataclasses.dataclass(frozen=True)
class Problem:
    op: str
    batch: int
    d: int
    num_samples: int
    k: Optional[int] = None

    @property
    def key(self) -> str:
        k = f"_k{self.k}" if self.k else ""
        return f"{self.op}{k}_B{self.batch}_d{self.d}_M{self.num_samples}"

    @property
    def solver_kwargs(self) -> Optional[dict]:
        return {"k": self.k} if self.k else None

    @property
    def out_shape(self) -> tuple:
        if self.op == "sort_permutation":
            return (self.batch, self.d, self.d)
        return (self.batch, self.d)


PRIMARY = Problem("ranks", 128, 100, 100)


def problem_sets(quick: bool) -> Dict[str, List[Problem]]:
    """The primary problem, the other ops, and the two ranking sweeps of the plots."""
    if quick:
        ops = [Problem("argmax", 32, 30, 30), Problem("top_k", 32, 30, 30, k=10), Problem("sort_permutation", 32, 30, 30)]
        return {
            "primary": [PRIMARY],
            "ops": ops,
            "vs_M": [Problem("ranks", 128, 100, 10)],
            "vs_d": [Problem("ranks", 128, 10, 100)],
        }
    ops = []
    for batch, d, num in ((32, 30, 30), (128, 100, 100)):
        ops += [Problem("argmax", batch, d, num), Problem("top_k", batch, d, num, k=10)]
    # Sort permutations output [d, d] per sample: M·B·d² floats; d = 100 would need 0.5 GB each.
    ops += [Problem("sort_permutation", 32, 30, 30), Problem("sort_permutation", 128, 30, 100)]
    return {
        "primary": [PRIMARY],
        "ops": ops,
        "vs_M": [Problem("ranks", 128, 100, m) for m in (10, 30, 300)],
        "vs_d": [Problem("ranks", 128, d, 100) for d in (10, 30, 300)],
    }


# --------------------------------------------------------------------------- TensorFlow side


def _noise(problem: Problem, seed: tf.Tensor) -> tf.Tensor:
    """The package's Normal sampler: the floor and the textbook draw what ours draws.

    The seed is an argument of every timed function, never a constant in it:
    with a constant seed the graph optimiser (and XLA) folds the whole noise
    tensor into a constant at compile time, and its cost vanishes from the timing.
    """
    shape = [problem.num_samples, problem.batch, problem.d]
    return tp.noise.get_noise("normal").sample(shape, seed, tf.float32)  # [M, B, d]


def _solve_all(solver, theta_pert: tf.Tensor, problem: Problem) -> tf.Tensor:
    """All M·B perturbed problems in one solver call, as `[M, B, *out]`."""
    flat = tf.reshape(theta_pert, [-1, problem.d])  # [M·B, d]
    y = solver(flat)  # [M·B, *out]
    return tf.reshape(y, [problem.num_samples, *problem.out_shape])  # [M, B, *out]


def _floor(problem: Problem):
    """Noise, one batched solve, the mean: forward only."""
    solver = tp.solvers.get_solver(problem.op, problem.solver_kwargs)

    def floor(theta, weights, seed):
        del weights
        y = _solve_all(solver, theta + SIGMA * _noise(problem, seed), problem)  # [M, B, *out]
        return (tf.reduce_mean(y, axis=0),)

    return floor


def _textbook_perturbed(problem: Problem):
    """ŷ_ε(θ) with J = E[y*(θ + εZ) Zᵀ]/ε, written as the formulas read (no shared work)."""
    solver = tp.solvers.get_solver(problem.op, problem.solver_kwargs)

    def perturbed_mean(theta, seed):
        @tf.custom_gradient
        def mean_of_solutions(theta):
            y = _solve_all(solver, theta + SIGMA * _noise(problem, seed), problem)  # [M, B, *out]

            def grad(upstream):
                z = _noise(problem, seed)  # drawn again from the same seed
                y_again = _solve_all(solver, theta + SIGMA * z, problem)  # solved again
                y_rows = tf.reshape(y_again, [problem.num_samples, problem.batch, -1])  # [M, B, d_out]
                jacobian = tf.einsum("mbi,mbj->bij", y_rows, z) / (problem.num_samples * SIGMA)  # [B, d_out, d]
                g_rows = tf.reshape(upstream, [problem.batch, -1])  # [B, d_out]
                return tf.einsum("bi,bij->bj", g_rows, jacobian)  # [B, d]

            return tf.reduce_mean(y, axis=0), grad

        return mean_of_solutions(theta)

    return perturbed_mean


def _value_and_grad(perturbed_fn):
    """(L, ∇L) for L(θ) = Σ ⟨W, perturbed_fn(θ, seed)⟩."""

    def value_and_grad(theta, weights, seed):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            value = tf.reduce_sum(perturbed_fn(theta, seed) * weights)
        return value, tape.gradient(value, theta)

    return value_and_grad


def _ours(problem: Problem, control_variate=True):
    fn = tp.perturbed(
        problem.op,
        num_samples=problem.num_samples,
        sigma=SIGMA,
        seed=0,
        control_variate=control_variate,
        solver_kwargs=problem.solver_kwargs,
    )
    return _value_and_grad(lambda theta, seed: fn(theta, seed=seed))


def _inputs(problem: Problem):
    rng = np.random.default_rng(1)
    theta = rng.normal(size=(problem.batch, problem.d)).astype(np.float32)
    weights = rng.normal(size=problem.out_shape).astype(np.float32)
    return theta, weights


def _blocking(fn, theta, weights):
    """A zero-argument call of `fn` that waits for its results (copied to NumPy)."""
    theta, weights = tf.constant(theta), tf.constant(weights)
    seed = tf.constant(SEED, tf.int32)

    def call():
        return [t.numpy() for t in fn(theta, weights, seed)]

    return call


def _check_textbook(problem: Problem, theta, weights) -> dict:
    """Textbook vs ours on one noise stream: values equal; gradients equal without baseline."""
    value_t, grad_t = _blocking(tf.function(_value_and_grad(_textbook_perturbed(problem))), theta, weights)()
    value_o, grad_o = _blocking(tf.function(_ours(problem, control_variate=False)), theta, weights)()
    value_error = abs(value_t - value_o) / max(abs(value_o), 1e-12)
    grad_error = float(np.max(np.abs(grad_t - grad_o)) / max(np.max(np.abs(grad_o)), 1e-12))
    # Both are float32 sums of M·B·d terms in different orders: agreement to ~1e-5 is exact.
    ok = bool(value_error < 1e-4 and grad_error < 1e-4)
    if not ok:  # timings of a wrong op are worth nothing: stop
        raise RuntimeError(
            f"{problem.key}: textbook ≠ ours (value {value_error:.2e}, gradient {grad_error:.2e} relative)"
        )
    return {"value_rel_error": float(value_error), "grad_rel_error": grad_error, "agree": ok, "value": float(value_o)}


def tf_candidates(problem: Problem, theta, weights) -> Dict[str, callable]:
    builders = {"ours": _ours(problem), "floor": _floor(problem)}
    builders["textbook"] = _value_and_grad(_textbook_perturbed(problem))
    calls = {}
    for name, fn in builders.items():
        for mode, jit in (("graph", False), ("xla", True)):
            calls[f"{name}_{mode}"] = _blocking(tf.function(fn, jit_compile=jit), theta, weights)
    return calls


# --------------------------------------------------------------------------- JAX side


class Peers:
    """The JAX peer process; None-like when it cannot start."""

    def __init__(self, python: pathlib.Path):
        script = pathlib.Path(__file__).resolve().parent / "peers_jax.py"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        self.process = subprocess.Popen(
            [str(python), str(script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )

    def request(self, **request) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("The JAX peer process exited; see its stderr above.")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"JAX peer error: {reply.get('error')}")
        return reply

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)


def ensure_peer_python(path: Optional[str]) -> Optional[pathlib.Path]:
    """The interpreter with JAX: `path`, or `.venv-bench` (created when missing)."""
    if path:
        return pathlib.Path(path)
    python = PEER_VENV / "bin" / "python"
    if python.exists():
        return python
    print(f"Creating {PEER_VENV} for the JAX peers: pip install {' '.join(peers_jax.REQUIREMENTS)}")
    try:
        subprocess.run(["python3", "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *peers_jax.REQUIREMENTS], check=True)
    except (subprocess.CalledProcessError, OSError) as error:
        print(f"Could not install the JAX peers ({error}); timing TensorFlow only.")
        return None
    return python


# --------------------------------------------------------------------------- running


def run_problem(problem: Problem, peers: Optional[Peers], rounds: int, repeats: int, folder: str) -> dict:
    theta, weights = _inputs(problem)
    record = {"problem": dataclasses.asdict(problem), "key": problem.key, "sigma": SIGMA}
    record["check"] = _check_textbook(problem, theta, weights)
    calls = tf_candidates(problem, theta, weights)
    compile_s = {name: common.time_once(call) for name, call in calls.items()}  # trace + compile
    peer_variants = []
    if peers is not None:
        path = os.path.join(folder, f"{problem.key}.npz")
        np.savez(path, theta=theta, w=weights)
        spec = {"op": problem.op, "B": problem.batch, "d": problem.d, "M": problem.num_samples}
        spec.update(sigma=SIGMA, k=problem.k, data=path)
        rankings = ("argsort", "packed") if problem == PRIMARY else ("argsort",)
        peer_values = {}
        for ranking in rankings:
            key = f"{problem.key}_{ranking}"
            reply = peers.request(cmd="setup", key=key, ranking=ranking, **spec)
            suffix = "" if ranking == "argsort" else "_packed"
            for name, seconds in reply["compile_s"].items():
                compile_s[name + suffix] = seconds
                peer_values[name + suffix] = reply["values"][name]["value"]
            peer_variants.append((key, suffix))
        record["peer_values"] = peer_values
    times: Dict[str, List[float]] = {name: [] for name in calls}
    for _ in range(rounds):  # TF block, then JAX block: alternate the processes
        for name, seconds in common.interleaved_times(calls, rounds=1, repeats=repeats, warmup=0).items():
            times[name] += seconds
        for key, suffix in peer_variants:
            reply = peers.request(cmd="time", key=key, repeats=repeats)
            for name, seconds in reply["times"].items():
                times.setdefault(name + suffix, []).extend(seconds)
    for key, _ in peer_variants:
        peers.request(cmd="drop", key=key)
    record["ours_value"] = record["check"]["value"]
    record["compile_s"] = compile_s
    record["times_s"] = times
    record["summary"] = {name: common.summarize(values) for name, values in times.items()}
    record["ratios"] = ratios(record["summary"])
    return record


def ratios(summary: Dict[str, dict]) -> dict:
    med = {name: stats["median_ms"] for name, stats in summary.items()}
    best_mode = min(("graph", "xla"), key=lambda mode: med[f"ours_{mode}"])
    out = {
        "best_mode": best_mode,
        "ours_over_floor_graph": med["ours_graph"] / med["floor_graph"],
        "ours_over_floor_xla": med["ours_xla"] / med["floor_xla"],
        "ours_over_floor_best_mode": med[f"ours_{best_mode}"] / med[f"floor_{best_mode}"],
        "ours_best_over_floor_best": min(med["ours_graph"], med["ours_xla"])
        / min(med["floor_graph"], med["floor_xla"]),
        "textbook_over_ours_graph": med["textbook_graph"] / med["ours_graph"],
        "textbook_over_ours_xla": med["textbook_xla"] / med["ours_xla"],
    }
    ours_best = min(med["ours_graph"], med["ours_xla"])
    peers = [name for name in ("jaxopt", "optax") if name in med]
    if peers:
        out["fastest_peer_over_ours_best"] = min(med[name] for name in peers) / ours_best
    packed = [f"{name}_packed" for name in ("jaxopt", "optax") if f"{name}_packed" in med]
    if packed:
        out["fastest_packed_peer_over_ours_best"] = min(med[name] for name in packed) / ours_best
    return out


# --------------------------------------------------------------------------- reporting

COLUMNS = (
    ("ours_graph", "ours graph"),
    ("ours_xla", "ours XLA"),
    ("floor_graph", "floor graph"),
    ("floor_xla", "floor XLA"),
    ("textbook_graph", "textbook graph"),
    ("textbook_xla", "textbook XLA"),
    ("jaxopt", "jaxopt"),
    ("optax", "optax"),
)


def _ms(summary: dict, name: str) -> str:
    if name not in summary:
        return "–"
    stats = summary[name]
    return f"{stats['median_ms']:.1f} [{stats['q1_ms']:.0f}–{stats['q3_ms']:.0f}]"


def render_markdown(records: List[dict], info: dict, command: str) -> str:
    primary = records[0]
    r = primary["ratios"]
    s = primary["summary"]
    lines = [f"### Primary problem: ranks, B={PRIMARY.batch}, d={PRIMARY.d}, M={PRIMARY.num_samples}, σ={SIGMA}", ""]
    lines.append(common.markdown_table(["variant", "median ms [q1–q3]", "n"], [
        (label, _ms(s, name), s[name]["n"]) for name, label in COLUMNS + (
            ("jaxopt_packed", "jaxopt, packed-key ranks"), ("optax_packed", "optax, packed-key ranks")
        ) if name in s
    ]))
    lines.append("")
    target_rows = [
        ("ours / floor, best mode (" + r["best_mode"] + ")", r["ours_over_floor_best_mode"], "≤ 1.2"),
        ("ours / floor, XLA", r["ours_over_floor_xla"], "≤ 1.5"),
        ("ours / floor, graph", r["ours_over_floor_graph"], ""),
        ("best ours / best floor (any modes)", r["ours_best_over_floor_best"], ""),
        ("textbook / ours, graph", r["textbook_over_ours_graph"], ""),
        ("textbook / ours, XLA", r["textbook_over_ours_xla"], ""),
    ]
    if "fastest_peer_over_ours_best" in r:
        target_rows.append(("faster of jaxopt, optax / best ours", r["fastest_peer_over_ours_best"], "≥ 5"))
    if "fastest_packed_peer_over_ours_best" in r:
        target_rows.append(
            ("same, peers given our packed-key ranking", r["fastest_packed_peer_over_ours_best"], "")
        )
    lines.append(common.markdown_table(["ratio (of medians)", "measured", "target"], target_rows))
    lines += ["", "### All problems (median ms, [q1–q3])", ""]
    headers = ["problem"] + [label for _, label in COLUMNS] + ["ours/floor best mode", "peer/ours"]
    rows = []
    for record in records:
        summary, ratio = record["summary"], record["ratios"]
        peer = ratio.get("fastest_peer_over_ours_best")
        rows.append(
            [record["key"]]
            + [_ms(summary, name) for name, _ in COLUMNS]
            + [f"{ratio['ours_over_floor_best_mode']:.2f} ({ratio['best_mode']})", "–" if peer is None else f"{peer:.1f}"]
        )
    lines.append(common.markdown_table(headers, rows))
    checks = [rec for rec in records if not rec["check"]["agree"]]
    lines += [
        "",
        "Textbook check (same noise, same solver): values and gradients (against ours with "
        "`control_variate=False`) agree to < 1e-4 relative on "
        + ("every problem." if not checks else f"all but {', '.join(rec['key'] for rec in checks)}."),
        "",
        "### Machine and versions",
        "",
        common.machine_markdown(info, command),
    ]
    return "\n".join(lines)


def plot(records: List[dict], sets: Dict[str, List[Problem]], suffix: str) -> List[pathlib.Path]:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    by_key = {record["key"]: record for record in records}
    paths = []
    for sweep, axis_name, attribute in (("vs_M", "M (samples)", "num_samples"), ("vs_d", "d", "d")):
        problems = sorted(
            [p for p in sets[sweep] + sets["primary"] if p.op == "ranks"], key=lambda p: getattr(p, attribute)
        )
        if sweep == "vs_M":
            problems = [p for p in problems if p.d == PRIMARY.d]
        else:
            problems = [p for p in problems if p.num_samples == PRIMARY.num_samples]
        figure, axes = plt.subplots(figsize=(6.4, 4.4))
        for name, label in COLUMNS:
            xs = [getattr(p, attribute) for p in problems if name in by_key[p.key]["summary"]]
            ys = [by_key[p.key]["summary"][name]["median_ms"] for p in problems if name in by_key[p.key]["summary"]]
            if xs:
                style = "--" if name.startswith(("floor", "textbook")) else "-"
                axes.plot(xs, ys, style, marker="o", label=label)
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel(axis_name)
        axes.set_ylabel("median time per call (ms)")
        fixed = f"B={PRIMARY.batch}, " + (f"d={PRIMARY.d}" if sweep == "vs_M" else f"M={PRIMARY.num_samples}")
        axes.set_title(f"perturbed ranks, forward+backward ({fixed}; floor: forward only)", fontsize=9)
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
        figure.tight_layout()
        path = common.RESULTS_DIR / f"perturbed_ops_{sweep}{suffix}.png"
        figure.savefig(path, dpi=110)
        plt.close(figure)
        paths.append(path)
    return paths


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer problems and rounds (≈ 1 min)")
    parser.add_argument("--no-peers", action="store_true", help="skip jaxopt and optax")
    parser.add_argument("--peer-python", help="interpreter with jax, jaxopt and optax")
    parser.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    parser.add_argument("--rounds", type=int, help="rounds of the primary problem (default 5, quick 3)")
    args = parser.parse_args(argv)

    tf.get_logger().setLevel("ERROR")  # one tf.function per problem and variant: retracing is expected
    sets = problem_sets(args.quick)
    primary_rounds = args.rounds or (2 if args.quick else 5)
    info = common.machine_info(["tensorflow", "keras", "numpy", "tf_perturbed"])
    info["threads"] = {
        "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
    }
    peers = None
    if not args.no_peers:
        python = ensure_peer_python(args.peer_python)
        if python is not None:
            peers = Peers(python)
            peer_info = peers.request(cmd="info")
            info["peers"] = {"JAX process": peer_info["versions"]}
    records = []
    try:
        with tempfile.TemporaryDirectory() as folder:
            for set_name, problems in sets.items():
                for problem in problems:
                    primary = set_name == "primary"
                    if primary:
                        rounds, repeats = primary_rounds, (2 if args.quick else 3)
                    else:
                        rounds, repeats = (2, 1) if args.quick else (3, 1)
                    print(f"{problem.key}: {rounds} rounds × {repeats} …", flush=True)
                    record = run_problem(problem, peers, rounds, repeats, folder)
                    record["set"] = set_name
                    records.append(record)
                    print(
                        "  "
                        + ", ".join(f"{n} {v['median_ms']:.1f} ms" for n, v in record["summary"].items()),
                        flush=True,
                    )
    finally:
        if peers is not None:
            peers.close()
    info["load_average_end"] = common.load_average()
    command = common.command_line()
    suffix = "_quick" if args.quick else ""
    markdown = render_markdown(records, info, command)
    md_path = common.write_markdown(f"perturbed_ops{suffix}", markdown)
    json_path = common.write_json(
        f"perturbed_ops{suffix}", {"command": command, "machine": info, "sigma": SIGMA, "records": records}
    )
    png_paths = plot(records, sets, suffix)
    print("\n" + markdown)
    print(f"\nwrote {md_path}, {json_path}, " + ", ".join(str(p) for p in png_paths))
    if not args.quick and not args.no_readme:
        readme = pathlib.Path(__file__).resolve().parent / "README.md"
        if readme.exists() and common.replace_marked_block(readme, "perturbed_ops", markdown):
            print(f"updated {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
