"""Space Ranger outputs as inputs: a slide from ``outs/`` without the full-resolution image
(the shared real Visium fixture), and Visium HD bins (a layout built here from 10x's
documented format) grouped into patch-size spots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import sparse

from slide2expr.inputs.expression import read_spot_counts
from slide2expr.inputs.slides import SpaceRangerImageSlide, open_slide
from slide2expr.inputs.spaceranger import fullres_mpp, read_scalefactors_file
from slide2expr.inputs.spots import read_spot_positions
from slide2expr.testing import make_features

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def visium(test_data: Path) -> Path:
    path = test_data / "visium"
    if not (path / "spatial" / "scalefactors_json.json").is_file():
        pytest.skip(f"no Visium fixture at {path}")
    return path


def cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slide2expr", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd or REPO)


# -- standard Visium, no full-resolution image -----------------------------------------------

def test_fullres_mpp_comes_from_the_spot_pitch(visium: Path) -> None:
    """Neighbouring spots are 100 um apart: 138.0 px in the fixture, so 0.725 um/px; Space
    Ranger's spot_diameter_fullres (89.43 px) is then 64.8 um, its nominal 65 um spot."""
    factors = read_scalefactors_file(visium / "spatial")
    mpp, how = fullres_mpp(visium / "spatial", factors)
    positions = pd.read_csv(visium / "spatial" / "tissue_positions_list.csv", header=None)
    same_row = positions.sort_values([2, 3]).groupby(2)
    gaps = [np.hypot(*np.diff(g[[5, 4]].to_numpy(float), axis=0)[i])
            for _, g in same_row for i in np.flatnonzero(np.diff(g[3].to_numpy()) == 2)]
    assert mpp == pytest.approx(100 / np.median(gaps))
    assert "pitch" in how
    assert factors["spot_diameter_fullres"] * mpp == pytest.approx(65, abs=0.5)


@pytest.mark.parametrize("slide_path", ["", "spatial", "spatial/tissue_lowres_image.png"])
def test_the_outs_image_is_read_in_full_resolution_pixels(visium: Path, slide_path: str) -> None:
    """Reading level 0 at a spot's full-resolution centre gives the image's pixel at
    centre * scalef: the scale factor is applied, positions are used as Space Ranger wrote
    them. (The fixture's hires PNG is blank, so the lowres one stands in.)"""
    factors = read_scalefactors_file(visium / "spatial")
    lowres = np.asarray(Image.open(visium / "spatial" / "tissue_lowres_image.png").convert("RGB"))
    spots = read_spot_positions(visium, counts_path=visium)
    with open_slide(visium / slide_path) as slide:
        assert isinstance(slide, SpaceRangerImageSlide)
        assert slide.mpp_source == "spaceranger"
        s = factors["tissue_lowres_scalef"]
        assert slide.dimensions == (round(600 / s), round(600 / s))
        assert slide.provenance_attrs()["spaceranger_image_mpp"] == pytest.approx(slide.mpp / s)
        for x, y in spots[["x", "y"]].to_numpy()[:10]:
            got = slide.read_region_mpp(x - 1, y - 1, 2, 2, (1, 1))[0, 0].astype(int)
            want = lowres[int(y * s), int(x * s)].astype(int)
            assert np.abs(got - want).max() <= 40


def test_tile_from_an_outs_folder_records_the_resolution_and_its_limits(visium: Path,
                                                                         tmp_path: Path) -> None:
    """Before: the PNG as the slide put every spot off the tissue or outside the slide. Now:
    100 of 100 spots get patches, the derived resolution is recorded, the limit is said."""
    from slide2expr.contracts.tiles import read_tiles

    proc = cli("tile", visium, "--sample-id", "v", "--out", tmp_path / "grid.h5", "--spots",
               visium, "--counts", visium, "--spots-out", tmp_path / "spots.h5")
    assert proc.returncode == 0, proc.stderr
    assert "a 112 um patch holds 7 x 7 image px" in proc.stderr
    spots = read_tiles(tmp_path / "spots.h5")
    assert len(spots.spot_ids) == 100
    assert spots.attrs.mpp_source == "spaceranger"
    assert spots.attrs.slide_mpp == pytest.approx(0.7246, abs=1e-3)
    assert spots.attrs.extra["spaceranger_image_mpp"] == pytest.approx(16.1, abs=0.05)
    assert spots.attrs.extra["spaceranger_image"].endswith("tissue_lowres_image.png")


