"""Label ranking on synthetic data with a perturbed Fenchel-Young loss.

Berthet et al. (2020), §5.2 and Appendix C.2: features x ~ N(0, I) in dimension
50, a ground truth w₀ with entries drawn uniformly in {−1, 1} (here a 50 × 100
matrix, one column per label, so that the model is a Keras `Dense` layer), and
for each example the ranking of 100 labels

    y = y*(x·w₀ + σZ),   Z ~ N(0, I),   y* = ascending ranks 0…99

(the largest score gets rank 99), with label noise σ. A linear model θ = x·W is
trained with `model.fit` by

  * `fenchel_young`: `tf_perturbed.FenchelYoungLoss("ranks", …)` on the scores θ;
  * `squared`: ½‖(y − c) − θ‖², regressing the (centred, c = 49.5) ranks directly;
  * `blackbox`: ½‖y − y*(θ)‖² through `tf_perturbed.DirectLossGradient("ranks",
    epsilon < 0)` (the gradient proxy of Vlastelica et al.).

and evaluated on fresh examples drawn from the same model (test labels carry the
same noise σ, as in the paper), by ranking the scores θ:

  * `perfect_rank_accuracy`: share of test examples whose 100 ranks are all right;
  * `partial_rank_accuracy`: share of (example, label) pairs whose rank is right;
  * `spearman`: mean Spearman correlation 1 − 6Σ(r − r̂)²/(d(d² − 1));

and the same three against the noiseless ranks y*(x·w₀) (`*_noiseless`: how well
w₀ itself is recovered). `reference` in metrics.json gives the metrics of w₀.

Run:  python -m tutorials.label_ranking --quick
"""

import dataclasses
from typing import Callable, Optional

import keras
import numpy as np

import tf_perturbed
from tutorials import shared

NAME = "label_ranking"
NUM_FEATURES = 50
NUM_LABELS = 100
QUICK = dict(num_train=2000, num_test=1000, epochs=15, noise_sigmas=[0.01, 0.3, 10.0])
FULL = dict(
    num_train=5000, num_test=2000, epochs=30, noise_sigmas=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0]
)
METRICS = ("perfect_rank_accuracy", "partial_rank_accuracy", "spearman")


# -------------------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class RankingData:
    """Features, noisy ranks and noiseless ranks of the train and test examples."""

    x_train: np.ndarray  # [N, 50]
    y_train: np.ndarray  # [N, 100]
    x_test: np.ndarray  # [T, 50]
    y_test: np.ndarray  # [T, 100]
    y_test_noiseless: np.ndarray  # [T, 100]
    w0: np.ndarray  # [50, 100]


def ranks(scores) -> np.ndarray:
    """Ascending ranks 0…d−1 of each row, by the package's solver (ties: lowest index first)."""
    return tf_perturbed.solvers.ranks(np.asarray(scores, np.float64)).numpy().astype(np.float32)


def make_data(num_train: int, num_test: int, seed: int):
    """Draws w₀, x and the label noise Z once; returns `labels(σ) -> RankingData`.

    The same w₀, x and Z serve every σ of a sweep (common random numbers), so
    the curves against σ are not blurred by resampling the data.
    """
    rng = np.random.default_rng(seed)
    w0 = rng.choice([-1.0, 1.0], size=(NUM_FEATURES, NUM_LABELS))  # [50, 100]
    x = rng.standard_normal((num_train + num_test, NUM_FEATURES))  # [N + T, 50]
    z = rng.standard_normal((num_train + num_test, NUM_LABELS))  # [N + T, 100]
    clean = x @ w0  # [N + T, 100]

    def labels(noise_sigma: float) -> RankingData:
        y = ranks(clean + noise_sigma * z)  # [N + T, 100]
        return RankingData(
            x_train=x[:num_train].astype(np.float32),
            y_train=y[:num_train],
            x_test=x[num_train:].astype(np.float32),
            y_test=y[num_train:],
            y_test_noiseless=ranks(clean[num_train:]),
            w0=w0,
        )

    return labels


