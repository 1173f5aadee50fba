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

Protocols (`--protocol`, default `ours`, docs/notes/2026-12-04-authors-protocols.md):
`paper` sets the authors' choices, each also its own flag (see `PAPER`): σ's head trained by
SGD at 1e-6 (`--sigma-optimizer sgd --sigma-lr 1e-6`) on their mean-reduced surrogate, so σ
stays near its start; σ's head drawn like PyTorch's Linear per run (`--sigma-init torch`);
Gumbel noise of scale √18/π (`--noise-scale 1.3505`, their variance-3 Gumbel); the loss-
perturbed matching θ' − 12·x_j²·(1 − 2P*_ij) (`--loss-augmentation hamming-x2
--epsilon-normalize none`); their escape (`--escape global-persistent`) and gradient
y₀ − y_ε (`--divide-by-epsilon off`), both in `AuthorsDirectMatching`; 10 training
sequences, full batch, up to 2,000 epochs, early stopping with patience 50 on the training
loss keeping the best weights (`--early-stopping train-loss:50`; `validation:50` on
`--num-validation` held-out sequences). Two more methods: `direct_sigma_init` keeps σ's
head frozen at the run's initial σ(x) (the same draw as `direct_learned`), and
`direct_learned_adam` trains it with the scores' Adam at `--sigma-lr-scale` (0.01) times
their rate — our regime, in which σ anneals towards 0.

Run:  python -m tutorials.sorting_numbers --quick
      python -m tutorials.sorting_numbers --quick --protocol paper
"""

import argparse
import dataclasses
import sys
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

import tf_perturbed
from tf_perturbed import RepeatSamples  # [B, ...] → [B, M, ...]: M copies, one noise draw each
from tutorials import shared

# Gumbel noise of scale β ("gumbel" for β = 1). The authors' is also shifted to mean 0: a
# shift of every score of a sequence by one constant changes no matching (one 1 per row)
# nor σ's gradient ⟨1, y₀ − y_ε⟩ = 0, and σ(x)·β·γ_E is such a constant (one σ per sequence).

NAME = "sorting_numbers"
HIDDEN_UNITS = 32
PROTOCOLS = ("ours", "paper")
QUICK = dict(dims=[5, 10, 25], repetitions=2, num_train=400, num_test=500, epochs=5)
# The full preset trains 8 epochs and adds the long sequences; a step costs more as d
# grows (d = 40, all five methods: 10 minutes on 2 shared cores; docs/tutorials/sorting_numbers.md).
# Indelman et al. train up to 2,000 epochs, 200 times.
FULL = dict(dims=[5, 10, 25, 40, 60, 100], repetitions=2, num_train=400, num_test=500, epochs=8)
# `--protocol paper`: the authors' code (docs/notes/2026-12-04-authors-protocols.md, rows 1-8);
# every entry is also its own flag, so that an ablation flips one.
PAPER = dict(
    sigma_optimizer="sgd",  # row 1: SGD at 1e-6 on the mean-reduced surrogate for σ's weights
    sigma_lr=1e-6,
    sigma_init="torch",  # row 2: σ's head drawn uniformly in ±1/√d (PyTorch's Linear)
    noise_scale=1.3505,  # row 3: their variance-3 Gumbel, β = √18/π
    loss_augmentation="hamming-x2",  # row 4: ±12·x_j² on column j, unnormalised
    epsilon_normalize="none",
    escape="global-persistent",  # row 6
    divide_by_epsilon="off",  # row 5
    batch_size=10,  # row 7: 10 sequences, full batch
    early_stopping="train-loss:50",  # row 8: patience 50 on the training loss, best weights kept
)
OURS = dict(
    sigma_optimizer="adam",
    sigma_lr=1e-6,
    sigma_init="constant",
    noise_scale=1.0,
    loss_augmentation="squared",
    epsilon_normalize="max_abs",
    escape="per-problem",
    divide_by_epsilon="on",
    batch_size=10,
    early_stopping="none",
)
# Up to 2,000 epochs of one full-batch step each, as theirs; the quick preset caps them at 30
# (at d = 25 the paper protocol sorts every test sequence after 30 epochs: the page's tables).
PAPER_QUICK = dict(dims=[5, 10, 25], repetitions=2, num_train=10, num_test=500, epochs=30)
PAPER_FULL = dict(dims=[5, 10, 15, 25, 40, 60, 100], repetitions=10, num_train=10, num_test=500, epochs=2000)
PAPER_METHODS = (
    "direct_learned",
    "direct_learned_adam",
    "direct_sigma_init",
    "direct_sigma0",
    "direct_sigma1",
)
# Zero-mean Gumbel of variance 3 (theirs) has scale √18/π.
AUTHORS_NOISE_SCALE = float(np.sqrt(18.0) / np.pi)
# The global escape retries "without a bound" in their code; 1.1^500 ≈ 5e20 is one in practice.
GLOBAL_ESCAPE_LIMIT = 500
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


# ------------------------------------------------------- the authors' direct step


def _true_matching(x):
    """`[B, d, d]` the sorting permutation of x `[B, d]` in TF (P*[i, j] = 1: x_i is j-th smallest)."""
    ranks = tf.argsort(tf.argsort(x, axis=-1, stable=True), axis=-1, stable=True)  # [B, d]
    return tf.one_hot(ranks, tf.shape(x)[-1], dtype=x.dtype)  # [B, d(i), d(j)]


def loss_augmentation(x, kind: str, normalize: str):
    """H `[B, d, d]`: the loss term that ε multiplies in the loss-perturbed matching θ + ε·H.

    Formula:
      "squared":     H_ij = C_ij = (x_i − s_j)²  (ours: the squared error, linear in P)
      "hamming-x2":  H_ij = x_j²·(1 − 2·P*_ij)   (theirs, L223-236: with ε = −12, θ + ε·H adds
                     12·x_j² to the ground-truth entry of column j and subtracts it from the
                     others; x_j is the j-th number of the UNSORTED input, as their code reads)
      normalize "max_abs": H / max_ij |H_ij| per sequence; "none": H as is.
    """
    x = tf.convert_to_tensor(x)
    if kind == "squared":
        h = _cost_matrix(x)
    elif kind == "hamming-x2":
        h = tf.square(x)[:, None, :] * (1.0 - 2.0 * _true_matching(x))  # [B, d(i), d(j)]
    else:
        raise ValueError(f"Expected `kind` in ('squared', 'hamming-x2'), received: kind={kind!r}")
    if normalize == "max_abs":
        return tf.math.divide_no_nan(h, tf.reduce_max(tf.abs(h), axis=[-2, -1], keepdims=True))
    if normalize != "none":
        raise ValueError(f"Expected `normalize` in ('max_abs', 'none'), received: normalize={normalize!r}")
    return h


def _inject_gradient(theta, value, gradient):
    """`value` in the forward pass; `gradient` (whatever the upstream gradient) for θ."""

    @tf.custom_gradient
    def op(theta):
        return tf.identity(value), lambda upstream: gradient

    return op(theta)


@keras.saving.register_keras_serializable(package="tutorials")
class AuthorsDirectMatching(keras.layers.Layer):
    """The direct step of Indelman et al.'s code, each of its choices a switch.

    Called on `[θ', x]`: perturbed scores θ' `[B, d, d]` or `[B, M, d, d]` (the noise is
    added before, by `LearnedNoiseScale`) and the sequences x `[B, d]`. Returns the
    matching y₀ = assignment(θ'); in training, its gradient for θ' is D/(B·M·d²),
    whatever the loss (theirs, L176-180: the surrogate ⟨θ', D⟩ averaged over every entry),
    with

      y_ε = assignment(θ' + ε·f·H),   H = `loss_augmentation(x)`,  f the escape's factor,
      D = sign(ε)·(y_ε − y₀)            (`divide_by_epsilon=False`, theirs)
      D = (y_ε − y₀)/(ε·f)              (`divide_by_epsilon=True`, as `DirectLossGradient`).

    Escapes when y_ε = y₀: `"per-problem"` (ours) retries the stuck problems with a
    loss > 0, f ← 1.1·f, at most `max_growth_steps` times, f = 1 again at the next
    step; `"global-persistent"` (theirs, L248-253) retries only when EVERY problem of
    the batch is stuck and one has a loss > 0, and keeps f in a variable: ε only grows
    over training (at most `GLOBAL_ESCAPE_LIMIT` retries a step).
    """

    def __init__(
        self,
        epsilon: float = -12.0,
        augmentation: str = "hamming-x2",
        normalize: str = "none",
        escape: str = "global-persistent",
        max_growth_steps: int = 10,
        divide_by_epsilon: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if epsilon == 0:
            raise ValueError(f"Expected `epsilon` ≠ 0, received: epsilon={epsilon!r}")
        if escape not in ("per-problem", "global-persistent"):
            raise ValueError(
                f"Expected `escape` in ('per-problem', 'global-persistent'), received: escape={escape!r}"
            )
        loss_augmentation(tf.zeros([1, 2]), augmentation, normalize)  # checks both names
        self.epsilon = float(epsilon)
        self.augmentation, self.normalize, self.escape = augmentation, normalize, escape
        self.max_growth_steps = int(max_growth_steps)
        self.divide_by_epsilon = bool(divide_by_epsilon)
        self.growth = self.add_weight(name="epsilon_factor", shape=(), initializer="ones", trainable=False)

    def call(self, inputs, training=None):
        theta, x = inputs
        y0 = tf_perturbed.solvers.assignment(theta)
        if not training:
            return y0
        x = tf.cast(x, theta.dtype)
        h = loss_augmentation(x, self.augmentation, self.normalize)  # [B, d, d]
        if theta.shape.rank == 4:
            h = h[:, None]  # [B, 1, d, d]
            cost = _cost_matrix(x)[:, None]
        else:
            cost = _cost_matrix(x)
        positive = tf.reduce_sum(y0 * cost, axis=[-2, -1]) > 0  # [B(, M)]: y₀ does not sort
        epsilon = tf.constant(self.epsilon, theta.dtype)

        def solve(factor):
            return tf_perturbed.solvers.assignment(theta + epsilon * factor * h)

        def same(y):  # [B(, M)]
            return tf.reduce_all(tf.equal(y, y0), axis=[-2, -1])

        if self.escape == "global-persistent":
            factor = tf.cast(self.growth, theta.dtype)

            def stuck(factor, y):
                return tf.logical_and(tf.reduce_all(same(y)), tf.reduce_any(positive))

            factor, y_eps = tf.while_loop(
                stuck,
                lambda factor, y: (factor * 1.1, solve(factor * 1.1)),
                (factor, solve(factor)),
                maximum_iterations=GLOBAL_ESCAPE_LIMIT,
            )
            self.growth.assign(tf.cast(factor, self.growth.dtype))
        else:
            factor = tf.ones(tf.shape(positive), theta.dtype)[..., None, None]  # [B(, M), 1, 1]

            def body(factor, y):
                retry = tf.logical_and(same(y), positive)[..., None, None]
                factor = tf.where(retry, factor * 1.1, factor)
                return factor, tf.where(retry, solve(factor), y)

            factor, y_eps = tf.while_loop(
                lambda factor, y: tf.reduce_any(tf.logical_and(same(y), positive)),
                body,
                (factor, solve(factor)),
                maximum_iterations=self.max_growth_steps,
            )
        direction = (
            (y_eps - y0) / (epsilon * factor) if self.divide_by_epsilon else tf.sign(epsilon) * (y_eps - y0)
        )
        entries = tf.cast(tf.size(y0), theta.dtype)  # B·M·d²
        return _inject_gradient(theta, y0, tf.stop_gradient(direction / entries))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self):
        return {
            **super().get_config(),
            "epsilon": self.epsilon,
            "augmentation": self.augmentation,
            "normalize": self.normalize,
            "escape": self.escape,
            "max_growth_steps": self.max_growth_steps,
            "divide_by_epsilon": self.divide_by_epsilon,
        }


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


def _authors_step(args) -> bool:
    """Whether a direct method needs `AuthorsDirectMatching` (a switch away from ours)."""
    return (args.loss_augmentation, args.epsilon_normalize, args.escape, args.divide_by_epsilon) != (
        "squared",
        "max_abs",
        "per-problem",
        "on",
    )


def _direct(args, sigma: float):
    return tf_perturbed.DirectLossGradient(
        "assignment",
        epsilon=args.epsilon,
        epsilon_growth=1.1,
        max_growth_steps=args.max_growth_steps,
        sigma=sigma,
        noise=shared.noise_name(args.noise_scale),
        seed=args.seed,
        name="matching",
        dtype=SCORES_DTYPE,
    )


def _solve(theta, x, args):
    """The direct step on perturbed scores θ' `[B, M, d, d]`: ours (the library's) or the authors'."""
    if not _authors_step(args):
        return _direct(args, 0.0)(theta)
    return AuthorsDirectMatching(
        epsilon=args.epsilon,
        augmentation=args.loss_augmentation,
        normalize=args.epsilon_normalize,
        escape=args.escape,
        max_growth_steps=args.max_growth_steps,
        divide_by_epsilon=args.divide_by_epsilon == "on",
        name="matching",
        dtype=SCORES_DTYPE,
    )([theta, x])


def _noise_scale_layer(
    args, trainable: bool, lr_scale: float = 1.0, name: str = "noise_scale", initial_sigma: float = 1.0
):
    layer = tf_perturbed.LearnedNoiseScale(
        noise=shared.noise_name(args.noise_scale),
        initial_sigma=initial_sigma,
        sigma_lr_scale=lr_scale,
        seed=args.seed,
        name=name,
        dtype=SCORES_DTYPE,
    )
    layer.trainable = trainable
    return layer


def _direct_fixed(sigma: float):
    def head(theta, x, args):
        num_samples = 1 if sigma == 0 else args.num_samples
        theta = RepeatSamples(num_samples, dtype=SCORES_DTYPE)(theta)  # [B, M, d, d]
        if not _authors_step(args):
            return _direct(args, sigma)(theta)
        if sigma > 0:  # a frozen head at its constant start, σ(x) = σ
            theta = _noise_scale_layer(args, trainable=False, name="fixed_noise", initial_sigma=sigma)([theta, x])
        return _solve(theta, x, args)

    return head


def _sigma_regime(name: str, args) -> str:
    """How σ's head trains: "sgd" (its own optimizer), "adam" (the scores' one, scaled), "frozen"."""
    return {"direct_learned": args.sigma_optimizer, "direct_learned_adam": "adam"}.get(name, "frozen")


def _direct_noise_scale(name: str):
    def head(theta, x, args):
        regime = _sigma_regime(name, args)
        theta = RepeatSamples(args.num_samples, dtype=SCORES_DTYPE)(theta)  # [B, M, d, d]
        lr_scale = args.sigma_lr_scale if regime == "adam" else 1.0
        layer = _noise_scale_layer(args, trainable=regime != "frozen", lr_scale=lr_scale)
        theta = layer([theta, x])  # θ + σ(x)·γ in training; σ(x) [B, 1, 1, 1]
        return _solve(theta, x, args)

    return head


def _sinkhorn(theta, x, args):
    theta = RepeatSamples(args.num_samples)(theta)  # [B, M, d, d]
    return GumbelSinkhorn(args.temperature, args.sinkhorn_iterations, seed=args.seed)(theta)


def _direct_params(sigma):
    def params(args):
        return {
            "sigma": sigma,
            "epsilon": args.epsilon,
            "epsilon_growth": 1.1,
            "max_growth_steps": GLOBAL_ESCAPE_LIMIT if args.escape == "global-persistent" else args.max_growth_steps,
            "num_samples": 1 if sigma == 0 else args.num_samples,
            **{
                key: getattr(args, key)
                for key in PAPER
                if key not in ("sigma_optimizer", "sigma_lr", "batch_size")
            },
        }

    return params


def _learned_params(name: str):
    def params(args):
        regime = _sigma_regime(name, args)
        sigma = "fixed at init" if regime == "frozen" else "learned"
        row = {**_direct_params(sigma)(args), "sigma_regime": regime}
        if regime == "sgd":
            row["sigma_lr"] = args.sigma_lr
        elif regime == "adam":
            row["sigma_lr_scale"] = args.sigma_lr_scale
        return row

    return params


def _direct_method(head, params, sigma_layer=None) -> "Method":
    return Method(head, lambda args: LinearSortingLoss(), lambda x: x, params, sigma_layer)


METHODS = {
    "direct_sigma0": _direct_method(_direct_fixed(0.0), _direct_params(0.0)),
    "direct_sigma1": _direct_method(_direct_fixed(1.0), _direct_params(1.0)),
    **{
        name: _direct_method(_direct_noise_scale(name), _learned_params(name), "noise_scale")
        for name in ("direct_learned", "direct_learned_adam", "direct_sigma_init")
    },
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
            "assignment",
            num_samples=args.fy_num_samples,
            sigma=args.fy_sigma,
            seed=args.seed,
            dtype=SCORES_DTYPE,
        ),
        sorting_permutation,
        lambda args: {"sigma": args.fy_sigma, "num_samples": args.fy_num_samples},
    ),
}
OURS_METHODS = ("direct_sigma0", "direct_sigma1", "direct_learned", "gumbel_sinkhorn", "fenchel_young")


class TwoOptimizerModel(keras.Model):
    """A functional model whose σ-head weights take the steps of their own optimizer.

    The authors train σ's network with SGD at 1e-6 and the scores with Adam at 0.1; Keras
    has one optimizer per model, so this training step splits the gradients.
    """

    sigma_variables: list = []
    sigma_optimizer = None  # set by `Trainer` once the model (and σ's head) is built

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        gradients = tape.gradient(loss, self.trainable_weights)
        sigma_ids = {id(v) for v in self.sigma_variables}
        pairs = list(zip(gradients, self.trainable_weights))
        self.optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) not in sigma_ids])
        self.sigma_optimizer.apply_gradients([(g, v) for g, v in pairs if id(v) in sigma_ids])
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=tf.shape(x)[0])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


