"""The JAX side of the perturbed-ops benchmark: jaxopt and optax on the same problems.

Runs in its own interpreter (`.venv-bench`, which has JAX; the project's venv has
TensorFlow), started by `perturbed_ops.py`, and answers one JSON request per line
on stdin with one JSON line on stdout, so that the two frameworks never share a
process and their timings can be interleaved:

    {"cmd": "info"}                             → versions and devices
    {"cmd": "setup", "key": …, "op": …, "B": …, "d": …, "M": …, "sigma": …, "k": …,
     "data": "x.npz", "ranking": "argsort" | "packed"}
                                                → compiles, returns values and compile time
    {"cmd": "time", "key": …, "repeats": n}     → n timed calls per peer, alternated
    {"cmd": "drop", "key": …}, {"cmd": "quit"}

Each peer computes the value and gradient of the random linear functional
L(θ) = Σ_b ⟨W_b, ŷ_ε(θ_b)⟩ under one `jax.jit`, with `block_until_ready`:

- jaxopt: `jaxopt.perturbations.make_perturbed_argmax(solver, M, σ, Normal(),
  control_variate=True)` (`make_perturbed_fun` for sort permutations, whose output
  is not the input's shape), vmapped over the batch with one key per example, as
  its docstring shows;
- optax: `optax.perturbations.make_perturbed_fun(solver, M, σ, Normal(),
  use_baseline=True)`, vmapped the same way.

The solvers are the plain JAX ones a user would write (ranks: a double
`jnp.argsort`); `ranking="packed"` swaps in the integer-key ranking that
tf_perturbed uses under XLA, to separate the solver's share from the estimator's.

Usage (by hand): `.venv-bench/bin/python benchmarks/peers_jax.py --self-test`.
"""

import json
import sys
import time

import numpy as np

# The versions the published numbers were measured with (see README.md).
REQUIREMENTS = ("jax==0.10.2", "jaxlib==0.10.2", "jaxopt==0.8.5", "optax==0.2.8", "numpy")


