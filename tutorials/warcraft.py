"""Warcraft shortest paths: learn terrain costs from map images through a shortest-path solver.

Berthet et al. (2020, §5.3 and Appendix C.3) replicate Vlastelica et al. (2019): a network
reads a 96×96 image of a 12×12 grid of terrain tiles and outputs one positive cost per
vertex; the prediction is the shortest path (top-left to bottom-right, 8-neighbour moves)
under those costs. Training only sees the true path (Fenchel-Young loss, blackbox, I-MLE),
or the true costs (squared-error baseline, SPO+). `--grid-size` 18, 24 or 30 gives the larger
maps of Vlastelica et al. (same network; tutorials/warcraft_sizes.py runs every size).

Network: the first layers of ResNet18 (7×7/2 convolution with 64 channels, batch norm,
ReLU, 3×3/2 max-pool, then the first residual stage: two BasicBlocks of 64 channels), which
take a 8g×8g image to a 2g×2g feature map; a 2×2 max-pool lands exactly on the g×g grid; a
1×1 convolution reduces the channels to one; softplus makes the vertex costs positive.

Methods (`--methods`, the `method` key of each metrics row; default: the first three):
  fenchel_young  `tf_perturbed.FenchelYoungLoss("shortest_path", num_samples=10, sigma=ε)`
                 between the predicted costs and the true path. The noise is
                 multiplicative, c' = c ⊙ exp(εZ − ε²/2), because the solver needs costs
                 ≥ 0. That loss is 1-homogeneous in c, so it can fall by shrinking every
                 cost instead of learning the terrains; the costs are therefore divided by
                 their mean per map before the loss (`--normalize 1`, which leaves the paths
                 unchanged). The paper used ε = 1, M = 1 (additive noise, through the code
                 of Vlastelica et al.); here M = 10 and ε = 0.1 in quick mode (0.25 and 0.5
                 did worse), ε = 0.05 in the long run (it fits the costs closer: the loss
                 inflates the costs off the path by a margin that grows with ε), chosen on
                 the validation split.
  squared        mean squared error between predicted and true vertex costs (baseline; it
                 uses the hidden costs, which the other methods never see).
  blackbox       `tf_perturbed.DirectLossGradient("shortest_path", epsilon=−λ/70)` and a
                 Hamming loss to the true path: the blackbox differentiation of Vlastelica et
                 al. with their λ = 20 at batch B = 70, i.e. ε = −20/70 ≈ −0.286 (the
                 layer normalises the loss gradient by its largest entry, so ε is the
                 largest move of a cost, as λ/B is in their batch-mean Hamming loss);
                 kept at any batch size (`blackbox_epsilon`).
  spo_plus       (not run by default) `tf_perturbed.SPOPlusLoss("shortest_path",
                 clip_to_domain=True)` between the predicted and the true vertex costs (the
                 SPO+ loss of Elmachtoub & Grigas). Like `squared` it needs the hidden true
                 costs, which the path-supervised methods never see. On the 8-connected grid
                 2ĉ − c can be negative, where no shortest path exists; the loss then solves
                 max(2ĉ − c, 0), a stated surrogate equal to SPO+ where 2ĉ − c ≥ 0
                 (`tf_perturbed.spo_plus_loss`).
  imle           (not run by default) `tf_perturbed.ImplicitMLE("shortest_path",
                 lambda_=20/70, sigma=0.1, noise="gumbel", normalize="max_abs")` after the
                 cost network, trained with the blackbox method's Hamming loss to the true
                 path (Niepert et al. 2021). λ is the blackbox step (with τ = 0 the
                 estimator is the blackbox one; tested). As for Fenchel-Young, the costs are
                 divided by their per-map mean before the layer (`--imle-normalize 1`), so
                 that τ and λ are relative to the map's costs; Gumbel noise of scale
                 τ = 0.1 then perturbs every vertex alike at any grid size (standard
                 deviation 0.13 of the mean cost). Chosen on the validation split: in quick
                 mode normalising lifted 0.325 to 0.68 (sum-of-Gamma, τ = 1), and Gumbel
                 τ = 0.1 (0.73) was the best noise, level with sum-of-Gamma at κ = the mean
                 path length and τ = 0.25 (0.715); no noise gave 0.785 there, but at 18×18
                 and larger it and the sum-of-Gamma noise (whose per-vertex spread falls as
                 1/√κ) let the costs collapse onto one terrain, which Gumbel τ = 0.1 did
                 not at 30×30 (docs/notes/2026-12-04-warcraft-sizes.md). `--imle-noise
                 sum_of_gamma` takes κ from `--imle-kappa` or the mean training path length.
  terrain_classifier  (not run by default) a reference, not a method of the paper: the
                 same network with five outputs per vertex, trained by cross-entropy on
                 the hidden terrain type of every vertex; its costs are those of the
                 predicted terrains. It shows how well the network can read the tiles
                 when every vertex is labelled, which the path-supervised methods are not.

Training (`model.fit`): Adam, batches of 35 at learning rate 2e-3, the learning rate
multiplied by 0.1 at 60 % and 80 % of the epochs; 12 epochs on 10,000 maps, 5 epochs on 1,400
with `--quick`. The paper trains 50 epochs in batches of 70 at 5e-4 (`--epochs 50 --batch-size
70 --learning-rate 5e-4`); the smaller batch and larger step were chosen on the validation
split for the quick budget and carried to the long run (3,432 steps of 35 against the paper's
7,150 of 70; tutorials/README.md). By default every training map is transposed and/or
rotated by 180° at random, anew each epoch (`--no-augment` turns it off): the four
symmetries of a square that keep the two corners, with the path moved along (it stays a
shortest path of the moved costs). The paper does not augment; here it lifted Fenchel-Young
in quick mode from 0.565–0.585 to 0.705–0.75 perfect paths on the test split
(tutorials/README.md). Metrics on the test split, for the path of the predicted
costs: perfect_path_accuracy (its true cost equals the optimal cost, relative tolerance
1e-5), exact_match (the same mask as the label) and cost_ratio (its true cost divided by the
optimal one, ≥ 1, averaged). The validation split is scored after every epoch (curves); it,
never the test split, was used for tuning.

Symmetric views (`--no-symmetric-views` turns them off): the test metrics and the exported
model ask the network for the costs of all 8 rotations and reflections of a map, turn the
answers back and average them (`build_symmetric_cost_model`); a vertex's cost does not
depend on how the map is turned, and the average is closer to its terrain's than one view.
Every metrics row also has `single_view`, the metrics of the network's own costs (the
paper's protocol); the validation curves are single-view.

Serving: the first method's network is wrapped as image → hard path mask (its costs fed to
`tf_perturbed.PerturbedShortestPath`, which solves without noise at inference), exported
with `model.export` to OUTPUT_DIR/saved_model_<method>/, then a fresh Python process that
imports only TensorFlow and NumPy loads it and asks for the paths of 8 test maps (printed,
and checked against the in-process model). `--no-export` skips this.

Outputs in `--output-dir`: metrics.json (`{"results": [{"method": …, …}], …}`),
curves.png (training loss and validation metrics per epoch), paths_<method>.png (test maps
with the true and predicted paths), the SavedModel, and the generated data cached under
data/warcraft/ (`--data-dir`; `--original-dir` reads the original .npy files instead).

Run: `python tutorials/warcraft.py --quick --methods fenchel_young` (the demo: 1,400 training
maps, 5 epochs of 35; under 5 minutes on 2 CPU cores shared at a load average of 3–3.6),
`--quick` for the three default methods (12.3 minutes at that load), or without `--quick` for
the paper's 10,000 training maps and 12 epochs of 35 (54 minutes per method with another such
run sharing the 2 cores). Measured numbers: tutorials/README.md; every size and method:
docs/warcraft_sizes.md.
"""

