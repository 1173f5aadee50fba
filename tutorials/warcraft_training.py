"""Warcraft shortest paths, training and evaluation: `run_method` trains one method with `model.fit`.

Training maps are turned by a random corner-keeping symmetry, anew each epoch
(`augmented_batches`); the learning rate drops ×0.1 at 60 % and 80 % of the epochs
(`learning_rate_schedule`). After every epoch the validation split is scored
(`PathMetrics`); after training, the test split, with and without the 8 symmetric views.
Metrics of predicted paths (`path_metrics`): perfect_path_accuracy (true cost equal to the
optimal cost, relative tolerance 1e-5), exact_match (the same mask as the label) and
cost_ratio (true cost over optimal cost, averaged); `cost_by_terrain` compares the
predicted costs of each terrain with the true ones. A method without a solver
(`MASK_METHODS`) predicts a mask, which `mask_metrics` scores: it is a perfect path when it
is a corner-to-corner path (`is_induced_path`) of optimal cost.
"""

import pathlib
import time
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from tutorials import shared, warcraft_data
from tutorials.warcraft_model import (
    MASK_METHODS,
    blackbox_epsilon,
    build_cost_model,
    build_method,
    build_symmetric_cost_model,
    build_terrain_classifier,
    imle_kappa,
    square_symmetry,
    terrain_classes,
)

RELATIVE_TOLERANCE = 1e-5


