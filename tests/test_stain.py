"""Stain normalisation: known answers, bad input, per-slide statistics, the extract record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slide2expr.contracts.features import read_features, stain_record
from slide2expr.contracts.tiles import TileSet, write_tiles
from slide2expr.errors import InputError
from slide2expr.extract import stain
from slide2expr.extract.stain import (
    MacenkoFit,
    StainNormalizer,
    build_normalizer,
    fit_macenko,
    fit_reinhard,
    from_optical_density,
    published_macenko_reference,
    reference_fit,
)
from slide2expr.keys import DEFAULT_ENCODER

HER2ST_MPP = 0.69


def synthetic_he(stains: np.ndarray, max_conc: np.ndarray, *, size: int = 160,
                 seed: int = 0) -> np.ndarray:
    """An RGB image made of H and E at known vectors, whose 99th-percentile concentrations
    are ``max_conc``: a quarter background, pure-H and pure-E pixels, and mixtures."""
    rng = np.random.default_rng(seed)
    n = size * size
    conc = rng.uniform(0.05, 1.0, (n, 2))
    kind = rng.integers(0, 4, n)
    conc[kind == 0] = 0.0            # background
    conc[kind == 1, 1] *= 0.02       # (almost) pure haematoxylin
    conc[kind == 2, 0] *= 0.02       # (almost) pure eosin
    tissue = kind > 0
    conc[tissue] *= max_conc / np.percentile(conc[tissue], 99, axis=0)
    return from_optical_density(conc @ stains).reshape(size, size, 3)


def shifted_stains() -> tuple[np.ndarray, np.ndarray]:
    """Another lab's stains: bluer haematoxylin, pinker eosin, other concentrations."""
    stains = np.array([[0.75, 0.60, 0.28], [0.10, 0.90, 0.42]])
    return stains / np.linalg.norm(stains, axis=1, keepdims=True), np.array([1.3, 1.6])


# -- known answers -----------------------------------------------------------------------------
def test_macenko_maps_a_stain_shifted_image_back_to_the_original():
    ref = published_macenko_reference()
    original = synthetic_he(ref.stains, ref.max_conc)
    src_stains, src_max = shifted_stains()
    shifted = synthetic_he(src_stains, src_max)  # same tissue, same seed, other stains
    fit = fit_macenko(shifted)
    assert np.allclose(fit.stains, src_stains, atol=0.03)  # the slide's own stains, recovered
    restored = StainNormalizer("macenko", ref, fit)(shifted)
    before = np.abs(shifted.astype(int) - original).mean()
    after = np.abs(restored.astype(int) - original).mean()
    assert before > 15
    assert after < 3 and after < before / 8


def test_reinhard_matches_the_reference_statistics():
    ref_img = synthetic_he(*shifted_stains(), seed=1)
    src_img = synthetic_he(published_macenko_reference().stains, np.array([1.0, 0.5]), seed=2)
    ref = fit_reinhard(ref_img)
    out = StainNormalizer("reinhard", ref, fit_reinhard(src_img))(src_img)
    got = fit_reinhard(out)
    assert np.allclose(got.mean, ref.mean, atol=0.03)
    assert np.abs(fit_reinhard(src_img).mean - ref.mean).max() > 0.05  # it did move


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize("value", [255, 0, 128])
def test_uniform_tiles_give_finite_uint8(method, value):
    ref = published_macenko_reference() if method == "macenko" else stain.fixed_reinhard_reference()
    src = (MacenkoFit(stains=np.array([[0.7, 0.7, 0.1], [0.1, 0.1, 0.99]]), max_conc=np.array([1e-3, 1e-3]))
           if method == "macenko" else stain.ReinhardFit(mean=np.zeros(3), std=np.full(3, 1e-4)))
    tile = np.full((32, 32, 3), value, dtype=np.uint8)
    out = StainNormalizer(method, ref, src)(tile)
    assert out.dtype == np.uint8 and out.shape == tile.shape
    if method == "macenko" and value == 255:
        assert out.min() >= 254  # white stays white


def test_optical_density_is_finite_and_clipped():
    od = stain.optical_density(np.array([0, 1, 254, 255], dtype=np.uint8))
    assert np.isfinite(od).all() and od.min() >= 0 and od.max() <= stain.OD_MAX
    assert (from_optical_density(np.array([np.nan, np.inf, -np.inf, 1e9])) >= 0).all()