def ranking_metrics(predicted: np.ndarray, target: np.ndarray, suffix: str = "") -> dict:
    """Perfect and partial rank accuracy and mean Spearman correlation of rank arrays [T, d]."""
    d = target.shape[-1]
    squared = np.sum((predicted - target) ** 2, axis=-1)  # [T]
    return {
        "perfect_rank_accuracy" + suffix: float(np.mean(np.all(predicted == target, axis=-1))),
        "partial_rank_accuracy" + suffix: float(np.mean(predicted == target)),
        # Both are permutations of 0…d−1, so Spearman's ρ has this closed form.
        "spearman" + suffix: float(np.mean(1.0 - 6.0 * squared / (d * (d * d - 1.0)))),
    }


def evaluate(scores: np.ndarray, data: RankingData) -> dict:
    predicted = ranks(scores)
    return {
        **ranking_metrics(predicted, data.y_test),
        **ranking_metrics(predicted, data.y_test_noiseless, "_noiseless"),
    }


# ----------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class Method:
    """How one method trains the linear scores θ = x·W.

    Attributes:
      learning_rate: the initial Adam step (cosine-decayed to 0 over training).
      loss: `args -> Keras loss` comparing the training target with the output.
      head: `args -> layer` applied to the scores during training (None: the
        loss sees the scores). Predictions always rank the scores.
      params: `args -> dict` of the method's hyper-parameters (row keys).
      center_targets: train on ranks − (d − 1)/2 (a ranking-invariant shift that
        a linear model without bias can fit).
    """

    learning_rate: float
    loss: Callable
    head: Optional[Callable] = None
    params: Callable = lambda args: {}
    center_targets: bool = False


# Learning rates and the FY/blackbox ε, M were picked on independently generated data (--seed 1,
# σ ∈ {0.01, 0.3, 10}, 2,000 examples, 15 epochs) by the mean over σ of the partial rank accuracy
# against the noiseless ranks (the grid: docs/notes/2026-12-04-tutorials-history.md). Both FY
# and blackbox depend on (learning rate, ε) through their ratio only, up to the scale of the
# initial weights (L_ε(θ) = ε·L_1(θ/ε), the blackbox output is scale-free, Adam ignores the
# gradient's scale): so ε is fixed and the learning rate tuned.
METHODS = {
    "fenchel_young": Method(
        learning_rate=0.3,
        loss=lambda args: tf_perturbed.FenchelYoungLoss(
            "ranks", num_samples=args.fy_num_samples, sigma=args.fy_sigma, seed=args.seed
        ),
        params=lambda args: {"sigma": args.fy_sigma, "num_samples": args.fy_num_samples},
    ),
    "squared": Method(
        learning_rate=0.1, loss=lambda args: keras.losses.MeanSquaredError(), center_targets=True
    ),
    "blackbox": Method(
        learning_rate=0.1,
        loss=lambda args: keras.losses.MeanSquaredError(),
        head=lambda args: tf_perturbed.DirectLossGradient("ranks", epsilon=args.blackbox_epsilon),
        params=lambda args: {"epsilon": args.blackbox_epsilon},
    ),
}


