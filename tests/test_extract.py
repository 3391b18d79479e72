"""Feature extraction: determinism, shape, signal, streaming/resume, CLI, GPU path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from slide2expr.contracts._h5 import FORMAT_ATTR
from slide2expr.contracts.features import FeatureWriter, partial_path, read_features
from slide2expr.contracts.tiles import TileSet, write_tiles
from slide2expr.errors import InputError
from slide2expr.extract import run as extract_mod
from slide2expr.extract.encoders import get_encoder, sha256_file
from slide2expr.extract.encoders.builders import efficientnet_lite0_weights_file
from slide2expr.extract.run import extract_features
from slide2expr.inputs.slides import open_slide

HER2ST_MPP = 0.69  # from the array pitch (data README); the JPEGs carry no resolution
SECTIONS = ("C2", "C3", "C4", "C5", "C6")


@pytest.fixture(scope="module")
def lite0():
    return get_encoder("efficientnet_lite0")


def her2st_spot_tiles(her2st: Path, section: str) -> TileSet:
    """Spot patches of one section, made by the tile stage's own functions."""
    from slide2expr.inputs.spots import read_spot_positions
    from slide2expr.tile.grid import TilingParams, spot_tiles

    with open_slide(her2st / f"{section}_HE.jpg", sheet_mpp=HER2ST_MPP) as slide:
        table = read_spot_positions(her2st / f"{section}_selection.tsv",
                                    counts_path=her2st / f"{section}.tsv.gz")
        return spot_tiles(slide, table, section, TilingParams(), source=section)


def background_coords(her2st: Path, section: str, size0: float, n: int) -> np.ndarray:
    """Top-left corners of ``n`` tiles of bare glass (bright, unsaturated everywhere)."""
    with open_slide(her2st / f"{section}_HE.jpg", sheet_mpp=HER2ST_MPP) as slide:
        thumb, ds = slide.thumbnail(1024)
    grey = thumb.mean(axis=2)
    sat = (thumb.max(axis=2).astype(float) - thumb.min(axis=2)) / np.maximum(thumb.max(axis=2), 1)
    step = int(np.ceil(size0 / ds))
    found = []
    for ty in range(0, thumb.shape[0] - step, step):
        for tx in range(0, thumb.shape[1] - step, step):
            box = (slice(ty, ty + step), slice(tx, tx + step))
            if grey[box].min() > 215 and sat[box].max() < 0.08:
                found.append((int(tx * ds), int(ty * ds)))
    rng = np.random.default_rng(0)
    pick = rng.choice(len(found), size=min(n, len(found)), replace=False)
    return np.asarray(found, dtype=np.int64)[np.sort(pick)]


@pytest.fixture(scope="module")
def c2_mixed(her2st: Path, tmp_path_factory) -> tuple[Path, int]:
    """48 spot patches of section C2 followed by 24 background tiles, as a tiles file."""
    spots = her2st_spot_tiles(her2st, "C2")
    n_spots = 48
    keep = np.linspace(0, len(spots) - 1, n_spots).astype(int)
    bg = background_coords(her2st, "C2", spots.tile_px_level0, 24)
    assert len(bg) == 24
    tiles = TileSet(
        coords=np.concatenate([spots.coords[keep], bg]),
        attrs=spots.attrs.to_attrs(),
        spot_ids=np.concatenate([spots.spot_ids[keep], [f"bg{i}" for i in range(len(bg))]]),
    )
    path = tmp_path_factory.mktemp("c2") / "C2.h5"
    write_tiles(path, tiles)
    return path, n_spots


@pytest.fixture(scope="module")
def c2_features(c2_mixed, lite0, tmp_path_factory):
    """The same tiles embedded twice: in the main process, and with two reader workers."""
    tiles, _ = c2_mixed
    out = tmp_path_factory.mktemp("c2feat")
    a = extract_features(tiles, out / "a.h5", encoder=lite0, batch_size=16, num_workers=0,
                         device="cpu", progress=False)
    b = extract_features(tiles, out / "b.h5", encoder=lite0, batch_size=16, num_workers=2,
                         device="cpu", progress=False)
    return read_features(a.path), read_features(b.path)


def test_her2st_features_are_deterministic(c2_features):
    a, b = c2_features
    assert np.array_equal(a.features, b.features)


