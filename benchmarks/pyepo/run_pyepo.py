"""The PyEPO side of the PyEPO comparison: PyEPO 2.2.7 trains its methods on our `.npz` instances.

Runs in its own interpreter, `.venv-pyepo` (PyTorch, PyEPO, Gurobi's size-limited licence
that ships with `gurobipy`); started with another Python, the script creates that venv
(`python3 -m venv .venv-pyepo` and `pip install` of `REQUIREMENTS`) and runs itself again
inside it.

What it trains, as PyEPO's paper did (Tang & Khalil, "PyEPO: A PyTorch-based End-to-End
Predict-then-Optimize Library for Linear and Integer Programming", Math. Prog. Comp. 2024;
its experiments are the `MPC` branch of github.com/khalil-research/PyEPO: `config/`,
`experiments.py`, `run/`): a linear model `nn.Linear(5, d)` (d = 40 arcs, or 32 items),
Adam, batch 32, 20 epochs for 1,000 training instances, Gurobi as the solver:

| method | PyEPO module | loss | lr | hyper-parameters |
|---|---|---|---|---|
| 2s | `sklearn.linear_model.LinearRegression` on the costs (the paper's "2-stage LR") | squared error | closed form | |
| 2s_mse | `nn.Linear` trained on the costs (not in the paper; the per-epoch counterpart of ours) | `MSELoss(ĉ, c)` | 1e-2 | |
| spo+ | `SPOPlus` | the SPO+ loss | 1e-2 | |
| dbb | `blackboxOpt` | `L1Loss(⟨ŵ, c⟩, z*)` (objective values) | 1e-1 | λ = 20 (shortest path), 10 (knapsack) |
| dpo | `perturbedOpt` | `L1Loss(⟨E[ŵ], c⟩, z*)` (objective values) | 1e-2 | M = 1, σ = 1 |
| pfyl | `perturbedFenchelYoung` | the Fenchel-Young loss | 1e-2 | M = 1, σ = 1 |
| imle | `implicitMLE` (sum-of-Gamma noise, κ = 5) | `L1Loss(E[ŵ], w*)` (solutions) | 1e-2 | M = 3, σ = 1, λ = 10 |

I-MLE is not in the paper; its row follows PyEPO's notebook "03 Training and Testing"
(the same 5×5 problem, 1,000 instances, `trainModel(…, num_epochs=20, lr=1e-2)`). Today's
PyEPO docs suggest other losses for DPO (`MSELoss(E[ŵ], w*)`, M = 10, σ = 0.5); the
table keeps the paper's.

Recorded per run: the wall-clock and process CPU seconds of every training epoch (the loop over the batches:
forward, solver calls, backward, Adam; evaluation excluded), the normalised regret
on the 1,000 test instances after every epoch (`pyepo.metric.regret`:
Σ regret / Σ |z*|), the training loss. Labels w*, z* come from the `.npz` (our exact
solvers; `check_data.py` shows Gurobi's optimal values equal them; the knapsack has
ties, where `--labels pyepo` takes Gurobi's solutions instead).

Usage (from the repository root):

    python3 benchmarks/pyepo/run_pyepo.py --quick          # sp, degree 4, seed 0, 2 epochs
    .venv-pyepo/bin/python benchmarks/pyepo/run_pyepo.py --problem sp --deg 1 2 4 6
    .venv-pyepo/bin/python benchmarks/pyepo/run_pyepo.py --problem ks --methods spo+ pfyl

Results: one JSON line per run in `benchmarks/results/pyepo_peer.jsonl`
(`pyepo_peer_quick.jsonl` with --quick), the first line the machine; `--resume` keeps
the runs already there and skips them.
"""

import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
VENV = ROOT / ".venv-pyepo"

# The versions the published comparison was measured with (README.md). torch's CPU wheel:
# the default wheel pulls the CUDA libraries (gigabytes) that a CPU run never loads.
REQUIREMENTS = (
    "torch==2.13.0+cpu",
    "pyepo==2.2.7",
    "gurobipy==13.0.3",
    "scikit-learn==1.9.1",
    "numpy==2.4.6",
)

