"""The contract of every public layer and loss (DESIGN.md §5): one suite over all of them.

Each layer or loss is one `Case` line in `CASES`: how to build it with a seed, the
problem it takes (scores `[B, 6]`, positive grid costs `[B, 4, 4]` or score matrices
`[B, 3, 3]`) and the public op that computes what it computes. A layer or loss added
later joins every contract by adding its line (`test_every_public_layer_and_loss_has_a_case`
fails until it has one). Every object whose config holds `chunk_size` also runs as a
chunked variant (`chunk_size=3` of 8 samples: two full chunks and one with a padded
sample), through every contract, and every layer whose config holds `inference` gets a
copy with `inference="perturbed"` in the saved and exported model.

The contracts:
1. Config: `from_config(get_config())` rebuilds the same config, plain JSON, holding every
   named constructor argument; `keras.saving` serialize/deserialize by registered name.
2. `.keras` (safe_mode) of one model holding every case: the loaded model's inference
   output is the original's, bit for bit, perturbed-inference heads included (the file
   keeps the seed generators' states, of the layers and of the losses: a loaded model's
   first call is the original's next one); the file holds registered solver names, no code.
3. `model.export` of that model, served in a fresh process that never imports
   tf_perturbed (`tf.saved_model.load(...).serve`, and the TF1 session loader of
   `saved_model_cli run` and TF Serving), gives the in-process outputs bit for bit. A
   perturbed-inference head keeps drawing noise when served: its SeedGenerator state is
   a variable of the SavedModel, exported as it was when `model.export` ran (tracing the
   serving function does not run the state's update), and each served call advances it
   as an in-process call does. So the k-th served call equals the k-th in-process call
   after the export, exactly (a session loading the export starts from that state too).
4. `model.fit` with `jit_compile=True` lowers every head's loss (one model, one fit), each
   object drawing one seed per step. (A case with `xla=False` would be fitted without
   XLA in a second model; no built-in needs it.)
5. Mixed precision (`mixed_float16`, `mixed_bfloat16`): a layer's output has the compute
   dtype and is the float32 computation cast to it, bit for bit, and its gradient is the
   float32 gradient up to the rounding of that final cast (one unit in the last place),
   eagerly and (bfloat16) under XLA; the ops likewise on half-precision inputs; the
   Keras loss computes in float32;
   Monte-Carlo sums run in float32 (below); one fit per policy, with finite, falling
   losses and every head in the compute dtype (loss scaling for float16; the chunked
   variants go through mixed precision in the unit checks, not in these fits).
6. Seeds: an object seeded with s is, at its k-th call in training, its public op called
   with the k-th `tp.seeds.next_seed(keras.random.SeedGenerator(s))`, value and gradient
   bit for bit: the same seed gives the same output, successive calls and other seeds
   differ; eager = graph (to Grappler's rounding).
7. Inference: the hard solution (a noise layer: its input, unchanged); training draws noise.
8. Bad constructor arguments raise ValueError/TypeError naming the argument and the value.
And the Fenchel-Young loss is bounded below in closed form by its own samples (its test).

How "sums in float32" is tested. A sum of M one-hot solutions accumulated in float16
stops growing at 2048 (2048 + 1 rounds back to 2048; bfloat16: at 256), so the mean of
M = 4097 identical solutions would come out as 0.5 (bfloat16: 1/16) instead of 1. With σ tiny next
to the gaps between scores every sample has the hard solution, so the perturbed mean
must be the hard solution exactly.

Runtime: about 80 s of wall time and 140 s of CPU time on 2 shared cores, most of it
tracing and compiling the model. The XLA fit runs in a subprocess (`python
test_layer_contract.py fits OUT.json`) and the SavedModel is served in another, both
beside the unit checks; the two mixed-precision fits come after those, in this process.
The unit checks use batches of `BATCH` problems, as the model does: the structured
solvers (compiled with XLA even when called eagerly) compile once per shape.
"""

import contextlib
import dataclasses
import inspect
import json
import math
import numbers
import os
import subprocess
import sys
import textwrap
import zipfile
from typing import Callable, Optional

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tf_perturbed as tp

D, GRID, N, FEATURES = 6, (4, 4), 3, 2  # scores [B, D], costs [B, *GRID] from features [B, *GRID, 2], [B, N, N]
SEED = 3
SMALL = dict(num_samples=8, sigma=0.5)
CHUNK = 3  # of 8 samples: chunks of 3, 3 and 2 (+ one padded sample)
EPOCHS, BATCH, SIZE = 6, 16, 64


# ---------------------------------------------------------------------------------------
# The public ops that compute what each object computes, for a given seed (contract 6)


def _compute(x):
    """x in the dtype the package computes in: float32 for half precision."""
    return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


def perturbed_op(layer, x, seed, features=None):
    return tp.perturbed(**layer.config.arguments())(x, seed=seed)


def fenchel_young_op(loss, x, seed, features=None, y=None):
    return tp.fenchel_young_loss(y, x, **loss.config.arguments(), maximize=loss.maximize, seed=seed)


def direct_op(layer, x, seed, features=None):
    """y*(θ + σγ) through the direct op, γ drawn from the public noise with the seed."""
    arguments = dict(layer.config.arguments())
    sigma, noise = arguments.pop("sigma"), arguments.pop("noise")
    theta = _compute(x)
    gamma = tp.noise.get_noise(noise).sample(tf.shape(theta), seed, theta.dtype)
    return tf.cast(tp.direct_loss_gradient(**arguments)(theta + sigma * gamma), x.dtype)


