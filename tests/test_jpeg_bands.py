"""A restart-marked JPEG is read by bands of rows: the same pixels as a whole decode, and
never the whole image in memory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slide2expr.inputs.slides import open_slide
from slide2expr.inputs.slides.jpeg_bands import JpegBands, restart_layout


def _image(height: int = 700, width: int = 530) -> np.ndarray:
    """Gradients and noise: chroma that changes from row to row (upsampling shows)."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([(xs * 255 // (width - 1)), (ys * 255 // (height - 1)),
                     rng.integers(0, 255, xs.shape)], axis=-1).astype(np.uint8)


def _save(tmp_path: Path, name: str, **options: object) -> Path:
    path = tmp_path / name
    Image.fromarray(_image()).save(path, format="JPEG", quality=90, **options)
    return path


def _pil_pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("subsampling", [0, 2])  # 4:4:4 (8-row MCUs), 4:2:0 (16-row MCUs)
def test_regions_of_a_restart_marked_jpeg_equal_a_whole_decode_and_stay_in_a_bounded_cache(
        subsampling: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every region (band edges, image edges, outside the image) equals the whole decode
    cut; the slide never holds the whole decoded image, only up to the cache's budget."""
    path = _save(tmp_path, "rst.jpg", restart_marker_rows=1, subsampling=subsampling)
    expected = _pil_pixels(path)
    monkeypatch.setattr("slide2expr.inputs.slides.jpeg_bands.BAND_ROWS", 64)
    band_bytes = 64 * 530 * 3
    with open_slide(path, sheet_mpp=0.5) as slide:
        bands = slide.banded()
        assert bands is not None
        bands.cache_bytes = 3 * band_bytes
        padded = np.full((900, 730, 3), 255, dtype=np.uint8)
        padded[100:800, 100:630] = expected
        for y in range(-40, 700, 37):
            for x in (-30, 0, 201, 480):
                region = slide.read_region((x, y), 0, (90, 75))
                np.testing.assert_array_equal(region, padded[y + 100:y + 175, x + 100:x + 190])
                assert bands.cached_bytes <= 3 * band_bytes
        whole = slide.read_region((0, 0), 0, (530, 700))  # more than the budget: all bands
        np.testing.assert_array_equal(whole, expected)
        assert slide._full is None
        assert bands.cached_bytes <= 3 * band_bytes
        assert bands.decoded < 700 // 64 * 3  # read in row order: a band decoded ~once a sweep


def test_a_forked_reader_adopts_the_bands_not_a_decoded_image(tmp_path: Path) -> None:
    """preload + adopt (DataLoader reader processes) share the compressed bytes and layout;
    nothing is decoded whole."""
    path = _save(tmp_path, "rst.jpg", restart_marker_rows=1)
    with open_slide(path, sheet_mpp=0.5) as parent, open_slide(path, sheet_mpp=0.5) as child:
        parent.preload()
        child.adopt(parent)
        assert child.banded() is parent.banded() is not None
        np.testing.assert_array_equal(child.read_region((10, 20), 0, (30, 40)),
                                      _pil_pixels(path)[20:60, 10:40])
        assert parent._full is None and child._full is None


@pytest.mark.parametrize("options", [
    {},  # no restart markers
    {"restart_marker_blocks": 7},  # intervals that start inside a row of MCUs
    {"restart_marker_rows": 1, "progressive": True},
])
def test_jpegs_that_cannot_be_cut_by_rows_are_decoded_whole(options: dict,
                                                            tmp_path: Path) -> None:
    path = _save(tmp_path, "plain.jpg", **options)
    assert restart_layout(path.read_bytes()) is None
    with open_slide(path, sheet_mpp=0.5) as slide:
        assert slide.banded() is None
        np.testing.assert_array_equal(slide.read_region((5, 7), 0, (20, 10)),
                                      _pil_pixels(path)[7:17, 5:25])
        assert slide._full is not None


def test_a_truncated_restart_marked_jpeg_is_not_cut_by_rows(tmp_path: Path) -> None:
    """A file cut short loses restart intervals: no layout (the whole decode reports it)."""
    path = _save(tmp_path, "rst.jpg", restart_marker_rows=1)
    data = path.read_bytes()
    assert restart_layout(data) is not None
    assert restart_layout(data[:len(data) // 2] + b"\xff\xd9") is None
    assert JpegBands.open(path) is not None


def test_a_batch_of_tiles_in_random_order_decodes_each_band_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The extract reader reads a batch top to bottom (spots come in barcode order): each
    band is decoded at most once for the batch even with a one-band cache, and every row of
    the batch holds its own tile."""
    from slide2expr.extract.run import SlideHandle, TileRegionDataset

    path = _save(tmp_path, "rst.jpg", restart_marker_rows=1)
    monkeypatch.setattr("slide2expr.inputs.slides.jpeg_bands.BAND_ROWS", 64)
    rng = np.random.default_rng(3)
    coords = np.stack([rng.integers(0, 480, 40), rng.integers(0, 650, 40)], axis=1)
    handle = SlideHandle(path, 0.5)
    dataset = TileRegionDataset(path, coords, tile_px_level0=40, out_px=40, slide_mpp=0.5,
                                handle=handle)
    bands = handle.get().banded()
    assert bands is not None
    bands.cache_bytes = 2 * 64 * 530 * 3  # two bands: a 40 px tile spans at most two
    start, batch = dataset[0, 40]
    n_bands = -(-700 // 64)
    assert start == 0 and bands.decoded <= n_bands
    expected = _pil_pixels(path)
    for row, (x, y) in enumerate(coords):
        np.testing.assert_array_equal(batch[row].numpy(), expected[y:y + 40, x:x + 40])
