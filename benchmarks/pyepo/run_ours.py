"""Our side of the PyEPO comparison: Keras + tf_perturbed on PyEPO's instances and settings.

The same `.npz` instances as `run_pyepo.py` (written by `data.py`), the same linear
model (`Dense(d)` on the 5 features, initialised like PyTorch's `nn.Linear`:
weights and bias uniform in ±1/√5), Adam, batch 32, 20 epochs, and each method's
loss and hyper-parameters as PyEPO's paper ran them (`run_pyepo.py` lists them):

| method | ours | loss | lr |
|---|---|---|---|
| two_stage | `Dense` on the costs | `MeanSquaredError()(c, ĉ)` | 1e-2 |
| spo_plus | `tf_perturbed.SPOPlusLoss(solver)` | SPO+ | 1e-2 |
| blackbox | `Dense` → `tf_perturbed.DirectLossGradient(solver, epsilon=−λ, normalize="none")` | mean \\|⟨ŵ, c⟩ − z*\\| | 1e-1 |
| perturbed | `Dense` → `tf_perturbed.PerturbedOptimizer(solver, num_samples=1, sigma=1, noise="normal", perturbation="additive", control_variate=False)` | mean \\|⟨E[ŵ], c⟩ − z*\\| | 1e-2 |
| fenchel_young | `tf_perturbed.FenchelYoungLoss(solver, num_samples=1, sigma=1, noise="normal", perturbation="additive")` | Fenchel-Young | 1e-2 |
| imle | `Dense` → `tf_perturbed.ImplicitMLE(solver, lambda_=10, num_samples=3, sigma=1, noise="sum_of_gamma", kappa=5)` | mean \\|E[ŵ] − w*\\| | 1e-2 |

λ = 20 for the shortest path and 10 for the knapsack (PyEPO's). With `normalize="none"`
and ε = −λ, the direct estimator is PyEPO's DBB step to the letter: ŵ_λ = w*(ĉ + λg),
∂L/∂ĉ = (ŵ_λ − ŵ)/λ (`tf_perturbed.direct_loss_gradient`'s docstring). PyEPO's DPO
with one sample has no baseline, hence `control_variate=False`.

Solvers: `"graph_shortest_path"` on PyEPO's grid (senders/receivers of `data.grid_arcs`,
vertex 0 to 24, acyclic so costs of any sign) and `"knapsack"` (weights and capacity in
hundredths, one dimension); `--solver numpy` swaps the shortest path for the NumPy
dynamic programme of `data.py` through `tf_perturbed.solvers.numpy_solver` (host code:
no XLA). Regret after every epoch: `data.normalized_regret` of the exact NumPy solvers'
decisions on the 1,000 test instances (PyEPO's metric, Σ regret / Σ |z*|).

Timing: the wall-clock and process CPU seconds (all threads) of every epoch of
`model.fit` (from `on_epoch_begin` to `on_epoch_end`, before the regret is computed);
the first epoch includes tracing and compilation.

Usage (from the repository root):

    .venv/bin/python benchmarks/pyepo/run_ours.py --quick             # sp, degree 4, 2 epochs
    .venv/bin/python benchmarks/pyepo/run_ours.py --problem sp --deg 1 2 4 6

Results: one JSON line per run in `benchmarks/results/pyepo_ours.jsonl` (or
`pyepo_ours_quick.jsonl`), the first line the machine; `--resume` skips the runs there.
"""

import os
import pathlib
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_perturbed as tp  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import common  # noqa: E402
import data  # noqa: E402
import runs  # noqa: E402

METHODS = ("two_stage", "spo_plus", "blackbox", "perturbed", "fenchel_young", "imle")
PEER_NAME = {  # run_pyepo.py's names
    "two_stage": "2s_mse",
    "spo_plus": "spo+",
    "blackbox": "dbb",
    "perturbed": "dpo",
    "fenchel_young": "pfyl",
    "imle": "imle",
}
EPOCHS = 20
BATCH = 32
LEARNING_RATE = {"two_stage": 1e-2, "spo_plus": 1e-2, "blackbox": 1e-1, "perturbed": 1e-2,
                 "fenchel_young": 1e-2, "imle": 1e-2}
