"""Warcraft shortest paths, the model: the cost network and how each method trains it.

`build_cost_model` maps a map image `[B, 8g, 8g, 3]` to positive vertex costs `[B, g, g]`
(ResNet18's stem and first stage, a max-pool onto the g×g grid, a 1×1 convolution and a
softplus). `build_method` wraps it for one training method and names its loss and target:

  fenchel_young  `tf_perturbed.FenchelYoungLoss("shortest_path")` with multiplicative noise
                 on the costs divided by their per-map mean (`normalize_costs`): the loss is
                 1-homogeneous in the costs, and the division removes that direction;
  squared        mean squared error to the true costs (a baseline that sees the costs);
  squared_paths  the paper's squared-loss baseline (Berthet et al. App. C.3, after Vlastelica
                 et al.): the same network without an optimizer layer, its 1×1 convolution
                 giving one path score per vertex, trained by the mean squared error to the
                 true path (`build_path_score_model`); the prediction is the mask of scores
                 above ½, not a solver's path (`MASK_METHODS`);
  blackbox       `tf_perturbed.DirectLossGradient("shortest_path", epsilon=-λ/70)` on the
                 costs divided by their per-map mean, and a Hamming loss to the true path
                 (Vlastelica et al., λ = 20 at their batch 70: `blackbox_epsilon`);
  spo_plus       `tf_perturbed.SPOPlusLoss("shortest_path", clip_to_domain=True)` to the true
                 costs (Elmachtoub & Grigas);
  imle           `tf_perturbed.ImplicitMLE("shortest_path")` on the normalised costs with the
                 blackbox method's λ and Hamming loss (Niepert et al. 2021);
  terrain_classifier  a reference, not a method of the papers: five logits per vertex trained
                 on the hidden terrains (`build_terrain_classifier`).

`build_symmetric_cost_model` averages the costs of the 8 turned views of a map
(`square_symmetry`), which the test metrics and the exported model use by default.
"""

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

import tf_perturbed
from tutorials import warcraft_data

METHODS = ("fenchel_young", "squared", "blackbox", "spo_plus", "imle", "squared_paths", "terrain_classifier")
DEFAULT_METHODS = ("fenchel_young", "squared", "blackbox")
MASK_METHODS = ("squared_paths",)  # predict a mask without a solver: scored by `mask_metrics`
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
    validation accuracy at 0.155; docs/notes/2026-12-04-tutorials-history.md).
    """
    return -abs(blackbox_lambda) / VLASTELICA_BATCH


def _blackbox_model(cost_model: keras.Model, args) -> keras.Model:
    """The blackbox method: images → costs `[B, g, g]` → DirectLossGradient(shortest path) → path.

    The loss-perturbed costs are clipped at 0, the solver's domain (the layer's default).
    Each map's costs are divided by their mean first (`--blackbox-normalize 0` skips it).
    """
    layer = tf_perturbed.DirectLossGradient(
        "shortest_path",
        epsilon=blackbox_epsilon(args.blackbox_lambda),
        name="shortest_path",
    )
    costs = cost_model.output
    if args.blackbox_normalize:
        # The step ε is absolute: once the costs grow, moving them by |ε| changes no path and
        # the gradient is zero (docs/tutorials/warcraft.md). Per-map mean 1 keeps ε relative.
        costs = keras.layers.Lambda(normalize_costs, name="normalize")(costs)
    return keras.Model(cost_model.input, layer(costs), name="warcraft_blackbox")


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
    if method == "squared_paths":
        return build_path_score_model(cost_model), keras.losses.MeanSquaredError(), "paths"
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


def build_path_score_model(cost_model: keras.Model) -> keras.Model:
    """Images → one unbounded path score per vertex `[B, g, g]`, no solver.

    Shares the cost model's network up to the pool onto the grid; a 1×1 convolution without
    the softplus gives the score that the squared loss pulls towards the 0/1 path mask.
    """
    features = cost_model.get_layer("grid_pool").output  # [B, g, g, 64]
    scores = keras.layers.Conv2D(1, 1, name="to_path")(features)  # [B, g, g, 1]
    scores = keras.layers.Reshape(cost_model.output.shape[1:], name="path_scores")(scores)
    return keras.Model(cost_model.input, scores, name="warcraft_path_scores")


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


# ----------------------------------------------------------------------------- symmetric views


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


