"""Cost of the Fenchel-Young loss in a Warcraft training step, against the squared loss.

One training step (`model.train_on_batch`: forward, loss, backward, Adam update) of the
Warcraft tutorial's network (tutorials/warcraft.py: ResNet18 stem and first stage →
12×12 vertex costs) on a batch of 70 generated maps (96×96×3), with

  * `squared`: mean squared error between predicted and true vertex costs (the floor: no
    solver at all);
  * `fenchel_young_M{1,3,10}`: `tf_perturbed.FenchelYoungLoss("shortest_path", M, ε=0.1)`
    (multiplicative noise), i.e. M shortest paths per map and per step (the tutorial also
    divides the costs by their per-map mean first: one more element-wise op, left out);
  * `blackbox`: the same network through `tf_perturbed.DirectLossGradient("shortest_path")`
    with a Hamming loss (two shortest paths per map and step).

Every candidate is its own compiled model (same architecture, same batch). Candidates are
timed in alternating rounds (A B C … A B C …, `common.interleaved_times`) after warm-up, so
that other jobs on the shared machine slow them alike; the table gives medians and the
ratio of medians to `squared`. A second table times the loss and its gradient with respect
to the costs alone (no network), to show where the time goes.

    python benchmarks/training_overhead.py             # writes results/training_overhead.{json,md}
    python benchmarks/training_overhead.py --rounds 5  # faster, noisier
"""

import argparse
import importlib.util
import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# The benchmarks' helpers (benchmarks/common.py) are loaded under another name; the tutorials
# are the package `tutorials` at the repository root.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
_spec = importlib.util.spec_from_file_location("bench_common", pathlib.Path(__file__).resolve().parent / "common.py")
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_perturbed  # noqa: E402
from tutorials import warcraft_data  # noqa: E402
from tutorials import warcraft_model as warcraft  # noqa: E402  (the tutorial's network and losses)

NAME = "training_overhead"
BATCH = 70
SIGMA = 0.1
SAMPLES = (1, 3, 10)
TARGET_RATIO = 1.25


def _losses():
    """name → (loss, target key, wraps the network in the blackbox layer)."""
    losses = {"squared": (keras.losses.MeanSquaredError(), "costs", False)}
    for m in SAMPLES:
        fy = tf_perturbed.FenchelYoungLoss("shortest_path", num_samples=m, sigma=SIGMA, seed=0)
        losses[f"fenchel_young_M{m}"] = (fy, "paths", False)
    losses["blackbox"] = (warcraft.hamming_loss, "paths", True)
    return losses


def _blackbox_layer():
    """The tutorial's blackbox layer: λ = 20 at batch 70, i.e. ε = −20/70."""
    return tf_perturbed.DirectLossGradient(
        "shortest_path", epsilon=-20.0 / BATCH, name="shortest_path"
    )


def training_steps(batch: dict) -> dict:
    """name → a blocking zero-argument call of one training step on `batch`."""
    images = tf.constant(batch["images"], tf.float32)  # [70, 96, 96, 3]
    steps = {}
    for name, (loss, target, blackbox) in _losses().items():
        keras.utils.set_random_seed(0)
        model = warcraft.build_cost_model(96, 12)
        if blackbox:
            model = keras.Model(model.input, _blackbox_layer()(model.output))
        model.compile(optimizer=keras.optimizers.Adam(5e-4), loss=loss)
        y = tf.constant(batch[target])  # [70, 12, 12]
        steps[name] = lambda model=model, y=y: float(model.train_on_batch(images, y))
    return steps


def loss_only_steps(batch: dict) -> dict:
    """name → one loss value and its gradient with respect to the costs `[70, 12, 12]` (any
    `[B, H, W]` works: tests/test_benchmarks.py checks these gradients on a few maps)."""
    costs = tf.constant(batch["costs"]) * tf.exp(0.3 * tf.random.stateless_normal(batch["costs"].shape, [0, 1]))
    steps = {}
    for name, (loss, target, blackbox) in _losses().items():
        layer = _blackbox_layer() if blackbox else None
        y = tf.constant(batch[target])

        @tf.function
        def step(c, loss=loss, y=y, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(c)
                value = loss(y, c if layer is None else layer(c, training=True))
            return tape.gradient(value, c)

        steps[name] = lambda step=step: step(costs).numpy()
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds of training steps")
    args = parser.parse_args()
    info = common.machine_info(["tensorflow", "keras", "numpy", "tf_perturbed"])
    batch = warcraft_data.generate_maps(BATCH, seed=0, split="train")
    train_times = common.interleaved_times(training_steps(batch), rounds=args.rounds, warmup=2)
    loss_times = common.interleaved_times(loss_only_steps(batch), rounds=5 * args.rounds, repeats=3, warmup=2)
    train = {name: common.summarize(values) for name, values in train_times.items()}
    loss_only = {name: common.summarize(values) for name, values in loss_times.items()}
    floor = train["squared"]["median_ms"]
    for summary in train.values():
        summary["ratio_to_squared"] = summary["median_ms"] / floor
    info["load_average_end"] = common.load_average()
    payload = {
        "batch": BATCH,
        "sigma": SIGMA,
        "target_ratio": TARGET_RATIO,
        "train_step": train,
        "loss_and_gradient_only": loss_only,
        "rounds": args.rounds,
        "machine": info,
        "command": common.command_line(),
    }
    rows = [
        (
            name,
            s["median_ms"],
            f"{s['q1_ms']:.0f}–{s['q3_ms']:.0f}",
            s["ratio_to_squared"],
            loss_only[name]["median_ms"],
        )
        for name, s in train.items()
    ]
    table = common.markdown_table(
        ["loss", "train step median (ms)", "IQR (ms)", "ratio to squared", "loss + grad alone (ms)"], rows
    )
    worst = max(s["ratio_to_squared"] for n, s in train.items() if n.startswith("fenchel_young"))
    verdict = "met" if worst <= TARGET_RATIO else "NOT met"
    text = "\n\n".join(
        [
            "# Training-step overhead of the Fenchel-Young loss (Warcraft network)",
            f"One `train_on_batch` of the tutorial's network on {BATCH} maps of 96×96, medians of "
            f"{args.rounds} alternating rounds; FY with multiplicative noise ε = {SIGMA}.",
            table,
            f"Target: FY step ≤ {TARGET_RATIO}× the squared-loss step. Largest FY ratio measured: "
            f"{worst:.3f} ({verdict}). Load average at the end: {info['load_average_end']}.",
            common.machine_markdown(info, payload["command"]),
        ]
    )
    common.write_json(NAME, payload)
    common.write_markdown(NAME, text)
    print(text)


if __name__ == "__main__":
    main()