class KeepBest(keras.callbacks.Callback):
    """Stops after `patience` epochs without a new lowest `monitor` and restores that epoch's weights.

    Unlike `keras.callbacks.EarlyStopping`, the best weights are restored also when
    training reaches its last epoch (the authors reload the saved best model in any case).
    """

    def __init__(self, monitor: str, patience: int):
        super().__init__()
        self.monitor, self.patience = monitor, int(patience)

    def on_train_begin(self, logs=None):
        self.best, self.best_epoch, self.best_weights, self.wait = np.inf, 0, None, 0

    def on_epoch_end(self, epoch, logs=None):
        value = float(logs[self.monitor])
        if value < self.best:
            self.best, self.best_epoch, self.best_weights, self.wait = (
                value,
                epoch + 1,
                self.model.get_weights(),
                0,
            )
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)


def early_stopping(text: str):
    """argparse type: "none", "train-loss:PATIENCE" or "validation:PATIENCE" → (kind, patience)."""
    kind, _, patience = text.partition(":")
    if text == "none":
        return ("none", 0)
    if kind in ("train-loss", "validation") and patience.isdigit() and int(patience) > 0:
        return (kind, int(patience))
    raise argparse.ArgumentTypeError(
        f"Expected --early-stopping none, train-loss:N or validation:N (N > 0), received: {text!r}"
    )