def imle_op(layer, x, seed, features=None):
    return tp.implicit_mle(**layer.config.arguments())(x, seed=seed)


def spo_plus_op(loss, x, seed, features=None, y=None):
    """The SPO+ op (no seed: the loss draws no noise)."""
    return tp.spo_plus_loss(y, x, loss.solver, maximize=loss.maximize, clip_to_domain=loss.clip_to_domain)


def learned_noise_op(layer, x, seed, features):
    """θ + σ(x)·γ, σ = softplus(flatten(x)·W + b) + σ_min (the built-in head; h in the compute dtype, as a Dense)."""
    config = layer.get_config()
    compute = layer.compute_dtype
    flat = tf.reshape(tf.cast(features, compute), [tf.shape(features)[0], -1])  # [B, f]
    h = tf.matmul(flat, tf.cast(layer.sigma_kernel, compute)) + tf.cast(layer.sigma_bias, compute)  # [B, 1]
    sigma = tf.nn.softplus(tf.cast(h, tf.float32)) + config["min_sigma"]  # [B, 1]
    theta = _compute(x)
    gamma = tp.noise.get_noise(config["noise"]).sample(tf.shape(theta), seed, theta.dtype)
    return tf.cast(theta + sigma * gamma, x.dtype)


# ---------------------------------------------------------------------------------------
# The cases: one line per public layer and loss


@dataclasses.dataclass(frozen=True)
class Case:
    """One layer or loss under contract.

    Attributes:
      name: the test id, and the name of its head in the model.
      make: seed -> a new layer or loss.
      problem: "vec" (scores [B, 6]), "grid" (positive costs [B, 4, 4]) or "mat" ([B, 3, 3]).
      op: (object, x, seed, features[, y]) -> what the public ops compute for that seed.
      features: the layer is called on [x, features].
      then: None, or () -> a layer after it in the model (the targets are that layer's solver's).
      rules: validity rules of constructor arguments that differ from `RULES`.
      xla: whether `model.fit` compiles it with XLA (every built-in does).
      seeded: whether it draws noise (has a seed); the SPO+ loss does not.
      targets: a loss's `y_true`: "solutions" (of the true scores) or "costs" (the true scores).
    """

    name: str
    make: Callable
    problem: str
    op: Callable
    features: bool = False
    then: Optional[Callable] = None
    rules: dict = dataclasses.field(default_factory=dict)
    xla: bool = True
    seeded: bool = True
    targets: str = "solutions"


NOISES = ("normal", "gumbel", "zero_mean_gumbel", "logistic")  # the registered noises with a density


def _drawn_noise(v):  # the estimators that only draw noise take one without a density too
    return v in NOISES + ("sum_of_gamma",)


def _nonnegative_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 <= v < math.inf


CASES = [
    Case("optimizer", lambda s: tp.PerturbedOptimizer("sort_permutation", **SMALL, seed=s), "vec", perturbed_op),
    Case("argmax", lambda s: tp.PerturbedArgmax(**SMALL, seed=s), "vec", perturbed_op),
    Case("top_k", lambda s: tp.PerturbedTopK(k=2, **SMALL, noise="gumbel", seed=s), "vec", perturbed_op),
    Case("ranks", lambda s: tp.PerturbedRanks(**SMALL, control_variate="hard", seed=s), "vec", perturbed_op),
    Case("shortest_path", lambda s: tp.PerturbedShortestPath(**SMALL, seed=s), "grid", perturbed_op),
    Case("matching", lambda s: tp.PerturbedMatching(**SMALL, seed=s), "mat", perturbed_op),
    Case("direct", lambda s: tp.DirectLossGradient("top_k", epsilon=-1.5, sigma=0.5, seed=s, solver_kwargs={"k": 2}),
         "vec", direct_op, rules={"sigma": _nonnegative_real, "noise": _drawn_noise}),  # σ = 0: no noise, the default
    Case("imle", lambda s: tp.ImplicitMLE("top_k", lambda_=1.5, num_samples=3, sigma=0.5, normalize="max_abs",
                                          seed=s, solver_kwargs={"k": 2}),
         "vec", imle_op, rules={"sigma": _nonnegative_real, "noise": _drawn_noise}),
    Case("noise_scale", lambda s: tp.LearnedNoiseScale(initial_sigma=0.5, seed=s), "vec", learned_noise_op,
         features=True, then=lambda: tp.DirectLossGradient("argmax", epsilon=-0.5), rules={"noise": _drawn_noise}),
    Case("fenchel_young", lambda s: tp.FenchelYoungLoss("argmax", **SMALL, seed=s), "vec", fenchel_young_op),
    Case("fenchel_young_path", lambda s: tp.FenchelYoungLoss("shortest_path", **SMALL, seed=s), "grid",
         fenchel_young_op),
    Case("spo_plus", lambda s: tp.SPOPlusLoss("top_k", k=2), "vec", spo_plus_op, seeded=False, targets="costs"),
    Case("spo_plus_path", lambda s: tp.SPOPlusLoss("shortest_path", clip_to_domain=True), "grid", spo_plus_op,
         seeded=False, targets="costs"),
]


def is_loss(obj):
    return isinstance(obj, keras.losses.Loss)


def rebuild(obj, **changes):
    """A new object of obj's class from its config with `changes` (no name; dtype: the global policy)."""
    config = {k: v for k, v in obj.get_config().items() if k not in ("name", "dtype")}
    return type(obj).from_config({**config, **changes})


