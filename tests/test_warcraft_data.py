"""Tests of the Warcraft-style map generator and loader (`tutorials.warcraft_data`).

Runtime: about 9 s of tests on 2 shared CPU cores (load average 2.5–4), most of it tracing
and running the package's shortest-path solver on 60 maps, plus importing TensorFlow.
"""

import pathlib

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from tutorials import warcraft_data

MOVES = [(di, dj) for di in (-1, 0, 1) for dj in (-1, 0, 1) if (di, dj) != (0, 0)]


def _grid_graph(costs: np.ndarray) -> csr_matrix:
    """Directed 8-neighbour graph of an H×W grid; the edge u → v weighs the cost of v."""
    height, width = costs.shape
    rows, cols, weights = [], [], []
    for i in range(height):
        for j in range(width):
            for di, dj in MOVES:
                k, m = i + di, j + dj
                if 0 <= k < height and 0 <= m < width:
                    rows.append(i * width + j)
                    cols.append(k * width + m)
                    weights.append(costs[k, m])
    size = height * width
    return csr_matrix((np.asarray(weights, np.float64), (rows, cols)), shape=(size, size))


def _scipy_optimal_cost(costs: np.ndarray) -> float:
    """Cost of the best top-left → bottom-right path, both end vertices included."""
    distances = dijkstra(_grid_graph(costs.astype(np.float64)), directed=True, indices=0)
    return float(costs[0, 0]) + float(distances[-1])


def _is_connected_path_set(mask: np.ndarray) -> bool:
    """True if the mask is 0/1, holds both corners and its vertices are 8-connected."""
    if not np.all((mask == 0) | (mask == 1)) or mask[0, 0] != 1 or mask[-1, -1] != 1:
        return False
    height, width = mask.shape
    seen, stack = {(0, 0)}, [(0, 0)]
    while stack:
        i, j = stack.pop()
        for di, dj in MOVES:
            k, m = i + di, j + dj
            if 0 <= k < height and 0 <= m < width and mask[k, m] == 1 and (k, m) not in seen:
                seen.add((k, m))
                stack.append((k, m))
    return len(seen) == int(mask.sum())


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("warcraft_cache")
    data = warcraft_data.load_warcraft(num_train=40, num_val=10, num_test=10, seed=3, data_dir=data_dir)
    return data, data_dir


def test_labels_agree_with_scipy_dijkstra(small_set):
    data, _ = small_set
    for split in warcraft_data.SPLITS:
        for costs, mask in zip(data[split]["costs"], data[split]["paths"], strict=True):
            optimal = _scipy_optimal_cost(costs)
            # Masks may differ from SciPy's under ties, so compare costs. A connected set of
            # vertices joining both corners costs at least the optimum (costs are > 0), with
            # equality only for an optimal path: together these prove the mask is one.
            assert _is_connected_path_set(mask)
            np.testing.assert_allclose(float(np.sum(mask * costs, dtype=np.float64)), optimal, rtol=1e-5)


def test_larger_grid_shapes():
    maps = warcraft_data.generate_maps(2, grid_size=18, seed=0, split="test", with_paths=False)
    assert maps["images"].shape == (2, 144, 144, 3) and maps["costs"].shape == (2, 18, 18)
    assert "paths" not in maps


def test_shapes_and_dtypes(small_set):
    data, _ = small_set
    for split, count in (("train", 40), ("val", 10), ("test", 10)):
        arrays = data[split]
        assert arrays["images"].shape == (count, 96, 96, 3) and arrays["images"].dtype == np.uint8
        assert arrays["costs"].shape == (count, 12, 12) and arrays["costs"].dtype == np.float32
        assert arrays["paths"].shape == (count, 12, 12) and arrays["paths"].dtype == np.float32
        assert set(np.unique(arrays["costs"])) <= set(warcraft_data.TERRAIN_COSTS.tolist())


