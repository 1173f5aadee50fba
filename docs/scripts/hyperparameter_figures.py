"""Figures of the guide "Choosing ε, M, noise and control variate" (docs/guides/).

Measured with the package on the perturbed argmax of B = 256 random problems of d = 10
scores θ ~ N(0, 1), with a fixed random upstream gradient g (the VJP gᵀ J ŷ_ε(θ) is what
a training step computes):

1. Gradient variance against M: the variance, over R independent seeds, of the VJP,
   averaged over the B·d entries, for `control_variate` False, True (leave-one-out,
   the default) and "hard", at ε = 1 and ε = 0.1, normal noise.
2. Bias and variance against ε: the bias of the perturbed solution,
   ½‖ŷ_ε(θ) − y*(θ)‖₁ (the probability mass moved off the argmax; M = 2000), and the
   VJP's variance at M = 100 with the default control variate, for normal and Gumbel noise.

    python docs/scripts/hyperparameter_figures.py          # about 1 min on 2 CPU cores

writes docs/guides/figures/{variance_vs_samples,bias_variance_vs_sigma}.png and
docs/guides/figures/hyperparameters.json (the plotted numbers).
"""

import argparse
import json
import pathlib
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_perturbed as tp  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "guides" / "figures"
B, D = 256, 10
SAMPLES = (2, 5, 10, 20, 50, 100, 200, 500)
SIGMAS = (0.03, 0.1, 0.3, 1.0, 3.0)
CONTROL_VARIATES = {"none": False, "leave-one-out (default)": True, "hard": "hard"}


def problems():
    rng = np.random.default_rng(0)
    theta = tf.constant(rng.normal(size=(B, D)), tf.float32)
    upstream = tf.constant(rng.normal(size=(B, D)), tf.float32)
    return theta, upstream


def vjp_variance(theta, upstream, repeats, **kwargs):
    """Mean over the B·d entries of the variance, over `repeats` seeds, of gᵀ J ŷ_ε(θ)."""
    op = tp.perturbed("argmax", **kwargs)

    @tf.function
    def vjp(seed):
        with tf.GradientTape() as tape:
            tape.watch(theta)
            y = op(theta, seed=seed)
        return tape.gradient(y, theta, output_gradients=upstream)

    draws = np.stack([vjp(tf.constant([7, r], tf.int32)).numpy() for r in range(repeats)])  # [R, B, d]
    return float(draws.var(axis=0, ddof=1).mean())


def bias(theta, sigma, noise):
    mean = tp.perturbed("argmax", num_samples=2000, sigma=sigma, noise=noise, seed=3)(theta)
    return float(0.5 * tf.reduce_mean(tf.reduce_sum(tf.abs(mean - tp.solvers.argmax(theta)), -1)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=40, help="seeds per variance estimate")
    args = parser.parse_args()
    start = time.perf_counter()
    theta, upstream = problems()
    results = {"B": B, "d": D, "repeats": args.repeats, "variance_vs_samples": {}, "vs_sigma": {}}

    for sigma in (1.0, 0.1):
        for label, cv in CONTROL_VARIATES.items():
            results["variance_vs_samples"][f"{label}, eps={sigma}"] = [
                vjp_variance(theta, upstream, args.repeats, num_samples=m, sigma=sigma, control_variate=cv)
                for m in SAMPLES
            ]
    for noise in ("normal", "gumbel"):
        results["vs_sigma"][noise] = {
            "bias": [bias(theta, s, noise) for s in SIGMAS],
            "variance": [vjp_variance(theta, upstream, args.repeats, num_samples=100, sigma=s, noise=noise)
                         for s in SIGMAS],
        }
    results["seconds"] = round(time.perf_counter() - start, 1)

    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "hyperparameters.json").write_text(json.dumps(
        dict(results, samples=SAMPLES, sigmas=SIGMAS), indent=1) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, sigma in zip(axes, (1.0, 0.1)):
        for label in CONTROL_VARIATES:
            ax.loglog(SAMPLES, results["variance_vs_samples"][f"{label}, eps={sigma}"], "o-", label=label)
        ax.set_title(f"ε = {sigma}")
        ax.set_xlabel("M (num_samples)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("variance of the VJP (per entry)")
    axes[0].legend(title="control_variate")
    fig.suptitle("Perturbed argmax, d = 10, normal noise: gradient variance against M")
    fig.tight_layout()
    fig.savefig(OUT / "variance_vs_samples.png", dpi=110)

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for noise in ("normal", "gumbel"):
        left.semilogx(SIGMAS, results["vs_sigma"][noise]["bias"], "o-", label=noise)
        right.loglog(SIGMAS, results["vs_sigma"][noise]["variance"], "o-", label=noise)
    left.set_title("bias: ½‖ŷ_ε(θ) − y*(θ)‖₁ (M = 2000)")
    right.set_title("variance of the VJP (M = 100, leave-one-out)")
    for ax in (left, right):
        ax.set_xlabel("ε (sigma)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(title="noise")
    fig.suptitle("Perturbed argmax, d = 10, scores θ ~ N(0, 1): bias and variance against ε")
    fig.tight_layout()
    fig.savefig(OUT / "bias_variance_vs_sigma.png", dpi=110)
    print(json.dumps({k: results[k] for k in ("vs_sigma", "seconds")}, indent=1))


if __name__ == "__main__":
    main()
