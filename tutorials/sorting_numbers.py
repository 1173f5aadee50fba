"""Sorting numbers with a learned-noise direct loss (bipartite matchings).

Indelman et al., §5.1 and Appendix C.1, on the protocol of Mena et al. (2018):
each example is a sequence x of d numbers drawn uniformly in [0, 1]; a network
applied to each element (FC 1→32 with ReLU, FC 32→d) gives a d×d score matrix θ
(row i = element i, column j = position j), and the prediction is the matching

    P = assignment(θ + σ(x)·γ),   γ ~ Gumbel,   P[i, j] = 1: element i goes to position j

(no noise at test time: P = assignment(θ)). The task loss is the squared error
between the sequence reordered by P and the sorted sequence s = sort(x):

    ℓ(P) = ‖Pᵀx − s‖² = Σ_j (Σ_i P_ij x_i − s_j)²
         = Σ_ij P_ij x_i² − 2 Σ_ij P_ij x_i s_j + Σ_j s_j²     (one 1 per column of P)
         = Σ_ij P_ij (x_i − s_j)² = ⟨P, C⟩,   C_ij = (x_i − s_j)²  (one 1 per row of P)

so for permutation matrices the loss is LINEAR in P, with gradient ∂ℓ/∂P = C
(the x_i² and s_j² parts are constant on permutations, and could be dropped).
`tf_perturbed.DirectLossGradient("assignment", ε < 0)` therefore computes the
loss-perturbed matching assignment(θ + σγ + ε·C/max C) — one more assignment —
and the gradient (y_ε − y₀)·max C/ε. Methods (row key `method`):

  * `direct_sigma0`: σ = 0 (direct loss minimization, Hazan et al.; one sample,
    as every sample would be the same);
  * `direct_sigma1`: σ = 1 (Lorberbom et al.);
  * `direct_learned`: σ(x) = softplus(x·w + b) by `tf_perturbed.LearnedNoiseScale`
    (its built-in head: one linear layer on the sequence, softplus; σ starts at 1),
    trained `--sigma-lr-scale` (0.01) times more slowly than the scores (the
    paper: SGD at 1e-6 for σ against Adam at 0.1 for the scores);
  * `gumbel_sinkhorn` (Mena et al.): P = Sinkhorn((θ + γ)/τ), 20 log-space
    iterations, trained on ‖Pᵀx − s‖² with the soft P; test-time prediction is
    the hard assignment of the Sinkhorn output's logarithm (= assignment(θ):
    Sinkhorn only adds a constant to each row and each column of log P);
  * `fenchel_young`: `tf_perturbed.FenchelYoungLoss("assignment")` on θ, target
    the true sorting permutation.

All direct methods use ε < 0 ("towards-best") with the 10 % escape
(`epsilon_growth=1.1`, at most `--max-growth-steps` retries) and `--num-samples`
noise draws per sequence (one for σ = 0). The layer divides g = ∂L/∂P ∝ C by its
largest entry, per sequence and sample, so the loss-perturbed problem is
assignment(θ + σγ + ε·C/max C): |ε| is the largest change the loss makes to any
score, whatever the batch size and the loss reduction. Indelman et al. use
ε = −12 on their own, unnormalised loss term, whose entries are of order 1 for
numbers in [0, 1] (at most 1 for (x_i − s_j)², at most 2 for −2·x_i·s_j); we
take ε = −12 as well, without tuning it. It is large against the initial scores
(of order 1), so early loss-perturbed matchings are close to the sorting
permutation.

Metrics (on `--num-test` fresh test sequences per repetition): `perfect_sort_rate`
(share of test sequences with no element misplaced) and `prop_wrong` (share of
misplaced elements), as mean and std over `--repetitions` trainings (row keys
`perfect_sort_rate_mean`, `perfect_sort_rate_std`, …). Indelman et al. test each
training on a single sequence, over 200 repetitions; a test set of many
sequences per repetition measures the same rate with far less variance.

Run:  python -m tutorials.sorting_numbers --quick
"""

import dataclasses
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