# ----------------------------------------------------------------------------- data pipeline


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

    def decode(self, costs: np.ndarray) -> np.ndarray:
        """Masks `[N, g, g]` of the model's outputs: shortest paths of the costs."""
        return warcraft_data.shortest_paths(costs)

    def metrics(self, pred_paths: np.ndarray, split: Dict[str, np.ndarray]) -> Dict[str, float]:
        return path_metrics(pred_paths, split["paths"], split["costs"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.decode(self.costs(images))


class MaskPredictor(PathPredictor):
    """Masks of a path-score model without a solver: the vertices scored above ½."""

    def decode(self, costs: np.ndarray) -> np.ndarray:
        return (costs > 0.5).astype(np.float32)

    def metrics(self, pred_paths: np.ndarray, split: Dict[str, np.ndarray]) -> Dict[str, float]:
        return mask_metrics(pred_paths, split["paths"], split["costs"])


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


def is_induced_path(mask: np.ndarray) -> bool:
    """Whether a 0/1 mask `[g, g]` is a path from the top-left to the bottom-right vertex.

    The masked vertices must be connected (8 neighbours), each end must have exactly one
    masked neighbour and every other masked vertex exactly two: a simple path with no
    shortcut between non-consecutive vertices, which every shortest path under positive
    vertex costs is (a shortcut would cost less).
    """
    mask = np.asarray(mask) > 0.5
    g = mask.shape[0]
    ends = {(0, 0), (g - 1, g - 1)}
    if g == 1 or not all(mask[v] for v in ends):
        return g == 1 and bool(mask[0, 0])
    padded = np.pad(mask, 1)
    neighbours = sum(
        padded[1 + di : 1 + di + g, 1 + dj : 1 + dj + g] for di in (-1, 0, 1) for dj in (-1, 0, 1) if di or dj
    )
    cells = list(zip(*np.nonzero(mask)))
    if any(neighbours[v] != (1 if v in ends else 2) for v in cells):
        return False
    seen, stack = {(0, 0)}, [(0, 0)]
    while stack:
        i, j = stack.pop()
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                v = (i + di, j + dj)
                if 0 <= v[0] < g and 0 <= v[1] < g and mask[v] and v not in seen:
                    seen.add(v)
                    stack.append(v)
    return len(seen) == len(cells)


def mask_metrics(pred_masks: np.ndarray, true_paths: np.ndarray, true_costs: np.ndarray) -> Dict[str, float]:
    """`path_metrics` of masks that need not be paths, all `[N, g, g]`, plus valid_path_rate.

    A mask is a perfect path when it is a path (`is_induced_path`) of optimal true cost;
    cost_ratio averages over the masks that are paths (NaN when none is).
    """
    valid = np.array([is_induced_path(m) for m in pred_masks], bool)
    metrics = path_metrics(pred_masks, true_paths, true_costs)
    if np.any(valid):
        on_paths = path_metrics(pred_masks[valid], true_paths[valid], true_costs[valid])
        metrics["perfect_path_accuracy"] = on_paths["perfect_path_accuracy"] * float(np.mean(valid))
        metrics["cost_ratio"] = on_paths["cost_ratio"]
    else:
        metrics.update(perfect_path_accuracy=0.0, cost_ratio=float("nan"))
    metrics["valid_path_rate"] = float(np.mean(valid))
    return metrics


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
        metrics = self.predictor.metrics(self.predictor(self.split["images"]), self.split)
        self.history.append(metrics)
        print(
            f"{self._prefix}  val: perfect_path_accuracy={metrics['perfect_path_accuracy']:.3f} "
            f"exact_match={metrics['exact_match']:.3f} cost_ratio={metrics['cost_ratio']:.4f}"
        )


# ----------------------------------------------------------------------------- figures


def plot_training(runs: Dict[str, dict], path: pathlib.Path) -> None:
    """Training loss (relative to the first epoch) and validation path metrics per epoch."""
    fig, axes = shared.figure(1, 3, width=4.4, height=3.6)
    shared.plot_curves(axes[0, 0], {m: np.asarray(r["loss"]) / r["loss"][0] for m, r in runs.items()}, "loss")
    axes[0, 0].set(title="training loss / first epoch", yscale="log")
    for ax, key, title in (
        (axes[0, 1], "perfect_path_accuracy", "val perfect path accuracy"),
        (axes[0, 2], "cost_ratio", "val cost ratio to optimal"),
    ):
        shared.plot_curves(ax, {m: [v[key] for v in r["val"]] for m, r in runs.items()}, key)
        ax.set(title=title)
    for ax in axes.ravel():
        ax.legend()
    shared.save_figure(fig, path)


def plot_paths(
    images, true_paths, pred_paths, title: str, path: pathlib.Path, num: int = 8, true_costs=None
) -> None:
    """Test maps with the true path (white circles) and the predicted one (red crosses).

    With `true_costs` `[N, g, g]`, each map's title gives the predicted path's cost ratio to
    the optimum ("optimal" when it is a shortest path too, which a different path can be).
    """
    num = min(num, len(images))
    cols = min(4, num)
    fig, axes = shared.figure(-(-num // cols), cols, width=3.0, height=3.1)
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
    shared.save_figure(fig, path)



# ----------------------------------------------------------------------------- training


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
    masks = method in MASK_METHODS  # no solver: the model's scores are thresholded
    if masks:
        cost_model = model
    predictor = (MaskPredictor if masks else PathPredictor)(cost_model, args.batch_size)
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
    single_view = predictor.metrics(predictor.decode(single_costs), test)
    final_model, pred_costs = cost_model, single_costs
    symmetric = bool(args.symmetric_views) and not masks  # views average costs, not path scores
    if symmetric:
        final_model = build_symmetric_cost_model(cost_model)
        pred_costs = PathPredictor(final_model, args.batch_size).costs(test["images"])
    pred_paths = predictor.decode(pred_costs)
    row = {"method": method, **predictor.metrics(pred_paths, test)}
    row.update(symmetric_views=symmetric, single_view=single_view)
    row["cost_by_terrain"] = None if masks else cost_by_terrain(single_costs, test["costs"])
    if method == "fenchel_young":
        row.update(
            sigma=args.sigma, num_samples=args.num_samples, perturbation=args.perturbation, normalize=args.normalize
        )
    if method == "blackbox":
        row.update(
            blackbox_lambda=args.blackbox_lambda,
            epsilon=blackbox_epsilon(args.blackbox_lambda),
            blackbox_normalize=args.blackbox_normalize,
        )
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
        true_costs=None if masks else test["costs"],
    )  # fmt: skip
    return {"row": row, "loss": history.history["loss"], "val": path_callback.history, "model": final_model}