class Trainer:
    """One compiled training model per (method, d), re-initialised for every repetition.

    Re-drawing the weights (and zeroing the optimizer's state) instead of building a
    new model keeps the XLA-compiled training step: compiling the assignment solver
    costs more than a short training run.
    """

    def __init__(self, name: str, d: int, args):
        self.method, self.d, self.args = METHODS[name], d, args
        self.scores_model = build_scores(d)
        x, theta = self.scores_model.inputs[0], self.scores_model.outputs[0]
        outputs = theta if self.method.head is None else self.method.head(theta, x, args)
        sgd = self.method.sigma_layer is not None and _sigma_regime(name, args) == "sgd"
        self.model = TwoOptimizerModel(x, outputs) if sgd else keras.Model(x, outputs)
        self.noise_layer = (
            None if self.method.sigma_layer is None else self.model.get_layer(self.method.sigma_layer)
        )
        self.optimizer = keras.optimizers.Adam(args.learning_rate)
        self.optimizers = [self.optimizer]
        if sgd:
            self.model.sigma_variables = self.noise_layer.trainable_weights
            self.model.sigma_optimizer = keras.optimizers.SGD(args.sigma_lr)
            self.model.sigma_optimizer.build(self.model.sigma_variables)
            self.optimizers.append(self.model.sigma_optimizer)
        jit = args.jit_compile == "on" or (args.jit_compile == "auto" and d >= JIT_FROM_D)
        self.model.compile(optimizer=self.optimizer, loss=self.method.loss(args), jit_compile=jit)
        scores_ids = {id(v) for v in self.scores_model.weights}
        # The other weights (σ's head, the escape's factor) start from constants: keep them to restore.
        self.head_weights = [(v, v.numpy()) for v in self.model.weights if id(v) not in scores_ids]

    def _initialise(self, repetition: int) -> None:
        self.scores_model.set_weights(build_scores(self.d).get_weights())
        self.initialise_head(repetition)
        for optimizer in self.optimizers:  # the step count and the moments, not the rate
            for variable in optimizer.variables:
                if variable.name != "learning_rate":
                    variable.assign(tf.zeros_like(variable))

    def initialise_head(self, repetition: int) -> None:
        """σ's head (and the escape's factor) at their start for this repetition."""
        for variable, value in self.head_weights:
            variable.assign(value)
        if self.noise_layer is not None and self.args.sigma_init == "torch":
            # PyTorch's nn.Linear(d, 1): weights and bias uniform in ±1/√fan_in, one draw per
            # (seed, d, repetition), shared by every method with σ's head. The layer uses W = s·U.
            rng = np.random.default_rng([self.args.seed, self.d, repetition, 1])
            bound = 1.0 / np.sqrt(self.d)
            kernel, bias = self.noise_layer.sigma_kernel, self.noise_layer.sigma_bias
            scale = self.noise_layer.sigma_lr_scale
            kernel.assign(rng.uniform(-bound, bound, kernel.shape).astype(np.float32) / scale)
            bias.assign(rng.uniform(-bound, bound, bias.shape).astype(np.float32) / scale)

    def sigma(self, x: np.ndarray) -> np.ndarray:
        """σ(x) `[N]` of the method's noise-scale layer now."""
        layer = self.noise_layer
        layer.return_sigma = True
        try:
            _, sigma = layer([tf.zeros([len(x), 1, self.d, self.d]), tf.constant(x)], training=False)
        finally:
            layer.return_sigma = False
        return np.reshape(sigma.numpy(), [-1])

    def fit(self, x_train: np.ndarray, repetition: int = 0, x_val: Optional[np.ndarray] = None):
        """Trains from a fresh initialisation; returns the Keras history and the early-stopping callback."""
        self._initialise(repetition)
        kind, patience = self.args.early_stopping
        callbacks, validation = [], None
        if kind != "none":
            callbacks.append(KeepBest("val_loss" if kind == "validation" else "loss", patience))
        if kind == "validation":
            validation = (x_val, self.method.target(x_val))
        history = self.model.fit(
            x_train,
            self.method.target(x_train),
            batch_size=self.args.batch_size,
            epochs=self.args.epochs,
            verbose=self.args.verbose,
            shuffle=True,
            validation_data=validation,
            callbacks=callbacks,
        )
        return history, (callbacks[0] if callbacks else None)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Hard matchings assignment(θ) `[N, d, d]`, no noise."""
        theta = self.scores_model(x, training=False)  # [N, d, d]
        return _hard_assignment(theta).numpy()


@tf.function(jit_compile=True)
def _hard_assignment(theta):
    return tf_perturbed.solvers.assignment(theta)


# -------------------------------------------------------------------------- main


def _add_arguments(parser) -> None:
    parser.add_argument(
        "--dims",
        type=shared.int_list,
        default=None,
        help="sequence lengths d (quick 5,10,25; else also 40,60,100)",
    )
    parser.add_argument("--repetitions", type=int, default=None, help="trainings per (method, d) (2)")
    parser.add_argument("--num-train", type=int, default=None, help="training sequences (400)")
    parser.add_argument("--num-test", type=int, default=None, help="test sequences per repetition (500)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (quick 5, else 8)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="sequences per step (10; paper: 10 = the whole set)"
    )
    parser.add_argument(
        "--learning-rate", type=float, default=0.1, help="Adam step of the scores (paper: 0.1)"
    )
    parser.add_argument("--num-samples", type=int, default=5, help="noise draws per sequence (paper: 5)")
    parser.add_argument(
        "--epsilon",
        type=float,
        default=-12.0,
        help="ε, normalised per sequence (< 0: towards-best, the default; > 0: away from the loss)",
    )
    parser.add_argument("--max-growth-steps", type=int, default=10, help="retries of the 10 %% ε escape")
    parser.add_argument(
        "--sigma-lr-scale", type=float, default=0.01, help="learning-rate factor of σ's head (direct_learned)"
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default="ours",
        help="defaults of the flags below: ours, or the authors' code (paper: each flag as in PAPER)",
    )
    parser.add_argument(
        "--sigma-optimizer",
        choices=("adam", "sgd"),
        default=None,
        help="σ's head (direct_learned): the scores' Adam scaled by --sigma-lr-scale (ours), or SGD (paper)",
    )
    parser.add_argument("--sigma-lr", type=float, default=None, help="SGD step of σ's head (paper: 1e-6)")
    parser.add_argument(
        "--sigma-init",
        choices=("constant", "torch"),
        default=None,
        help="σ's head at the start: W = 0, σ = 1 (ours), or uniform in ±1/√d per run (paper, PyTorch's)",
    )
    parser.add_argument(
        "--noise-scale",
        type=float,
        default=None,
        help="β of the Gumbel noise β·G (ours 1; paper √18/π = 1.3505)",
    )
    parser.add_argument(
        "--loss-augmentation",
        choices=("squared", "hamming-x2"),
        default=None,
        help="H in θ + ε·H: the squared error C (ours) or ±x_j² on column j (paper)",
    )
    parser.add_argument(
        "--epsilon-normalize", choices=("max_abs", "none"), default=None, help="H / max |H| (ours) or H"
    )
    parser.add_argument(
        "--escape",
        choices=("per-problem", "global-persistent"),
        default=None,
        help="ε's 10 %% escape: per stuck problem, reset each step (ours), or when the whole batch is stuck, kept (paper)",
    )
    parser.add_argument(
        "--divide-by-epsilon",
        choices=("on", "off"),
        default=None,
        help="gradient (y_ε − y₀)/ε (on, ours) or y₀ − y_ε (paper)",
    )
    parser.add_argument(
        "--early-stopping",
        type=early_stopping,
        default=None,
        help="none (ours), train-loss:N (paper: N = 50) or validation:N; the best epoch's weights are kept",
    )
    parser.add_argument(
        "--num-validation", type=int, default=100, help="validation sequences (--early-stopping validation:N)"
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
    """Mean, std and standard error (std with n − 1 over √n) over repetitions of each metric."""
    row = {}
    for key in METRICS:
        values = np.array([run[key] for run in runs])
        row[f"{key}_mean"] = float(values.mean())
        row[f"{key}_std"] = float(values.std())
        row[f"{key}_se"] = (
            float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
        )
    row["repetitions"] = len(runs)
    return row


def _parse(argv) -> argparse.Namespace:
    """The flags, with --protocol's presets and defaults filled in where a flag was not given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--protocol", choices=PROTOCOLS, default="ours")
    protocol = first.parse_known_args(argv)[0].protocol
    paper = protocol == "paper"
    args = shared.parse_args(
        NAME,
        argv,
        METHODS,
        description=__doc__.split("\n")[0],
        default_methods=PAPER_METHODS if paper else OURS_METHODS,
        add_arguments=_add_arguments,
        presets=(PAPER_QUICK, PAPER_FULL) if paper else (QUICK, FULL),
    )
    for key, value in (PAPER if paper else OURS).items():
        if getattr(args, key) is None:
            setattr(args, key, early_stopping(value) if key == "early_stopping" else value)
    if not args.sigma_lr > 0:
        raise ValueError(f"Expected --sigma-lr > 0, received: --sigma-lr {args.sigma_lr!r}")
    if args.early_stopping[0] == "validation" and args.num_validation < 1:
        raise ValueError(
            "Expected --num-validation ≥ 1 with --early-stopping validation:N, received: "
            f"--num-validation {args.num_validation}"
        )
    return args