import tf_perturbed
from tf_perturbed import RepeatSamples  # [B, ...] → [B, M, ...]: M copies, one noise draw each
from tutorials import shared

NAME = "sorting_numbers"
METHODS = ("direct_sigma0", "direct_sigma1", "direct_learned", "gumbel_sinkhorn", "fenchel_young")
HIDDEN_UNITS = 32
QUICK = dict(dims=[5, 10, 25], repetitions=2, num_train=400, num_test=500, epochs=5)
# The full preset trains 8 epochs and adds the long sequences; a step costs more as d
# grows (d = 40, all five methods: 10 minutes on 2 shared cores; docs/tutorials/sorting_numbers.md).
# Indelman et al. train up to 2,000 epochs, 200 times.
FULL = dict(dims=[5, 10, 25, 40, 60, 100], repetitions=2, num_train=400, num_test=500, epochs=8)
METRICS = ("perfect_sort_rate", "prop_wrong")
# The dtype of θ and of everything after it (noise, solver, loss). The package draws its
# noise strictly inside (0, 1) before the logarithms, so float32 never gives an infinite
# Gumbel sample; float64 only costs time here.
SCORES_DTYPE = "float32"
# Below this d, compiling the training step with XLA costs more than it saves.
JIT_FROM_D = 40


# -------------------------------------------------------------------------- data


