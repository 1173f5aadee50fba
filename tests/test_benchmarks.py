"""The benchmarks' correctness checks, run on tiny problems so that a benchmark cannot rot.

What each benchmark checks before it times anything, and what is added here:

- `perturbed_ops.py`: the textbook's value equals ours (same noise stream, same solver) and its
  gradient equals ours with `control_variate=False` (`_check_textbook`, which raises); here
  also: the floor's forward pass is ours, and the timed variant of ours (control variate on) has
  a finite nonzero gradient, so that the check cannot pass with two zero gradients;
- `solvers.py`: our optimal values equal SciPy's, graph mode and XLA (`check_against_scipy`);
- `memory.py`: nothing but the total Σ ŷ_ε = B·d that it records; here also: chunked = all at
  once, in graph mode and under XLA;
- `training_overhead.py`: nothing; here every timed loss is the one its docstring names, and its
  gradient with respect to the costs equals its formula (the models are the Warcraft tutorial's,
  which tests/test_tutorial_warcraft.py trains).

No timing, no JAX peers, no files: the benchmarks' own runs, even `--quick`, take minutes and
write to `benchmarks/results/`.
"""

import dataclasses
import importlib.util
import pathlib
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_perturbed as tp

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _load(name: str):
    """Imports `benchmarks/<name>.py` as the module `benchmark_<name>`.

    A benchmark puts its folder on `sys.path` and imports `common` from it: fine in a script's
    own process, not in this one, where other tests may import another `common`. So `sys.path`
    and the module `common` are restored after the import.
    """
    module_name = f"benchmark_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    saved_path, saved_common = list(sys.path), sys.modules.pop("common", None)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses look their module up there
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[module_name]
            raise
    finally:
        sys.modules.pop("common", None)
        if saved_common is not None:
            sys.modules["common"] = saved_common
        sys.path[:] = saved_path
    return module


@pytest.mark.parametrize("path", sorted(BENCHMARKS.glob("*.py")), ids=lambda path: path.stem)
def test_every_benchmark_module_imports(path):
    module = _load(path.stem)
    assert module.__doc__, f"benchmarks/{path.name} says what it measures in its docstring"
    assert "tf_perturbed._src" not in path.read_text(encoding="utf-8"), "benchmarks use the public API"


# --------------------------------------------------------------------------- perturbed_ops.py

PERTURBED_OPS = ("argmax", "top_k", "ranks", "sort_permutation")


def test_perturbed_ops_problems_are_all_checked_here():
    bench = _load("perturbed_ops")
    problems = [p for quick in (False, True) for ps in bench.problem_sets(quick).values() for p in ps]
    assert {p.op for p in problems} <= set(PERTURBED_OPS)
    for problem in problems:
        solver = tp.solvers.get_solver(problem.op, problem.solver_kwargs)
        assert solver.output_shape((problem.batch, problem.d)) == problem.out_shape, problem.key


@pytest.mark.parametrize("op", PERTURBED_OPS)
def test_perturbed_ops_textbook_equals_ours(op):
    bench = _load("perturbed_ops")
    benchmark_problems = [
        p for quick in (False, True) for ps in bench.problem_sets(quick).values() for p in ps if p.op == op
    ]
    assert benchmark_problems, f"no {op} problem in the benchmark: drop it from PERTURBED_OPS"
    k = benchmark_problems[0].k  # the benchmark's k (top_k: 10)
    problem = dataclasses.replace(benchmark_problems[0], batch=3, d=max(6, (k or 0) + 2), num_samples=8)
    theta, weights = bench._inputs(problem)

    check = bench._check_textbook(problem, theta, weights)
    assert check["agree"], check  # the benchmark's own criterion: both errors < 1e-4 relative

    # The timed `ours` (control variate on): same forward value, a finite nonzero gradient (a
    # textbook and an estimator that both returned 0 would pass the check above).
    value, grad = bench._blocking(tf.function(bench._ours(problem)), theta, weights)()
    np.testing.assert_allclose(value, check["value"], rtol=1e-6)
    assert np.all(np.isfinite(grad)) and np.max(np.abs(grad)) > 1e-3, grad

    # The floor computes ours' forward pass: same noise, same solutions, same mean (sums of
    # B·d float32 terms in another order: ~1e-7 relative).
    seed = tf.constant(bench.SEED, tf.int32)
    (floor_mean,) = tf.function(bench._floor(problem))(tf.constant(theta), tf.constant(weights), seed)
    np.testing.assert_allclose(np.sum(floor_mean.numpy() * weights), check["value"], rtol=1e-5)


# --------------------------------------------------------------------------- solvers.py


def test_solvers_problems_are_all_checked_here():
    bench = _load("solvers")
    assert {solver for solver, _, _ in bench.PROBLEMS} == {"shortest_path", "graph_shortest_path", "assignment",
                                                           "knapsack", "knapsack_2"}


@pytest.mark.parametrize("solver", ["shortest_path", "graph_shortest_path", "assignment", "knapsack", "knapsack_2"])
def test_solvers_optimal_values_equal_scipy(solver):
    bench = _load("solvers")
    # 12 × 12 grids, PyEPO's 5 × 5 grid DAG, n = 10, 32 items
    size = min(size for name, size, _ in bench.PROBLEMS if name == solver)
    inputs, reference, ours = bench.make_problem(solver, size, 4)
    bench.check_against_scipy(solver, inputs, reference, bench.compiled(ours))


# --------------------------------------------------------------------------- memory.py