# -- Visium HD --------------------------------------------------------------------------------

#: The built HD layout: 40 x 40 bins of 8 um on a 0.5 um/px full-resolution frame.
HD_BINS, HD_BIN_UM, HD_MPP, HD_ORIGIN = 40, 8.0, 0.5, (300.0, 200.0)


def make_visium_hd(outs: Path) -> Path:
    """``outs/`` of Space Ranger 3 for Visium HD, as 10x documents it: one bin folder
    ``binned_outputs/square_008um`` with ``filtered_feature_bc_matrix.h5`` (v3 HDF5 layout)
    and ``spatial/`` (``tissue_positions.parquet``, ``scalefactors_json.json`` with
    ``bin_size_um`` and ``microns_per_pixel``); the images in ``outs/spatial/``.

    Bin (row, col) has 1 count of ``ONE`` and ``row`` counts of ``ROW``; the bins of the
    last two columns are outside the tissue and have no counts. Returns the bin folder.
    """
    square = outs / "binned_outputs" / "square_008um"
    (square / "spatial").mkdir(parents=True)
    (outs / "spatial").mkdir(parents=True)
    rows, cols = np.meshgrid(np.arange(HD_BINS), np.arange(HD_BINS), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    barcodes = [f"s_008um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
    bin_px = HD_BIN_UM / HD_MPP
    in_tissue = (cols < HD_BINS - 2).astype(int)
    pd.DataFrame({
        "barcode": barcodes, "in_tissue": in_tissue, "array_row": rows, "array_col": cols,
        "pxl_row_in_fullres": HD_ORIGIN[1] + (rows + 0.5) * bin_px,
        "pxl_col_in_fullres": HD_ORIGIN[0] + (cols + 0.5) * bin_px,
    }).to_parquet(square / "spatial" / "tissue_positions.parquet")
    counted = np.flatnonzero(in_tissue)
    dense = np.stack([np.ones(len(counted)), rows[counted]], axis=1).astype(np.int32)
    csc = sparse.csc_matrix(dense.T)
    with h5py.File(square / "filtered_feature_bc_matrix.h5", "w") as f:  # Space Ranger's file
        g = f.create_group("matrix")
        g["barcodes"] = np.array([barcodes[i] for i in counted], dtype="S")
        g["data"], g["indices"], g["indptr"] = csc.data, csc.indices, csc.indptr
        g["shape"] = np.array(csc.shape, dtype=np.int32)
        feat = g.create_group("features")
        feat["id"] = np.array(["ENSG01", "ENSG02"], dtype="S")
        feat["name"] = np.array(["ONE", "ROW"], dtype="S")
        feat["feature_type"] = np.array(["Gene Expression"] * 2, dtype="S")
        feat["genome"] = np.array(["GRCh38"] * 2, dtype="S")
        feat["_all_tag_keys"] = np.array(["genome"], dtype="S")
    hires_scalef = 0.25
    (square / "spatial" / "scalefactors_json.json").write_text(json.dumps({
        "spot_diameter_fullres": bin_px, "bin_size_um": HD_BIN_UM, "microns_per_pixel": HD_MPP,
        "tissue_lowres_scalef": 0.05, "fiducial_diameter_fullres": 100.0,
        "tissue_hires_scalef": hires_scalef, "regist_target_img_scalef": hires_scalef}))
    side = int((HD_ORIGIN[0] * 2 + HD_BINS * bin_px) * hires_scalef)
    image = np.full((side, side, 3), 245, np.uint8)
    lo = [int(o * hires_scalef) for o in HD_ORIGIN]
    edge = int(HD_BINS * bin_px * hires_scalef)
    image[lo[1]:lo[1] + edge, lo[0]:lo[0] + edge] = (200, 90, 160)  # "tissue"
    Image.fromarray(image).save(outs / "spatial" / "tissue_hires_image.png")
    return square


def test_hd_bins_are_grouped_into_patch_size_spots(tmp_path: Path) -> None:
    """112 um patches of 8 um bins: blocks of 14 x 14 bins. 40 rows give blocks of 14, 14,
    12 rows; 38 columns in tissue give 14, 14, 10 (10 x 12 = 120 of 196 bins: kept, over
    half). Counts are the sums of the block's bins; centres the blocks' centres."""
    square = make_visium_hd(tmp_path / "outs")
    counts = read_spot_counts(square, patch_um=112)
    positions = read_spot_positions(square, counts_path=square, patch_um=112)
    assert len(counts.ids) == 9 and set(counts.ids) == set(positions["spot_id"])
    dense = pd.DataFrame(counts.dense(), index=counts.ids, columns=counts.genes)
    first, corner = "112um_00000_00000", "112um_00002_00002"
    assert dense.loc[first, "ONE"] == 14 * 14
    assert dense.loc[first, "ROW"] == 14 * sum(range(14))
    assert dense.loc[corner, "ONE"] == 12 * 10  # rows 28-39, columns 28-37
    assert dense.loc[corner, "ROW"] == 10 * sum(range(28, 40))
    centre = positions.set_index("spot_id").loc[first]
    bin_px = HD_BIN_UM / HD_MPP
    assert centre["x"] == pytest.approx(HD_ORIGIN[0] + 7 * bin_px)
    assert centre["y"] == pytest.approx(HD_ORIGIN[1] + 7 * bin_px)
    bins = read_spot_counts(square)  # without a patch size: each bin is a spot
    assert bins.shape == (HD_BINS * (HD_BINS - 2), 2)


def test_hd_16um_bins_make_7_x_7_blocks(tmp_path: Path) -> None:
    """The folder name gives the bin size when scalefactors lack bin_size_um."""
    square = make_visium_hd(tmp_path / "outs")
    renamed = square.parent / "square_016um"
    square.rename(renamed)
    factors = json.loads((renamed / "spatial" / "scalefactors_json.json").read_text())
    del factors["bin_size_um"]
    (renamed / "spatial" / "scalefactors_json.json").write_text(json.dumps(factors))
    counts = read_spot_counts(renamed, patch_um=112)
    assert counts.dense()[:, 0].max() == 7 * 7  # 16 um bins: 7 a side


def test_tile_and_join_from_hd_bins(tmp_path: Path) -> None:
    """tile, then join (with features faked as the extract stage writes them), on the HD
    layout without a full-resolution image: the dataset's spots are the 9 blocks, their
    counts the sums, their drawn diameter the block edge."""
    square = make_visium_hd(tmp_path / "outs")
    proc = cli("tile", tmp_path / "outs", "--sample-id", "hd", "--out", tmp_path / "grid.h5",
               "--spots", square, "--counts", square, "--spots-out", tmp_path / "spots.h5")
    assert proc.returncode == 0, proc.stderr
    from slide2expr.contracts.tiles import read_tiles

    tiles = read_tiles(tmp_path / "spots.h5")
    assert len(tiles.spot_ids) == 9 and tiles.attrs.slide_mpp == HD_MPP
    assert tiles.attrs.mpp_source == "spaceranger"
    # the join, on features as the extract stage writes them for these spots
    import anndata as ad

    make_features(tmp_path / "features" / "hd.h5", tiles=tiles, dim=8, seed=0)
    pd.DataFrame([{"sample_id": "hd", "slide": str(tmp_path / "outs"), "counts": str(square),
                   "spots": str(square)}]).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    proc = cli("join", tmp_path / "s.tsv", "-f", tmp_path / "features", "-o",
               tmp_path / "dataset.h5ad", "--encoder", "toy")
    assert proc.returncode == 0, proc.stderr
    adata = ad.read_h5ad(tmp_path / "dataset.h5ad")
    assert adata.n_obs == 9
    counts = pd.DataFrame(adata.layers["counts"].toarray() if sparse.issparse(
        adata.layers["counts"]) else adata.layers["counts"], index=adata.obs["spot_id"],
        columns=adata.var_names)
    assert counts.loc["112um_00000_00000", "ONE"] == 196
    library = next(iter(adata.uns["spatial"].values()))
    assert library["scalefactors"]["spot_diameter_fullres"] == pytest.approx(14 * 8 / HD_MPP)


# -- docs/spaceranger.md, run as written -----------------------------------------------------

def _blocks(page: Path, language: str) -> list[str]:
    """The fenced ``language`` blocks of a Markdown page, in order."""
    import re

    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def _bash(block: str, cwd: Path) -> None:
    env = {**os.environ, "SLIDE2EXPR": str(REPO),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    proc = subprocess.run(["bash", "-e", "-c", block], cwd=cwd, capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, f"{block}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"


def _pseudo_cohort_model(work: Path) -> None:
    """``results/models/mlp`` for the page's predict block: the run's spots split into three
    pseudo-patients by x (one Visium run is no cohort; the page says a model comes from
    the workflow on the user's cohort)."""
    import anndata as ad

    adata = ad.read_h5ad(work / "dataset.h5ad")
    x = adata.obsm["spatial"][:, 0]
    adata.obs["patient"] = np.digitize(x, np.quantile(x, [1 / 3, 2 / 3])).astype(str)
    adata.write_h5ad(work / "cohort.h5ad")
    proc = cli("-q", "train", work / "cohort.h5ad", "--head", "mlp", "--models-dir",
               work / "results/models/mlp", "--predictions", work / "results/predictions/mlp.h5ad", "--config-json",
               json.dumps({"train": {"folds": 3, "max_epochs": 3, "min_epochs": 1}}), cwd=work)
    assert proc.returncode == 0, proc.stderr
    proc = cli("-q", "report", work / "results/predictions/mlp.h5ad", "-o",
               work / "results/report/mlp", "--bootstrap", "0", cwd=work)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_the_space_ranger_page_runs_as_written(visium: Path, tmp_path: Path) -> None:
    """Every bash block of docs/spaceranger.md on a copy of the Visium run (the workflow
    block as a dry run), then docs/interop.md's scanpy block on the outputs (before: its
    color="ERBB2" failed on outputs without that gene)."""
    import shutil

    work = tmp_path / "run"
    shutil.copytree(visium, work / "outs")
    blocks = _blocks(REPO / "docs" / "spaceranger.md", "bash")
    assert len(blocks) == 3
    _bash(blocks[0], work)
    assert (work / "qc" / "V1.png").is_file() and (work / "dataset.h5ad").is_file()
    _pseudo_cohort_model(work)
    _bash(blocks[1], work)
    import anndata as ad

    predicted = ad.read_h5ad(work / "V1_predicted.h5ad")
    assert predicted.n_obs == 100
    assert "snakemake" in blocks[2]
    _bash(blocks[2].replace("--configfile my.yaml", "--configfile my.yaml -n"), work)
    snippet = _blocks(REPO / "docs" / "interop.md", "python")[0]
    assert "ERBB2" not in snippet
    proc = subprocess.run([sys.executable, "-c", "import matplotlib; matplotlib.use('Agg')\n"
                           + snippet], cwd=work, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_viewer_pyramid_of_an_outs_folder_is_in_full_resolution_pixels(visium: Path,
                                                                       tmp_path: Path) -> None:
    """The viewer's Deep Zoom pyramid of a stand-in image has the full-resolution size, so
    the spots (full-resolution px) land where they belong in the viewer."""
    pytest.importorskip("pyvips")
    from slide2expr.viewer.pyramid import write_pyramid

    pyramid = write_pyramid(visium, tmp_path)
    with open_slide(visium) as slide:
        assert (pyramid.width, pyramid.height) == slide.dimensions
    # Deep Zoom level max - 6 is 1/64 of full resolution: one tile of 209 x 209 px
    top = Image.open(tmp_path / "slide_files" / str(pyramid.max_level - 6) / "0_0.jpeg")
    assert top.size == (209, 209)
    lowres = Image.open(visium / "spatial" / "tissue_lowres_image.png").convert("RGB")
    small = np.asarray(lowres.resize(top.size, Image.BILINEAR), dtype=int)
    assert np.abs(np.asarray(top.convert("RGB"), dtype=int) - small).mean() < 10