def test_her2st_features_have_the_documented_layout(c2_features, c2_mixed):
    from slide2expr.contracts.tiles import read_tiles

    a, _ = c2_features
    tiles = read_tiles(c2_mixed[0])
    n = len(tiles)
    assert a.features.shape == (n, 1280) and a.features.dtype == np.float32
    assert np.isfinite(a.features).all()
    assert np.array_equal(a.coords, tiles.coords)
    assert list(a.spot_ids) == list(tiles.spot_ids)
    assert a.attrs.encoder == "efficientnet_lite0" and a.attrs.embed_dim == 1280
    assert a.attrs.weights == sha256_file(efficientnet_lite0_weights_file())
    carried = a.attrs.to_attrs()
    for key, value in tiles.attrs.items():  # every tiling attr is carried over
        if key != FORMAT_ATTR:  # each contract stamps its own format
            assert carried[key] == value
    assert a.attrs.slide2expr_format == "features/1" and tiles.attrs.slide2expr_format == "tiles/1"
    assert a.attrs.input_px == 224
    assert a.attrs.input_mpp == pytest.approx(112.0 / 224, rel=1e-6)


def test_tissue_and_background_patches_separate(c2_features, c2_mixed):
    a, _ = c2_features
    n_spots = c2_mixed[1]
    x = a.features / np.linalg.norm(a.features, axis=1, keepdims=True)
    y = np.arange(len(x)) >= n_spots  # True = background
    # Leave-one-out nearest centroid on cosine similarity.
    correct = 0
    for i in range(len(x)):
        rest = np.ones(len(x), bool)
        rest[i] = False
        c_t = x[rest & ~y].mean(0)
        c_b = x[rest & y].mean(0)
        correct += (x[i] @ c_b > x[i] @ c_t) == y[i]
    assert correct / len(x) >= 0.97
    # And the classes are far apart relative to their spread.
    between = np.linalg.norm(x[~y].mean(0) - x[y].mean(0))
    within = max(np.linalg.norm(x[~y] - x[~y].mean(0), axis=1).mean(),
                 np.linalg.norm(x[y] - x[y].mean(0), axis=1).mean())
    assert between > within
    # The features are not trivial: tissue patches differ from one another.
    assert np.median(np.std(a.features[:n_spots], axis=0)) > 0.05


def test_lite2_reads_the_same_patch_at_its_260_px_input(c2_mixed, her2st, tmp_path):
    """A larger encoder keeps the tiling's physical patch (112 um) and reads it at its own
    input size: EfficientNet-Lite2 embeds 260 px reads of the same level-0 squares, at
    112/260 um per input pixel, and its features are its module on those reads."""
    from slide2expr.contracts.tiles import read_tiles

    tiles = read_tiles(c2_mixed[0])
    few = TileSet(tiles.coords[:4], tiles.attrs.to_attrs(), spot_ids=tiles.spot_ids[:4])
    write_tiles(tmp_path / "few.h5", few)
    enc = get_encoder("efficientnet_lite2")
    result = extract_features(tmp_path / "few.h5", tmp_path / "l2.h5", encoder=enc,
                              batch_size=4, num_workers=0, device="cpu", progress=False)
    feats = read_features(result.path)
    assert feats.attrs.input_px == 260 and feats.attrs.encoder == "efficientnet_lite2"
    assert feats.attrs.input_mpp == pytest.approx(112.0 / 260, rel=1e-6)
    assert feats.features.shape == (4, 1280)
    size0 = tiles.attrs.tile_px_level0
    with open_slide(her2st / "C2_HE.jpg", sheet_mpp=HER2ST_MPP) as slide:
        x, y = (float(v) for v in tiles.coords[0])
        read = slide.read_region_mpp(x, y, size0, size0, (260, 260))
    assert read.shape == (260, 260, 3)
    image = torch.from_numpy(np.array(read)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        expected = enc.module(enc.preprocessing.normalize(image)).numpy()[0]
    np.testing.assert_allclose(feats.features[0], expected, atol=1e-4)


@pytest.fixture(scope="module")
def cmu_tiles(slides_dir: Path, tmp_path_factory) -> Path:
    """20 grid tiles of 224 px at 0.5 um/px from a real Aperio slide (OpenSlide)."""
    slide_path = slides_dir / "cmu-1-small-region.svs"
    with open_slide(slide_path) as slide:
        size0 = 224 * 0.5 / slide.mpp
        w0, h0 = slide.dimensions
        xs = np.arange(0, w0 - size0, size0)[:5]
        ys = np.arange(0, h0 - size0, size0)[3:7]
        gx, gy = np.meshgrid(xs, ys)
        attrs = {"sample_id": "cmu", "slide": str(slide_path), "slide_mpp": slide.mpp,
                 "mpp_source": slide.mpp_source, "target_mpp": 0.5, "tile_px": 224,
                 "tile_px_level0": size0, "level0_width": w0, "level0_height": h0,
                 "mode": "grid"}
    tiles = TileSet(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.int64), attrs)
    path = tmp_path_factory.mktemp("cmu") / "cmu.h5"
    write_tiles(path, tiles)
    return path


