"""Warcraft-style shortest-path maps: a seeded stand-in generator and a loader for the original files.

Berthet et al. (2020, §5.3 and Appendix C.3) replicate the experiment of Vlastelica et al.
(2019): a network reads a 96×96 RGB image of a 12×12 grid of terrain tiles and must output
vertex costs whose shortest path (top-left to bottom-right, 8-neighbour moves) matches the
path computed from the hidden terrain costs. The original data set cannot be downloaded
here, so this module generates maps with the same interface and the same costs:

- five terrain types with the original vertex costs {0.8, 1.2, 5.3, 7.7, 9.2};
- spatially coherent terrain: five Gaussian random fields on the vertex grid, smoothed with
  a Gaussian kernel, and each vertex takes the terrain whose (biased) field is largest, which
  makes irregular patches in which any two terrains can touch;
- each vertex is drawn as an 8×8 tile (96×96×3 uint8 at 12×12). Terrains come in colour
  families: grass (0.8) and forest (5.3) share one green, road (1.2) and hills (7.7) share
  one brown, water (9.2) is blue. Inside a family the terrains differ only by the spatial
  frequency of a plane-wave texture with a random orientation and phase per tile, so a
  single pixel has the same colour distribution for both terrains of a family and the cost
  can only be read from a tile's texture. Per-tile colour jitter and per-pixel noise make
  every tile different.

Targets are the vertex costs (float32 `[N, H, W]`) and the shortest-path mask (float32
`[N, H, W]`, 1 on the path's vertices, both ends included; path cost = sum of the vertex
costs on it), computed by `tf_perturbed.solvers.shortest_path(costs, neighbourhood=8)`.

`load_warcraft` returns `{"train", "val", "test"}` splits, each a dict with `"images"`,
`"costs"` and `"paths"`. It generates (and caches as `.npz` in `data_dir`) the stand-in, or,
given `original_dir`, reads the original files `{split}_maps.npy`,
`{split}_shortest_paths.npy` and `{split}_vertex_weights.npy`.

Command line: `python -m tutorials.warcraft_data --grid-size 12 --data-dir DIR` generates,
caches and times the default 10,000 / 1,000 / 1,000 split.
"""

import argparse
import hashlib
import json
import os
import pathlib
import tempfile
import time
from typing import Dict, Optional, Union

import numpy as np
from scipy import ndimage

# Terrain types in order of cost; the costs are those of the original data set.
TERRAIN_NAMES = ("grass", "road", "forest", "hills", "water")
TERRAIN_COSTS = np.array([0.8, 1.2, 5.3, 7.7, 9.2], np.float32)
# Biases added to the standardised fields before the argmax (more grass and road than water).
# They give class frequencies of 27 / 22 / 21 / 16 / 14 % (measured on 2,000 maps of seed 0).
TERRAIN_BIAS = np.array([0.30, 0.15, 0.10, -0.05, -0.15], np.float32)
# Mean RGB colour of each terrain: grass and forest share one, road and hills another.
TERRAIN_COLOURS = np.array(
    [
        [78.0, 128.0, 60.0],
        [142.0, 112.0, 76.0],
        [78.0, 128.0, 60.0],
        [142.0, 112.0, 76.0],
        [62.0, 96.0, 150.0],
    ],
    np.float32,
)
# Texture: plane waves of this many cycles per pixel (low within a family for the cheap
# terrain, high for the expensive one) and this relative amplitude of the brightness.
TERRAIN_FREQUENCIES = np.array([0.125, 0.125, 0.375, 0.375, 0.25], np.float32)
TEXTURE_AMPLITUDE = 0.25
FREQUENCY_JITTER = 0.08  # relative, per tile
COLOUR_JITTER = 0.06  # relative, per tile and channel
BRIGHTNESS_JITTER = 0.06  # relative, per tile
PIXEL_NOISE = 10.0  # standard deviation, in uint8 units
FIELD_SMOOTHING = 1.3  # Gaussian kernel width, in vertices
TILE = 8  # pixels per vertex, as in the original (96 px for 12 vertices)

GRID_SIZES = (12, 18, 24, 30)
SPLITS = ("train", "val", "test")
# Every map has its own random stream; maps are rendered this many at a time (memory).
CHUNK = 500
# Bump when the generator changes, so stale caches are not read.
GENERATOR_VERSION = 1
ORIGINAL_FILES = {"images": "maps", "paths": "shortest_paths", "costs": "vertex_weights"}


