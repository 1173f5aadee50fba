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
  * `perturbed_squared`: ½‖y − ŷ_ε(θ)‖² with ŷ_ε = `tf_perturbed.PerturbedRanks` (the
    Monte-Carlo mean of the ranks of θ + εZ, trained through its Monte-Carlo Jacobian;
    the paper's "perturbed + squared", App. C.2), ε and M those of the FY loss;
  * `blackbox`: ½‖y − y*(θ)‖² through `tf_perturbed.DirectLossGradient("ranks",
    epsilon < 0)` (the gradient proxy of Vlastelica et al.).

and evaluated on fresh examples drawn from the same model (test labels carry the
same noise σ, as in the paper), by ranking the scores θ:

  * `perfect_rank_accuracy`: share of test examples whose 100 ranks are all right;
  * `partial_rank_accuracy`: share of (example, label) pairs whose rank is right;
  * `spearman`: mean Spearman correlation 1 − 6Σ(r − r̂)²/(d(d² − 1));

and the same three against the noiseless ranks y*(x·w₀) (`*_noiseless`: how well
w₀ itself is recovered). `reference` in metrics.json gives the metrics of w₀.

Each method's learning rate is chosen per σ (unless `--no-learning-rate-search`): every
rate of `--learning-rates` trains on the first 1 − f of the training examples, the rate
with the best mean Spearman correlation on the last f (`--validation-fraction`; noisy
labels, as the paper's cross-validation) wins, and the model is trained again with it on
the whole training split. The test metrics of that run are recorded after every epoch.

Run:  python -m tutorials.label_ranking --quick
"""

import argparse
import dataclasses
from typing import Callable, Optional

import keras
import numpy as np

import tf_perturbed
from tutorials import shared

NAME = "label_ranking"
NUM_FEATURES = 50
NUM_LABELS = 100
# The rate grids are centred (in log scale) on the tuned defaults 0.1 and 0.3 of `METHODS`:
# five rates a factor √10 apart span 100× (quick: three rates a factor √10 apart span 10×).
QUICK = dict(
    num_train=2000, num_test=1000, epochs=15, noise_sigmas=[0.01, 0.3, 10.0], learning_rates=[0.03, 0.1, 0.3]
)
FULL = dict(
    num_train=5000,
    num_test=2000,
    epochs=30,
    noise_sigmas=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0],
    learning_rates=[0.01, 0.03, 0.1, 0.3, 1.0],
)
METRICS = ("perfect_rank_accuracy", "partial_rank_accuracy", "spearman")
# The learning rates are chosen by the validation Spearman correlation: the metric by which the
# paper chose its learning rates (App. C.2, Tables 1-2, 5-fold cross-validation).
SELECTION_METRIC = "spearman"


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
      learning_rate: the initial Adam step (cosine-decayed to 0 over training) when the rate
        is not searched (`--no-learning-rate-search`).
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
    # ŷ_ε and the target y are both ranks 0…99, so centring would shift both alike: not needed.
    # Its rate (used with --no-learning-rate-search) was not tuned: the squared losses' 0.1.
    "perturbed_squared": Method(
        learning_rate=0.1,
        loss=lambda args: keras.losses.MeanSquaredError(),
        head=lambda args: tf_perturbed.PerturbedRanks(
            num_samples=args.fy_num_samples, sigma=args.fy_sigma, seed=args.seed
        ),
        params=lambda args: {"sigma": args.fy_sigma, "num_samples": args.fy_num_samples},
    ),
}


def train(method: Method, x, y, args, learning_rate: float, callbacks=()):
    """Fits one linear model on features x `[N, 50]` and ranks y `[N, 100]`.

    Returns:
      (scores model, Keras history).
    """
    inputs = keras.Input((NUM_FEATURES,))
    scores = keras.layers.Dense(NUM_LABELS, use_bias=False, name="scores")(inputs)  # [B, 100]
    scores_model = keras.Model(inputs, scores)
    outputs = scores if method.head is None else method.head(args)(scores)
    train_model = keras.Model(inputs, outputs)
    steps = args.epochs * (-(-len(x) // args.batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)
    train_model.compile(optimizer=keras.optimizers.Adam(schedule), loss=method.loss(args))
    target = y - (NUM_LABELS - 1) / 2.0 if method.center_targets else y
    history = train_model.fit(
        x,
        target,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=args.verbose,
        shuffle=True,
        callbacks=list(callbacks),
    )
    return scores_model, history


def scores_of(scores_model, x) -> np.ndarray:
    return scores_model.predict(x, batch_size=1024, verbose=0)


class EpochMetrics(keras.callbacks.Callback):
    """Perfect and partial rank accuracy of the test examples after every epoch, noisy and noiseless."""

    KEYS = ("perfect_rank_accuracy", "partial_rank_accuracy")

    def __init__(self, data: RankingData):
        super().__init__()
        self.data = data
        self.curves = {key + suffix: [] for suffix in ("", "_noiseless") for key in self.KEYS}

    def on_train_begin(self, logs=None):
        self.scores_model = keras.Model(self.model.inputs, self.model.get_layer("scores").output)

    def on_epoch_end(self, epoch, logs=None):
        metrics = evaluate(scores_of(self.scores_model, self.data.x_test), self.data)
        for key, values in self.curves.items():
            values.append(metrics[key])


def select_learning_rate(method: Method, data: RankingData, args) -> tuple:
    """The rate of `args.learning_rates` with the best validation Spearman correlation.

    The validation examples are the last `args.validation_fraction` of the training split
    (the examples are i.i.d., so a fixed slice is a random one); every rate trains on the
    others from the same seed.

    Returns:
      (the chosen rate, one dict per rate with its validation metrics).
    """
    num_fit = len(data.x_train) - validation_size(len(data.x_train), args.validation_fraction)
    grid = []
    for learning_rate in args.learning_rates:
        keras.utils.set_random_seed(args.seed)
        scores_model, _ = train(method, data.x_train[:num_fit], data.y_train[:num_fit], args, learning_rate)
        predicted = ranks(scores_of(scores_model, data.x_train[num_fit:]))
        grid.append(
            {
                "learning_rate": learning_rate,
                **ranking_metrics(predicted, data.y_train[num_fit:], "_validation"),
            }
        )
    best = max(grid, key=lambda row: row[SELECTION_METRIC + "_validation"])  # the first of equals
    return best["learning_rate"], grid


def validation_size(num_train: int, fraction: float) -> int:
    """The number of validation examples, at least 1 and leaving at least 1 to train on."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"Expected `validation_fraction` in (0, 1), received: validation_fraction={fraction}"
        )
    size = int(round(fraction * num_train))
    if not 1 <= size < num_train:
        raise ValueError(
            f"Expected `validation_fraction` to leave 1 to {num_train - 1} of the {num_train} training "
            f"examples for validation, received: validation_fraction={fraction} ({size} examples)"
        )
    return size


# -------------------------------------------------------------------------- main


def _add_arguments(parser) -> None:
    parser.add_argument(
        "--num-train", type=int, default=None, help="training examples (quick 2000, else 5000)"
    )
    parser.add_argument("--num-test", type=int, default=None, help="test examples (quick 1000, else 2000)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (quick 15, else 30)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--noise-sigmas", type=shared.float_list, default=None, help="label noise σ sweep")
    parser.add_argument(
        "--fy-sigma", type=float, default=0.1, help="ε of the Fenchel-Young loss and of perturbed_squared"
    )
    parser.add_argument(
        "--fy-num-samples", type=int, default=10, help="M of the Fenchel-Young loss and of perturbed_squared"
    )
    parser.add_argument("--blackbox-epsilon", type=float, default=-1.0, help="ε < 0 of the blackbox method")
    parser.add_argument(
        "--learning-rate-search",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="choose each method's rate per σ on a validation split (default); "
        "--no-learning-rate-search: one rate for every σ, the method's default or --learning-rate",
    )
    parser.add_argument(
        "--learning-rates",
        type=shared.float_list,
        default=None,
        help="the rates searched (quick 0.03,0.1,0.3, else 0.01,0.03,0.1,0.3,1)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.2,
        help="share of the training examples that validates the rates (default 0.2)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="with --no-learning-rate-search: initial Adam step for every method (default: per method)",
    )


def check_rates(args) -> None:
    """Rejects a rate flag that the chosen mode would ignore, and rates that are not positive."""
    if args.learning_rate_search and args.learning_rate is not None:
        raise ValueError(
            "Expected --learning-rate only with --no-learning-rate-search, received: "
            f"--learning-rate={args.learning_rate} with the search on"
        )
    rates = args.learning_rates if args.learning_rate_search else [args.learning_rate]
    if args.learning_rate_search and not rates:
        raise ValueError(f"Expected at least one rate in --learning-rates, received: {rates}")
    bad = [rate for rate in rates if rate is not None and not rate > 0.0]
    if bad:
        flag = "--learning-rates" if args.learning_rate_search else "--learning-rate"
        raise ValueError(f"Expected positive learning rates, received: {flag}={bad}")
    validation_size(args.num_train, args.validation_fraction)


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
    check_rates(args)
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
            fit_timer = shared.Timer()
            if args.learning_rate_search:
                learning_rate, grid = select_learning_rate(method, data, args)
            else:
                learning_rate = method.learning_rate if args.learning_rate is None else args.learning_rate
                grid = None
            keras.utils.set_random_seed(args.seed)
            epoch_metrics = EpochMetrics(data)
            scores_model, history = train(
                method, data.x_train, data.y_train, args, learning_rate, callbacks=[epoch_metrics]
            )
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
                **evaluate(scores_of(scores_model, data.x_test), data),
                "final_loss": losses[-1],
                "loss_curve": losses,
                "epoch_curves": epoch_metrics.curves,
                "learning_rate_grid": grid,
                "train_seconds": round(fit_timer(), 1),
            }
            results.append(row)
            print(
                f"[{NAME}] σ={noise_sigma:g} {name} (rate {learning_rate:g}): "
                + ", ".join(f"{k}={row[k]:.4f}" for k in METRICS)
                + f" ({row['train_seconds']} s)",
                flush=True,
            )

    plot(results, reference, args.output_dir / "metrics_vs_noise.png")
    plot_epochs(results, reference, args.output_dir / "metrics_vs_epoch.png")
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
        learning_rate_search=search_summary(args, results),
        figures=["metrics_vs_noise.png", "metrics_vs_epoch.png"],
    )
    shared.print_table(
        results + reference,
        ["method", "noise_sigma", "learning_rate", *METRICS, "partial_rank_accuracy_noiseless"],
    )
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