@pytest.fixture(scope="module")
def cmu_reference(cmu_tiles, lite0, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmuref") / "ref.h5"
    extract_features(cmu_tiles, out, encoder=lite0, batch_size=8, num_workers=0,
                     device="cpu", progress=False)
    return read_features(out)


def test_interrupted_run_leaves_no_output_and_resumes(cmu_tiles, cmu_reference, lite0,
                                                      tmp_path, monkeypatch):
    out = tmp_path / "features" / "cmu.h5"
    calls = {"n": 0}
    real = extract_mod.embed_batch

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during the second batch
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "embed_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        extract_features(cmu_tiles, out, encoder=lite0, batch_size=8, num_workers=0,
                         device="cpu", progress=False)
    assert not out.exists()
    assert partial_path(out).exists()
    monkeypatch.setattr(extract_mod, "embed_batch", real)
    result = extract_features(cmu_tiles, out, encoder=lite0, batch_size=8, num_workers=0,
                              device="cpu", progress=False)
    assert result.n_tiles == 20 and result.n_computed == 12  # only the unfinished rows
    assert not partial_path(out).exists()
    np.testing.assert_array_equal(read_features(out).features, cmu_reference.features)


def test_tilings_of_a_slide_in_one_pass_resume_per_tiling(cmu_tiles, cmu_reference, lite0,
                                                          tmp_path, monkeypatch):
    """Two tilings of one slide (grid, grid_ctx300) in one run: the slide opened and the
    stains fitted once, each file equal to its own single-tiling run; killed in the second
    tiling, neither output exists, the first tiling's rows are kept whole in its partial file
    and the rerun computes only the second tiling's missing rows."""
    from slide2expr.contracts.tiles import read_tiles
    from slide2expr.tile.context import grid_context_windows

    ctx_tiles = tmp_path / "tiles" / "grid_ctx300" / "cmu.h5"
    ctx_tiles.parent.mkdir(parents=True)
    write_tiles(ctx_tiles, grid_context_windows(read_tiles(cmu_tiles), 300))
    ctx_alone = extract_features(ctx_tiles, tmp_path / "alone.h5", encoder=lite0, batch_size=8,
                                 num_workers=0, device="cpu", progress=False)
    grid_out = tmp_path / "features" / "grid" / "cmu.h5"
    ctx_out = tmp_path / "features" / "grid_ctx300" / "cmu.h5"
    jobs = [(cmu_tiles, grid_out), (ctx_tiles, ctx_out)]

    counts = {"open": 0, "fit": 0, "embed": 0}
    real_get, real_fit, real_embed = (extract_mod.SlideHandle.get, extract_mod.build_normalizer,
                                      extract_mod.embed_batch)

    def counting_get(self):  # the handle tiles are read through: opened on first use
        counts["open"] += self._slide is None
        return real_get(self)

    def counting_fit(*args, **kwargs):
        counts["fit"] += 1
        return real_fit(*args, **kwargs)

    def dying(*args, **kwargs):
        counts["embed"] += 1
        if counts["embed"] == 5:  # grid: 3 batches of 8, 8, 4; killed in grid_ctx300's second
            raise KeyboardInterrupt
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(extract_mod.SlideHandle, "get", counting_get)
    monkeypatch.setattr(extract_mod, "build_normalizer", counting_fit)
    monkeypatch.setattr(extract_mod, "embed_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        extract_mod.extract_tilings(jobs, encoder=lite0, batch_size=8, num_workers=0,
                                    device="cpu", stain_normalize="none", progress=False)
    assert counts["open"] == 1 and counts["fit"] == 1
    assert not grid_out.exists() and not ctx_out.exists()
    assert partial_path(grid_out).exists() and partial_path(ctx_out).exists()

    monkeypatch.setattr(extract_mod, "embed_batch", real_embed)
    results = extract_mod.extract_tilings(jobs, encoder=lite0, batch_size=8, num_workers=0,
                                          device="cpu", progress=False)
    assert [(r.n_tiles, r.n_computed) for r in results] == [(20, 0), (20, 12)]
    assert not partial_path(grid_out).exists() and not partial_path(ctx_out).exists()
    np.testing.assert_array_equal(read_features(grid_out).features, cmu_reference.features)
    np.testing.assert_array_equal(read_features(ctx_out).features,
                                  read_features(ctx_alone.path).features)
    assert read_features(ctx_out).attrs.tiling == "grid_ctx300"


