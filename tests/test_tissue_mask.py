"""The tissue mask: its source (smallest sufficient level or thumbnail), the OpenCV
morphology against scipy.ndimage's, and independence of level-0 size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from slide2expr.inputs.slides import open_slide
from slide2expr.tile.grid import TilingParams, compute_tissue, grid_tiles
from slide2expr.tile.tissue import (
    TissueParams,
    _closing,
    _disk,
    _fill_small_holes,
    _remove_small_objects,
)


def _scipy_reference(mask: np.ndarray, radius: int, max_hole: int, min_obj: int) -> np.ndarray:
    """The previous implementation, in scipy.ndimage, step by step."""
    mask = ndimage.binary_closing(mask, structure=_disk(radius), border_value=0)
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, _ = ndimage.label(holes)
    fill = np.bincount(labels.ravel()) <= max_hole
    fill[0] = False
    mask = mask | fill[labels]
    labels, _ = ndimage.label(mask)
    keep = np.bincount(labels.ravel()) >= min_obj
    keep[0] = False
    return keep[labels]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_morphology_equals_scipy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Blobs with holes, specks and tissue touching the border: every rule is exercised.
    noise = ndimage.gaussian_filter(rng.random((300, 260)), 4)
    mask = noise > np.quantile(noise, 0.55)
    mask |= rng.random(mask.shape) > 0.995
    mask[:, :3] = True
    for radius, max_hole, min_obj in [(1, 20, 5), (4, 300, 200), (7, 50, 1000)]:
        ours = _remove_small_objects(_fill_small_holes(_closing(mask.astype(np.uint8), radius),
                                                       max_hole), min_obj)
        ref = _scipy_reference(mask, radius, max_hole, min_obj)
        assert ours.dtype == bool
        assert 0.05 < ref.mean() < 0.95
        np.testing.assert_array_equal(ours, ref)


def _blob_image(h: int, w: int) -> np.ndarray:
    """White glass with two pink-purple ellipses (H&E-like), as uint8 RGB."""
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    img = np.full((h, w, 3), 240, np.uint8)
    inside = ((xx - 0.3) / 0.2) ** 2 + ((yy - 0.4) / 0.25) ** 2 < 1
    inside |= ((xx - 0.72) / 0.15) ** 2 + ((yy - 0.65) / 0.2) ** 2 < 1
    img[inside] = (200, 110, 170)
    return img


def _pyramid(path: Path, level0: np.ndarray, mpp: float, levels: int) -> None:
    """A tiled JPEG BigTIFF pyramid, levels 2x apart, with resolution tags."""
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        img = level0
        for k in range(levels):
            res = 1e4 / (mpp * 2 ** k)
            tif.write(img, photometric="rgb", tile=(256, 256), compression="jpeg",
                      resolution=(res, res), resolutionunit="CENTIMETER",
                      subfiletype=0 if k == 0 else 1)
            img = img[::2, ::2]


def test_mask_from_smallest_sufficient_level_same_tiles_at_any_level0_size(tmp_path: Path) -> None:
    """The same tissue scanned at 0.5 and at 0.25 um/px: the mask comes from the level
    closest to 4 um/px without going more than 1.5x coarser, is the same size, and the
    grid tiles are the same physical places."""
    base = _blob_image(96, 120)  # 8 um/px, 0.8 x 1 mm
    p20, p40 = tmp_path / "x20.tiff", tmp_path / "x40.tiff"
    _pyramid(p20, np.repeat(np.repeat(base, 16, 0), 16, 1), 0.5, 4)   # 1536 x 1920
    _pyramid(p40, np.repeat(np.repeat(base, 32, 0), 32, 1), 0.25, 5)  # 3072 x 3840
    params = TilingParams(tissue=TissueParams(mask_mpp=4.0))  # the levels below are 4 um/px
    out = {}
    for name, path in (("x20", p20), ("x40", p40)):
        with open_slide(path) as slide:
            tissue = compute_tissue(slide, params.tissue)
            grid = grid_tiles(slide, tissue, name, params)
        out[name] = (tissue, grid)
    (t20, g20), (t40, g40) = out["x20"], out["x40"]
    # 4 um/px asked: levels at 4 (x20 level 3) and 4 (x40 level 4) exist.
    assert t20.source == "level 3" and t40.source == "level 4"
    assert t20.mask.shape == t40.mask.shape == (192, 240)
    assert g20.attrs.tissue_mask_source == "level 3"
    assert g20.attrs.tissue_mask_mpp == pytest.approx(4.0)
    np.testing.assert_array_equal(t20.mask, t40.mask)
    np.testing.assert_array_equal(g20.coords * 2, g40.coords)
    assert 5 < len(g20.coords) < 48 * 0.8


def test_mask_coarser_level_or_reduced_finer_level(tmp_path: Path) -> None:
    """A level up to 1.5x coarser than asked is taken as it is; without one, the coarsest
    finer level is box-reduced by the integer factor nearest to the request."""
    level0 = np.repeat(np.repeat(_blob_image(64, 80), 16, 0), 16, 1)  # 1024 x 1280
    six, two = tmp_path / "six.tiff", tmp_path / "two.tiff"
    _pyramid(six, level0, 0.345, 6)  # 0.345, 0.69, 1.38, 2.76, 5.52, 11.04 um/px
    _pyramid(two, level0, 0.345, 2)  # 0.345, 0.69 um/px
    with open_slide(six) as slide:
        coarse = slide.read_for_mask(4.0)  # 5.52 <= 1.5 x 4: level 4 as it is
        finer = slide.read_for_mask(3.0)   # 5.52 > 4.5: level 3 (2.76), nearest factor 1
    with open_slide(two) as slide:
        reduced = slide.read_for_mask(4.0)  # level 1 (0.69) reduced round(5.8) = 6x
    assert coarse.source == "level 4" and coarse.downsample == pytest.approx(16)
    assert coarse.image.shape == (64, 80, 3)
    assert finer.source == "level 3" and finer.downsample == pytest.approx(8)
    assert reduced.source == "level 1, reduced 6x"
    assert reduced.image.shape == (86, 107, 3)  # ceil(512 / 6), ceil(640 / 6)
    assert reduced.downsample == pytest.approx(1280 / 107)
    # Box reduction keeps the picture: tissue pixels stay pink, glass stays white.
    assert reduced.image[43, 30].tolist() == pytest.approx([200, 110, 170], abs=12)
    assert reduced.image[2, 2].min() > 230


def test_svs_mask_from_its_thumbnail(slides_dir: Path) -> None:
    """Aperio's stored thumbnail (574 x 768 for 2220 x 2967) replaces decoding level 0."""
    with open_slide(slides_dir / "cmu-1-small-region.svs") as slide:
        low = slide.read_for_mask(4.0)
        full, _ = slide.thumbnail_by_downsample(low.downsample)  # level 0, resized
    assert low.source == "thumbnail, reduced 2x"
    assert low.image.shape[:2] == full.shape[:2]
    # The thumbnail shows the same picture as level 0 (JPEG and resampling differences only).
    assert np.abs(low.image.astype(int) - full.astype(int)).mean() < 8
