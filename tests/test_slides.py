"""Slide reading on real files: backends, mpp policy, level choice, bad files."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slide2expr.errors import InputError
from slide2expr.inputs.slides import open_slide, resolve_mpp


def test_svs_mpp_from_metadata(slides_dir: Path) -> None:
    with open_slide(slides_dir / "cmu-1-small-region.svs") as slide:
        assert slide.backend == "openslide"
        assert slide.mpp == pytest.approx(0.499, abs=1e-3)
        assert slide.mpp_source == "metadata"
        assert slide.dimensions == (2220, 2967)


def test_generic_tiff_and_dicom_open(slides_dir: Path) -> None:
    with open_slide(slides_dir / "boxes.tiff", sheet_mpp=0.25) as slide:
        assert slide.level_count == 4
        assert slide.mpp_source == "sample_sheet"
        region = slide.read_region_mpp(0, 0, 300, 250, (150, 125))
        assert region.shape == (125, 150, 3)
        assert region.std() > 1  # real content, not a blank fill
    with open_slide(slides_dir / "boxes_0.dcm", require_mpp=False) as slide:
        assert slide.backend == "openslide"
        assert slide.dimensions[0] > 0


def test_thumbnail_uses_smallest_sufficient_level(slides_dir: Path) -> None:
    with open_slide(slides_dir / "boxes.tiff", sheet_mpp=0.25) as slide:
        # 4x downsample: level 2 (4.016x) is within tolerance, level 3 (8x) is too coarse.
        assert slide.best_level_for_downsample(4.0) == 2
        assert slide.best_level_for_downsample(7.9) == 2
        assert slide.best_level_for_downsample(1.5) == 0
        reads: list[int] = []
        original = slide._read_level
        slide._read_level = lambda level, *a: reads.append(level) or original(level, *a)  # type: ignore[method-assign]
        slide.thumbnail(30)  # 10x: level 3 (8.09x) is the smallest level fine enough
        assert reads == [3], "a thumbnail must not decode a larger level than needed"


def test_unopenable_and_truncated(slides_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"unopenable\.tiff.*cannot be read as a slide"):
        open_slide(slides_dir / "unopenable.tiff")
    truncated = tmp_path / "truncated.svs"
    data = (slides_dir / "cmu-1-small-region.svs").read_bytes()
    truncated.write_bytes(data[: len(data) // 50])
    with pytest.raises(InputError, match=r"truncated\.svs"):
        with open_slide(truncated) as slide:
            slide.thumbnail(256)
    with pytest.raises(InputError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")


def test_mpp_policy() -> None:
    p = Path("x.tiff")
    assert resolve_mpp(p, 0.25, sheet_mpp=0.5).source == "metadata"
    assert resolve_mpp(p, None, sheet_mpp=0.5, default_mpp=1.0).mpp == 0.5
    choice = resolve_mpp(p, None, sheet_mpp=None, default_mpp=1.0)
    assert (choice.mpp, choice.source) == (1.0, "config_default")
    with pytest.raises(InputError, match=r"x\.tiff.*no resolution.*mpp"):
        resolve_mpp(p, None)


def write_pyramid(image: np.ndarray, path: Path, mpp: float, levels: int = 4) -> None:
    """A tiled, JPEG-compressed multi-level TIFF with a resolution tag, as scanners write."""
    import tifffile

    with tifffile.TiffWriter(path) as tif:
        level = image
        for i in range(levels):
            tif.write(level, tile=(256, 256), compression="jpeg", photometric="rgb",
                      subfiletype=0 if i == 0 else 1,
                      resolution=(1e4 / (mpp * 2 ** i),) * 2, resolutionunit="CENTIMETER")
            level = np.asarray(Image.fromarray(level).reduce(2))


def test_pyramid_from_her2st_reads_right_level(her2st: Path, tmp_path: Path) -> None:
    """A region at 0.5 um/px read from a real pyramid matches the same region of the JPEG."""
    with Image.open(her2st / "C3_HE.jpg") as im:
        crop = np.asarray(im.convert("RGB").crop((4000, 4000, 6048, 6048)))
    # Pretend the scan is 0.25 um/px: then 0.5 um/px lives on level 1 (2x).
    pyramid = tmp_path / "c3.tiff"
    write_pyramid(crop, pyramid, mpp=0.25)
    with open_slide(pyramid) as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert slide.level_count == 4
        levels_read: list[int] = []
        original = slide._read_level
        slide._read_level = lambda level, *a: levels_read.append(level) or original(level, *a)  # type: ignore[method-assign]
        x0, y0, size0 = 512, 768, 448  # level-0 box; at 0.5 um/px it is 224 px
        region = slide.read_region_mpp(x0, y0, size0, size0, (224, 224))
        assert levels_read == [1]
    with open_slide(her2st / "C3_HE.jpg", sheet_mpp=0.25) as jpeg:
        reference = jpeg.read_region_mpp(4000 + x0, 4000 + y0, size0, size0, (224, 224))
    diff = np.abs(region.astype(float) - reference.astype(float)).mean()
    assert diff < 12, f"pyramid read differs from the JPEG by {diff:.1f} grey levels"
    # And it is not trivially equal to some other region.
    other = np.asarray(Image.fromarray(crop).crop((0, 0, 448, 448)).resize((224, 224)))
    assert np.abs(region.astype(float) - other.astype(float)).mean() > 2 * diff


def test_tifffile_backend_when_openslide_refuses(tmp_path: Path) -> None:
    """A single-strip (untiled) RGB TIFF is refused by OpenSlide; tifffile reads it."""
    import tifffile

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(300, 400, 3), dtype=np.uint8)
    path = tmp_path / "strip.tiff"
    tifffile.imwrite(path, image, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    with open_slide(path) as slide:
        assert slide.backend in {"tifffile", "openslide"}
        assert slide.mpp == pytest.approx(0.5)
        region = slide.read_region_mpp(10, 20, 50, 40, (50, 40))
        np.testing.assert_array_equal(region, image[20:60, 10:60])


def test_copy_is_not_needed(slides_dir: Path, tmp_path: Path) -> None:
    """Opening never writes next to the slide (read-only data directories)."""
    before = sorted(p.name for p in slides_dir.iterdir())
    with open_slide(slides_dir / "cmu-1-small-region.svs") as slide:
        slide.thumbnail(128)
    assert sorted(p.name for p in slides_dir.iterdir()) == before
    assert shutil.which("slide2expr") is not None


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_plain_image_decoded_once_into_the_pixels_pil_reads(fmt: str, tmp_path: Path) -> None:
    """A plain JPEG (imagecodecs, straight into one array) and PNG (PIL, copied in bands)
    give the pixels PIL's own decoder gives, and a region read cuts them unchanged; a
    handle that adopts the decoded pixels (a forked reader) shares the same array."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:700, 0:530]
    image = np.stack([(xs * 255 // 529), (ys * 255 // 699), rng.integers(0, 255, xs.shape)],
                     axis=-1).astype(np.uint8)
    path = tmp_path / f"plain.{fmt.lower()}"
    Image.fromarray(image).save(path, format=fmt)
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB"))
    with open_slide(path, sheet_mpp=0.5) as slide:
        assert slide.backend == "pil"
        slide.preload()
        np.testing.assert_array_equal(slide._decoded(), expected)
        region = slide.read_region((100, 300), 0, (64, 32))
        np.testing.assert_array_equal(region, expected[300:332, 100:164])
        with open_slide(path, sheet_mpp=0.5) as child:
            child.adopt(slide)
            assert child._decoded() is slide._decoded()