def test_extract_command_tilings_of_two_slides_fail_in_one_line(cmu_tiles, tmp_path):
    """Tiles files of different slides, or a missing --out, are refused before any work."""
    from slide2expr.contracts.tiles import read_tiles

    tiles = read_tiles(cmu_tiles)
    tiles.attrs.slide = str(tmp_path / "another_slide.svs")
    other = tmp_path / "other.h5"
    write_tiles(other, tiles)
    proc = _cli("extract", cmu_tiles, other, "-o", tmp_path / "a.h5", "-o", tmp_path / "b.h5",
                "--no-progress")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "other.h5" in proc.stderr and "one slide per run" in proc.stderr
    proc = _cli("extract", cmu_tiles, other, "-o", tmp_path / "a.h5", "--no-progress")
    assert proc.returncode == 2 and "one --out per tiles file" in proc.stderr
    assert not (tmp_path / "a.h5").exists() and not (tmp_path / "b.h5").exists()


def test_cpu_forward_in_chunks_equals_one_forward(lite0):
    """A CPU batch larger than CPU_FORWARD_CHUNK is embedded chunk by chunk (memory): the
    rows equal those of one forward of the whole batch, in order."""
    gen = torch.Generator().manual_seed(0)
    n = extract_mod.CPU_FORWARD_CHUNK * 2 + 3
    images = torch.randint(0, 256, (n, 224, 224, 3), dtype=torch.uint8, generator=gen)
    dev = torch.device("cpu")
    module = extract_mod.prepare_module(lite0, dev)
    with torch.inference_mode():
        chunked = extract_mod.embed_batch(module, images, lite0, dev, None)
        whole = extract_mod._embed(module, images, lite0, dev, None)
    assert chunked.shape == (n, lite0.embed_dim)
    np.testing.assert_allclose(chunked.numpy(), whole.numpy(), rtol=1e-4, atol=1e-5)
    assert not np.allclose(chunked[0].numpy(), chunked[-1].numpy())  # rows are not one image


def test_partial_file_from_other_inputs_is_discarded(cmu_tiles, cmu_reference, lite0, tmp_path):
    from slide2expr.contracts.tiles import read_tiles

    out = tmp_path / "cmu.h5"
    other = read_tiles(cmu_tiles)
    other.coords = other.coords + 1
    with FeatureWriter(out, other, embed_dim=1280, dtype="float32",
                       attrs={"encoder": lite0.name, "weights": lite0.weights,
                              "input_px": 224}) as writer:
        writer.write(0, np.zeros((8, 1280), np.float32))
    result = extract_features(cmu_tiles, out, encoder=lite0, batch_size=8, num_workers=0,
                              device="cpu", progress=False)
    assert result.n_computed == 20
    np.testing.assert_array_equal(read_features(out).features, cmu_reference.features)