import argparse
import os
import pathlib
import subprocess
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402  (tutorials/common.py: CLI, metrics.json, figures)
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import warcraft_data  # noqa: E402  (tutorials/warcraft_data.py: the maps)

import tf_perturbed  # noqa: E402

METHODS = ("fenchel_young", "squared", "blackbox", "spo_plus", "imle", "terrain_classifier")
DEFAULT_METHODS = ("fenchel_young", "squared", "blackbox")
RELATIVE_TOLERANCE = 1e-5
# PyTorch's batch-norm momentum 0.1 (the original ResNet18) is Keras's 0.9. Keras's default
# 0.99 leaves the moving statistics far from the batch ones after a short training run.
BN_MOMENTUM = 0.9
REDUCTIONS = ("conv", "mean")
VLASTELICA_BATCH = 70  # the batch at which Vlastelica et al. tuned λ of the blackbox method


# ----------------------------------------------------------------------------- model


def _basic_block(x, filters: int, name: str):
    """ResNet BasicBlock with an identity shortcut: conv-BN-ReLU-conv-BN, add, ReLU."""
    shortcut = x
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn1")(x)
    x = keras.layers.ReLU(name=f"{name}_relu1")(x)
    x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_bn2")(x)
    x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return keras.layers.ReLU(name=f"{name}_relu2")(x)


def _channel_mean(features):
    """Mean over the channels of non-negative features `[B, g, g, C]`, plus 1e-3: `[B, g, g, 1]`."""
    return keras.ops.mean(features, axis=-1, keepdims=True) + 1e-3