def make_sequences(num: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """`[num, d]` float32 numbers drawn uniformly in [0, 1]."""
    return rng.uniform(0.0, 1.0, size=(num, d)).astype(np.float32)


def sorting_permutation(x: np.ndarray) -> np.ndarray:
    """`[N, d, d]` permutation matrices with P[i, j] = 1 when x_i is the j-th smallest."""
    d = x.shape[-1]
    positions = np.argsort(np.argsort(x, axis=-1, kind="stable"), axis=-1, kind="stable")  # [N, d]
    return np.eye(d, dtype=np.float32)[positions]  # [N, d(i), d(j)]


def sorting_metrics(predicted: np.ndarray, x: np.ndarray) -> dict:
    """Perfect-sort rate and share of misplaced elements of predicted matchings `[N, d, d]`."""
    wrong = np.argmax(predicted, axis=-1) != np.argmax(sorting_permutation(x), axis=-1)  # [N, d]
    return {"perfect_sort_rate": float(np.mean(~np.any(wrong, axis=-1))), "prop_wrong": float(np.mean(wrong))}


# ------------------------------------------------------------------------ losses


def _cost_matrix(x):
    """C_ij = (x_i − s_j)², s = sort(x): the linear form of the squared sorting error."""
    x = tf.convert_to_tensor(x)
    s = tf.sort(x, axis=-1)  # [B, d]
    return tf.square(x[:, :, None] - s[:, None, :])  # [B, d(i), d(j)]


def _per_example(values, y_pred):
    """Mean over the noise-sample axis of `[B, M]` (or `[B]`) values."""
    return values if len(y_pred.shape) == 3 else tf.reduce_mean(values, axis=1)


@keras.saving.register_keras_serializable(package="tutorials")
class LinearSortingLoss(keras.losses.Loss):
    """⟨P, C⟩/d with C_ij = (x_i − s_j)²: ‖Pᵀx − s‖²/d for permutation matrices P.

    Gradient C/d, except on perfectly sorted samples (loss 0), where it is 0.

    `y_true` is the sequence x `[B, d]`; `y_pred` the matchings `[B, d, d]` or
    `[B, M, d, d]` (M noise samples, averaged). Linear in P, so its gradient C/d
    is what `DirectLossGradient` uses to build the loss-perturbed matching.
    """

    def call(self, y_true, y_pred):
        cost = tf.cast(_cost_matrix(y_true), y_pred.dtype)  # [B, d, d]
        if len(y_pred.shape) == 4:
            cost = cost[:, None]  # [B, 1, d, d]
        d = tf.cast(tf.shape(y_pred)[-1], y_pred.dtype)
        loss = tf.reduce_sum(y_pred * cost, axis=[-2, -1]) / d  # [B(, M)]
        # Same value, gradient 0 on perfectly sorted samples (loss exactly 0: x_i − s_j
        # is exactly 0 on the true matching). The direct estimate there is 0 anyway,
        # y₀ being loss-optimal (y_ε = y₀ for ε < 0); the gate spares the ε escape,
        # which retries every problem with a non-zero gradient, from retrying them.
        loss = loss * tf.stop_gradient(tf.cast(loss > 0, loss.dtype))
        return _per_example(loss, y_pred)


@keras.saving.register_keras_serializable(package="tutorials")
class ReorderSortingLoss(keras.losses.Loss):
    """‖Pᵀx − s‖²/d for any (doubly stochastic) P: the loss of Mena et al.

    Same shapes as `LinearSortingLoss`, with which it agrees on permutation matrices.
    """

    def call(self, y_true, y_pred):
        x = tf.cast(y_true, y_pred.dtype)
        s = tf.sort(x, axis=-1)  # [B, d]
        if len(y_pred.shape) == 4:
            x, s = x[:, None], s[:, None]  # [B, 1, d]
        reordered = tf.reduce_sum(y_pred * x[..., :, None], axis=-2)  # [B, (M,) d]: Σ_i P_ij x_i
        return _per_example(tf.reduce_mean(tf.square(reordered - s), axis=-1), y_pred)


# ------------------------------------------------------------------------ layers


def log_sinkhorn(log_alpha, iterations: int):
    """Alternately normalises the rows and the columns of exp(log α), in log space.

    Formula:
      repeat `iterations` times:  log α ← log α − logsumexp_j log α;  log α ← log α − logsumexp_i log α
      the result is log S, S doubly stochastic in the limit (Sinkhorn 1964).
    """
    for _ in range(iterations):
        log_alpha = log_alpha - tf.reduce_logsumexp(log_alpha, axis=-1, keepdims=True)  # rows sum to 1
        log_alpha = log_alpha - tf.reduce_logsumexp(log_alpha, axis=-2, keepdims=True)  # columns sum to 1
    return log_alpha


@keras.saving.register_keras_serializable(package="tutorials")
class GumbelSinkhorn(keras.layers.Layer):
    """S = Sinkhorn((θ + noise_factor·γ)/τ), γ ~ Gumbel in training; Sinkhorn(θ/τ) at inference."""

    def __init__(
        self, temperature: float = 1.0, iterations: int = 20, noise_factor: float = 1.0, seed=None, **kwargs
    ):
        super().__init__(**kwargs)
        self.temperature = float(temperature)
        self.iterations = int(iterations)
        self.noise_factor = float(noise_factor)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, theta, training=None):
        if training and self.noise_factor > 0:
            tiny = np.finfo(np.float32).tiny
            u = keras.random.uniform(tf.shape(theta), minval=tiny, maxval=1.0, seed=self.seed_generator)
            theta = theta + self.noise_factor * -tf.math.log(-tf.math.log(u))  # Gumbel(0, 1)
        return tf.exp(log_sinkhorn(theta / self.temperature, self.iterations))

    def get_config(self):
        return {
            **super().get_config(),
            "temperature": self.temperature,
            "iterations": self.iterations,
            "noise_factor": self.noise_factor,
            "seed": self.seed,
        }


# ----------------------------------------------------------------------- methods


def build_scores(d: int) -> keras.Model:
    """x `[B, d]` → θ `[B, d, d]`: the same two dense layers applied to every number."""
    inputs = keras.Input((d,))
    h = keras.layers.Reshape((d, 1))(inputs)  # [B, d, 1]
    h = keras.layers.Dense(HIDDEN_UNITS, activation="relu")(h)  # [B, d, 32]
    theta = keras.layers.Dense(d, name="scores")(h)  # [B, d(i), d(j)]
    return keras.Model(inputs, theta, name="scores_model")