def _mean_curve(curves: list) -> list:
    """Mean over the runs still training at each epoch (early stopping ends runs at different epochs)."""
    length = max(len(curve) for curve in curves)
    return [float(np.mean([curve[k] for curve in curves if len(curve) > k])) for k in range(length)]


def _train_runs(name: str, d: int, data: list, args) -> list:
    """One training per repetition; the metrics, the curves and the early stopping's epochs."""
    trainer = Trainer(name, d, args)
    runs = []
    for repetition, (x_train, x_val, x_test) in enumerate(data):
        run = {}
        if trainer.noise_layer is not None:
            trainer.initialise_head(repetition)
            run["initial_sigma"] = float(np.mean(trainer.sigma(x_train)))
        history, stopper = trainer.fit(x_train, repetition, x_val)
        run.update(sorting_metrics(trainer.predict(x_test), x_test))
        run["loss_curve"] = [float(v) for v in history.history["loss"]]
        run["epochs_run"] = len(run["loss_curve"])
        run["best_epoch"] = stopper.best_epoch if stopper is not None else run["epochs_run"]
        if trainer.noise_layer is not None:
            run["sigma_curve"] = [float(v) for v in history.history[f"{trainer.noise_layer.name}_sigma"]]
        runs.append(run)
    return runs


def main(argv=None) -> dict:
    timer = shared.Timer()
    args = _parse(argv)
    keras.utils.set_random_seed(args.seed)

    results, sigma_curves = [], {}
    for d in args.dims:
        # The same training and test sequences for every method (common random numbers).
        rng = np.random.default_rng([args.seed, d])
        data = [
            (make_sequences(args.num_train, d, rng), make_sequences(args.num_test, d, rng))
            for _ in range(args.repetitions)
        ]
        # Validation sequences from their own stream, so that the others do not change.
        val_rng = np.random.default_rng([args.seed, d, 2])
        data = [
            (x_train, make_sequences(args.num_validation, d, val_rng), x_test) for x_train, x_test in data
        ]
        for name in args.methods:
            method = METHODS[name]
            keras.utils.set_random_seed(args.seed)
            fit_timer = shared.Timer()
            runs = _train_runs(name, d, data, args)
            row = {
                "method": name,
                "d": d,
                "protocol": args.protocol,
                **method.params(args),
                **summarise(runs),
                "perfect_sort_rate_runs": [run["perfect_sort_rate"] for run in runs],
                "prop_wrong_runs": [run["prop_wrong"] for run in runs],
                "final_loss_mean": float(np.mean([run["loss_curve"][-1] for run in runs])),
                "loss_curves": [run["loss_curve"] for run in runs],
                "epochs_run_runs": [run["epochs_run"] for run in runs],
                "best_epoch_runs": [run["best_epoch"] for run in runs],
                "learning_rate": args.learning_rate,
                "epochs": args.epochs,
                "early_stopping": ":".join(map(str, args.early_stopping)),
                "batch_size": args.batch_size,
                "num_train": args.num_train,
                "num_test": args.num_test,
                "train_seconds": round(fit_timer(), 1),
            }
            if method.sigma_layer is not None:
                row["initial_sigma_runs"] = [run["initial_sigma"] for run in runs]
                row["sigma_curves"] = [run["sigma_curve"] for run in runs]
                if _sigma_regime(name, args) != "frozen":
                    sigma_curves[f"d={d} {name} ({_regime_label(name, args)})"] = _mean_curve(
                        row["sigma_curves"]
                    )
            results.append(row)
            print(
                f"[{NAME}] d={d} {name}: perfect_sort_rate={row['perfect_sort_rate_mean']:.3f}"
                f"±{row['perfect_sort_rate_se']:.3f}, prop_wrong={row['prop_wrong_mean']:.4f}"
                f"±{row['prop_wrong_se']:.4f} (± s.e.; {row['train_seconds']} s, "
                f"epochs {row['epochs_run_runs']})",
                flush=True,
            )

    figures = ["metrics_vs_d.png"]
    plot_metrics(results, args.output_dir / figures[0])
    if sigma_curves:
        figures.append("learned_sigma.png")
        plot_sigma(sigma_curves, args.output_dir / figures[1])
    settings = {key: getattr(args, key) for key in PAPER}
    settings["early_stopping"] = ":".join(map(str, args.early_stopping))
    payload = shared.write_metrics(
        args.output_dir,
        results,
        args.command,
        timer(),
        data={
            "sequences": "d numbers drawn uniformly in [0, 1]; fresh train and test sequences per repetition",
            "target": "the sorting permutation P[i, j] = 1 when x_i is the j-th smallest",
        },
        protocol={"name": args.protocol, **settings},
        sigma_mean_curves=sigma_curves,
        figures=figures,
    )
    shared.print_table(
        results,
        ["method", "d", "perfect_sort_rate_mean", "perfect_sort_rate_se", "prop_wrong_mean", "prop_wrong_se"],
    )
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