def search_summary(args, results: list) -> dict:
    """How the rates were chosen, and the chosen rate of each method at each σ."""
    chosen = {}
    for row in results:
        chosen.setdefault(row["method"], {})[f"{row['noise_sigma']:g}"] = row["learning_rate"]
    if not args.learning_rate_search:
        return {"enabled": False, "chosen": chosen}
    return {
        "enabled": True,
        "grid": args.learning_rates,
        "validation_fraction": args.validation_fraction,
        "validation": "the last validation_fraction of the training examples (noisy labels)",
        "selected_by": f"the largest mean {SELECTION_METRIC} on the validation examples",
        "reported_run": "trained again with the chosen rate on all the training examples",
        "chosen": chosen,
    }


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


def plot_epochs(results: list, reference: list, path) -> None:
    """Test perfect and partial rank accuracy (and noiseless partial) against the epoch, one column per σ."""
    sigmas = sorted({row["noise_sigma"] for row in results})
    keys = ("perfect_rank_accuracy", "partial_rank_accuracy", "partial_rank_accuracy_noiseless")
    fig, axes = shared.figure(len(keys), len(sigmas), width=3.6, height=2.9)
    for col, noise_sigma in enumerate(sigmas):
        rows = [row for row in results if row["noise_sigma"] == noise_sigma]
        oracle = next(row for row in reference if row["noise_sigma"] == noise_sigma)
        for row_index, key in enumerate(keys):
            ax = axes[row_index, col]
            shared.plot_curves(ax, {row["method"]: row["epoch_curves"][key] for row in rows}, key)
            if not key.endswith("_noiseless"):
                ax.axhline(oracle[key], linestyle="--", color="gray", label="oracle_w0")
            ax.set_title(f"σ = {noise_sigma:g}")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.suptitle("Label ranking: test metrics after each epoch (Berthet et al. 2020, App. Fig. 8)")
    shared.save_figure(fig, path)


if __name__ == "__main__":
    main()
