"""A fit helper, and the model with one head per layer and loss that tests/test_distribute.py trains.

(The contract of every layer and loss, with its own model built from one line per
case, is tests/test_layer_contract.py.)
"""

import keras
import numpy as np
import tensorflow as tf

import tf_perturbed as tp


def fit_lowers_loss(model, x, y, loss, epochs=8, jit_compile=True, learning_rate=0.05, batch_size=32):
    """model.fit lowers the training loss (first epoch vs last epoch)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, jit_compile=jit_compile)
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    return losses


# One model with a head per tf_perturbed layer and loss, each head with its own
# weights (so that a deterministic head is not disturbed by the noise of another).
ALL_D, ALL_GRID, ALL_N, ALL_FEATURES = 6, (4, 4), 3, 2
ALL_HEADS = (
    "argmax", "top_k", "ranks", "sort_permutation", "shortest_path", "matching",
    "direct", "noise_scale", "fenchel_young", "fenchel_young_path",
)


def all_layers_data(n=64, seed=0):
    """Inputs `{"vec": [n, 6], "grid": [n, 4, 4, 2], "mat": [n, 3, 3]}` and one target per head.

    Targets are the hard solutions of fixed random linear maps of the inputs, so
    that every head can fit them.
    """
    rng = np.random.default_rng(seed)
    vec = rng.normal(size=(n, ALL_D)).astype("float32")
    grid = rng.normal(size=(n, *ALL_GRID, ALL_FEATURES)).astype("float32")
    mat = rng.normal(size=(n, ALL_N, ALL_N)).astype("float32")
    scores = tf.constant(vec @ rng.normal(size=(ALL_D, ALL_D)).astype("float32"))
    costs = tf.constant(np.log1p(np.exp(grid @ np.array([1.5, -1.0], "float32"))) + 0.1)
    match = tf.constant(mat @ rng.normal(size=(ALL_N, ALL_N)).astype("float32"))
    one_hot = tp.solvers.argmax(scores).numpy()
    k_hot = tp.solvers.top_k(scores, 2).numpy()
    path = tp.solvers.shortest_path(costs).numpy()
    targets = {
        "argmax": one_hot,
        "top_k": k_hot,
        "ranks": tp.solvers.ranks(scores).numpy() / (ALL_D - 1),
        "sort_permutation": tp.solvers.sort_permutation(scores).numpy().reshape(n, -1),
        "shortest_path": path,
        "matching": tp.solvers.assignment(match).numpy(),
        "direct": k_hot,
        "noise_scale": one_hot,
        "fenchel_young": one_hot,
        "fenchel_young_path": path,
    }
    return {"vec": vec, "grid": grid, "mat": mat}, targets


def all_layers_model(num_samples=8, sigma=0.5, seed=0, chunk_size=None, heads=ALL_HEADS):
    """`(model, losses)`: a dict-output model with one head per layer/loss, and its losses.

    Layers and losses use the seeds seed, seed + 1, … (the same whatever `heads` keeps);
    dtypes follow the global Keras policy. `heads`: the names (in `ALL_HEADS`) to build.
    """
    layers = keras.layers
    common = dict(num_samples=num_samples, sigma=sigma, chunk_size=chunk_size)
    vec = keras.Input((ALL_D,), name="vec")
    grid = keras.Input((*ALL_GRID, ALL_FEATURES), name="grid")
    mat = keras.Input((ALL_N, ALL_N), name="mat")

    def dense(units, name, **kwargs):  # initial weights seeded by the head: any subset of heads agrees
        init = keras.initializers.GlorotUniform(seed=seed + 100 + ALL_HEADS.index(name))
        return layers.Dense(units, name=f"{name}_dense", kernel_initializer=init, **kwargs)

    def scores(name):
        return dense(ALL_D, name)(vec)

    def costs(name):  # positive vertex costs [B, H, W]
        c = dense(1, name, activation="softplus")(grid)
        return layers.Rescaling(1.0, offset=0.1)(layers.Reshape(ALL_GRID)(c))

    builders = {
        "argmax": lambda: tp.PerturbedArgmax(**common, seed=seed)(scores("argmax")),
        "top_k": lambda: tp.PerturbedTopK(k=2, **common, seed=seed + 1)(scores("top_k")),
        "ranks": lambda: layers.Rescaling(1.0 / (ALL_D - 1))(
            tp.PerturbedRanks(**common, seed=seed + 2)(scores("ranks"))
        ),
        "sort_permutation": lambda: layers.Reshape((ALL_D * ALL_D,))(
            tp.PerturbedOptimizer("sort_permutation", **common, seed=seed + 3)(scores("sort_permutation"))
        ),
        "shortest_path": lambda: tp.PerturbedShortestPath(**common, seed=seed + 4)(costs("shortest_path")),
        "matching": lambda: tp.PerturbedMatching(**common, seed=seed + 5)(
            dense(ALL_N, "matching")(mat)
        ),
        "direct": lambda: tp.DirectLossGradient("top_k", epsilon=-0.5, solver_kwargs={"k": 2})(scores("direct")),
        "noise_scale": lambda: tp.DirectLossGradient("argmax", epsilon=-0.5)(
            tp.LearnedNoiseScale(initial_sigma=sigma, seed=seed + 6, name="learned_noise_scale")(
                [scores("noise_scale"), vec]
            )
        ),
        "fenchel_young": lambda: scores("fenchel_young"),
        "fenchel_young_path": lambda: costs("fenchel_young_path"),
    }
    outputs = {name: layers.Identity(name=name)(builders[name]()) for name in heads}
    inputs = {"vec": vec, "grid": grid, "mat": mat}
    used = {"vec"} | ({"grid"} if {"shortest_path", "fenchel_young_path"} & set(heads) else set())
    used |= {"mat"} if "matching" in heads else set()
    model = keras.Model({name: inputs[name] for name in sorted(used)}, outputs)
    losses = {name: "mse" for name in outputs}
    if "fenchel_young" in heads:
        losses["fenchel_young"] = tp.FenchelYoungLoss("argmax", **common, seed=seed + 7)
    if "fenchel_young_path" in heads:
        losses["fenchel_young_path"] = tp.FenchelYoungLoss("shortest_path", **common, seed=seed + 8)
    return model, losses