METHODS = ("2s", "2s_mse", "spo+", "dbb", "dpo", "pfyl", "imle")
EPOCHS = 20
BATCH = 32
LEARNING_RATE = {"2s_mse": 1e-2, "spo+": 1e-2, "dbb": 1e-1, "dpo": 1e-2, "pfyl": 1e-2, "imle": 1e-2}
DBB_LAMBDA = {"sp": 20.0, "ks": 10.0, "ks2": 10.0}
PERTURBED = {"n_samples": 1, "sigma": 1.0}  # dpo and pfyl
IMLE = {"n_samples": 3, "sigma": 1.0, "lambd": 10.0}


def ensure_interpreter() -> None:
    """Re-runs this script in `.venv-pyepo` (created when missing) unless PyEPO imports here."""
    try:
        import gurobipy  # noqa: F401
        import pyepo  # noqa: F401
        import torch  # noqa: F401

        return
    except ImportError:
        pass
    python = VENV / "bin" / "python"
    if pathlib.Path(sys.prefix).resolve() == VENV.resolve():
        raise SystemExit(f"{python} lacks PyEPO: pip install {' '.join(REQUIREMENTS)}")
    if not python.exists():
        print(f"Creating {VENV}: pip install {' '.join(REQUIREMENTS)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        (VENV / ".gitignore").write_text("*\n", encoding="utf-8")  # as Python ≥ 3.13 venvs do
        subprocess.run([str(python), "-m", "pip", "install", "-q", *REQUIREMENTS], check=True)
    os.execv(str(python), [str(python), *sys.argv])


def hyper_parameters(method: str, problem: str) -> dict:
    """The settings of one method (module docstring), as recorded with its results."""
    hyper = {"epochs": EPOCHS, "batch": BATCH, "optimizer": "adam", "lr": LEARNING_RATE.get(method)}
    if method == "2s":
        return {"predictor": "sklearn LinearRegression"}
    if method == "dbb":
        hyper.update(lambd=DBB_LAMBDA[problem], loss="L1(objective)")
    elif method == "dpo":
        hyper.update(PERTURBED, loss="L1(objective)")
    elif method == "pfyl":
        hyper.update(PERTURBED)
    elif method == "imle":
        hyper.update(IMLE, noise="sum of Gamma, kappa=5", loss="L1(solution)")
    elif method == "2s_mse":
        hyper.update(loss="MSE(costs)")
    return hyper


def build_optmodel(problem: str, stored: dict):
    import pyepo

    if problem == "sp":
        return pyepo.model.grb.shortestPathModel(tuple(int(v) for v in stored["grid"]))
    return pyepo.model.grb.knapsackModel(stored["weights"], stored["capacity"])


def loaders(stored: dict, optmodel, labels: str, seed: int):
    """Training and test DataLoaders yielding (x, c, w*, z*) as PyEPO's optDataset does."""
    import numpy as np
    import pyepo
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    def part(name):
        x, c = stored[f"x_{name}"], stored[f"c_{name}"]
        if labels == "pyepo":
            dataset = pyepo.data.dataset.optDataset(optmodel, x, c)
            w, z = np.asarray(dataset.sols), np.asarray(dataset.objs).reshape(-1)
        else:
            w, z = stored[f"w_{name}"], stored[f"z_{name}"]
        tensors = [torch.as_tensor(np.asarray(a, np.float32)) for a in (x, c, w, np.reshape(z, (-1, 1)))]
        return TensorDataset(*tensors)

    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(part("train"), batch_size=BATCH, shuffle=True, generator=generator)
    test = DataLoader(part("test"), batch_size=BATCH, shuffle=False)
    return train, test


def make_loss(method: str, problem: str, optmodel):
    """`loss(ĉ, x, c, w, z)` for one method, built from PyEPO's modules."""
    import pyepo
    from torch import nn

    l1, mse = nn.L1Loss(), nn.MSELoss()
    if method == "2s_mse":
        return lambda cp, c, w, z: mse(cp, c)
    if method == "spo+":
        spo = pyepo.func.SPOPlus(optmodel, processes=1)
        return lambda cp, c, w, z: spo(cp, c, w, z)
    if method == "dbb":
        dbb = pyepo.func.blackboxOpt(optmodel, lambd=DBB_LAMBDA[problem], processes=1)
        return lambda cp, c, w, z: l1((dbb(cp) * c).sum(1, keepdim=True), z)
    if method == "dpo":
        dpo = pyepo.func.perturbedOpt(optmodel, processes=1, **PERTURBED)
        return lambda cp, c, w, z: l1((dpo(cp) * c).sum(1, keepdim=True), z)
    if method == "pfyl":
        pfyl = pyepo.func.perturbedFenchelYoung(optmodel, processes=1, **PERTURBED)
        return lambda cp, c, w, z: pfyl(cp, w)
    if method == "imle":
        imle = pyepo.func.implicitMLE(optmodel, processes=1, **IMLE)
        return lambda cp, c, w, z: l1(imle(cp), w)
    raise ValueError(f"Expected method in {METHODS}, received: method={method!r}")


def run_two_stage(stored: dict, optmodel, test) -> dict:
    """The paper's 2-stage LR: least squares on the costs, then the solver."""
    import pyepo
    from sklearn.linear_model import LinearRegression

    start = time.perf_counter()
    predictor = pyepo.twostage.sklearnPred(LinearRegression())
    predictor.fit(stored["x_train"], stored["c_train"])
    fit_s = time.perf_counter() - start
    return {"fit_s": fit_s, "regret": [float(pyepo.metric.regret(predictor.predict, optmodel, test))]}


def run_method(method: str, problem: str, stored: dict, seed: int, epochs: int, labels: str,
               evaluate: str = "every") -> dict:
    import pyepo
    import torch

    optmodel = build_optmodel(problem, stored)
    torch.manual_seed(seed)
    train, test = loaders(stored, optmodel, labels, seed)
    if method == "2s":
        return run_two_stage(stored, optmodel, test)
    model = torch.nn.Linear(stored["x_train"].shape[1], stored["c_train"].shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE[method])
    loss_fn = make_loss(method, problem, optmodel)
    epoch_s, epoch_cpu_s, losses = [], [], []
    regrets = [float(pyepo.metric.regret(model, optmodel, test))]
    regret_epochs = [0]
    for epoch in range(1, epochs + 1):
        model.train()
        total, start, start_cpu = 0.0, time.perf_counter(), time.process_time()
        for x, c, w, z in train:
            loss = loss_fn(model(x), c, w, z).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(x)
        epoch_s.append(time.perf_counter() - start)
        epoch_cpu_s.append(time.process_time() - start_cpu)
        losses.append(total / len(train.dataset))
        if evaluate == "every" or epoch == epochs:
            regrets.append(float(pyepo.metric.regret(model, optmodel, test)))
            regret_epochs.append(epoch)
    return {"epoch_s": epoch_s, "epoch_cpu_s": epoch_cpu_s, "loss": losses, "regret": regrets,
            "regret_epochs": regret_epochs}


def machine() -> dict:
    import gurobipy
    import torch

    sys.path.insert(0, str(HERE.parent))
    import common

    facts = common.machine_info(["pyepo", "torch", "gurobipy", "numpy", "sklearn"])
    facts.update(command=common.command_line(), gurobi=".".join(map(str, gurobipy.gurobi.version())))
    facts["torch_threads"] = torch.get_num_threads()
    return facts


def main() -> None:
    ensure_interpreter()  # before NumPy is imported: the interpreter may be a bare python3
    sys.path.insert(0, str(HERE))
    import runs

    parser = runs.make_parser(__doc__.split("\n", 1)[0], METHODS, EPOCHS)
    parser.add_argument("--labels", default="ours", choices=["ours", "pyepo"])
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads(n) (default: torch's, one per core)")
    args = runs.apply_quick(parser.parse_args())
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    def run_one(method, problem, stored, seed):
        result = run_method(method, problem, stored, seed, args.epochs, args.labels, args.eval)
        return {"labels": args.labels, "hyper": hyper_parameters(method, problem), **result}

    runs.run_all(args, "pyepo", "pyepo_peer", machine, run_one)


if __name__ == "__main__":
    main()