def test_float16_storage_and_reader_workers_on_openslide(cmu_tiles, cmu_reference, lite0,
                                                         tmp_path):
    out = tmp_path / "cmu16.h5"
    extract_features(cmu_tiles, out, encoder=lite0, batch_size=6, num_workers=2,
                     device="cpu", dtype="float16", progress=False)
    half = read_features(out)
    assert half.features.dtype == np.float16 and half.attrs.dtype == "float16"
    ref = cmu_reference.features
    np.testing.assert_allclose(half.features.astype(np.float32), ref, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("workers", [0, 1])
def test_cut_slide_data_fails_with_the_file_named(workers, lite0, tmp_path):
    """A slide whose tile index is intact but whose image data stop short (an interrupted
    copy) opens, tiles at the front decode, and the first broken tile ends the job with an
    InputError naming the file, also when the read happened in a reader process."""
    import tifffile

    rng = np.random.default_rng(0)
    slide = tmp_path / "cut.tiff"
    tifffile.imwrite(slide, rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8),
                     tile=(256, 256), photometric="rgb", compression="jpeg",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # 0.5 um/px
    data = slide.read_bytes()
    slide.write_bytes(data[: int(len(data) * 0.6)])
    xs = np.arange(0, 1024 - 224 + 1, 224)
    gx, gy = np.meshgrid(xs, xs)
    attrs = {"sample_id": "cut", "slide": str(slide), "slide_mpp": 0.5, "mpp_source": "metadata",
             "target_mpp": 0.5, "tile_px": 224, "tile_px_level0": 224.0,
             "level0_width": 1024, "level0_height": 1024, "mode": "grid"}
    tiles = tmp_path / "cut_tiles.h5"
    write_tiles(tiles, TileSet(np.stack([gx.ravel(), gy.ravel()], 1).astype(np.int64), attrs))
    out = tmp_path / "cut.h5"
    with pytest.raises(InputError, match=r"cut\.tiff: cannot decode the image data") as info:
        extract_features(tiles, out, encoder=lite0, batch_size=4, num_workers=workers,
                         device="cpu", progress=False)
    assert "Traceback" not in str(info.value) and "\n" not in str(info.value)
    assert not out.exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slide2expr.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_extract_command(cmu_tiles, cmu_reference, tmp_path):
    out = tmp_path / "features" / "efficientnet_lite0" / "grid" / "cmu.h5"
    # Same thread count as the reference: oneDNN's float sums depend on it.
    proc = _cli("extract", cmu_tiles, "-o", out, "--encoder", "efficientnet_lite0",
                "--num-workers", "0", "--batch-size", "8", "--device", "cpu", "--no-progress",
                "--threads", str(torch.get_num_threads()))
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(read_features(out).features, cmu_reference.features)


def test_extract_command_errors_are_one_line(cmu_tiles, tmp_path):
    proc = _cli("extract", cmu_tiles, "-o", tmp_path / "x.h5", "--encoder", "resnet49")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "unknown encoder 'resnet49'" in proc.stderr and "efficientnet_lite0" in proc.stderr
    bad = tmp_path / "bad.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, bad)
    proc = _cli("extract", cmu_tiles, "-o", tmp_path / "x.h5", "--weights", bad)
    assert proc.returncode == 2 and "pickled Python objects" in proc.stderr
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_path_matches_cpu(cmu_tiles, cmu_reference, lite0, tmp_path):
    out = tmp_path / "cuda.h5"
    result = extract_features(cmu_tiles, out, encoder=lite0, batch_size=8, num_workers=2,
                              device="cuda", progress=False)
    assert result.device.startswith("cuda")
    gpu = read_features(out).features
    ref = cmu_reference.features
    assert gpu.shape == ref.shape and np.isfinite(gpu).all()
    # bf16 autocast: close to the float32 CPU features, not equal.
    r = [np.corrcoef(g, c)[0, 1] for g, c in zip(gpu, ref, strict=True)]
    assert min(r) > 0.98


# -- real signal -----------------------------------------------------------------------------
def _log_cp10k(counts: pd.DataFrame) -> pd.DataFrame:
    return np.log1p(counts.div(counts.sum(axis=1), axis=0) * 1e4)


def _pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    den = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    return np.divide((a * b).sum(0), den, out=np.zeros(a.shape[1]), where=den > 0)


def _ridge_predict(x_train, y_train, x_test, alpha):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), PCA(n_components=64, random_state=0),
                          Ridge(alpha=alpha))
    return model.fit(x_train, y_train).predict(x_test)