@dataclasses.dataclass(frozen=True)
class Method:
    """How one method turns θ into a training output, and its loss and target.

    Attributes:
      head: `(theta, x, args) -> training output` (None: the loss sees θ).
      loss: `args -> Keras loss`.
      target: `x -> y_true` for `model.fit`.
      params: `args -> dict` of the method's hyper-parameters (row keys).
      sigma_layer: the name of a `LearnedNoiseScale` layer whose σ is reported.
    """

    head: Optional[Callable]
    loss: Callable
    target: Callable
    params: Callable = lambda args: {}
    sigma_layer: Optional[str] = None


def _direct(args, sigma: float):
    return tf_perturbed.DirectLossGradient(
        "assignment",
        epsilon=args.epsilon,
        epsilon_growth=1.1,
        max_growth_steps=args.max_growth_steps,
        sigma=sigma,
        noise="gumbel",
        seed=args.seed,
        name="matching",
        dtype=SCORES_DTYPE,
    )


def _direct_fixed(sigma: float):
    def head(theta, x, args):
        num_samples = 1 if sigma == 0 else args.num_samples
        theta = RepeatSamples(num_samples, dtype=SCORES_DTYPE)(theta)  # [B, M, d, d]
        return _direct(args, sigma)(theta)

    return head


def _direct_learned(theta, x, args):
    theta = RepeatSamples(args.num_samples, dtype=SCORES_DTYPE)(theta)  # [B, M, d, d]
    theta = tf_perturbed.LearnedNoiseScale(
        noise="gumbel", sigma_lr_scale=args.sigma_lr_scale, seed=args.seed, name="noise_scale", dtype=SCORES_DTYPE
    )([theta, x])  # θ + σ(x)·γ in training; σ(x) [B, 1, 1, 1]
    return _direct(args, 0.0)(theta)


def _sinkhorn(theta, x, args):
    theta = RepeatSamples(args.num_samples)(theta)  # [B, M, d, d]
    return GumbelSinkhorn(args.temperature, args.sinkhorn_iterations, seed=args.seed)(theta)


def _direct_params(sigma):
    def params(args):
        return {
            "sigma": sigma,
            "epsilon": args.epsilon,
            "epsilon_growth": 1.1,
            "max_growth_steps": args.max_growth_steps,
            "num_samples": 1 if sigma == 0 else args.num_samples,
        }

    return params


METHODS = {
    "direct_sigma0": Method(_direct_fixed(0.0), lambda args: LinearSortingLoss(), lambda x: x, _direct_params(0.0)),
    "direct_sigma1": Method(_direct_fixed(1.0), lambda args: LinearSortingLoss(), lambda x: x, _direct_params(1.0)),
    "direct_learned": Method(
        _direct_learned,
        lambda args: LinearSortingLoss(),
        lambda x: x,
        lambda args: {**_direct_params("learned")(args), "sigma_lr_scale": args.sigma_lr_scale},
        sigma_layer="noise_scale",
    ),
    "gumbel_sinkhorn": Method(
        _sinkhorn,
        lambda args: ReorderSortingLoss(),
        lambda x: x,
        lambda args: {
            "temperature": args.temperature,
            "sinkhorn_iterations": args.sinkhorn_iterations,
            "num_samples": args.num_samples,
        },
    ),
    "fenchel_young": Method(
        None,
        lambda args: tf_perturbed.FenchelYoungLoss(
            "assignment", num_samples=args.fy_num_samples, sigma=args.fy_sigma, seed=args.seed, dtype=SCORES_DTYPE
        ),
        sorting_permutation,
        lambda args: {"sigma": args.fy_sigma, "num_samples": args.fy_num_samples},
    ),
}