def train(method: Method, data: RankingData, args, learning_rate: float):
    """Fits one linear model; returns (scores model, Keras history)."""
    inputs = keras.Input((NUM_FEATURES,))
    scores = keras.layers.Dense(NUM_LABELS, use_bias=False, name="scores")(inputs)  # [B, 100]
    scores_model = keras.Model(inputs, scores)
    outputs = scores if method.head is None else method.head(args)(scores)
    train_model = keras.Model(inputs, outputs)
    steps = args.epochs * (-(-len(data.x_train) // args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    train_model.compile(optimizer=keras.optimizers.Adam(schedule), loss=method.loss(args))
    target = data.y_train - (NUM_LABELS - 1) / 2.0 if method.center_targets else data.y_train
    history = train_model.fit(
        data.x_train,
        target,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=args.verbose,
        shuffle=True,
    )
    return scores_model, history


# -------------------------------------------------------------------------- main


def _add_arguments(parser) -> None:
    parser.add_argument(
        "--num-train", type=int, default=None, help="training examples (quick 2000, else 5000)"
    )
    parser.add_argument("--num-test", type=int, default=None, help="test examples (quick 1000, else 2000)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (quick 15, else 30)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--noise-sigmas", type=shared.float_list, default=None, help="label noise σ sweep")
    parser.add_argument("--fy-sigma", type=float, default=0.1, help="ε of the Fenchel-Young loss")
    parser.add_argument("--fy-num-samples", type=int, default=10, help="M of the Fenchel-Young loss")
    parser.add_argument("--blackbox-epsilon", type=float, default=-1.0, help="ε < 0 of the blackbox method")
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="initial Adam step for every method (default: per method)",
    )


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
    labels = make_data(args.num_train, args.num_test, args.seed)

    results, reference = [], []
    for noise_sigma in args.noise_sigmas:
        data = labels(noise_sigma)
        reference.append(
            {"method": "oracle_w0", "noise_sigma": noise_sigma, **evaluate(data.x_test @ data.w0, data)}
        )
        for name in args.methods:
            method = METHODS[name]
            learning_rate = method.learning_rate if args.learning_rate is None else args.learning_rate
            keras.utils.set_random_seed(args.seed)
            fit_timer = shared.Timer()
            scores_model, history = train(method, data, args, learning_rate)
            losses = [float(v) for v in history.history["loss"]]
            row = {
                "method": name,
                "noise_sigma": noise_sigma,
                **method.params(args),
                "learning_rate": learning_rate,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "num_train": args.num_train,
                "num_test": args.num_test,
                **evaluate(scores_model.predict(data.x_test, batch_size=1024, verbose=0), data),
                "final_loss": losses[-1],
                "loss_curve": losses,
                "train_seconds": round(fit_timer(), 1),
            }
            results.append(row)
            print(
                f"[{NAME}] σ={noise_sigma:g} {name}: "
                + ", ".join(f"{k}={row[k]:.4f}" for k in METRICS)
                + f" ({row['train_seconds']} s)",
                flush=True,
            )

    plot(results, reference, args.output_dir / "metrics_vs_noise.png")
    payload = shared.write_metrics(
        args.output_dir,
        results,
        args.command,
        timer(),
        data={
            "num_features": NUM_FEATURES,
            "num_labels": NUM_LABELS,
            "w0": "uniform in {-1, 1}^(50 x 100)",
            "x": "N(0, I_50)",
            "labels": "ranks of x.w0 + noise_sigma * N(0, I_100); test labels as noisy as train labels",
        },
        reference=reference,
        figures=["metrics_vs_noise.png"],
    )
    shared.print_table(results + reference, ["method", "noise_sigma", *METRICS, "spearman_noiseless"])
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


def plot(results: list, reference: list, path) -> None:
    """The three metrics against σ, per method, on noisy (top) and noiseless (bottom) test ranks."""
    fig, axes = shared.figure(2, len(METRICS))
    for row_index, suffix in enumerate(("", "_noiseless")):
        for col, metric in enumerate(METRICS):
            ax = axes[row_index, col]
            shared.plot_sweep(ax, results, "noise_sigma", metric + suffix)
            if not suffix:  # against the noiseless ranks, w₀ scores 1 by construction
                shared.plot_sweep(ax, reference, "noise_sigma", metric, linestyle="--", color="gray")
            ax.set_xlabel("label noise σ")
    axes[0, 0].legend()
    fig.suptitle(
        "Label ranking, 100 labels, linear model (Berthet et al. 2020, §5.2); bottom: vs noiseless ranks"
    )
    shared.save_figure(fig, path)


if __name__ == "__main__":
    main()