def build_cost_model(image_size: int, grid_size: int, reduction: str = "conv") -> keras.Model:
    """Images uint8/float `[B, S, S, 3]` → positive vertex costs `[B, g, g]`.

    ResNet18's stem and first stage divide the side by 4; the max-pool that follows must
    then land exactly on the grid (S = 8g gives a 2×2 pool, as in the original data).
    `reduction` turns the 64 channels of a vertex into its cost: `"conv"`, a learned 1×1
    convolution then softplus; `"mean"`, the channel mean of the (non-negative) features,
    as in the code of Vlastelica et al., plus a small constant so that costs are > 0.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"Expected `reduction` in {REDUCTIONS}, received: reduction={reduction!r}")
    if image_size % 4 or (image_size // 4) % grid_size:
        raise ValueError(
            "Expected an image side divisible by 4·grid_size (8 pixels per vertex in the Warcraft "
            f"data), received: image_size={image_size}, grid_size={grid_size}"
        )
    pool = image_size // 4 // grid_size
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(inputs)
    conv1 = keras.layers.Conv2D(64, 7, strides=2, padding="same", use_bias=False, name="conv1")
    x = conv1(x)  # [B, S/2, S/2, 64]
    x = keras.layers.BatchNormalization(momentum=BN_MOMENTUM, name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool1")(x)  # [B, S/4, S/4, 64]
    x = _basic_block(x, 64, "layer1_0")
    x = _basic_block(x, 64, "layer1_1")
    x = keras.layers.MaxPooling2D(pool, name="grid_pool")(x)  # [B, g, g, 64]
    if reduction == "conv":
        x = keras.layers.Conv2D(1, 1, name="to_cost")(x)  # [B, g, g, 1]
        x = keras.layers.Activation("softplus", name="positive")(x)
    else:
        x = keras.layers.Lambda(_channel_mean, name="to_cost")(x)  # [B, g, g, 1]
    costs = keras.layers.Reshape((grid_size, grid_size), name="costs")(x)  # [B, g, g]
    return keras.Model(inputs, costs, name="warcraft_costs")


# ----------------------------------------------------------------------------- methods


def hamming_loss(y_true, y_pred):
    """Mean Hamming distance between 0/1 masks, linear in y_pred: y(1 − t) + (1 − y)t."""
    y_true = tf.cast(y_true, y_pred.dtype)
    return tf.reduce_mean(y_pred * (1.0 - y_true) + (1.0 - y_pred) * y_true, axis=[-2, -1])


def blackbox_epsilon(blackbox_lambda: float) -> float:
    """ε of `DirectLossGradient` for the blackbox method with the λ of Vlastelica et al.

    They move the costs by λ·g with g = ±1/B per vertex for their batch-mean Hamming loss,
    λ = 20 tuned at B = 70; with the layer's max-abs normalisation that move is the step
    ε = −λ/70 (towards the better path). It is kept at their batch whatever `--batch-size`:
    the move of a cost is what λ tuned (at the quick batch of 35, λ/35 = 0.571 stalled the
    validation accuracy at 0.155, tutorials/README.md).
    """
    return -abs(blackbox_lambda) / VLASTELICA_BATCH


def _blackbox_model(cost_model: keras.Model, args) -> keras.Model:
    """The blackbox method: images → costs `[B, g, g]` → DirectLossGradient(shortest path) → path.

    The loss-perturbed costs are clipped at 0, the solver's domain (the layer's default).
    """
    layer = tf_perturbed.DirectLossGradient(
        "shortest_path",
        epsilon=blackbox_epsilon(args.blackbox_lambda),
        name="shortest_path",
    )
    return keras.Model(cost_model.input, layer(cost_model.output), name="warcraft_blackbox")


def imle_kappa(args, train_paths: Optional[np.ndarray]) -> Optional[float]:
    """κ of the I-MLE sum-of-Gamma noise: `--imle-kappa`, or the mean length of the training paths.

    A path picks about that many vertices of the grid, as a κ-subset picks κ entries; the
    sum of the κ noises along the path is then (nearly) a Gumbel of scale τ (Niepert et al.
    2021, §4), whatever the grid size. The labels are training data, so this reads no test
    map. None for the other noises, which have no κ.
    """
    if args.imle_noise != "sum_of_gamma":
        return None
    if args.imle_kappa is not None:
        return float(args.imle_kappa)
    if train_paths is None:
        raise ValueError("Expected `train_paths` (or `--imle-kappa`) for sum-of-Gamma noise, received: None")
    return float(np.mean(np.sum(train_paths, axis=(-2, -1))))


def _imle_model(cost_model: keras.Model, args, kappa: Optional[float]) -> keras.Model:
    """The I-MLE method: images → costs `[B, g, g]` → ImplicitMLE(shortest path) → path `[B, g, g]`.

    λ and its normalisation are the blackbox method's (`blackbox_epsilon`: the largest move
    of a cost is 20/70), so that with τ = 0 the two train alike; the forward pass solves the
    noisy costs c + τγ (clipped at 0, the solver's domain) and the backward pass the same
    noisy costs moved by λ·g towards the better path.
    """
    layer = tf_perturbed.ImplicitMLE(
        "shortest_path",
        lambda_=-blackbox_epsilon(args.blackbox_lambda),
        num_samples=args.imle_samples,
        sigma=args.imle_sigma,
        noise=args.imle_noise,
        kappa=kappa,
        normalize="max_abs",
        seed=args.seed,
        name="shortest_path",
    )
    costs = cost_model.output
    if args.imle_normalize:
        costs = keras.layers.Lambda(normalize_costs, name="normalize")(costs)
    return keras.Model(cost_model.input, layer(costs), name="warcraft_imle")


def normalize_costs(costs):
    """Divides every map's costs `[B, g, g]` by their mean: each map's mean cost becomes 1.

    The Fenchel-Young loss with multiplicative noise is 1-homogeneous, L(αc; y) = αL(c; y),
    so without this it can fall by shrinking every cost instead of learning the terrains
    (seen here: the training loss fell 100-fold while the paths stayed wrong). The shortest
    path does not change when a map's costs are scaled, so predictions are unaffected.
    """
    return costs / (keras.ops.mean(costs, axis=(-2, -1), keepdims=True) + 1e-6)


def build_method(method: str, cost_model: keras.Model, args, train_paths: Optional[np.ndarray] = None):
    """(model to train, loss, key of its target in a split) for one method.

    `train_paths` `[N, g, g]`, the training labels, set the κ of I-MLE's sum-of-Gamma noise
    when `--imle-kappa` is not given.
    """
    if method == "fenchel_young":
        # c + εZ can be negative: with additive noise the loss solves max(c + εZ, 0), the
        # shortest-path solver's domain (as every estimator of tf_perturbed does).
        loss = tf_perturbed.FenchelYoungLoss(
            "shortest_path",
            num_samples=args.num_samples,
            sigma=args.sigma,
            perturbation=args.perturbation,
            seed=args.seed,
        )
        model = cost_model
        if args.normalize:
            normalized = keras.layers.Lambda(normalize_costs, name="normalize")(cost_model.output)
            model = keras.Model(cost_model.input, normalized, name="warcraft_normalized")
        return model, loss, "paths"
    if method == "squared":
        return cost_model, keras.losses.MeanSquaredError(), "costs"
    if method == "blackbox":
        return _blackbox_model(cost_model, args), hamming_loss, "paths"
    if method == "spo_plus":
        return cost_model, tf_perturbed.SPOPlusLoss("shortest_path", clip_to_domain=True), "costs"
    if method == "imle":
        return _imle_model(cost_model, args, imle_kappa(args, train_paths)), hamming_loss, "paths"
    raise ValueError(
        f"Expected `method` in {METHODS[:-1]} (the terrain classifier has its own builder, "
        f"`build_terrain_classifier`), received: method={method!r}"
    )


def terrain_classes(costs: np.ndarray) -> np.ndarray:
    """Terrain type (0–4, in `warcraft_data.TERRAIN_COSTS` order) of each vertex cost `[N, g, g]`."""
    costs = np.asarray(costs, np.float32)
    distance = np.abs(costs[..., None] - warcraft_data.TERRAIN_COSTS)  # [N, g, g, 5]
    classes = np.argmin(distance, axis=-1)
    if costs.size and np.max(np.min(distance, axis=-1)) > 1e-4:
        raise ValueError(
            "Expected vertex costs among the five terrain costs "
            f"{warcraft_data.TERRAIN_COSTS.tolist()} for the terrain classifier, received: a cost "
            f"of {float(costs.ravel()[np.argmax(np.min(distance, axis=-1))])}"
        )
    return classes.astype(np.int32)


def build_terrain_classifier(cost_model: keras.Model):
    """(model images → terrain logits `[B, g, g, 5]`, model images → costs of the argmax terrain).

    Shares the cost model's network up to the pool onto the grid; a 1×1 convolution
    gives five logits per vertex instead of one cost.
    """
    features = cost_model.get_layer("grid_pool").output  # [B, g, g, 64]
    logits = keras.layers.Conv2D(len(warcraft_data.TERRAIN_COSTS), 1, name="to_terrain")(features)
    classifier = keras.Model(cost_model.input, logits, name="warcraft_terrain")
    terrain_costs = keras.ops.convert_to_tensor(warcraft_data.TERRAIN_COSTS)
    costs = keras.layers.Lambda(
        lambda z: keras.ops.take(terrain_costs, keras.ops.argmax(z, axis=-1)), name="terrain_costs"
    )(logits)  # [B, g, g]
    return classifier, keras.Model(cost_model.input, costs, name="warcraft_terrain_costs")


def corner_symmetry(image, target, choice):
    """One of the four symmetries of a square map that keep its two corners in place.

    `choice` (int32 scalar, 0–3; `square_symmetry` numbering): bit 0 transposes, bit 1
    rotates by 180°. The image `[S, S, C]` and the per-vertex target `[g, g]` (a path mask,
    costs or terrains) move together; the moved path is a shortest path of the moved costs,
    since the moves are the same 8 (or 4) directions and a path's cost does not depend on
    its direction.
    """
    return tf.switch_case(
        choice,
        [lambda k=k: (square_symmetry(image[None], k)[0], square_symmetry(target[None], k)[0]) for k in range(4)],
    )


def augmented_batches(images, targets, batch_size: int, seed: int) -> tf.data.Dataset:
    """Shuffled batches in which every map gets a random corner symmetry, anew each epoch."""
    choices = tf.data.Dataset.random(seed=seed).map(lambda r: tf.cast(r % 4, tf.int32))
    maps = tf.data.Dataset.from_tensor_slices((images, targets)).shuffle(len(images), seed=seed)
    return (
        tf.data.Dataset.zip((maps, choices))
        .map(lambda pair, choice: corner_symmetry(pair[0], pair[1], choice))
        .batch(batch_size)
        .prefetch(2)
    )


def learning_rate_schedule(epochs: int, base: float):
    """The learning rate times 0.1 from epoch ⌊0.6·epochs⌋ and again from ⌊0.8·epochs⌋ (0-based).

    With 50 epochs: 5e-4 for epochs 0–29, 5e-5 for 30–39, 5e-6 for 40–49. The first epoch
    always keeps the base rate (a one-epoch run is not decayed from the start).
    """
    first, second = max(1, int(0.6 * epochs)), max(1, int(0.8 * epochs))

    def schedule(epoch, _lr=None):
        return base * (0.1 if epoch >= first else 1.0) * (0.1 if epoch >= second else 1.0)

    return schedule


def square_symmetry(x, k: int, inverse: bool = False):
    """The k-th (0–7) symmetry of the square, on axes 1 and 2 of `x` `[B, a, a, ...]`.

    Bit 0 of k transposes, bit 1 rotates by 180°, bit 2 reverses the rows; k = 0–3 are the
    symmetries that keep the two path corners (`corner_symmetry`), k = 4–7 swap them with
    the other two. Each step undoes itself, so `inverse=True` applies them in reverse order.
    """
    if not 0 <= k < 8:
        raise ValueError(f"Expected a symmetry index 0 <= k < 8, received: k={k}")
    perm = [0, 2, 1] + list(range(3, len(x.shape)))
    steps = [
        step
        for bit, step in (
            (1, lambda t: keras.ops.transpose(t, perm)),
            (2, lambda t: keras.ops.flip(keras.ops.flip(t, axis=1), axis=2)),
            (4, lambda t: keras.ops.flip(t, axis=1)),
        )
        if k & bit
    ]
    for step in reversed(steps) if inverse else steps:
        x = step(x)
    return x


def build_symmetric_cost_model(cost_model: keras.Model) -> keras.Model:
    """Images → vertex costs `[B, g, g]` averaged over the 8 symmetries of the map.

    A vertex's cost is the cost of its terrain, wherever the map is turned, so the network
    is asked for the costs of all 8 rotations and reflections of the image; each answer is
    turned back, divided by its map mean (which changes no path) and the 8 are averaged.
    Turned maps whose corners move (k = 4–7) are fine here: only the costs are read, the
    path is solved afterwards on the averaged costs. Costs 8 forward passes.
    """
    views = []
    for k in range(8):
        turn = keras.layers.Lambda(lambda x, k=k: square_symmetry(x, k), name=f"turn_{k}")
        back = keras.layers.Lambda(lambda c, k=k: square_symmetry(c, k, inverse=True), name=f"back_{k}")
        costs = back(cost_model(turn(cost_model.input)))  # [B, g, g], in the map's own frame
        views.append(keras.layers.Lambda(normalize_costs, name=f"normalize_{k}")(costs))
    averaged = keras.layers.Average(name="costs")(views)
    return keras.Model(cost_model.input, averaged, name=f"{cost_model.name}_symmetric")


# ----------------------------------------------------------------------------- metrics


class PathPredictor:
    """Shortest paths `[N, g, g]` of a cost model's inference-mode costs, in fixed-size batches.

    One `tf.function` per predictor, fed padded batches so that it is traced once: calling
    `model.predict` from a callback inside `fit` cost about 20 s per call here (2 CPU
    cores), this costs well under a second for 200 maps after the first call.
    """

    def __init__(self, cost_model: keras.Model, batch_size: int):
        self.batch_size = batch_size
        self._grid = cost_model.output.shape[1:]  # (g, g)
        self._model = cost_model
        self._costs = tf.function(self._inference_costs)

    def _inference_costs(self, images):
        return self._model(images, training=False)  # [batch_size, g, g]

    def costs(self, images: np.ndarray) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0,) + tuple(self._grid), np.float32)
        return warcraft_data.map_in_batches(self._costs, images, self.batch_size)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return warcraft_data.shortest_paths(self.costs(images))


def path_metrics(pred_paths: np.ndarray, true_paths: np.ndarray, true_costs: np.ndarray) -> Dict[str, float]:
    """perfect_path_accuracy, exact_match and cost_ratio of predicted paths, all `[N, g, g]`."""
    pred_cost = np.sum(pred_paths * true_costs, axis=(1, 2), dtype=np.float64)
    best_cost = np.sum(true_paths * true_costs, axis=(1, 2), dtype=np.float64)
    ratio = pred_cost / best_cost
    return {
        "perfect_path_accuracy": float(
            np.mean(np.abs(pred_cost - best_cost) <= RELATIVE_TOLERANCE * best_cost)
        ),
        "exact_match": float(np.mean(np.all(pred_paths == true_paths, axis=(1, 2)))),
        "cost_ratio": float(np.mean(ratio)),
    }


def cost_by_terrain(pred_costs: np.ndarray, true_costs: np.ndarray) -> Optional[Dict[str, dict]]:
    """How precisely each terrain's cost is predicted, costs `[N, g, g]` divided by their map's mean.

    Paths do not change when a map's costs are scaled, so both are divided by their per-map
    mean before they are compared. Returns, per terrain name, the true value and the mean,
    5th and 95th percentiles of the predicted values on the vertices of that terrain; None
    if the true costs are not the five terrain costs.
    """
    try:
        classes = terrain_classes(true_costs)
    except ValueError:
        return None
    pred = pred_costs / np.mean(pred_costs, axis=(1, 2), keepdims=True)
    true = true_costs / np.mean(true_costs, axis=(1, 2), keepdims=True)
    spread = {}
    for k, name in enumerate(warcraft_data.TERRAIN_NAMES):
        on = classes == k
        if not np.any(on):
            continue
        p5, p95 = np.percentile(pred[on], [5, 95])
        spread[name] = {
            "true": float(np.mean(true[on])),
            "mean": float(np.mean(pred[on])),
            "p5": float(p5),
            "p95": float(p95),
        }
    return spread


class PathMetrics(keras.callbacks.Callback):
    """Path metrics of the cost model on held-out maps at the end of every epoch."""

    def __init__(self, predictor: PathPredictor, split: Dict[str, np.ndarray], verbose: int = 1):
        super().__init__()
        self.predictor = predictor
        self.split = split
        self.history: List[Dict[str, float]] = []
        # Keras's progress bar (verbose 1) ends its line after the callbacks run.
        self._prefix = "\n" if verbose == 1 else ""

    def on_epoch_end(self, epoch, logs=None):
        paths = self.predictor(self.split["images"])
        metrics = path_metrics(paths, self.split["paths"], self.split["costs"])
        self.history.append(metrics)
        print(
            f"{self._prefix}  val: perfect_path_accuracy={metrics['perfect_path_accuracy']:.3f} "
            f"exact_match={metrics['exact_match']:.3f} cost_ratio={metrics['cost_ratio']:.4f}"
        )


# ----------------------------------------------------------------------------- figures


def plot_training(runs: Dict[str, dict], path: pathlib.Path) -> None:
    """Training loss (relative to the first epoch) and validation path metrics per epoch."""
    fig, axes = common.figure(1, 3, width=4.4, height=3.6)
    common.plot_curves(axes[0, 0], {m: np.asarray(r["loss"]) / r["loss"][0] for m, r in runs.items()}, "loss")
    axes[0, 0].set(title="training loss / first epoch", yscale="log")
    for ax, key, title in (
        (axes[0, 1], "perfect_path_accuracy", "val perfect path accuracy"),
        (axes[0, 2], "cost_ratio", "val cost ratio to optimal"),
    ):
        common.plot_curves(ax, {m: [v[key] for v in r["val"]] for m, r in runs.items()}, key)
        ax.set(title=title)
    for ax in axes.ravel():
        ax.legend()
    common.save_figure(fig, path)


def plot_paths(
    images, true_paths, pred_paths, title: str, path: pathlib.Path, num: int = 8, true_costs=None
) -> None:
    """Test maps with the true path (white circles) and the predicted one (red crosses).

    With `true_costs` `[N, g, g]`, each map's title gives the predicted path's cost ratio to
    the optimum ("optimal" when it is a shortest path too, which a different path can be).
    """
    num = min(num, len(images))
    cols = min(4, num)
    fig, axes = common.figure(-(-num // cols), cols, width=3.0, height=3.1)
    tile = images.shape[1] / true_paths.shape[1]
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k >= num:
            continue
        ax.imshow(images[k])
        rows, cols_ = np.nonzero(true_paths[k])
        ax.scatter((cols_ + 0.5) * tile, (rows + 0.5) * tile, s=40, facecolors="none", edgecolors="white")
        rows, cols_ = np.nonzero(pred_paths[k])
        ax.scatter((cols_ + 0.5) * tile, (rows + 0.5) * tile, s=14, c="red", marker="x")
        if true_costs is not None:
            ratio = path_metrics(pred_paths[k : k + 1], true_paths[k : k + 1], true_costs[k : k + 1])
            optimal = " (optimal)" if ratio["perfect_path_accuracy"] == 1.0 else ""
            ax.set_title(f"cost ratio {ratio['cost_ratio']:.3f}{optimal}", fontsize=9)
    fig.suptitle(f"{title}: true path (white circles), predicted path (red crosses)")
    common.save_figure(fig, path)


# ----------------------------------------------------------------------------- serving

# Run by a fresh Python process: it imports TensorFlow and NumPy only (not tf_perturbed, not
# Keras), loads the SavedModel and asks it for the paths of the images in an .npz file.
SERVE_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf

export_dir, images_path, out_path = sys.argv[1:4]
model = tf.saved_model.load(export_dir)
images = np.load(images_path)["images"]  # uint8 [N, S, S, 3]
paths = model.serve(tf.constant(images, tf.float32)).numpy()  # hard 0/1 masks [N, g, g]
assert "tf_perturbed" not in sys.modules, "serving must not need tf_perturbed"
np.save(out_path, paths)
print("fresh process: path of test map 0 from the SavedModel (# = on the path)")
for row in paths[0]:
    print("  " + " ".join("#" if v > 0.5 else "." for v in row))
"""


def build_path_model(cost_model: keras.Model) -> keras.Model:
    """Images `[B, S, S, 3]` (0–255) → hard shortest-path masks `[B, g, g]` at inference.

    `tf_perturbed.PerturbedShortestPath` returns the unperturbed solver's path when called
    with `training=False`, which is what `model.export` traces.
    """
    path = tf_perturbed.PerturbedShortestPath(num_samples=1, sigma=0.1, name="shortest_path")
    return keras.Model(cost_model.input, path(cost_model.output), name="warcraft_paths")


def export_and_serve(cost_model: keras.Model, images: np.ndarray, export_dir: pathlib.Path) -> dict:
    """Exports image → path as a SavedModel, reloads it in a fresh process and asks for paths.

    Returns a dict with the export folder, the number of maps served and whether the served
    paths `[N, g, g]` equal those of the in-process model.
    """
    path_model = build_path_model(cost_model)
    expected = path_model.predict(images.astype(np.float32), verbose=0)  # [N, g, g]
    path_model.export(str(export_dir), format="tf_saved_model", verbose=False)
    images_path, out_path = export_dir / "serve_images.npz", export_dir / "served_paths.npy"
    np.savez(images_path, images=images)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", SERVE_SCRIPT, str(export_dir), str(images_path), str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    print(result.stdout, end="")
    if result.returncode != 0:
        raise RuntimeError(f"Expected the fresh serving process to succeed, received:\n{result.stderr[-2000:]}")
    served = np.load(out_path)
    agree = bool(np.array_equal(served, expected))
    print(f"served paths equal the in-process model's: {agree} ({len(images)} test maps)")
    return {"export_dir": export_dir, "served_maps": len(images), "served_equal_in_process": agree}


# ----------------------------------------------------------------------------- main

# Both presets depart from the paper's protocol (50 epochs of 70 at 5e-4) where the validation
# split said so (tuning tables in tutorials/README.md): a 4× learning rate, batches of 35,
# M = 10 noise draws, augmentation; the long run stops after 12 epochs (16 did worse) and
# halves ε.
FULL = {
    "num_train": 10000, "num_val": 1000, "num_test": 1000, "epochs": 12, "learning_rate": 2e-3,
    "batch_size": 35, "num_samples": 10, "sigma": 0.05, "augment": True,
    "imle_sigma": 0.1, "imle_noise": "gumbel", "imle_samples": 1, "imle_normalize": 1,
}  # fmt: skip
QUICK = {**FULL, "num_train": 1400, "num_val": 200, "num_test": 200, "epochs": 5, "sigma": 0.1}


def _add_arguments(parser) -> None:
    parser.add_argument(
        "--data-dir",
        type=pathlib.Path,
        default=None,
        help="cache of generated maps (default OUTPUT_DIR/data/warcraft)",
    )
    parser.add_argument(
        "--original-dir", type=pathlib.Path, default=None, help="the original {split}_maps.npy, …"
    )
    parser.add_argument("--grid-size", type=int, default=12, help="vertices per side: 12, 18, 24 or 30")
    parser.add_argument("--num-train", type=int, default=None, help="default 10,000 (1,400 with --quick)")
    parser.add_argument("--num-val", type=int, default=None, help="default 1,000 (200 with --quick)")
    parser.add_argument("--num-test", type=int, default=None, help="default 1,000 (200 with --quick)")
    parser.add_argument("--epochs", type=int, default=None, help="default 12 (5 with --quick); the paper: 50")
    parser.add_argument("--batch-size", type=int, default=None, help="default 35; the paper: 70")
    parser.add_argument("--learning-rate", type=float, default=None, help="Adam; default 2e-3; the paper: 5e-4")
    parser.add_argument("--num-samples", type=int, default=None, help="M, Fenchel-Young draws; default 10")
    parser.add_argument(
        "--sigma", type=float, default=None, help="ε, Fenchel-Young noise scale; default 0.05 (0.1 with --quick)"
    )
    parser.add_argument("--perturbation", default="multiplicative", choices=("additive", "multiplicative"))
    parser.add_argument(
        "--blackbox-lambda", type=float, default=20.0, help="λ of Vlastelica et al.; the step is ε = −λ/70"
    )
    parser.add_argument("--imle-sigma", type=float, default=None, help="τ, I-MLE noise temperature")
    parser.add_argument(
        "--imle-noise", default=None, help="I-MLE noise: sum_of_gamma, gumbel, zero_mean_gumbel, logistic, normal"
    )
    parser.add_argument(
        "--imle-kappa", type=float, default=None, help="κ of the sum-of-Gamma noise; default the mean path length"
    )
    parser.add_argument("--imle-samples", type=int, default=None, help="S, I-MLE noise draws per step")
    parser.add_argument(
        "--imle-normalize",
        type=int,
        default=None,
        choices=(0, 1),
        help="I-MLE: divide each map's costs by their mean before the layer (1) or not (0)",
    )
    parser.add_argument(
        "--normalize",
        type=int,
        default=1,
        choices=(0, 1),
        help="Fenchel-Young: divide each map's costs by their mean (1, default) or not (0)",
    )
    parser.add_argument("--reduction", default="conv", choices=REDUCTIONS, help="channels → vertex cost")
    parser.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train on maps transposed and/or rotated by 180° at random (the corners stay in place); default on",
    )
    parser.add_argument(
        "--symmetric-views",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="test metrics and the exported model average the costs of the 8 turned maps (default on)",
    )
    parser.add_argument("--no-export", action="store_true", help="skip the SavedModel export and serving")
    parser.add_argument("--jit-compile", action="store_true", help="compile the training step with XLA")