class Trainer:
    """One compiled training model per (method, d), re-initialised for every repetition.

    Re-drawing the weights (and zeroing the optimizer's state) instead of building a
    new model keeps the XLA-compiled training step: compiling the assignment solver
    costs more than a short training run.
    """

    def __init__(self, method: Method, d: int, args):
        self.method, self.d, self.args = method, d, args
        self.scores_model = build_scores(d)
        x, theta = self.scores_model.inputs[0], self.scores_model.outputs[0]
        outputs = theta if method.head is None else method.head(theta, x, args)
        self.model = keras.Model(x, outputs)
        self.optimizer = keras.optimizers.Adam(args.learning_rate)
        jit = args.jit_compile == "on" or (args.jit_compile == "auto" and d >= JIT_FROM_D)
        self.model.compile(optimizer=self.optimizer, loss=method.loss(args), jit_compile=jit)
        scores_ids = {id(v) for v in self.scores_model.trainable_weights}
        # The other weights (σ's head) start from constants: keep them to restore.
        self.head_weights = [
            (v, v.numpy()) for v in self.model.trainable_weights if id(v) not in scores_ids
        ]

    def fit(self, x_train: np.ndarray):
        """Trains from a fresh initialisation; returns the Keras history."""
        self.scores_model.set_weights(build_scores(self.d).get_weights())
        for variable, value in self.head_weights:
            variable.assign(value)
        for variable in self.optimizer.variables:  # the step count and Adam's moments, not the rate
            if variable.name != "learning_rate":
                variable.assign(tf.zeros_like(variable))
        return self.model.fit(
            x_train,
            self.method.target(x_train),
            batch_size=self.args.batch_size,
            epochs=self.args.epochs,
            verbose=self.args.verbose,
            shuffle=True,
        )

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Hard matchings assignment(θ) `[N, d, d]`, no noise."""
        theta = self.scores_model(x, training=False)  # [N, d, d]
        return _hard_assignment(theta).numpy()


@tf.function(jit_compile=True)
def _hard_assignment(theta):
    return tf_perturbed.solvers.assignment(theta)


# -------------------------------------------------------------------------- main


def _add_arguments(parser) -> None:
    parser.add_argument("--dims", type=shared.int_list, default=None, help="sequence lengths d (quick 5,10,25; else also 40,60,100)")
    parser.add_argument("--repetitions", type=int, default=None, help="trainings per (method, d) (2)")
    parser.add_argument("--num-train", type=int, default=None, help="training sequences (400)")
    parser.add_argument("--num-test", type=int, default=None, help="test sequences per repetition (500)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (quick 5, else 8)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=0.1, help="Adam step of the scores (paper: 0.1)")
    parser.add_argument("--num-samples", type=int, default=5, help="noise draws per sequence (paper: 5)")
    parser.add_argument("--epsilon", type=float, default=-12.0, help="ε, normalised per sequence (< 0: towards-best, the default; > 0: away from the loss)")
    parser.add_argument("--max-growth-steps", type=int, default=10, help="retries of the 10 %% ε escape")
    parser.add_argument(
        "--sigma-lr-scale", type=float, default=0.01, help="learning-rate factor of σ's head (direct_learned)"
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="τ of Gumbel-Sinkhorn")
    parser.add_argument("--sinkhorn-iterations", type=int, default=20)
    parser.add_argument("--fy-sigma", type=float, default=1.0, help="ε of the Fenchel-Young loss")
    parser.add_argument("--fy-num-samples", type=int, default=5, help="M of the Fenchel-Young loss")
    parser.add_argument(
        "--jit-compile",
        choices=("auto", "on", "off"),
        default="auto",
        help=f"XLA for the training step (auto: from d = {JIT_FROM_D}, where the solver dominates the compile time)",
    )


def summarise(runs: list) -> dict:
    """Mean and std over repetitions of each metric."""
    row = {}
    for key in METRICS:
        values = np.array([run[key] for run in runs])
        row[f"{key}_mean"] = float(values.mean())
        row[f"{key}_std"] = float(values.std())
    row["repetitions"] = len(runs)
    return row


def main(argv=None) -> dict:
    timer = shared.Timer()
    args = shared.parse_args(
        NAME,
        argv,
        METHODS,
        description=__doc__.split("\n")[0],
        add_arguments=_add_arguments,
        presets=(QUICK, FULL),
    )
    keras.utils.set_random_seed(args.seed)

    results, sigma_curves = [], {}
    for d in args.dims:
        # The same training and test sequences for every method (common random numbers).
        rng = np.random.default_rng([args.seed, d])
        data = [
            (make_sequences(args.num_train, d, rng), make_sequences(args.num_test, d, rng))
            for _ in range(args.repetitions)
        ]
        for name in args.methods:
            method = METHODS[name]
            keras.utils.set_random_seed(args.seed)
            fit_timer = shared.Timer()
            trainer = Trainer(method, d, args)
            runs = []
            for x_train, x_test in data:
                history = trainer.fit(x_train)
                run = {**sorting_metrics(trainer.predict(x_test), x_test)}
                run["loss_curve"] = [float(v) for v in history.history["loss"]]
                if method.sigma_layer is not None:
                    run["sigma_curve"] = [float(v) for v in history.history[f"{method.sigma_layer}_sigma"]]
                runs.append(run)
            row = {
                "method": name,
                "d": d,
                **method.params(args),
                **summarise(runs),
                "perfect_sort_rate_runs": [run["perfect_sort_rate"] for run in runs],
                "prop_wrong_runs": [run["prop_wrong"] for run in runs],
                "final_loss_mean": float(np.mean([run["loss_curve"][-1] for run in runs])),
                "loss_curves": [run["loss_curve"] for run in runs],
                "learning_rate": args.learning_rate,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "num_train": args.num_train,
                "num_test": args.num_test,
                "train_seconds": round(fit_timer(), 1),
            }
            if method.sigma_layer is not None:
                row["sigma_curves"] = [run["sigma_curve"] for run in runs]
                sigma_curves[f"d={d}"] = np.mean(row["sigma_curves"], axis=0)
            results.append(row)
            print(
                f"[{NAME}] d={d} {name}: perfect_sort_rate={row['perfect_sort_rate_mean']:.3f}"
                f"±{row['perfect_sort_rate_std']:.3f}, prop_wrong={row['prop_wrong_mean']:.3f}"
                f"±{row['prop_wrong_std']:.3f} ({row['train_seconds']} s)",
                flush=True,
            )

    figures = ["metrics_vs_d.png"]
    plot_metrics(results, args.output_dir / figures[0])
    if sigma_curves:
        figures.append("learned_sigma.png")
        plot_sigma(sigma_curves, args.output_dir / figures[1])
    payload = shared.write_metrics(
        args.output_dir,
        results,
        args.command,
        timer(),
        data={
            "sequences": "d numbers drawn uniformly in [0, 1]; fresh train and test sequences per repetition",
            "target": "the sorting permutation P[i, j] = 1 when x_i is the j-th smallest",
        },
        figures=figures,
    )
    shared.print_table(
        results,
        ["method", "d", "perfect_sort_rate_mean", "perfect_sort_rate_std", "prop_wrong_mean", "prop_wrong_std"],
    )
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


def plot_metrics(results: list, path) -> None:
    """Perfect-sort rate and share of misplaced elements against d, one line per method (± std)."""
    fig, axes = shared.figure(1, len(METRICS))
    dims = sorted({row["d"] for row in results})
    markers = dict(zip(METHODS, "osD^v"))
    for ax, metric in zip(axes[0], METRICS):
        for name in dict.fromkeys(row["method"] for row in results):
            rows = sorted((row for row in results if row["method"] == name), key=lambda row: row["d"])
            ax.errorbar(
                [row["d"] for row in rows],
                [row[f"{metric}_mean"] for row in rows],
                yerr=[row[f"{metric}_std"] for row in rows],
                marker=markers.get(name, "o"),
                markerfacecolor="none",
                capsize=3,
                label=name,
            )
        ax.set_xscale("log")
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.minorticks_off()
        ax.set_xlabel("sequence length d")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle("Sorting numbers (Mena et al. protocol; Indelman et al. §5.1)")
    shared.save_figure(fig, path)


def plot_sigma(curves: dict, path) -> None:
    """The learned σ (batch mean, averaged over repetitions) after every epoch, per d."""
    fig, axes = shared.figure()
    shared.plot_curves(axes[0, 0], curves, ylabel="learned σ (mean over the epoch)")
    axes[0, 0].legend()
    axes[0, 0].set_title("direct_learned: σ(x) over training")
    shared.save_figure(fig, path)


if __name__ == "__main__":
    main()