BLACKBOX_LAMBDA = {"sp": 20.0, "ks": 10.0, "ks2": 10.0}
PERTURBED = {"num_samples": 1, "sigma": 1.0, "noise": "normal", "perturbation": "additive"}
IMLE = {"lambda_": 10.0, "num_samples": 3, "sigma": 1.0, "noise": "sum_of_gamma", "kappa": 5.0}


def solver_for(problem: str, stored: dict, kind: str):
    """(solver, solver_kwargs, exact NumPy solver, maximize, in-graph) for one problem."""
    if problem == "sp":
        senders, receivers = stored["senders"], stored["receivers"]

        def exact(costs):
            return data.dag_shortest_paths(costs, senders, receivers)

        if kind == "numpy":
            solver = tp.solvers.numpy_solver(exact, batched=True, maximize=False)
            return solver, None, exact, False, False
        kwargs = {
            "senders": [int(v) for v in senders],
            "receivers": [int(v) for v in receivers],
            "source": 0,
            "target": int(receivers.max()),
        }
        return "graph_shortest_path", kwargs, exact, False, True
    if problem == "ks2":
        return _enumerated_knapsack(stored["selections"])
    weights, capacity = [int(v) for v in stored["weights_int"]], int(stored["capacity_int"])

    def exact(values):
        return data.knapsack_selections(values, weights, capacity)

    return "knapsack", {"weights": weights, "capacity": capacity}, exact, True, True


def _enumerated_knapsack(selections: np.ndarray):
    """`solver_for` on `ks2`: the best of the feasible selections `[F, m]`, in the graph (exact).

    Registered as a solver (maximised) so that every estimator takes it; ties go to the
    first selection, as `data.best_selections` (the labels) does.
    """
    table = tf.constant(selections, tf.float32)  # [F, m]

    def solve(values):
        totals = tf.einsum("...m,fm->...f", tf.cast(values, tf.float32), table)  # [..., F]
        return tf.cast(tf.gather(table, tf.argmax(totals, axis=-1)), values.dtype)

    name = "pyepo_ks2_enumerated"
    tp.solvers.register_solver(name, solve, overwrite=True)

    def exact(values):
        return data.best_selections(values, selections)

    return name, None, exact, True, True


def objective_l1(y_true, y_pred):
    """|⟨ŵ, c⟩ − z*| per example, y_true = [c, z*] (PyEPO's L1 loss on objective values)."""
    costs, optimal = y_true[:, :-1], y_true[:, -1]
    return tf.abs(tf.reduce_sum(y_pred * costs, axis=-1) - optimal)


def build(method: str, problem: str, stored: dict, solver, solver_kwargs, seed: int):
    """(training model, predictor, loss, training targets) for one method."""
    num_features, num_outputs = stored["x_train"].shape[1], stored["c_train"].shape[1]
    bound = 1.0 / np.sqrt(num_features)  # nn.Linear's default initialisation
    predictor = keras.Sequential(
        [
            keras.Input((num_features,)),
            keras.layers.Dense(
                num_outputs,
                kernel_initializer=keras.initializers.RandomUniform(-bound, bound, seed=seed),
                bias_initializer=keras.initializers.RandomUniform(-bound, bound, seed=seed + 1),
            ),
        ]
    )
    c, w, z = stored["c_train"], stored["w_train"], stored["z_train"]
    costs_and_value = np.concatenate([c, z[:, None]], axis=1).astype(np.float32)
    kwargs = {"solver_kwargs": solver_kwargs} if solver_kwargs else {}
    if method == "two_stage":
        return predictor, predictor, keras.losses.MeanSquaredError(), c
    if method == "spo_plus":
        return predictor, predictor, tp.SPOPlusLoss(solver, **kwargs), c
    if method == "fenchel_young":
        loss = tp.FenchelYoungLoss(solver, seed=seed, **PERTURBED, **kwargs)
        return predictor, predictor, loss, w
    if method == "blackbox":
        head = tp.DirectLossGradient(solver, epsilon=-BLACKBOX_LAMBDA[problem], normalize="none", **kwargs)
        targets, loss = costs_and_value, objective_l1
    elif method == "perturbed":
        head = tp.PerturbedOptimizer(solver, control_variate=False, seed=seed, **PERTURBED, **kwargs)
        targets, loss = costs_and_value, objective_l1
    elif method == "imle":
        head = tp.ImplicitMLE(solver, seed=seed, **IMLE, **kwargs)
        targets, loss = w, keras.losses.MeanAbsoluteError()
    else:
        raise ValueError(f"Expected method in {METHODS}, received: method={method!r}")
    return keras.Sequential([predictor, head]), predictor, loss, targets