def _regime_label(name: str, args) -> str:
    regime = _sigma_regime(name, args)
    return f"SGD {args.sigma_lr:g}" if regime == "sgd" else f"Adam ×{args.sigma_lr_scale:g}"


def plot_metrics(results: list, path, error: str = "std") -> None:
    """Perfect-sort rate and share of misplaced elements against d, one line per method (± `error`: std or se)."""
    fig, axes = shared.figure(1, len(METRICS))
    dims = sorted({row["d"] for row in results})
    markers = dict(zip(METHODS, "osD^v"))
    for ax, metric in zip(axes[0], METRICS):
        for name in dict.fromkeys(row["method"] for row in results):
            rows = sorted((row for row in results if row["method"] == name), key=lambda row: row["d"])
            ax.errorbar(
                [row["d"] for row in rows],
                [row[f"{metric}_mean"] for row in rows],
                yerr=[row[f"{metric}_{error}"] for row in rows],
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
    """The mean learned σ after every epoch (batch mean, averaged over the repetitions), per d and regime."""
    fig, axes = shared.figure(width=6.5, height=4.0)
    ax = axes[0, 0]
    for label, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=label, linestyle="-" if "SGD" in label else "--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean σ(x) over the epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Learned σ over training")
    shared.save_figure(fig, path)


if __name__ == "__main__":
    main()