def _solvers(op: str, d: int, k: int, ranking: str):
    """The single-example JAX solver `x [d] -> y` for `op`."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    def argsort_ranks(x):
        return jnp.argsort(jnp.argsort(x, stable=True), stable=True)

    def packed_ranks(x):
        # Order-preserving int64 keys bits(x_i)·2³² + i, one single-operand sort, then the inverse.
        x = jnp.where(x == 0, jnp.zeros_like(x), x)
        bits = lax.bitcast_convert_type(x, jnp.int32)
        monotone = jnp.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        with jax.enable_x64(True):
            keys = monotone.astype(jnp.int64) * (2**32) + jnp.arange(x.shape[-1], dtype=jnp.int64)
            order = (lax.sort(keys, dimension=-1) & 0xFFFFFFFF).astype(jnp.int32)
        return jnp.zeros_like(order).at[order].set(jnp.arange(x.shape[-1], dtype=jnp.int32))

    integer_ranks = packed_ranks if ranking == "packed" else argsort_ranks

    if op == "argmax":
        return lambda x: jax.nn.one_hot(jnp.argmax(x), d, dtype=x.dtype)
    if op == "top_k":
        return lambda x: jnp.sum(jax.nn.one_hot(lax.top_k(x, k)[1], d, dtype=x.dtype), axis=0)
    if op == "ranks":
        return lambda x: integer_ranks(x).astype(x.dtype)
    if op == "sort_permutation":
        return lambda x: jax.nn.one_hot(integer_ranks(x), d, dtype=x.dtype).T  # P_ij = [rank_j = i]
    raise ValueError(f"Expected op in (argmax, top_k, ranks, sort_permutation), received: op={op!r}")


def build(request: dict) -> dict:
    """Jitted `θ ↦ (L(θ), ∇L(θ))` per peer for the problem in `request`."""
    import jax
    import jax.numpy as jnp
    from jaxopt import perturbations as jaxopt_pert
    from optax import perturbations as optax_pert

    op, num, sigma = request["op"], int(request["M"]), float(request["sigma"])
    data = np.load(request["data"])
    theta, weights = jnp.asarray(data["theta"]), jnp.asarray(data["w"])
    batch, d = theta.shape
    solver = _solvers(op, d, int(request.get("k") or 1), request.get("ranking", "argsort"))
    # θ, W and the key are arguments, not constants of the program: XLA could fold constant noise away.
    key = jax.random.key(0)

    if op == "sort_permutation":
        # Output [d, d] ≠ input [d]: make_perturbed_argmax cannot reshape it, and make_perturbed_fun's
        # control-variate JVP broadcasts y − y*(θ) to [M, d, d, d] and fails (jaxopt 0.8.5): no baseline.
        jaxopt_fn = jaxopt_pert.make_perturbed_fun(
            solver, num_samples=num, sigma=sigma, noise=jaxopt_pert.Normal(), control_variate=False
        )
    else:
        jaxopt_fn = jaxopt_pert.make_perturbed_argmax(
            solver, num_samples=num, sigma=sigma, noise=jaxopt_pert.Normal(), control_variate=True
        )
    optax_fn = optax_pert.make_perturbed_fun(
        solver, num_samples=num, sigma=sigma, noise=optax_pert.Normal(), use_baseline=True
    )

    def jaxopt_loss(t, w, key):
        keys = jax.random.split(key, batch)
        return jnp.sum(jax.vmap(jaxopt_fn)(t, keys) * w)

    def optax_loss(t, w, key):
        keys = jax.random.split(key, batch)
        return jnp.sum(jax.vmap(optax_fn)(keys, t) * w)

    peers = {
        "jaxopt": jax.jit(jax.value_and_grad(jaxopt_loss)),
        "optax": jax.jit(jax.value_and_grad(optax_loss)),
    }
    calls, values, compile_s = {}, {}, {}
    for name, fn in peers.items():
        start = time.perf_counter()
        value, grad = jax.block_until_ready(fn(theta, weights, key))
        compile_s[name] = time.perf_counter() - start
        calls[name] = lambda fn=fn: jax.block_until_ready(fn(theta, weights, key))
        values[name] = {"value": float(value), "grad": np.asarray(grad).ravel().tolist()}
    return {"calls": calls, "values": values, "compile_s": compile_s}


def info() -> dict:
    import jax

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    import common

    facts = common.machine_info(["jax", "jaxlib", "jaxopt", "optax", "numpy"])
    facts["devices"] = [str(device) for device in jax.devices()]
    return facts


def enable_compilation_cache() -> None:
    """Keeps compiled programs in `<tmp>/tf_perturbed_bench_cache/jax`: XLA:CPU takes
    seconds per program here (threefry noise alone 2–7 s), which a second run then skips."""
    import pathlib
    import tempfile

    import jax

    folder = pathlib.Path(tempfile.gettempdir()) / "tf_perturbed_bench_cache" / "jax"
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def serve() -> None:
    """Answers JSON requests from stdin until `quit` or end of input."""
    enable_compilation_cache()
    problems = {}
    for line in sys.stdin:
        request = json.loads(line)
        cmd = request["cmd"]
        try:
            if cmd == "quit":
                break
            if cmd == "info":
                reply = info()
            elif cmd == "setup":
                built = build(request)
                problems[request["key"]] = built["calls"]
                reply = {"values": built["values"], "compile_s": built["compile_s"]}
            elif cmd == "time":
                calls = problems[request["key"]]
                times = {name: [] for name in calls}
                for _ in range(int(request.get("repeats", 1))):
                    for name, call in calls.items():  # alternate the two peers
                        start = time.perf_counter()
                        call()
                        times[name].append(time.perf_counter() - start)
                reply = {"times": times}
            elif cmd == "drop":
                problems.pop(request["key"], None)
                reply = {}
            else:
                raise ValueError(f"Unknown command: cmd={cmd!r}")
            reply["ok"] = True
        except Exception as error:  # reported to the parent, which decides  # noqa: BLE001
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def self_test() -> None:
    """Builds every op once on a tiny problem and prints the compile times."""
    import os
    import tempfile

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        for op in ("argmax", "top_k", "ranks", "sort_permutation"):
            d = 6
            out = (4, d, d) if op == "sort_permutation" else (4, d)
            path = os.path.join(folder, f"{op}.npz")
            np.savez(path, theta=rng.normal(size=(4, d)).astype(np.float32), w=rng.normal(size=out).astype(np.float32))
            for ranking in ("argsort", "packed"):
                built = build({"op": op, "M": 8, "sigma": 0.5, "k": 2, "data": path, "ranking": ranking})
                print(op, ranking, {name: round(s, 2) for name, s in built["compile_s"].items()})


if __name__ == "__main__":
    if "--self-test" in sys.argv:
        self_test()
    else:
        serve()