class EpochLog(keras.callbacks.Callback):
    """Seconds of each epoch, then the test regret of the predictor's decisions."""

    def __init__(self, regret, epochs: int, evaluate: str = "every"):
        super().__init__()
        self.regret, self.epochs, self.evaluate = regret, epochs, evaluate
        self.epoch_s, self.epoch_cpu_s, self.loss, self.regrets = [], [], [], [regret()]
        self.regret_epochs = [0]

    def on_epoch_begin(self, epoch, logs=None):
        self.start, self.start_cpu = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_s.append(time.perf_counter() - self.start)
        self.epoch_cpu_s.append(time.process_time() - self.start_cpu)
        self.loss.append(float(logs["loss"]))
        if self.evaluate == "every" or epoch + 1 == self.epochs:
            self.regrets.append(self.regret())
            self.regret_epochs.append(epoch + 1)


def run_method(method: str, problem: str, stored: dict, seed: int, epochs: int, kind: str, verbose,
               evaluate: str = "every") -> dict:
    keras.utils.set_random_seed(seed)
    solver, solver_kwargs, exact, maximize, in_graph = solver_for(problem, stored, kind)
    model, predictor, loss, targets = build(method, problem, stored, solver, solver_kwargs, seed)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE[method]), loss=loss, jit_compile=in_graph)
    x_test, c_test, z_test = stored["x_test"].astype(np.float32), stored["c_test"], stored["z_test"]

    def regret():
        chosen = exact(predictor.predict(x_test, batch_size=1000, verbose=0))
        return data.normalized_regret(chosen, c_test, z_test, maximize)

    log = EpochLog(regret, epochs, evaluate)
    model.fit(
        stored["x_train"].astype(np.float32),
        targets.astype(np.float32),
        batch_size=BATCH,
        epochs=epochs,
        shuffle=True,
        callbacks=[log],
        verbose=verbose,
    )
    return {
        "epoch_s": log.epoch_s,
        "epoch_cpu_s": log.epoch_cpu_s,
        "loss": log.loss,
        "regret": log.regrets,
        "regret_epochs": log.regret_epochs,
        "jit_compile": in_graph,
    }


def hyper_parameters(method: str, problem: str, kind: str) -> dict:
    hyper = {"epochs": EPOCHS, "batch": BATCH, "optimizer": "adam", "lr": LEARNING_RATE[method],
             "solver": "numpy stand-in" if (kind == "numpy" and problem == "sp") else "in-graph"}
    if method == "blackbox":
        hyper.update(epsilon=-BLACKBOX_LAMBDA[problem], normalize="none", loss="L1(objective)")
    elif method == "perturbed":
        hyper.update(PERTURBED, control_variate=False, loss="L1(objective)")
    elif method == "fenchel_young":
        hyper.update(PERTURBED)
    elif method == "imle":
        hyper.update(IMLE, loss="L1(solution)")
    return hyper


def main() -> None:
    parser = runs.make_parser(__doc__.split("\n", 1)[0], METHODS, EPOCHS)
    parser.add_argument("--solver", default="graph", choices=["graph", "numpy"],
                        help="shortest path: the in-graph solver or the NumPy stand-in")
    parser.add_argument("--verbose", default=1, type=int, help="model.fit's verbose (1: progress bar)")
    args = runs.apply_quick(parser.parse_args())
    if args.solver == "graph" and "graph_shortest_path" not in tp.solvers.registered_solvers():
        print("tf_perturbed has no 'graph_shortest_path' yet: using the NumPy stand-in (--solver numpy)")
        args.solver = "numpy"

    def machine():
        facts = common.machine_info(["tensorflow", "keras", "numpy", "tf_perturbed"])
        facts["command"] = common.command_line()
        return facts

    def run_one(method, problem, stored, seed):
        result = run_method(method, problem, stored, seed, args.epochs, args.solver, args.verbose, args.eval)
        return {"peer_method": PEER_NAME[method], "hyper": hyper_parameters(method, problem, args.solver), **result}

    runs.run_all(args, "ours", "pyepo_ours", machine, run_one)


if __name__ == "__main__":
    main()