def test_cache_is_written_and_read(small_set, monkeypatch):
    data, data_dir = small_set
    files = list(pathlib.Path(data_dir).glob("*.npz"))
    assert len(files) == 1 and "12x12_seed3_40-10-10" in files[0].name

    def fail(*args, **kwargs):
        raise AssertionError("the cached maps should have been read, not generated")

    monkeypatch.setattr(warcraft_data, "generate_maps", fail)
    again = warcraft_data.load_warcraft(num_train=40, num_val=10, num_test=10, seed=3, data_dir=data_dir)
    for split in warcraft_data.SPLITS:
        for key in ("images", "costs", "paths"):
            np.testing.assert_array_equal(again[split][key], data[split][key])


def test_smaller_request_is_cut_from_a_larger_cache(small_set, monkeypatch):
    data, data_dir = small_set

    def fail(*args, **kwargs):
        raise AssertionError("the larger cached set should have been cut, not generated")

    monkeypatch.setattr(warcraft_data, "generate_maps", fail)
    fewer = warcraft_data.load_warcraft(num_train=25, num_val=4, num_test=10, seed=3, data_dir=data_dir)
    for split, count in (("train", 25), ("val", 4), ("test", 10)):
        for key in ("images", "costs", "paths"):
            np.testing.assert_array_equal(fewer[split][key], data[split][key][:count])
    # More maps than cached, or another seed, must not be served from this cache.
    with pytest.raises(AssertionError, match="generated"):
        warcraft_data.load_warcraft(num_train=41, num_val=10, num_test=10, seed=3, data_dir=data_dir)
    with pytest.raises(AssertionError, match="generated"):
        warcraft_data.load_warcraft(num_train=4, num_val=1, num_test=1, seed=4, data_dir=data_dir)


def test_deterministic_per_seed_and_split():
    first = warcraft_data.generate_maps(6, seed=0, split="train", with_paths=False)
    again = warcraft_data.generate_maps(6, seed=0, split="train", with_paths=False)
    other_seed = warcraft_data.generate_maps(6, seed=1, split="train", with_paths=False)
    other_split = warcraft_data.generate_maps(6, seed=0, split="val", with_paths=False)
    prefix = warcraft_data.generate_maps(2, seed=0, split="train", with_paths=False)
    np.testing.assert_array_equal(first["images"], again["images"])
    np.testing.assert_array_equal(first["costs"], again["costs"])
    np.testing.assert_array_equal(prefix["images"], first["images"][:2])
    for other in (other_seed, other_split):
        # Every map must differ, not just one of them.
        assert np.all(np.any(first["images"] != other["images"], axis=(1, 2, 3)))
        assert np.all(np.any(first["costs"] != other["costs"], axis=(1, 2)))


def test_terrain_is_spatially_coherent():
    terrain = warcraft_data.generate_maps(200, seed=0, with_paths=False)["terrain"]
    frequencies = np.bincount(terrain.ravel(), minlength=5) / terrain.size
    chance = float(np.sum(frequencies**2))  # two independent vertices share a class
    assert np.all(frequencies > 0.05)  # every terrain type is present
    for same in (
        terrain[:, 1:, :] == terrain[:, :-1, :],
        terrain[:, :, 1:] == terrain[:, :, :-1],
        terrain[:, 1:, 1:] == terrain[:, :-1, :-1],
    ):
        # 200 maps give 26,400+ pairs: the standard error of the agreement rate is below
        # 0.01 even allowing for correlation inside a map (~25 effective pairs per map);
        # measured: 0.66 (rows, columns) and 0.55 (diagonals) against 0.21 by chance.
        assert same.mean() > 2.0 * chance


def _tiles(maps):
    """Tiles `[n·H·W, 8, 8, 3]` as float32 and their terrain classes `[n·H·W]`."""
    n, height, width = maps["terrain"].shape
    tile = warcraft_data.TILE
    tiles = maps["images"].reshape(n, height, tile, width, tile, 3)  # [n, H, 8, W, 8, 3]
    tiles = tiles.transpose(0, 1, 3, 2, 4, 5).reshape(-1, tile, tile, 3)  # [n·H·W, 8, 8, 3]
    return tiles.astype(np.float32), maps["terrain"].reshape(-1).astype(np.int64)