def parse_args(argv: Optional[List[str]] = None):
    args = common.parse_args(
        "warcraft",
        argv,
        METHODS,
        description=__doc__.split("\n")[0],
        default_methods=DEFAULT_METHODS,
        add_arguments=_add_arguments,
        presets=(QUICK, FULL),
    )
    return args


class _EpochTimer(keras.callbacks.Callback):
    """Wall-clock and process CPU seconds of each training epoch (put it before slower callbacks).

    The CPU time (all threads of this process) is less distorted than the wall clock when
    other jobs share the cores.
    """

    def __init__(self):
        super().__init__()
        self.seconds: List[float] = []
        self.cpu_seconds: List[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start, self._cpu_start = time.perf_counter(), time.process_time()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.cpu_seconds.append(time.process_time() - self._cpu_start)


def run_method(method: str, data: dict, args) -> dict:
    """Trains one method and returns its metrics row, loss curve and validation curves."""
    keras.utils.set_random_seed(args.seed)
    train, val, test = data["train"], data["val"], data["test"]
    image_size, grid_size = train["images"].shape[1], train["costs"].shape[1]
    cost_model = build_cost_model(image_size, grid_size, args.reduction)
    if method == "terrain_classifier":
        model, cost_model = build_terrain_classifier(cost_model)
        loss, targets = keras.losses.SparseCategoricalCrossentropy(from_logits=True), terrain_classes(train["costs"])
    else:
        model, loss, target = build_method(method, cost_model, args, train["paths"])
        targets = train[target]
    model.compile(
        optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss, jit_compile=args.jit_compile
    )
    predictor = PathPredictor(cost_model, args.batch_size)
    timer, path_callback = _EpochTimer(), PathMetrics(predictor, val, args.verbose)
    print(f"\n=== {method}: {len(train['images'])} training maps, {args.epochs} epochs ===")
    start = time.perf_counter()
    if args.augment:
        inputs = dict(x=augmented_batches(train["images"], targets, args.batch_size, args.seed), shuffle=False)
    else:
        inputs = dict(x=train["images"], y=targets, batch_size=args.batch_size, shuffle=True)
    history = model.fit(
        **inputs,
        epochs=args.epochs,
        callbacks=[
            keras.callbacks.LearningRateScheduler(learning_rate_schedule(args.epochs, args.learning_rate)),
            timer,  # before PathMetrics: times the training epoch only
            path_callback,
        ],
        verbose=args.verbose,
    )
    train_seconds = time.perf_counter() - start
    single_costs = predictor.costs(test["images"])  # [N, g, g]
    single_view = path_metrics(warcraft_data.shortest_paths(single_costs), test["paths"], test["costs"])
    final_model, pred_costs = cost_model, single_costs
    if args.symmetric_views:
        final_model = build_symmetric_cost_model(cost_model)
        pred_costs = PathPredictor(final_model, args.batch_size).costs(test["images"])
    pred_paths = warcraft_data.shortest_paths(pred_costs)
    row = {"method": method, **path_metrics(pred_paths, test["paths"], test["costs"])}
    row.update(symmetric_views=bool(args.symmetric_views), single_view=single_view)
    row["cost_by_terrain"] = cost_by_terrain(single_costs, test["costs"])
    if method == "fenchel_young":
        row.update(
            sigma=args.sigma, num_samples=args.num_samples, perturbation=args.perturbation, normalize=args.normalize
        )
    if method == "blackbox":
        row.update(blackbox_lambda=args.blackbox_lambda, epsilon=blackbox_epsilon(args.blackbox_lambda))
    if method == "imle":
        row.update(
            imle_lambda=-blackbox_epsilon(args.blackbox_lambda), imle_sigma=args.imle_sigma, imle_noise=args.imle_noise, imle_samples=args.imle_samples,
            imle_kappa=imle_kappa(args, train["paths"]), imle_normalize=args.imle_normalize,
        )  # fmt: skip
    if method == "spo_plus":
        row.update(clip_to_domain=True)
    row.update(
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        epochs=args.epochs,
        augment=bool(args.augment),
        num_train=len(train["images"]),
        num_test=len(test["images"]),
        seconds_per_epoch=float(np.mean(timer.seconds)),
        epoch_seconds=list(timer.seconds),
        epoch_cpu_seconds=list(timer.cpu_seconds),
        train_seconds=train_seconds,
        final_loss=float(history.history["loss"][-1]),
    )
    plot_paths(
        test["images"], test["paths"], pred_paths, method, args.output_dir / f"paths_{method}.png",
        true_costs=test["costs"],
    )  # fmt: skip
    return {"row": row, "loss": history.history["loss"], "val": path_callback.history, "model": final_model}


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    timer = common.Timer()
    data_dir = args.data_dir or args.output_dir / "data" / "warcraft"
    data = warcraft_data.load_warcraft(
        args.grid_size, args.num_train, args.num_val, args.num_test, args.seed, data_dir, args.original_dir
    )
    data_seconds = timer()
    sizes = ", ".join(f"{split} {len(arrays['images'])}" for split, arrays in data.items())
    print(f"data: {sizes} maps ({data_seconds:.1f} s)")
    runs = {method: run_method(method, data, args) for method in args.methods}
    plot_training(runs, args.output_dir / "curves.png")
    rows = [run["row"] for run in runs.values()]
    print("\ntest metrics:")
    common.print_table(
        [{**row, "single_view_perfect": row["single_view"]["perfect_path_accuracy"]} for row in rows],
        ["method", "perfect_path_accuracy", "exact_match", "cost_ratio", "single_view_perfect", "seconds_per_epoch"],
    )
    for row in rows:
        if row["cost_by_terrain"]:
            spread = ", ".join(
                f"{name} {v['true']:.2f}: {v['mean']:.2f} [{v['p5']:.2f}, {v['p95']:.2f}]"
                for name, v in row["cost_by_terrain"].items()
            )
            print(f"{row['method']} cost / map mean, true: predicted mean [5th, 95th percentile]: {spread}")
    serving = {}
    if not args.no_export:
        # The first method's model is exported (Fenchel-Young in `make demo`).
        method = args.methods[0]
        print(f"\nexporting the {method} model (image → path) and serving it from a fresh process:")
        serving = export_and_serve(
            runs[method]["model"], data["test"]["images"][:8], args.output_dir / f"saved_model_{method}"
        )
        serving["method"] = method
    source = (
        "original" if args.original_dir else f"generated (warcraft_data v{warcraft_data.GENERATOR_VERSION})"
    )
    return common.write_metrics(
        args.output_dir,
        rows,
        args.command,
        timer(),
        data_source=source,
        data_seconds=data_seconds,
        grid_size=args.grid_size,
        curves={m: {"loss": run["loss"], "val": run["val"]} for m, run in runs.items()},
        serving=serving,
        figures=["curves.png"] + [f"paths_{m}.png" for m in runs],
    )


if __name__ == "__main__":
    main()