def construct(obj, **changes):
    """obj's class called on its config with `changes` (Keras's `from_config` wraps errors in a TypeError)."""
    config = {k: v for k, v in obj.get_config().items() if k not in ("name", "dtype")}
    return type(obj)(**{**config, **changes})


def _chunked(case):
    return dataclasses.replace(
        case, name=f"{case.name}_chunked", make=lambda s: rebuild(case.make(s), chunk_size=CHUNK)
    )


CHUNKED = [_chunked(case) for case in CASES if "chunk_size" in case.make(0).get_config()]
ALL = CASES + CHUNKED
LAYERS = [case for case in ALL if not is_loss(case.make(0))]
LOSSES = [case for case in ALL if is_loss(case.make(0))]
SAMPLED = [case for case in LAYERS if "num_samples" in case.make(0).get_config()]


def _ids(cases):
    return [case.name for case in cases]


def test_every_public_layer_and_loss_has_a_case():
    exported = [getattr(tp, name) for name in tp.__all__]
    public = {c for c in exported if isinstance(c, type) and issubclass(c, (keras.layers.Layer, keras.losses.Loss))}
    assert {tp.PerturbedOptimizer, tp.FenchelYoungLoss} <= public  # the filter finds layers and losses
    # RepeatSamples has no solver and no seed: its share of the contract (config, `.keras` in safe
    # mode, export) is tested in tests/test_repeat_samples.py.
    public -= {tp.RepeatSamples}
    covered = {type(case.make(0)) for case in CASES}
    assert public <= covered, public - covered
    for loss in (c for c in public if issubclass(c, keras.losses.Loss)):  # on scores and on costs
        assert {case.make(0).solver.maximize for case in CASES if type(case.make(0)) is loss} == {True, False}
    assert len(set(_ids(ALL))) == len(ALL)
    assert {type(case.make(0)) for case in CHUNKED} == {
        type(case.make(0)) for case in CASES if "chunk_size" in case.make(0).get_config()
    }


# ---------------------------------------------------------------------------------------
# Inputs and calls


def problem_inputs(problem, batch=BATCH, seed=0):
    """θ for the unit checks: scores N(0, 1), or grid costs in [0.2, 2]."""
    rng = np.random.default_rng(seed)
    if problem == "vec":
        return tf.constant(rng.normal(size=(batch, D)), tf.float32)
    if problem == "grid":
        return tf.constant(rng.uniform(0.2, 2.0, size=(batch, *GRID)), tf.float32)
    return tf.constant(rng.normal(size=(batch, N, N)), tf.float32)


def gapped_inputs(problem):
    """θ whose hard solution is unique with gaps ≥ 1 (costs: relative gaps ≥ 1/7), so σ = 1e-3 flips nothing."""
    if problem == "grid":
        # 1 everywhere but a block of 30s: one cheapest path, along the top row, then
        # diagonally into the last column and down it (6 cells); the next best costs 7.
        costs = np.ones((2, *GRID))
        costs[:, 1:, 1:-1] = 30.0
        return tf.constant(costs, tf.float32)
    if problem == "mat":
        return tf.constant(np.stack([np.eye(N) * 8.0, np.eye(N)[::-1] * 8.0]), tf.float32)
    rng = np.random.default_rng(0)
    return tf.constant(np.stack([rng.permutation(D) for _ in range(2)]).astype(np.float32))


def call(case, obj, x, training=True, y=None):
    """What the object computes on x: a layer's output, or a loss's value for the targets y."""
    if is_loss(obj):
        return obj(y, x)
    return obj([x, x] if case.features else x, training=training)


def op(case, obj, x, seed, y=None):
    """The public ops' result for the object, x and a seed."""
    return case.op(obj, x, seed, features=x, **({"y": y} if is_loss(obj) else {}))


def unit(case, seed=SEED, **changes):
    """(object, x, y) for the unit checks: a new object, inputs, and a loss's targets.

    A loss comes without reduction (one value per example), with the solutions of
    other problems as targets. A layer's weights, if it has any, are set to random
    values (so that an op that ignored them would fail), after an inference call that
    builds them and draws no noise.
    """
    obj = case.make(seed)
    if is_loss(obj):
        obj = rebuild(obj, reduction=None, **changes)
    elif changes:
        obj = rebuild(obj, **changes)
    x = problem_inputs(case.problem)
    if is_loss(obj):
        truth = problem_inputs(case.problem, seed=1)
        return obj, x, truth if case.targets == "costs" else obj.solver(truth)
    call(case, obj, x, training=False)
    rng = np.random.default_rng(seed)
    for weight in obj.trainable_weights:
        weight.assign(0.3 * rng.normal(size=weight.shape))
    return obj, x, None