def _check_grid_size(grid_size) -> int:
    if isinstance(grid_size, bool) or not isinstance(grid_size, (int, np.integer)) or grid_size < 2:
        raise ValueError(
            f"Expected `grid_size` to be an integer ≥ 2 (e.g. 12), received: grid_size={grid_size!r}"
        )
    return int(grid_size)


def _check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"Expected `{name}` to be an integer ≥ 0, received: {name}={value!r}")
    return int(value)


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"Expected `seed` to be an integer ≥ 0, received: seed={seed!r}")
    return int(seed)


def _draw_noise(rng: np.random.Generator, grid_size: int) -> Dict[str, np.ndarray]:
    """All the random numbers of one map (terrain fields and tile appearance)."""
    tiles = (grid_size, grid_size)
    return {
        "fields": rng.standard_normal((len(TERRAIN_COSTS),) + tiles, dtype=np.float32),  # [5, H, W]
        "colour": rng.standard_normal(tiles + (3,), dtype=np.float32),  # [H, W, 3]
        "brightness": rng.standard_normal(tiles + (1,), dtype=np.float32),  # [H, W, 1]
        "frequency": rng.standard_normal(tiles, dtype=np.float32),  # [H, W]
        "angle": rng.uniform(0.0, np.pi, tiles).astype(np.float32),  # [H, W]
        "phase": rng.uniform(0.0, 2.0 * np.pi, tiles).astype(np.float32),  # [H, W]
        "pixels": rng.standard_normal(tiles + (TILE, TILE, 3), dtype=np.float32),  # [H, W, 8, 8, 3]
    }


def sample_terrain(fields: np.ndarray) -> np.ndarray:
    """Spatially coherent terrain classes, int8 `[n, H, W]` with values in 0…4.

    The white-noise `fields` `[n, 5, H, W]` are smoothed with a Gaussian kernel of width
    `FIELD_SMOOTHING` vertices, standardised per map and field, shifted by `TERRAIN_BIAS`,
    and every vertex takes the terrain of the largest field.
    """
    fields = ndimage.gaussian_filter(fields, sigma=(0, 0, FIELD_SMOOTHING, FIELD_SMOOTHING), mode="reflect")
    mean = fields.mean(axis=(2, 3), keepdims=True)
    std = fields.std(axis=(2, 3), keepdims=True) + 1e-6
    fields = (fields - mean) / std + TERRAIN_BIAS[None, :, None, None]  # [n, 5, H, W]
    return np.argmax(fields, axis=1).astype(np.int8)  # [n, H, W]


def render_tiles(terrain: np.ndarray, noise: Dict[str, np.ndarray]) -> np.ndarray:
    """Draws every vertex as a textured 8×8 tile: uint8 images `[n, 8H, 8W, 3]`.

    Pixel (u, v) of a tile of terrain k is
        colour · (1 + a·cos(2π f (u cos φ + v sin φ) + ψ)) + noise,
    with the colour jittered per tile around `TERRAIN_COLOURS[k]`, f around
    `TERRAIN_FREQUENCIES[k]`, and the orientation φ and phase ψ uniform per tile;
    `noise` holds the standard normal and uniform draws (see `_draw_noise`), stacked.
    """
    n, height, width = terrain.shape
    colour = TERRAIN_COLOURS[terrain] * (1.0 + COLOUR_JITTER * noise["colour"])  # [n, H, W, 3]
    colour = colour * (1.0 + BRIGHTNESS_JITTER * noise["brightness"])  # [n, H, W, 3]
    frequency = TERRAIN_FREQUENCIES[terrain] * (1.0 + FREQUENCY_JITTER * noise["frequency"])  # [n, H, W]
    angle, phase = noise["angle"], noise["phase"]  # [n, H, W]
    u = np.arange(TILE, dtype=np.float32)[:, None]  # [8, 1]  row inside the tile
    v = np.arange(TILE, dtype=np.float32)[None, :]  # [1, 8]  column inside the tile
    along = np.cos(angle)[..., None, None] * u + np.sin(angle)[..., None, None] * v  # [n, H, W, 8, 8]
    argument = 2.0 * np.pi * frequency[..., None, None] * along + phase[..., None, None]
    wave = np.cos(argument)  # [n, H, W, 8, 8]
    brightness = 1.0 + TEXTURE_AMPLITUDE * wave[..., None]  # [n, H, W, 8, 8, 1]
    pixels = colour[:, :, :, None, None, :] * brightness  # [n, H, W, 8, 8, 3]
    pixels += PIXEL_NOISE * noise["pixels"]
    pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    pixels = pixels.transpose(0, 1, 3, 2, 4, 5)  # [n, H, 8, W, 8, 3]
    return pixels.reshape(n, height * TILE, width * TILE, 3)  # [n, 8H, 8W, 3]


