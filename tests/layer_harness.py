"""Checks every tf_perturbed layer and loss must pass (DESIGN.md §5), reusable per layer."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf


def config_round_trip(layer):
    """from_config(get_config()) rebuilds an equal config; the config is plain JSON."""
    config = layer.get_config()
    json.dumps(config)  # no callables, no tensors
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    return clone


def serialize_round_trip(obj):
    """keras.saving.serialize/deserialize through the registered name."""
    data = keras.saving.serialize_keras_object(obj)
    json.dumps(data)
    clone = keras.saving.deserialize_keras_object(data)
    assert type(clone) is type(obj)
    assert clone.get_config() == obj.get_config()
    return clone


def modes_agree(fn, *inputs, rtol=1e-4, atol=1e-5):
    """fn gives the same result eagerly, in a tf.function and under XLA.

    XLA and the TF kernels draw the same philox bits but round `ndtri`, `log`
    and `exp` differently (measured: up to 2e-5 on standard normals), so
    gradients, which scale the noise, agree to about 1e-5 relative, not exactly.
    """
    eager = fn(*inputs)
    graph = tf.function(fn)(*inputs)
    xla = tf.function(fn, jit_compile=True)(*inputs)
    np.testing.assert_allclose(np.asarray(graph), np.asarray(eager), rtol=rtol, atol=atol)
    np.testing.assert_allclose(np.asarray(xla), np.asarray(eager), rtol=rtol, atol=atol)
    return np.asarray(eager)


def keras_file_round_trip(model, x, tmp_path, safe_mode=True):
    """`.keras` save/load gives a model with the same inference output."""
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=safe_mode)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    return loaded


_SERVE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    x = np.load(sys.argv[2])
    loaded = tf.saved_model.load(sys.argv[1])
    y = loaded.serve(tf.constant(x))
    assert "tf_perturbed" not in sys.modules, "the SavedModel must not need tf_perturbed"
    np.save(sys.argv[3], np.asarray(y))
    """
)


def export_and_serve_in_fresh_process(model, x, tmp_path):
    """`model.export` then `tf.saved_model.load(...).serve` in a process without tf_perturbed."""
    export_dir = os.path.join(str(tmp_path), "exported")
    model.export(export_dir, verbose=False)
    x_path = os.path.join(str(tmp_path), "x.npy")
    y_path = os.path.join(str(tmp_path), "y.npy")
    np.save(x_path, x)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_SCRIPT, export_dir, x_path, y_path],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(y_path)
    np.testing.assert_allclose(served, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    return served


def fit_lowers_loss(model, x, y, loss, epochs=8, jit_compile=True, learning_rate=0.05, batch_size=32):
    """model.fit lowers the training loss (first epoch vs last epoch)."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, jit_compile=jit_compile)
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    return losses


# One model with a head per tf_perturbed layer and loss, each head with its own
# weights (so that a deterministic head is not disturbed by the noise of another):
# one fit, one export and one serving process then cover every layer and loss.
ALL_D, ALL_GRID, ALL_N, ALL_FEATURES = 6, (4, 4), 3, 2
ALL_HEADS = (
    "argmax", "top_k", "ranks", "sort_permutation", "shortest_path", "matching",
    "direct", "noise_scale", "fenchel_young", "fenchel_young_path",
)
# Heads whose training is deterministic given the data (no noise in them).
DETERMINISTIC_HEADS = ("direct",)


def all_layers_data(n=64, seed=0):
    """Inputs `{"vec": [n, 6], "grid": [n, 4, 4, 2], "mat": [n, 3, 3]}` and one target per head.

    Targets are the hard solutions of fixed random linear maps of the inputs, so
    that every head can fit them.
    """
    import tf_perturbed as tp  # noqa: PLC0415  (the fresh serving process must not import it)

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
    import tf_perturbed as tp  # noqa: PLC0415

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
