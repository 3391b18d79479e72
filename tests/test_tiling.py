"""The tile stage on real slides, through the CLI, including every bad input it must refuse."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from slide2expr.contracts.tiles import read_tiles
from slide2expr.inputs.slides import open_slide
from slide2expr.tile.grid import TilingParams, compute_tissue
from slide2expr.tile.tissue import tissue_fraction_grid


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["slide2expr", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_svs_tiles_only_on_tissue(slides_dir: Path, tmp_path: Path) -> None:
    slide_path = slides_dir / "cmu-1-small-region.svs"
    out, qc = tmp_path / "cmu1.h5", tmp_path / "cmu1.png"
    result = run_cli("tile", slide_path, "--sample-id", "cmu1", "-o", out, "--qc", qc)
    assert result.returncode == 0, result.stderr
    tiles = read_tiles(out)
    assert tiles.attrs.mode == "grid"
    assert tiles.attrs.slide_mpp == pytest.approx(0.499, abs=1e-3)
    assert tiles.attrs.mpp_source == "metadata"
    assert tiles.attrs.target_mpp == 0.5
    assert tiles.attrs.tissue_mask_source == "thumbnail, reduced 4x"  # Aperio's thumbnail
    assert tiles.attrs.tissue_mask_mpp == pytest.approx(7.69, abs=0.01)
    assert tiles.tile_px_level0 == pytest.approx(224 * 0.5 / 0.499, rel=1e-6)
    # Recompute the mask independently and check every tile against it, and the converse.
    params = TilingParams()
    with open_slide(slide_path) as slide:
        tissue = compute_tissue(slide, params.tissue)
    size0 = tiles.tile_px_level0
    frac = tissue_fraction_grid(tissue.mask, tissue.downsample, tiles.coords[:, 0].astype(float),
                                tiles.coords[:, 1].astype(float), size0)
    assert len(tiles) > 10
    assert (frac >= params.min_tissue - 0.02).all(), "a tile lies on background"
    # Every grid cell with enough tissue was kept.
    xs = np.arange(0, 2220 - size0 + 1e-6, size0)
    ys = np.arange(0, 2967 - size0 + 1e-6, size0)
    gx, gy = (a.ravel() for a in np.meshgrid(xs, ys))
    all_frac = tissue_fraction_grid(tissue.mask, tissue.downsample, gx, gy, size0)
    assert (all_frac >= params.min_tissue).sum() == len(tiles)
    # The mask is not trivial: the slide is partly tissue, partly glass.
    assert 0.1 < tissue.mask.mean() < 0.9
    assert (tiles.coords[:, 0] + size0 <= 2220 + 1).all()
    assert qc.stat().st_size > 10_000


def test_her2st_spot_patches(her2st: Path, tmp_path: Path) -> None:
    grid, spots_out = tmp_path / "C4.h5", tmp_path / "C4.spots.h5"
    result = run_cli("tile", her2st / "C4_HE.jpg", "--sample-id", "C4", "-o", grid,
                     "--mpp", "0.69", "--spots", her2st / "C4_selection.tsv",
                     "--counts", her2st / "C4.tsv.gz", "--spots-out", spots_out)
    assert result.returncode == 0, result.stderr
    spots = read_tiles(spots_out)
    counts_ids = pd.read_csv(her2st / "C4.tsv.gz", sep="\t", index_col=0, usecols=[0]).index
    assert len(spots) == len(counts_ids)
    assert set(spots.spot_ids) == set(counts_ids)
    assert spots.attrs.mpp_source == "sample_sheet"
    assert spots.attrs.slide_mpp == 0.69
    size0 = 112 / 0.69
    assert spots.tile_px_level0 == pytest.approx(size0)
    sel = pd.read_csv(her2st / "C4_selection.tsv", sep="\t")
    sel.index = sel["x"].astype(str) + "x" + sel["y"].astype(str)
    centres = sel.loc[spots.spot_ids, ["pixel_x", "pixel_y"]].to_numpy()
    np.testing.assert_allclose(spots.coords + size0 / 2, centres, atol=1.0)
    assert read_tiles(grid).attrs.mode == "grid"


def _white_slide(path: Path) -> None:
    tifffile.imwrite(path, np.full((1024, 1024, 3), 245, np.uint8), tile=(256, 256),
                     photometric="rgb", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")


def _cut_image_data(path: Path) -> None:
    """A tiled JPEG TIFF whose header and tile index are intact but whose tile data stop
    short, as after an interrupted copy: it opens, and fails when its pixels are decoded."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", compression="jpeg",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


@pytest.mark.parametrize("case", ["unopenable", "truncated", "cut_data", "cut_jpeg", "no_tissue",
                                  "no_mpp", "unsafe_id", "missing"])
def test_bad_input_one_line_error_no_output(case: str, slides_dir: Path, tmp_path: Path) -> None:
    args: list[str | Path]
    args_mpp: list[str] = []
    sample = "s1"
    if case == "unopenable":
        slide, expect = slides_dir / "unopenable.tiff", "cannot be read"
    elif case == "truncated":
        slide = tmp_path / "cut.svs"
        data = (slides_dir / "cmu-1-small-region.svs").read_bytes()
        slide.write_bytes(data[:20000])
        expect = "cut.svs"
    elif case == "cut_data":
        slide, expect = tmp_path / "cut.tiff", "cannot decode the image data"
        _cut_image_data(slide)
    elif case == "cut_jpeg":  # a plain H&E image (her2st style) cut short: PIL backend
        slide, expect = tmp_path / "cut.jpg", "cannot decode the image data"
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(slide)
        slide.write_bytes(slide.read_bytes()[: slide.stat().st_size // 2])
        args_mpp = ["--mpp", "0.5"]
    elif case == "no_tissue":
        slide, expect = tmp_path / "white.tiff", "no tissue"
        _white_slide(slide)
    elif case == "no_mpp":
        slide, expect = slides_dir / "boxes.tiff", "mpp"
    elif case == "unsafe_id":
        slide, expect, sample = slides_dir / "cmu-1-small-region.svs", "not allowed", "../x"
    else:
        slide, expect = tmp_path / "nowhere.svs", "does not exist"
    out, qc = tmp_path / "out" / "t.h5", tmp_path / "out" / "t.png"
    args = ["tile", slide, "--sample-id", sample, "-o", out, "--qc", qc, *args_mpp]
    result = run_cli(*args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert expect in lines[0] and "Fix:" in lines[0]
    assert "Traceback" not in result.stderr
    leftovers = list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else []
    assert leftovers == []


@pytest.mark.parametrize("problem", ["duplicate", "unsafe", "missing_slide"])
def test_sample_sheet_errors(problem: str, slides_dir: Path, tmp_path: Path) -> None:
    from slide2expr.errors import InputError
    from slide2expr.inputs.samples import read_sample_sheet

    svs = slides_dir / "cmu-1-small-region.svs"
    rows = {"duplicate": [("a", svs), ("a", svs)], "unsafe": [("../x", svs)],
            "missing_slide": [("a", tmp_path / "gone.svs")]}[problem]
    sheet = tmp_path / "samples.tsv"
    pd.DataFrame(rows, columns=["sample_id", "slide"]).to_csv(sheet, sep="\t", index=False)
    expect = {"duplicate": "duplicate sample_id", "unsafe": "not allowed",
              "missing_slide": "gone.svs"}[problem]
    with pytest.raises(InputError, match=expect) as info:
        read_sample_sheet(sheet, mode="bulk")
    assert str(sheet) in str(info.value)