def test_hed_perturb_identity_and_dihedral_group():
    img = synthetic_he(*shifted_stains(), size=32)
    same = stain.hed_perturb(img, np.ones(3), np.zeros(3))
    assert np.abs(same.astype(int) - img).max() <= 1
    moved = stain.hed_perturb(img, np.array([1.3, 0.7, 1.0]), np.array([0.06, -0.06, 0.0]))
    assert np.abs(moved.astype(int) - img).mean() > 5
    tile = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    views = {stain.dihedral(tile, k).tobytes() + bytes(stain.dihedral(tile, k).shape)
             for k in range(8)}
    assert len(views) == 8  # 8 distinct elements
    assert np.array_equal(stain.dihedral(stain.dihedral(tile, 1), 3), tile)


# -- bad input ---------------------------------------------------------------------------------
def test_a_reference_that_is_not_tissue_is_an_input_error_naming_the_file(tmp_path):
    rng = np.random.default_rng(0)
    glass = np.clip(240 + rng.normal(0, 3, (300, 300, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "blank_reference.png"
    Image.fromarray(glass).save(path)
    with pytest.raises(InputError) as info:
        reference_fit("macenko", path)
    message = info.value.one_line()
    assert str(path) in message and "tissue" in message and "stain_reference" in message
    with pytest.raises(InputError, match="does not exist"):
        reference_fit("reinhard", tmp_path / "missing.png")


def test_a_tissue_reference_is_fitted_and_hashed(tmp_path):
    path = tmp_path / "ref.png"
    Image.fromarray(synthetic_he(*shifted_stains(), size=200)).save(path)
    fit, attrs = reference_fit("macenko", path)
    assert np.allclose(fit.stains, shifted_stains()[0], atol=0.03)
    assert attrs["stain_reference"] == str(path) and len(attrs["stain_reference_sha256"]) == 64


# -- slides and the extract stage --------------------------------------------------------------
def write_slide(path: Path, stains: np.ndarray, max_conc: np.ndarray, *, seed: int) -> Path:
    """A 640 px synthetic H&E 'slide' (PNG) of 16 px blocks of one colour each, so a read
    at low resolution keeps the pure stain colours."""
    img = synthetic_he(stains, max_conc, size=40, seed=seed)
    Image.fromarray(np.repeat(np.repeat(img, 16, axis=0), 16, axis=1)).save(path)
    return path


def write_tiles_for(slide: Path, out: Path, n: int = 6) -> Path:
    coords = np.array([[x, y] for y in range(0, 640, 224) for x in range(0, 416, 224)][:n],
                      dtype=np.int64)
    attrs = {"sample_id": slide.stem, "slide": str(slide), "slide_mpp": 0.5,
             "mpp_source": "sample_sheet", "target_mpp": 0.5, "tile_px": 224,
             "tile_px_level0": 224.0, "level0_width": 640, "level0_height": 640, "mode": "grid"}
    write_tiles(out, TileSet(coords=coords, attrs=attrs))
    return out


def test_a_slides_normalisation_depends_on_that_slide_only(tmp_path):
    ref = published_macenko_reference()
    a = write_slide(tmp_path / "A.png", ref.stains, ref.max_conc, seed=0)
    b = write_slide(tmp_path / "B.png", *shifted_stains(), seed=5)
    norm_a, attrs_a = build_normalizer("macenko", a, slide_mpp=0.5)
    _, attrs_b = build_normalizer("macenko", b, slide_mpp=0.5)
    assert attrs_a.stain_status == attrs_b.stain_status == "normalised"
    assert attrs_a.stain_fit != attrs_b.stain_fit
    # B's stains are recovered from B alone, A's from A alone
    assert np.allclose(json.loads(attrs_b.stain_fit)["stains"], shifted_stains()[0], atol=0.03)
    assert np.allclose(json.loads(attrs_a.stain_fit)["stains"], ref.stains, atol=0.03)
    # A held-out slide changing (B restained) changes nothing about A's normalisation
    write_slide(b, np.array([[0.3, 0.9, 0.3], [0.6, 0.2, 0.77]]), np.array([2.5, 0.4]), seed=9)
    again_a, again_attrs = build_normalizer("macenko", a, slide_mpp=0.5)
    assert again_attrs == attrs_a
    tile = np.asarray(Image.open(a))[:224, :224]
    assert np.array_equal(again_a(tile), norm_a(tile))


def test_a_slide_without_tissue_falls_back_to_no_normalisation(tmp_path, caplog):
    from slide2expr.extract.encoders import get_encoder
    from slide2expr.extract.run import extract_features

    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((640, 640, 3), 245, dtype=np.uint8)).save(blank)
    tiles = write_tiles_for(blank, tmp_path / "blank_tiles.h5", n=2)
    with caplog.at_level("WARNING"):
        result = extract_features(tiles, tmp_path / "f.h5", encoder=get_encoder("efficientnet_lite0"),
                                  device="cpu", num_workers=0, progress=False,
                                  stain_normalize="macenko")
    fs = read_features(result.path)
    assert np.isfinite(fs.features).all()
    rec = stain_record(fs.attrs)
    assert rec["stain_normalize"] == "macenko" and rec["stain_status"].startswith("not normalised")
    assert "stain_fit" not in rec
    assert any("without stain normalisation" in r.message for r in caplog.records)


def run_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slide2expr.cli", *map(str, args)],
                          capture_output=True, text=True)


def test_extract_cli_records_the_stain_normalisation(her2st, tmp_path):
    from slide2expr.contracts.tiles import read_tiles
    from slide2expr.inputs.slides import open_slide
    from slide2expr.inputs.spots import read_spot_positions
    from slide2expr.repro.manifest import feature_compute
    from slide2expr.tile.grid import TilingParams, spot_tiles

    with open_slide(her2st / "C3_HE.jpg", sheet_mpp=HER2ST_MPP) as slide:
        table = read_spot_positions(her2st / "C3_selection.tsv", counts_path=her2st / "C3.tsv.gz")
        spots = spot_tiles(slide, table, "C3", TilingParams(), source="C3")
    keep = np.arange(8)
    tiles_path = tmp_path / "tiles.h5"
    write_tiles(tiles_path, TileSet(coords=spots.coords[keep], attrs=spots.attrs.to_attrs(),
                                    spot_ids=spots.spot_ids[keep]))
    results = tmp_path / "results"
    raw = results / "features" / DEFAULT_ENCODER / "spots" / "C2.h5"
    norm = results / "features" / DEFAULT_ENCODER / "spots" / "C3.h5"
    assert run_cli("extract", tiles_path, "-o", raw, "--threads", 1, "--no-progress").returncode == 0
    done = run_cli("extract", tiles_path, "-o", norm, "--threads", 1, "--no-progress",
                   "--config-json", json.dumps({"extract": {"stain_normalize": "macenko"}}))
    assert done.returncode == 0, done.stderr
    record = stain_record(read_features(norm).attrs)
    assert record["stain_normalize"] == "macenko" and record["stain_reference"] == "published"
    fit = record["stain_fit"]
    assert np.asarray(fit["stains"]).shape == (2, 3) and record["stain_status"] == "normalised"
    assert record["stain_reference_fit"]["max_conc"] == [1.9705, 1.0308]
    a, b = read_features(raw), read_features(norm)
    assert np.isfinite(b.features).all() and not np.allclose(a.features, b.features)
    assert stain_record(a.attrs)["stain_normalize"] == "none"
    assert len(read_tiles(tiles_path)) == 8
    manifest = feature_compute(results)[DEFAULT_ENCODER]["stain"]
    assert manifest["method"] == ["macenko", "none"]
    assert manifest["slides"]["spots/C3"]["fit"] == fit
    # a reference that is not tissue: one line naming the file, status 2, no output
    blank = tmp_path / "glass.png"
    Image.fromarray(np.full((200, 200, 3), 242, dtype=np.uint8)).save(blank)
    bad = run_cli("extract", tiles_path, "-o", tmp_path / "bad.h5", "--no-progress",
                  "--stain-normalize", "reinhard", "--stain-reference", blank)
    assert bad.returncode == 2 and str(blank) in bad.stderr
    assert not (tmp_path / "bad.h5").exists()