def _held_out_r(x: dict, y: dict, test: str, n_best: int = 20, alpha: float = 100.0) -> float:
    """Train on the other sections; pick the n_best genes by inner leave-one-section-out r
    on the training sections only; return their mean Pearson r on the test section."""
    train = [s for s in SECTIONS if s != test]
    inner = np.zeros(next(iter(y.values())).shape[1])
    for val in train:
        fit = [s for s in train if s != val]
        pred = _ridge_predict(np.vstack([x[s] for s in fit]), np.vstack([y[s] for s in fit]),
                              x[val], alpha)
        inner += _pearson_columns(pred, y[val]) / len(train)
    best = np.argsort(-inner)[:n_best]
    pred = _ridge_predict(np.vstack([x[s] for s in train]), np.vstack([y[s] for s in train]),
                          x[test], alpha)
    return float(_pearson_columns(pred[:, best], y[test][:, best]).mean())


@pytest.mark.slow
def test_ridge_on_her2st_features_beats_shuffled(her2st: Path, lite0, tmp_path):
    feats, expr = {}, {}
    for s in SECTIONS:
        tiles = her2st_spot_tiles(her2st, s)
        out = tmp_path / f"{s}.h5"
        extract_features(tiles, out, encoder=lite0, batch_size=32, num_workers=1,
                         device="cpu", progress=False)
        f = read_features(out)
        counts = pd.read_csv(her2st / f"{s}.tsv.gz", sep="\t", index_col=0)
        feats[s], expr[s] = f.features, _log_cp10k(counts).loc[list(f.spot_ids)]
    genes = sorted(set.intersection(*(set(e.columns) for e in expr.values())))
    genes = [g for g in genes if min((expr[s][g] > 0).mean() for s in SECTIONS) > 0.1]
    y = {s: expr[s][genes].to_numpy(np.float64) for s in SECTIONS}
    rng = np.random.default_rng(0)
    shuffled = {s: feats[s][rng.permutation(len(feats[s]))] for s in SECTIONS}
    real = np.array([_held_out_r(feats, y, s) for s in SECTIONS])
    null = np.array([_held_out_r(shuffled, y, s) for s in SECTIONS])
    print(f"held-out mean r over the 20 best genes: real {np.round(real, 3)}, "
          f"shuffled {np.round(null, 3)}")
    assert real.mean() > 0.2
    assert real.mean() - null.mean() > 0.15
    assert (real > null).sum() >= 4


def test_read_ahead_keeps_order_raises_in_the_consumer_and_stops_its_thread():
    """The reader thread hands items over in order, a failure while reading reaches the
    consumer as the same exception, and leaving early stops the thread (no read after)."""
    import threading

    with extract_mod.read_ahead(range(50), 2) as items:
        assert list(items) == list(range(50))

    def failing():
        yield 1
        raise InputError("slide.tiff", "cannot decode", "copy it again")

    with pytest.raises(InputError, match="cannot decode"), \
            extract_mod.read_ahead(failing(), 2) as items:
        assert next(items) == 1
        next(items)

    produced = []

    def counting():
        for i in range(1000):
            produced.append(i)
            yield i

    with extract_mod.read_ahead(counting(), 2) as items:
        assert next(items) == 0
    n_after_exit = len(produced)
    assert n_after_exit <= 5  # the item taken, 2 buffered, at most one being put, one read
    assert not any(t.name == "slide2expr-tile-reader" for t in threading.enumerate())
    assert len(produced) == n_after_exit


def test_layers_encoder_file_records_its_layout_and_ends_with_lite0(cmu_tiles, cmu_reference,
                                                                    tmp_path):
    """Extracting with EfficientNet-Lite0's intermediate stages: the file records the column
    ranges (attr ``feature_layout``) and the same weights as efficientnet_lite0, and its last
    1280 columns are efficientnet_lite0's features of the same tiles, bit for bit."""
    import json

    from slide2expr.extract.encoders.builders import LITE0_LAYER_SPECS

    spec = LITE0_LAYER_SPECS[0]  # efficientnet_lite0_layers
    out = tmp_path / "layers.h5"
    extract_features(cmu_tiles, out, encoder=spec.name, batch_size=8, num_workers=0,
                     device="cpu", progress=False)
    got = read_features(out)
    assert got.features.shape == (20, spec.embed_dim)
    assert json.loads(got.attrs.feature_layout) == [list(part) for part in spec.layout]
    assert got.attrs.weights == cmu_reference.attrs.weights
    assert cmu_reference.attrs.feature_layout is None
    np.testing.assert_array_equal(got.features[:, -1280:], cmu_reference.features)