def test_memory_step_chunked_equals_all_at_once():
    bench = _load("memory")
    num_samples, batch, dim = 8, 3, 5
    theta, step = bench.make_step(num_samples, batch, dim)
    total, grad = (t.numpy() for t in step(theta))
    # Σ ŷ_ε(θ) = B·d: each of the M·B permutation matrices holds d ones.
    np.testing.assert_allclose(total, batch * dim, rtol=1e-6)
    assert np.all(np.isfinite(grad)) and np.max(np.abs(grad)) > 1e-3, grad
    # Chunks of 3 (3 + 3 + 2 samples) take the same M draws (one stream for all M): the same
    # estimate, summed in another grouping (float32 sums of 8 terms; measured ≤ 2e-7 relative).
    for jit in (False, True):
        theta, step = bench.make_step(num_samples, batch, dim, chunk_size=3, jit=jit)
        chunked_total, chunked_grad = (t.numpy() for t in step(theta))
        np.testing.assert_allclose(chunked_total, batch * dim, rtol=1e-6)
        np.testing.assert_allclose(chunked_grad, grad, rtol=0, atol=1e-5 * np.max(np.abs(grad)))


# --------------------------------------------------------------------------- training_overhead.py

MAPS = 4


@pytest.fixture(scope="module")
def warcraft_maps():
    """A few maps of the benchmark's generator (the tutorial's `warcraft_data`, seed 0)."""
    return _load("training_overhead").warcraft_data.generate_maps(MAPS, seed=0, split="train")


def test_training_overhead_losses_are_what_the_benchmark_says(warcraft_maps):
    bench = _load("training_overhead")
    losses = bench._losses()
    assert set(losses) == {"squared", *(f"fenchel_young_M{m}" for m in bench.SAMPLES), "blackbox"}
    for m in bench.SAMPLES:
        arguments = losses[f"fenchel_young_M{m}"][0].config.arguments()
        assert arguments["solver"] == "shortest_path" and arguments["num_samples"] == m
        assert arguments["sigma"] == bench.SIGMA and arguments["noise"] == "normal"
        assert arguments["perturbation"] == "multiplicative"  # the docstring's claim
    blackbox = bench._blackbox_layer().config.arguments()
    assert blackbox["solver"] == "shortest_path" and blackbox["normalize"] == "max_abs"
    assert blackbox["epsilon"] == bench.warcraft.blackbox_epsilon(20.0)  # the tutorial's λ = 20
    assert blackbox["sigma"] == 0.0


def test_training_overhead_loss_gradients_equal_their_formulas(warcraft_maps):
    """The gradients that `loss_only_steps` times, against the formulas written plainly.

    The costs are the benchmark's: the true costs times exp(0.3·N(0, 1)), seed (0, 1).
    """
    bench = _load("training_overhead")
    steps = bench.loss_only_steps(warcraft_maps)
    shape = warcraft_maps["costs"].shape  # [B, 12, 12]
    costs = (warcraft_maps["costs"] * tf.exp(0.3 * tf.random.stateless_normal(shape, [0, 1]))).numpy()
    paths = warcraft_maps["paths"]
    cells = shape[1] * shape[2]
    assert set(steps) == set(bench._losses())

    # Mean squared error over B·H·W entries: 2 (c − c_true) / (B·H·W).
    expected = 2.0 * (costs - warcraft_maps["costs"]) / (MAPS * cells)
    np.testing.assert_allclose(steps["squared"](), expected, rtol=1e-5, atol=1e-8)

    # The plain solves below, in one solver call (one compilation): the blackbox's two problems,
    # then the M·B perturbed problems of each Fenchel-Young loss.
    step_size = abs(bench._blackbox_layer().config.epsilon)
    seed = tp.seeds.next_seed(keras.random.SeedGenerator(0))  # each loss's first call (seed 0)
    multipliers = {}
    problems = [costs, np.maximum(costs + step_size * (1.0 - 2.0 * paths), 0.0)]
    for m in bench.SAMPLES:
        z = tp.noise.get_noise("normal").sample([m, *shape], seed, tf.float32)  # [M, B, H, W]
        multipliers[m] = tf.exp(bench.SIGMA * z - bench.SIGMA**2 / 2).numpy()
        problems.append((costs * multipliers[m]).reshape(-1, *shape[1:]))
    solved = tp.solvers.shortest_path(tf.constant(np.concatenate(problems))).numpy()
    y_hard, y_moved, *samples = np.split(solved, np.cumsum([len(p) for p in problems])[:-1])

    # Fenchel-Young, minimising, multiplicative normal noise, mean over the B maps:
    # ∇c = (y − (1/M) Σ_m y*(c ⊙ e_m) ⊙ e_m) / B, e_m = exp(εZ_m − ε²/2).
    for m, solutions in zip(bench.SAMPLES, samples):
        expected = (paths - np.mean(solutions.reshape(m, *shape) * multipliers[m], axis=0)) / MAPS
        got = steps[f"fenchel_young_M{m}"]()
        assert np.max(np.abs(got)) > 1e-3, f"fenchel_young_M{m}: gradient {got}"
        # float32 sums of ≤ 10 terms of size ≤ 1.5 / B: ~1e-7; measured ≤ 3e-8.
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"fenchel_young_M{m}")

    # Blackbox (DirectLossGradient, Hamming loss per map, summed by the tape): g = (1 − 2y)/(H·W),
    # a = max|g| = 1/(H·W); y_ε = y*(max(c + |ε|·(1 − 2y), 0)) for a minimising solver, and the
    # gradient is a·(y_ε − y*(c))/|ε|, with ε = −20/70.
    expected = (y_moved - y_hard) / (cells * step_size)
    got = steps["blackbox"]()
    assert np.max(np.abs(got)) > 0, "blackbox: zero gradient"
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)