def value_and_grad(fn, x):
    """fn(x), and the gradient of Σ fn·w with respect to x (w: small integers, exact in every dtype)."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = fn(x)
        weights = tf.cast(tf.reshape(tf.range(tf.size(out)) % 4, tf.shape(out)), out.dtype)
        value = tf.reduce_sum(out * weights)
    return out, tape.gradient(value, x)


@contextlib.contextmanager
def dtype_policy(name):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# ---------------------------------------------------------------------------------------
# The model holding every case (contracts 2, 3, 4, 5)


def _scores(problem, inputs, init, name):
    layers = keras.layers
    if problem == "vec":
        return layers.Dense(D, kernel_initializer=init, name=f"{name}_dense")(inputs["vec"])
    if problem == "mat":
        return layers.Dense(N, kernel_initializer=init, name=f"{name}_dense")(inputs["mat"])
    costs = layers.Dense(1, activation="softplus", kernel_initializer=init, name=f"{name}_dense")(inputs["grid"])
    return layers.Rescaling(1.0, offset=0.1)(layers.Reshape(GRID)(costs))  # positive costs [B, H, W]


def build_model(cases, perturbed_copies=False, seed=0):
    """(model, losses, objects): one head per case, each with its own weights and seed.

    The i-th case's object is seeded with seed + i. With `perturbed_copies`, every layer
    whose config has `inference` gets a second head `<name>_perturbed`: the same layer
    rebuilt with `inference="perturbed"`. `objects[name]` is the loss, or (layer, then).
    """
    inputs = {
        "vec": keras.Input((D,), name="vec"),
        "grid": keras.Input((*GRID, FEATURES), name="grid"),
        "mat": keras.Input((N, N), name="mat"),
    }
    outputs, losses, objects, used = {}, {}, {}, set()
    for index, case in enumerate(cases):
        init = keras.initializers.GlorotUniform(seed=seed + 100 + index)
        theta = _scores(case.problem, inputs, init, case.name)
        used |= {case.problem} | ({"vec"} if case.features else set())
        obj = case.make(seed + index)
        if is_loss(obj):
            outputs[case.name], losses[case.name], objects[case.name] = theta, obj, obj
            continue
        then = case.then() if case.then else None
        out = obj([theta, inputs["vec"]] if case.features else theta)
        outputs[case.name], losses[case.name], objects[case.name] = then(out) if then else out, "mse", (obj, then)
        if perturbed_copies and "inference" in obj.get_config():
            outputs[f"{case.name}_perturbed"] = rebuild(obj, inference="perturbed")(theta)
    outputs = {name: keras.layers.Identity(name=name)(out) for name, out in outputs.items()}
    model = keras.Model({name: inputs[name] for name in sorted(used)}, outputs)
    return model, losses, objects


def model_data(objects, n, seed=0):
    """Inputs {"vec", "grid", "mat"} and, per head, the hard solutions of fixed random maps of them."""
    rng = np.random.default_rng(seed)
    x = {
        "vec": rng.normal(size=(n, D)).astype("float32"),
        "grid": rng.normal(size=(n, *GRID, FEATURES)).astype("float32"),
        "mat": rng.normal(size=(n, N, N)).astype("float32"),
    }
    truth = {
        "vec": x["vec"] @ rng.normal(size=(D, D)).astype("float32"),
        "grid": np.log1p(np.exp(x["grid"] @ np.array([1.5, -1.0], "float32"))) + 0.1,
        "mat": x["mat"] @ rng.normal(size=(N, N)).astype("float32"),
    }
    y = {}
    for case in ALL:
        if case.name in objects:
            obj = objects[case.name]
            solver = obj.solver if is_loss(obj) else (obj[1] or obj[0]).solver
            y[case.name] = truth[case.problem] if case.targets == "costs" else solver(tf.constant(truth[case.problem])).numpy()
    return x, y


POLICIES = {"mixed_float16": (tf.float16, 2.0**-10), "mixed_bfloat16": (tf.bfloat16, 2.0**-7)}  # dtype, ulp


def _fit(policy, jit_compile, cases):
    """One fit of the model holding `cases`: losses per epoch, output dtypes, seed generator states."""
    keras.utils.set_random_seed(0)
    with dtype_policy(policy):
        model, losses, objects = build_model(cases)
        x, y = model_data(objects, SIZE)
        x = {k: v for k, v in x.items() if k in model.input}
        model.compile(keras.optimizers.Adam(0.05), losses, jit_compile=jit_compile)
        history = model.fit(x, y, epochs=EPOCHS, batch_size=BATCH, verbose=0, shuffle=False).history
        outputs = model(x, training=False)
    states = {}
    for name, obj in objects.items():
        owner = obj if is_loss(obj) else obj[0]
        if hasattr(owner, "seed_generator"):
            states[name] = [owner.seed, owner.seed_generator.state.numpy().tolist()]
    return {
        "history": {key: [float(v) for v in values] for key, values in history.items()},
        "dtypes": {name: out.dtype.name for name, out in outputs.items()},
        "states": states,
        "loss_scaling": isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer),
    }


def _float32_fits():
    """Every case fitted with XLA (and a case XLA cannot compile, none today, without)."""
    fits = {"xla": _fit("float32", True, [case for case in ALL if case.xla])}
    no_xla = [case for case in ALL if not case.xla]
    if no_xla:
        fits["no_xla"] = _fit("float32", False, no_xla)
    return fits


@pytest.fixture(scope="module")
def fit_process(tmp_path_factory):
    """Starts the XLA fit in a subprocess (`python test_layer_contract.py fits OUT.json`)."""
    tmp = tmp_path_factory.mktemp("fits")
    with open(tmp / "log.txt", "w") as log:  # a file, not a pipe: a full pipe would stall the process
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "fits", str(tmp / "fits.json")],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), stdout=log, stderr=subprocess.STDOUT,
        )
    yield proc, tmp
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def fits(fit_process):
    proc, tmp = fit_process
    proc.wait(timeout=900)
    assert proc.returncode == 0, (tmp / "log.txt").read_text()[-3000:]
    return json.loads((tmp / "fits.json").read_text())


@pytest.fixture(scope="module")
def mixed_fits():
    """One fit per mixed policy, in this process, of the cases without their chunked
    variants: those go through mixed precision in the unit checks (the chunked sums
    are where chunking and the compute dtype meet)."""
    return {policy: _fit(policy, False, CASES) for policy in sorted(POLICIES)}


# The serving process: no tf_perturbed; `serve` twice, then the TF1 session loader.
_SERVE_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, inputs_path, out_path = sys.argv[1:4]
    inputs = dict(np.load(inputs_path))
    served = {}
    loaded = tf.saved_model.load(export_dir)
    for call in ("1", "2"):
        for name, value in loaded.serve({k: tf.constant(v) for k, v in inputs.items()}).items():
            served[f"{name}@{call}"] = np.asarray(value)
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = meta.signature_def["serving_default"]
        feed = {signature.inputs[k].name: v for k, v in inputs.items()}
        fetch = {k: signature.outputs[k].name for k in signature.outputs}
        for name, value in session.run(fetch, feed).items():
            served[f"{name}@session"] = value
    assert "tf_perturbed" not in sys.modules, "the SavedModel must not need tf_perturbed"
    np.savez(out_path, **served)
    """
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One model holding every case: exported (its serving process started), then saved as `.keras` and loaded.

    The in-process outputs are the first two inference calls after the export (the
    model was not called before it).
    """
    tmp = tmp_path_factory.mktemp("saved")
    keras.utils.set_random_seed(0)
    model, losses, objects = build_model(ALL, perturbed_copies=True)
    model.compile(keras.optimizers.SGD(0.1), losses)
    x, _ = model_data(objects, BATCH, seed=1)
    x = {k: v for k, v in x.items() if k in model.input}
    export_dir = str(tmp / "exported")
    model.export(export_dir, verbose=False)
    np.savez(tmp / "inputs.npz", **x)
    with open(tmp / "log.txt", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVE_SCRIPT, export_dir, str(tmp / "inputs.npz"), str(tmp / "served.npz")],
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        def infer(m):
            return {name: value.numpy() for name, value in m(x, training=False).items()}

        calls = [infer(model), infer(model)]
        path = tmp / "model.keras"
        model.save(path)
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
        loaded = keras.saving.load_model(path, safe_mode=True)
        yield dict(proc=proc, tmp=tmp, calls=calls, next_call=infer(model), loaded=infer(loaded), config=config,
                   losses=(model.loss, loaded.loss))
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def served(saved):
    saved["proc"].wait(timeout=600)
    assert saved["proc"].returncode == 0, (saved["tmp"] / "log.txt").read_text()[-3000:]
    return dict(np.load(saved["tmp"] / "served.npz"))


def test_the_model_holds_every_case(fit_process, saved):
    # The first test to ask for the two fixtures: the fits and the serving process then
    # run beside the unit checks below.
    heads = set(saved["calls"][0])
    assert set(_ids(ALL)) <= heads
    assert {f"{case.name}_perturbed" for case in LAYERS if "inference" in case.make(0).get_config()} <= heads


# ---------------------------------------------------------------------------------------
# 1. Config


EXEMPT = {
    "event_ndims", "output_ndims",  # the axes of a plain callable solver, which cannot be saved anyway
    "dtype",  # Keras losses do not save theirs either (keras.losses.Loss.get_config)
}


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_config_round_trips_with_every_constructor_argument(case):
    obj = case.make(SEED)
    config = obj.get_config()
    json.dumps(config)  # plain values: no callables, no tensors
    assert type(obj).from_config(config).get_config() == config
    data = keras.saving.serialize_keras_object(obj)
    json.dumps(data)
    restored = keras.saving.deserialize_keras_object(data)
    assert type(restored) is type(obj) and restored.get_config() == config
    named = [
        name for name, p in inspect.signature(type(obj).__init__).parameters.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]
    assert not set(named) - set(config) - EXEMPT, set(named) - set(config) - EXEMPT
    if not is_loss(obj):
        shape = (None, *problem_inputs(case.problem).shape[1:])
        input_shape = [shape, shape] if case.features else shape
        assert restored.compute_output_shape(input_shape) == obj.compute_output_shape(input_shape)


# ---------------------------------------------------------------------------------------
# 6. Seeds: the object is its op, with the object's seed


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_training_output_is_the_op_called_with_the_objects_seed(case):
    obj, x, y = unit(case)
    generator = keras.random.SeedGenerator(SEED)
    calls = []
    for _ in range(3):
        got, got_grad = value_and_grad(lambda t: call(case, obj, t, training=True, y=y), x)
        seed = tp.seeds.next_seed(generator)
        want, want_grad = value_and_grad(lambda t: op(case, obj, t, seed, y), x)  # noqa: B023
        np.testing.assert_array_equal(got.numpy(), want.numpy())
        np.testing.assert_array_equal(got_grad.numpy(), want_grad.numpy())
        calls.append(got.numpy())
    if not is_loss(obj):
        shape = (None, *x.shape[1:])
        assert got.shape == (x.shape[0], *obj.compute_output_shape([shape, shape] if case.features else shape)[1:])
    assert np.any(got_grad.numpy() != 0)  # a gradient flows
    if not case.seeded:  # no noise: every call is the same
        assert not hasattr(obj, "seed_generator") and "seed" not in obj.get_config()
        assert np.array_equal(calls[0], calls[1]) and np.array_equal(calls[1], calls[2])
        return
    assert not np.array_equal(calls[0], calls[1]) and not np.array_equal(calls[1], calls[2])  # new noise per call
    twin, _, _ = unit(case)
    np.testing.assert_array_equal(call(case, twin, x, training=True, y=y).numpy(), calls[0])  # same seed
    other, _, _ = unit(case, seed=SEED + 1)
    assert not np.array_equal(call(case, other, x, training=True, y=y).numpy(), calls[0])  # another seed


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_eager_and_graph_agree(case):
    """Value and gradient in training, eagerly and in a `tf.function`, from the same generator state.

    Equal up to Grappler's rewrites of float arithmetic in the graph (measured: 1 ulp).
    (XLA: every case's forward and backward pass run compiled in the fit below.)
    """
    _, x, y = unit(case)
    results = []
    for compiled in (False, True):
        obj, _, _ = unit(case)  # a new generator each time

        def fn(t, obj=obj):
            return value_and_grad(lambda u: call(case, obj, u, training=True, y=y), t)

        results.append([v.numpy() for v in (tf.function(fn) if compiled else fn)(x)])
    (eager, eager_grad), (graph, graph_grad) = results
    np.testing.assert_allclose(graph, eager, rtol=1e-6, atol=1e-6 * np.abs(eager).max())
    np.testing.assert_allclose(graph_grad, eager_grad, rtol=1e-6, atol=1e-6 * np.abs(eager_grad).max())
    assert np.any(eager_grad != 0)  # a gradient flows


# ---------------------------------------------------------------------------------------
# 7. Inference


@pytest.mark.parametrize("case", LAYERS, ids=_ids(LAYERS))
def test_inference_is_hard_and_training_draws_noise(case):
    obj, x, _ = unit(case)
    hard = getattr(obj, "solver", lambda t: t)(x).numpy()  # a noise layer passes its input on
    np.testing.assert_array_equal(call(case, obj, x, training=False).numpy(), hard)
    np.testing.assert_array_equal(call(case, obj, x, training=None).numpy(), hard)
    assert not np.array_equal(call(case, obj, x, training=True).numpy(), hard)
    if "inference" in obj.get_config():  # and inference="perturbed" is the op, with the layer's seed
        soft = rebuild(case.make(SEED), inference="perturbed")
        seed = tp.seeds.next_seed(keras.random.SeedGenerator(SEED))
        np.testing.assert_array_equal(call(case, soft, x, training=False).numpy(), op(case, soft, x, seed).numpy())


# ---------------------------------------------------------------------------------------
# 5. Mixed precision, object by object


MIXED = [  # every case in both policies eagerly; the unchunked ones also under XLA, in bfloat16 (the CPU policy)
    pytest.param(case, policy, jit, id=f"{case.name}-{policy}{'-xla' if jit else ''}")
    for case in ALL for policy, jit in (("mixed_float16", False), ("mixed_bfloat16", False), ("mixed_bfloat16", True))
    if not (jit and case in CHUNKED)
]


@pytest.mark.parametrize("case, policy, jit", MIXED)
def test_mixed_precision_is_the_float32_computation_cast(case, policy, jit):
    compute, ulp = POLICIES[policy]
    _, x32, y = unit(case)
    with dtype_policy(policy):
        obj, _, _ = unit(case)
    x = tf.cast(x32, compute)
    seed = tp.seeds.next_seed(keras.random.SeedGenerator(SEED))

    def both(x):  # the object in the mixed policy, and the op in float32 with its seed
        got = value_and_grad(lambda t: call(case, obj, t, training=True, y=y), x)
        return got + value_and_grad(lambda t: op(case, obj, t, seed, y), tf.cast(x, tf.float32))

    got, got_grad, want, want_grad = tf.function(both, jit_compile=True)(x) if jit else both(x)
    assert got.dtype == (tf.float32 if is_loss(obj) else compute), got.dtype  # a Keras loss: float32
    assert got_grad.dtype == compute
    np.testing.assert_array_equal(got.numpy(), tf.cast(want, got.dtype).numpy())
    # within one unit in the last place of the compute dtype: the rounding of the final cast
    want_grad = want_grad.numpy()
    np.testing.assert_allclose(
        got_grad.numpy().astype(np.float32), want_grad, rtol=ulp, atol=ulp * np.abs(want_grad).max()
    )
    if jit:
        return
    op_half = op(case, obj, x, seed, y)  # the ops on half-precision inputs: the same computation, cast
    assert op_half.dtype == compute
    np.testing.assert_array_equal(op_half.numpy(), tf.cast(want, compute).numpy())
    if not is_loss(obj):
        assert call(case, obj, x, training=False).dtype == compute


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("case", SAMPLED, ids=_ids(SAMPLED))
def test_mixed_precision_sums_samples_in_float32(case, policy):
    compute, _ = POLICIES[policy]
    changes = dict(num_samples=4097, sigma=1e-3)
    if case.make(0).get_config().get("chunk_size") is not None:
        changes["chunk_size"] = 1024  # and the sums carried from chunk to chunk (5 chunks of 820)
    with dtype_policy(policy):
        obj = rebuild(case.make(SEED), **changes)
    theta = gapped_inputs(case.problem)
    soft = call(case, obj, tf.cast(theta, compute), training=True)
    assert soft.dtype == compute
    np.testing.assert_array_equal(soft.numpy().astype(np.float32), obj.solver(theta).numpy())


# ---------------------------------------------------------------------------------------
# The Fenchel-Young value against its closed lower bound


def _perturbation(loss, theta, seed):
    """θ'_m − θ `[M, *θ.shape]` in float64, from the public noise, as DESIGN §2 writes θ'."""
    arguments = loss.config.arguments()
    sigma, shape = arguments["sigma"], [arguments["num_samples"], *theta.shape]
    z = tp.noise.get_noise(arguments["noise"]).sample(shape, seed).numpy().astype(np.float64)
    if arguments["perturbation"] == "additive":
        return sigma * z
    shift = 0.5 * sigma**2 if arguments["noise"] == "normal" else 0.0
    return theta.numpy().astype(np.float64) * np.expm1(sigma * z - shift)


FENCHEL_YOUNG = [case for case in LOSSES if isinstance(case.make(0), tp.FenchelYoungLoss)]


@pytest.mark.parametrize("case", FENCHEL_YOUNG, ids=_ids(FENCHEL_YOUNG))
def test_loss_is_the_op_and_above_its_closed_lower_bound(case):
    # L = F̂ − ⟨θ, y⟩, F̂ = (1/M) Σ_m ⟨y*(θ'_m), θ'_m⟩ ≥ (1/M) Σ_m ⟨y, θ'_m⟩ for every y in
    # the polytope, so L ≥ ⟨y, mean_m (θ'_m − θ)⟩ (a minimising solver on costs c:
    # L = ⟨c, y⟩ − F̂ ≥ −⟨y, mean_m (c'_m − c)⟩). It is attained when every sample has
    # the hard solution (σ tiny next to the gaps) and y is that solution. The bound is
    # computed in float64; the loss, in float32, sums ⟨y_m − y, θ⟩ + ⟨y_m, θ'_m − θ⟩, so
    # its rounding stays within 1e-6 (~16 float32 ulps) of its largest terms, even where
    # L itself is tiny.
    obj, x, y = unit(case)
    sign = 1.0 if obj.solver.maximize else -1.0
    for sigma, theta, target in ((None, x, y), (1e-3, gapped_inputs(case.problem), None)):
        loss = obj if sigma is None else rebuild(obj, sigma=sigma)
        target = loss.solver(theta) if target is None else target
        value = loss(target, theta).numpy()
        seed = tp.seeds.next_seed(keras.random.SeedGenerator(SEED))
        np.testing.assert_array_equal(value, fenchel_young_op(loss, theta, seed, y=target).numpy())  # the op
        y_np, axes = target.numpy(), tuple(range(1, theta.shape.rank))
        delta = _perturbation(loss, theta, seed)  # [M, *θ.shape]
        bound = sign * (y_np * delta.mean(0)).sum(axes)
        sample_axes = tuple(a + 1 for a in axes)
        rounding = 1e-6 * np.abs(y_np * (theta.numpy() + delta)).sum(sample_axes).max()  # ~16 float32 ulps
        assert np.all(value >= bound - rounding), (value, bound)
        if sigma is None:
            assert np.any(value > bound + 0.1)  # not tight for other targets: the check can fail
        else:  # attained; every ⟨y_m − y, θ⟩ is exactly 0, the rounding is that of the ⟨y, θ'_m − θ⟩
            np.testing.assert_allclose(value, bound, rtol=0, atol=1e-6 * np.abs(y_np * delta).sum(sample_axes).max())


# ---------------------------------------------------------------------------------------
# 8. Bad constructor arguments


def _positive_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1


def _positive_real(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < math.inf


RULES = {  # what each argument must be: decided here, never by the code under test
    "num_samples": _positive_int,
    "sigma": _positive_real,
    "noise": lambda v: v in NOISES,
    "lambda_": _positive_real,
    "perturbation": lambda v: v is None or v in ("additive", "multiplicative"),
    "control_variate": lambda v: v is None or type(v) is bool or v in ("hard", "leave_one_out"),
    "inference": lambda v: v in ("hard", "perturbed"),
    "seed": lambda v: v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= v < 2**63),
    "chunk_size": lambda v: v is None or _positive_int(v),
}
BAD = [
    ("num_samples", 0, ValueError), ("num_samples", 2.5, TypeError), ("num_samples", True, TypeError),
    ("sigma", -1.0, ValueError), ("sigma", float("nan"), ValueError), ("sigma", float("inf"), ValueError),
    ("sigma", "big", TypeError), ("noise", "cauchy", ValueError), ("noise", 3, TypeError),
    ("perturbation", "both", ValueError), ("control_variate", "mean", ValueError), ("inference", "soft", ValueError),
    ("seed", -1, ValueError), ("seed", 1.5, ValueError), ("seed", 2**63, ValueError), ("chunk_size", 0, ValueError),
    ("solver", "simplex", ValueError), ("solver", 3, TypeError), ("lambda_", 0.0, ValueError),
    ("noise", "sum_of_gamma", ValueError),
]
BAD_CASES = [
    pytest.param(case, name, value, error, id=f"{case.name}-{name}={value!r}")
    for case in CASES for name, value, error in BAD
    if name in case.make(0).get_config() and not {**RULES, **case.rules}.get(name, lambda v: False)(value)
]


@pytest.mark.parametrize("case, name, value, error", BAD_CASES)
def test_bad_constructor_argument_is_named_with_its_value(case, name, value, error):
    with pytest.raises(error, match=f"{name}={value!r}".replace("(", r"\(").replace(".", r"\.")):
        construct(case.make(SEED), **{name: value})


ANY_JUNK = st.one_of(st.none(), st.booleans(), st.text(max_size=2), st.floats(allow_nan=True))
STRATEGIES = {
    "num_samples": st.one_of(st.integers(-2, 6), ANY_JUNK),
    "sigma": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3), ANY_JUNK),
    "noise": st.sampled_from(["normal", "gumbel", "logistic", "sum_of_gamma", "cauchy", "", 3, None]),
    "lambda_": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2, 3), ANY_JUNK),
    "perturbation": st.sampled_from(["additive", "multiplicative", "log", None, 1]),
    "control_variate": st.sampled_from([True, False, None, "hard", "leave_one_out", "mean", 0]),
    "inference": st.sampled_from(["hard", "perturbed", "soft", None]),
    "seed": st.one_of(st.none(), st.integers(-3, 2**64), ANY_JUNK),
    "chunk_size": st.one_of(st.none(), st.integers(-1, 4), ANY_JUNK),
}


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
@settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_any_arguments_build_or_raise_naming_a_bad_one(case, data):
    # Property-based: derandomized (fixed, reproducible examples), 25 per case. Each
    # combination either builds (and its config round-trips) or raises naming one of
    # the arguments `RULES` finds invalid.
    config = case.make(SEED).get_config()
    kwargs = data.draw(st.fixed_dictionaries({name: STRATEGIES[name] for name in sorted(set(STRATEGIES) & set(config))}))
    rules = {**RULES, **case.rules}
    bad = [name for name, value in kwargs.items() if not rules[name](value)]
    if kwargs.get("control_variate") == "leave_one_out" and kwargs.get("num_samples") == 1:
        bad.append("num_samples")  # leave-one-out needs two samples
    if not bad:
        obj = construct(case.make(SEED), **kwargs)
        assert type(obj).from_config(obj.get_config()).get_config() == obj.get_config()
        return
    with pytest.raises((ValueError, TypeError)) as info:
        construct(case.make(SEED), **kwargs)
    assert any(f"{name}=" in str(info.value) for name in bad), (bad, str(info.value))


# ---------------------------------------------------------------------------------------
# 5. Mixed precision: one fit per policy (after the unit checks: the fit and serving processes run meanwhile)


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
def test_mixed_precision_fit_runs_in_the_compute_dtype(case, policy, mixed_fits):
    result = mixed_fits[policy]
    losses = result["history"][f"{case.name}_loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    assert result["dtypes"][case.name] == POLICIES[policy][0].name
    assert result["loss_scaling"] == (policy == "mixed_float16")


# ---------------------------------------------------------------------------------------
# 4. Fit with XLA


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_fit_lowers_the_loss_and_draws_one_seed_per_step(case, fits):
    result = fits["xla" if case.xla else "no_xla"]
    losses = result["history"][f"{case.name}_loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    if case.seeded:
        seed, state = result["states"][case.name]
        assert state == [seed, EPOCHS * SIZE // BATCH]  # a generator seeded s is at [s, k] after k draws


# ---------------------------------------------------------------------------------------
# 2. `.keras` and 3. export


def _heads(case, saved):
    return [name for name in saved["calls"][0] if name in (case.name, f"{case.name}_perturbed")]


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_keras_file_loads_in_safe_mode_with_the_same_outputs(case, saved):
    # The file keeps the weights and the seed generators' states (saved after two calls):
    # the loaded model's first call is the original's third, perturbed heads included.
    for head in _heads(case, saved):
        np.testing.assert_array_equal(saved["loaded"][head], saved["next_call"][head], err_msg=head)
        if head.endswith("_perturbed"):  # the state, not the seed alone, was restored
            assert not np.array_equal(saved["loaded"][head], saved["calls"][0][head]), head
    original, loaded = saved["losses"]
    if is_loss(case.make(0)):
        assert type(loaded[case.name]) is type(original[case.name])
        assert loaded[case.name].get_config() == original[case.name].get_config()
        # (a loss's generator state in saved files: tests/test_checkpoints.py)


def _walk(obj):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield key, value
            yield from _walk(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _walk(value)


def test_keras_file_holds_registered_solver_names_and_no_code(saved):
    config = saved["config"]
    solvers = [value for key, value in _walk(config) if key == "solver"]
    assert solvers and all(name in tp.solvers.registered_solvers() for name in solvers)
    for key, value in _walk(config):  # no serialized Python function anywhere
        assert not (key == "class_name" and value in ("function", "__lambda__")), config


@pytest.mark.parametrize("case", ALL, ids=_ids(ALL))
def test_exported_model_serves_the_in_process_outputs_without_tf_perturbed(case, saved, served):
    first, second = saved["calls"]
    for head in _heads(case, saved):
        np.testing.assert_array_equal(served[f"{head}@1"], first[head], err_msg=head)
        np.testing.assert_array_equal(served[f"{head}@2"], second[head], err_msg=head)
        np.testing.assert_array_equal(served[f"{head}@session"], first[head], err_msg=head)
    perturbed = f"{case.name}_perturbed"
    if perturbed in first:  # new noise per served call
        assert not np.array_equal(served[f"{perturbed}@1"], served[f"{perturbed}@2"])


if __name__ == "__main__":
    if sys.argv[1] == "fits":
        float32_fits = _float32_fits()
        with open(sys.argv[2], "w") as f:
            json.dump(float32_fits, f)