_SOLVE = None


def shortest_paths(costs: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Shortest-path masks of vertex-cost grids, float32 `[N, H, W]`, with the package solver.

    Runs `tf_perturbed.solvers.shortest_path(costs, neighbourhood=8)` (top-left to bottom-right,
    8-neighbour moves, both ends on the path) on batches of `batch_size` grids; the last batch
    is padded so that the compiled function is traced once.
    """
    import tensorflow as tf  # noqa: PLC0415  (only the labelling needs TensorFlow)

    import tf_perturbed  # noqa: PLC0415

    costs = np.asarray(costs, np.float32)
    if costs.ndim != 3:
        raise ValueError(f"Expected `costs` of shape [N, H, W], received: costs.shape={costs.shape}")
    if costs.shape[0] == 0:
        return np.zeros(costs.shape, np.float32)
    global _SOLVE
    if _SOLVE is None:  # one tf.function for the process: traced once per batch shape
        _SOLVE = tf.function(lambda c: tf_perturbed.solvers.shortest_path(c, neighbourhood=8))
    return map_in_batches(_SOLVE, costs, min(batch_size, costs.shape[0]))


def map_in_batches(fn, array: np.ndarray, batch_size: int) -> np.ndarray:
    """`fn` on batches of exactly `batch_size` items of a non-empty `array`, concatenated.

    The last batch is padded with copies of the last item (their outputs are dropped),
    so that a `tf.function` `fn` is traced once.
    """
    outputs = []
    for start in range(0, len(array), batch_size):
        batch = array[start : start + batch_size]
        size = len(batch)
        if size < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - size, axis=0)])
        outputs.append(np.asarray(fn(batch))[:size])
    return np.concatenate(outputs)


def _map_rng(seed: int, grid_size: int, split: str, index: int) -> np.random.Generator:
    """The random stream of map `index` of a split: maps never depend on how many are made."""
    sequence = np.random.SeedSequence([seed, grid_size, SPLITS.index(split), index, GENERATOR_VERSION])
    return np.random.default_rng(sequence)


def generate_maps(
    num_maps: int,
    grid_size: int = 12,
    seed: int = 0,
    split: str = "train",
    with_paths: bool = True,
) -> Dict[str, np.ndarray]:
    """Generates `num_maps` Warcraft-style maps of one split.

    Args:
      num_maps: number of maps N ≥ 0.
      grid_size: vertices per side H = W (12, 18, 24 or 30 in the original; any ≥ 2 works).
      seed: int ≥ 0; the same (seed, grid_size, split) always gives the same maps, and map i
        does not depend on `num_maps` (each map has its own random stream).
      split: `"train"`, `"val"` or `"test"` (each split has its own random stream).
      with_paths: compute the shortest-path masks (needs TensorFlow); if False, `"paths"` is
        omitted.

    Returns:
      `{"images": uint8 [N, 8H, 8W, 3], "costs": float32 [N, H, W],
      "terrain": int8 [N, H, W], "paths": float32 [N, H, W]}`.

    Raises:
      ValueError: for a bad argument, naming it and the value received.

    Example:
      >>> maps = generate_maps(4, grid_size=12, seed=0, with_paths=False)
      >>> maps["images"].shape, maps["costs"].shape
      ((4, 96, 96, 3), (4, 12, 12))
    """
    num_maps = _check_count(num_maps, "num_maps")
    grid_size = _check_grid_size(grid_size)
    seed = _check_seed(seed)
    if split not in SPLITS:
        raise ValueError(f"Expected `split` in {SPLITS}, received: split={split!r}")
    side = grid_size * TILE
    images = np.empty((num_maps, side, side, 3), np.uint8)
    terrain = np.empty((num_maps, grid_size, grid_size), np.int8)
    for start in range(0, num_maps, CHUNK):
        draws = [
            _draw_noise(_map_rng(seed, grid_size, split, i), grid_size)
            for i in range(start, min(start + CHUNK, num_maps))
        ]
        noise = {key: np.stack([d[key] for d in draws]) for key in draws[0]}  # each [chunk, ...]
        classes = sample_terrain(noise.pop("fields"))  # [chunk, H, W]
        images[start : start + len(draws)] = render_tiles(classes, noise)
        terrain[start : start + len(draws)] = classes
    maps = {"images": images, "costs": TERRAIN_COSTS[terrain], "terrain": terrain}
    if with_paths:
        maps["paths"] = shortest_paths(maps["costs"])
    return maps


def _cache_path(data_dir, grid_size: int, seed: int, counts: Dict[str, int]) -> pathlib.Path:
    key = f"{grid_size}x{grid_size}_seed{seed}_" + "-".join(str(counts[s]) for s in SPLITS)
    return pathlib.Path(data_dir) / f"warcraft_{key}_v{GENERATOR_VERSION}.npz"


def _find_cache(data_dir, grid_size: int, seed: int, counts: Dict[str, int]) -> Optional[pathlib.Path]:
    """A cached file with at least `counts` maps in every split (map i never depends on the
    split size, so its first maps are exactly the ones asked for), the smallest such; or None."""
    pattern = f"warcraft_{grid_size}x{grid_size}_seed{seed}_*_v{GENERATOR_VERSION}.npz"
    best, best_total = None, None
    for path in pathlib.Path(data_dir).glob(pattern):
        sizes = path.stem.split("_")[3].split("-")
        if len(sizes) != len(SPLITS) or not all(size.isdigit() for size in sizes):
            continue
        sizes = [int(size) for size in sizes]
        if all(size >= counts[split] for size, split in zip(sizes, SPLITS, strict=True)):
            if best_total is None or sum(sizes) < best_total:
                best, best_total = path, sum(sizes)
    return best


def _save_npz(path: pathlib.Path, arrays: Dict[str, np.ndarray]) -> None:
    """Writes `arrays` to a temporary file then renames it: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600 files
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _find_original(original_dir, grid_size: int) -> pathlib.Path:
    """The folder holding the original `.npy` files: `original_dir` itself or its `{g}x{g}/`."""
    root = pathlib.Path(original_dir)
    for folder in (root, root / f"{grid_size}x{grid_size}"):
        if (folder / "train_maps.npy").exists():
            return folder
    raise FileNotFoundError(
        f"Expected the original Warcraft files (train_maps.npy, train_shortest_paths.npy, "
        f"train_vertex_weights.npy, and the same for val and test) in {root} or "
        f"{root / f'{grid_size}x{grid_size}'}, received: original_dir={str(original_dir)!r}"
    )


def load_original(original_dir, grid_size: int = 12, counts: Optional[Dict[str, int]] = None):
    """Reads the original data set's `{split}_{maps,shortest_paths,vertex_weights}.npy`.

    Keeps the first `counts[split]` maps of each split when given. Images stay uint8
    `[N, 8H, 8W, 3]`; costs and paths become float32 `[N, H, W]`.
    """
    folder = _find_original(original_dir, grid_size)
    splits = {}
    for split in SPLITS:
        arrays = {}
        for key, stem in ORIGINAL_FILES.items():
            array = np.load(folder / f"{split}_{stem}.npy", mmap_mode="r")
            if counts is not None:
                array = array[: counts[split]]
            arrays[key] = np.asarray(array, np.uint8 if key == "images" else np.float32)
        num, height, width = arrays["costs"].shape
        if arrays["paths"].shape != (num, height, width) or arrays["images"].shape[:1] != (num,):
            raise ValueError(
                f"Expected {split} maps, paths and vertex weights with matching shapes, received: "
                f"maps.shape={arrays['images'].shape}, shortest_paths.shape={arrays['paths'].shape}, "
                f"vertex_weights.shape={arrays['costs'].shape}"
            )
        splits[split] = arrays
    return splits


def load_warcraft(
    grid_size: int = 12,
    num_train: int = 10000,
    num_val: int = 1000,
    num_test: int = 1000,
    seed: int = 0,
    data_dir: Optional[Union[str, os.PathLike]] = None,
    original_dir: Optional[Union[str, os.PathLike]] = None,
) -> Dict[str, Dict[str, np.ndarray]]:
    """The Warcraft shortest-path data set: the original files if given, else the stand-in.

    Args:
      grid_size: vertices per side (12, 18, 24 or 30).
      num_train, num_val, num_test: maps per split (the original has 10,000 / 1,000 / 1,000).
        With `original_dir`, the first that many maps of each file are kept.
      seed: generator seed (ignored for the original files).
      data_dir: folder for the `.npz` cache of generated maps, keyed by grid size, seed, split
        sizes and generator version; a cached file with more maps per split is read and cut
        (map i of a split does not depend on the split's size). None: no caching.
      original_dir: folder holding the original `{split}_maps.npy`,
        `{split}_shortest_paths.npy`, `{split}_vertex_weights.npy` (directly or in `12x12/`).

    Returns:
      `{"train": split, "val": split, "test": split}`, each split a dict with
      `"images"` uint8 `[N, 8H, 8W, 3]`, `"costs"` float32 `[N, H, W]` and `"paths"`
      float32 `[N, H, W]` (1 on the shortest path's vertices).

    Raises:
      ValueError: for a bad argument. FileNotFoundError: if `original_dir` lacks the files.

    Example:
      >>> data = load_warcraft(num_train=8, num_val=2, num_test=2)
      >>> data["train"]["images"].shape, data["test"]["paths"].shape
      ((8, 96, 96, 3), (2, 12, 12))

    References:
      Berthet et al. (2020), Learning with Differentiable Perturbed Optimizers, §5.3, App. C.3.
      Vlastelica et al. (2019), Differentiation of Blackbox Combinatorial Solvers.
    """
    grid_size = _check_grid_size(grid_size)
    counts = {
        "train": _check_count(num_train, "num_train"),
        "val": _check_count(num_val, "num_val"),
        "test": _check_count(num_test, "num_test"),
    }
    if original_dir is not None:
        return load_original(original_dir, grid_size, counts)
    seed = _check_seed(seed)
    path = None if data_dir is None else _cache_path(data_dir, grid_size, seed, counts)
    cached = None if data_dir is None else _find_cache(data_dir, grid_size, seed, counts)
    if cached is not None:
        with np.load(cached) as stored:
            return {
                s: {k: stored[f"{s}_{k}"][: counts[s]] for k in ("images", "costs", "paths")} for s in SPLITS
            }
    splits = {}
    for split in SPLITS:
        maps = generate_maps(counts[split], grid_size, seed, split)
        splits[split] = {k: maps[k] for k in ("images", "costs", "paths")}
    if path is not None:
        _save_npz(path, {f"{s}_{k}": v for s, arrays in splits.items() for k, v in arrays.items()})
    return splits


def fingerprint(splits: Dict[str, Dict[str, np.ndarray]]) -> str:
    """A short SHA-256 of all arrays, to check that two runs made the same data."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for key in ("images", "costs", "paths"):
            digest.update(np.ascontiguousarray(splits[split][key]).tobytes())
    return digest.hexdigest()[:16]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tutorials.warcraft_data", description=__doc__.split("\n")[0])
    parser.add_argument("--grid-size", type=int, default=12)
    parser.add_argument("--num-train", type=int, default=10000)
    parser.add_argument("--num-val", type=int, default=1000)
    parser.add_argument("--num-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default="data/warcraft")
    parser.add_argument("--original-dir", default=None)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    splits = load_warcraft(
        args.grid_size,
        args.num_train,
        args.num_val,
        args.num_test,
        args.seed,
        args.data_dir,
        args.original_dir,
    )
    seconds = time.perf_counter() - start
    summary = {
        "seconds": round(seconds, 2),
        "fingerprint": fingerprint(splits),
        "shapes": {s: {k: list(v.shape) for k, v in a.items()} for s, a in splits.items()},
        "mean_path_length": float(splits["train"]["paths"].sum(axis=(1, 2)).mean()),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