def _nearest_centroid_accuracy(x_train, y_train, x_test, y_test):
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    centroids = np.stack([x_train[y_train == k].mean(0) for k in range(5)])  # [5, features]
    distance = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1)  # [n, 5]
    return float(np.mean(np.argmin(distance, axis=1) == y_test))


def test_cost_is_not_readable_from_one_pixel():
    train_tiles, train_y = _tiles(warcraft_data.generate_maps(100, seed=0, split="train", with_paths=False))
    test_tiles, test_y = _tiles(warcraft_data.generate_maps(100, seed=0, split="test", with_paths=False))
    # Best single pixel position inside the tile: RGB → terrain by nearest centroid.
    pixel = max(
        _nearest_centroid_accuracy(train_tiles[:, u, v], train_y, test_tiles[:, u, v], test_y)
        for u in (0, 3, 7)
        for v in (0, 4, 7)
    )

    # Tile level: mean colour plus a texture statistic (mean absolute brightness step).
    def features(tiles):
        brightness = tiles.mean(-1)
        steps = np.abs(np.diff(brightness, axis=1)).mean((1, 2)) + np.abs(np.diff(brightness, axis=2)).mean(
            (1, 2)
        )
        return np.concatenate([tiles.mean((1, 2)), steps[:, None]], axis=1)

    tile = _nearest_centroid_accuracy(features(train_tiles), train_y, features(test_tiles), test_y)
    # 14,400 test tiles: binomial standard error < 0.005 (< 0.03 allowing for within-map
    # correlation), so these bounds are many errors away. A pixel cannot tell apart the two
    # terrains of a colour family (≈ 0.57 expected: water right, pairs at chance), a tile can.
    assert pixel < 0.7
    assert tile > 0.95
    assert tile - pixel > 0.25


def test_reads_original_layout(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "12x12"
    folder.mkdir()
    sizes = {"train": 5, "val": 3, "test": 4}
    stored = {}
    for split, count in sizes.items():
        maps = rng.integers(0, 256, (count, 96, 96, 3), dtype=np.uint8)
        weights = rng.choice(warcraft_data.TERRAIN_COSTS.astype(np.float64), (count, 12, 12))
        paths = rng.integers(0, 2, (count, 12, 12)).astype(np.uint8)
        np.save(folder / f"{split}_maps.npy", maps)
        np.save(folder / f"{split}_vertex_weights.npy", weights)
        np.save(folder / f"{split}_shortest_paths.npy", paths)
        stored[split] = {"images": maps, "costs": weights, "paths": paths}
    data = warcraft_data.load_warcraft(num_train=4, num_val=3, num_test=4, original_dir=tmp_path)
    for split, count in (("train", 4), ("val", 3), ("test", 4)):
        assert data[split]["images"].dtype == np.uint8
        assert data[split]["costs"].dtype == np.float32 and data[split]["paths"].dtype == np.float32
        for key in ("images", "costs", "paths"):
            assert data[split][key].shape[0] == count
            np.testing.assert_allclose(data[split][key], stored[split][key][:count], rtol=1e-7)
    # The folder holding the files can also be given directly.
    direct = warcraft_data.load_warcraft(num_train=5, original_dir=folder)
    np.testing.assert_array_equal(direct["train"]["images"], stored["train"]["images"])
    with pytest.raises(FileNotFoundError, match="train_maps.npy"):
        warcraft_data.load_warcraft(original_dir=tmp_path / "missing")


@pytest.mark.parametrize(
    "kwargs, name",
    [({"grid_size": 1}, "grid_size"), ({"num_train": -1}, "num_train"), ({"seed": -2}, "seed")],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        warcraft_data.load_warcraft(**kwargs)
