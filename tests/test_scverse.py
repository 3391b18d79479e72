"""scverse conventions: ``uns['spatial']`` (H&E images, scale factors), ``uns['log1p']``,
``obs['library_id']`` and ``var['gene_ids']``, so that ``sc.pl.spatial`` draws the spots on
the H&E of a section, in the dataset and in the predictions.

The plots are checked in the saved PNG: the pixels of the axes, away from the spots, must be
the H&E itself (resampled), and a plot of the same spots without the image must not be.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from slide2expr.contracts.dataset import write_dataset
from slide2expr.inputs.samples import read_sample_sheet
from slide2expr.inputs.spots import read_spot_positions
from slide2expr.join.run import JoinParams, build_dataset
from slide2expr.keys import Key
from slide2expr.testing import make_features

ENCODER = "toy"


def write_spot_features(path: Path, sample_id: str, spot_ids, *, width: int, height: int,
                        spot_px: float, mpp: float | None) -> None:
    """A spot-mode features file as the extract stage writes it (random features); without
    ``mpp`` the file records no slide resolution."""
    ids = [str(s) for s in spot_ids]
    make_features(path, dim=4, seed=0, encoder=ENCODER, sample_id=sample_id, spot_ids=ids,
                  coords=np.zeros((len(ids), 2)), tile_px=224, tile_px_level0=spot_px,
                  level0_width=width, level0_height=height, slide_mpp=mpp or None,
                  spot_diameter_um=spot_px * mpp if mpp else None)


def join_sections(rows: list[dict], root: Path, *, spot_px: float, mpp: float | None):
    """Write features for ``rows`` (sample_id, slide, counts, spots) and join them."""
    for r in rows:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(r["slide"]) as im:
                width, height = im.size
        table = read_spot_positions(r["spots"], counts_path=r["counts"])
        write_spot_features(root / "features" / f"{r['sample_id']}.h5", r["sample_id"],
                            table["spot_id"], width=width, height=height, spot_px=spot_px,
                            mpp=mpp)
    pd.DataFrame(rows).to_csv(root / "samples.tsv", sep="\t", index=False)
    sheet = read_sample_sheet(root / "samples.tsv")
    adata = build_dataset(sheet, root / "features", JoinParams(encoder=ENCODER))
    return write_dataset(adata, root / "dataset.h5ad")


def axes_pixels(fig, ax, png: Path) -> np.ndarray:
    """The saved PNG's pixels inside ``ax`` (RGB)."""
    img = np.asarray(Image.open(png).convert("RGB"))
    box = ax.get_window_extent()
    h = img.shape[0]
    x0, x1 = int(np.ceil(box.x0)) + 1, int(np.floor(box.x1)) - 1
    y0, y1 = h - int(np.floor(box.y1)) + 1, h - int(np.ceil(box.y0)) - 1
    return img[y0:y1, x0:x1]


def expected_pixels(ax, image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """What the H&E looks like in ``ax``'s data window, resampled to ``shape``."""
    (xa, xb), (ya, yb) = ax.get_xlim(), ax.get_ylim()
    top, bottom = min(ya, yb), max(ya, yb)
    crop = Image.fromarray(image).crop((xa, top, xb, bottom))
    return np.asarray(crop.resize((shape[1], shape[0]), Image.BILINEAR).convert("RGB"))


def off_spot_mask(ax, centres: np.ndarray, radius: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixels of the axes farther than 1.3 spot radii from every spot centre."""
    (xa, xb), (ya, yb) = ax.get_xlim(), ax.get_ylim()
    top, bottom = min(ya, yb), max(ya, yb)
    rows = top + (np.arange(shape[0]) + 0.5) * (bottom - top) / shape[0]
    cols = xa + (np.arange(shape[1]) + 0.5) * (xb - xa) / shape[1]
    gx, gy = np.meshgrid(cols, rows)
    keep = np.ones(shape, dtype=bool)
    for cx, cy in centres:
        keep &= (gx - cx) ** 2 + (gy - cy) ** 2 > (1.3 * radius) ** 2
    return keep


def image_agreement(adata, library_id: str, color: str, png: Path, *,
                    with_image: bool = True) -> tuple[float, float, int]:
    """Plot one section with sc.pl.spatial, save it, and compare the axes with the H&E.

    Returns the Pearson r of grey levels and the mean absolute difference, over pixels
    away from the spots, and how many such pixels there were.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    one = adata[adata.obs[Key.LIBRARY_ID] == library_id]
    lib = adata.uns["spatial"][library_id]
    kwargs = {} if with_image else {"img_key": None, "img": None,
                                    "spot_size": lib["scalefactors"]["spot_diameter_fullres"]}
    if not with_image:
        one = one.copy()
        del one.uns["spatial"]
    axes = sc.pl.spatial(one, library_id=library_id if with_image else None, color=color,
                         show=False, **kwargs)
    ax = axes[0]
    fig = ax.figure
    fig.canvas.draw()
    fig.savefig(png, dpi=fig.dpi)
    got = axes_pixels(fig, ax, png)
    scalef = lib["scalefactors"]["tissue_hires_scalef"]
    if not with_image:  # the axes are in level-0 px: compare with the level-0 frame
        hires = lib["images"]["hires"]
        big = Image.fromarray(hires).resize(
            (round(hires.shape[1] / scalef), round(hires.shape[0] / scalef)), Image.BILINEAR)
        want = expected_pixels(ax, np.asarray(big), got.shape[:2])
        centres, radius = one.obsm["spatial"], lib["scalefactors"]["spot_diameter_fullres"] / 2
    else:
        want = expected_pixels(ax, lib["images"]["hires"], got.shape[:2])
        centres = one.obsm["spatial"] * scalef
        radius = lib["scalefactors"]["spot_diameter_fullres"] * scalef / 2
    plt.close(fig)
    keep = off_spot_mask(ax, centres, radius, got.shape[:2])
    a, b = got.mean(axis=2)[keep], want.mean(axis=2)[keep].astype(float)
    r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 else 0.0
    return r, float(np.abs(a - b).mean()), int(keep.sum())


def check_spatial_entry(adata, sample: str, *, width: int, height: int) -> None:
    lib = adata.uns["spatial"][sample]
    hires, lowres = lib["images"]["hires"], lib["images"]["lowres"]
    assert hires.dtype == np.uint8 and lowres.dtype == np.uint8
    assert max(hires.shape[:2]) == 2000 and max(lowres.shape[:2]) == 600
    sf = lib["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(hires.shape[1] / width)
    assert sf["tissue_lowres_scalef"] == pytest.approx(lowres.shape[1] / width)
    assert hires.shape[0] == pytest.approx(height * sf["tissue_hires_scalef"], abs=1.5)
    assert lib["metadata"]["level0_width"] == width


# -- her2st (real data) -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def her2st_dataset(her2st: Path, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scverse_her2st")
    rows = [{"sample_id": s, "slide": str(her2st / f"{s}_HE.jpg"), "patient": "P1",
             "counts": str(her2st / f"{s}.tsv.gz"), "spots": str(her2st / f"{s}_selection.tsv")}
            for s in ("C2", "C3")]
    return join_sections(rows, root, spot_px=145.0, mpp=None)


def test_her2st_uns_spatial_log1p_and_library_key(her2st_dataset, her2st):
    import anndata as ad

    adata = ad.read_h5ad(her2st_dataset)
    with Image.open(her2st / "C2_HE.jpg") as im:
        width, height = im.size
    check_spatial_entry(adata, "C2", width=width, height=height)
    assert adata.uns["spatial"]["C2"]["scalefactors"]["spot_diameter_fullres"] == 145.0
    assert adata.uns["log1p"] == {"base": None}
    # raw h5py: how the bytes are stored, which no reader shows
    with h5py.File(her2st_dataset) as f:  # the images, most of the bytes, are compressed
        assert f["uns/spatial/C2/images/hires"].compression == "gzip"
        assert f["X"].compression is None  # the rest as anndata writes it
    assert isinstance(adata.obs["library_id"].dtype, pd.CategoricalDtype)
    assert (adata.obs["library_id"].astype(str) == adata.obs["sample_id"]).all()
    # the spots sit on the tissue of the hires image: darker there than the image's border
    lib = adata.uns["spatial"]["C2"]
    hires = lib["images"]["hires"].mean(axis=2)
    xy = adata[adata.obs.library_id == "C2"].obsm["spatial"] * lib["scalefactors"][
        "tissue_hires_scalef"]
    under_spots = hires[xy[:, 1].astype(int), xy[:, 0].astype(int)].mean()
    assert under_spots < hires[:20].mean() - 30


def test_her2st_sc_pl_spatial_draws_the_he_under_the_spots(her2st_dataset, tmp_path):
    import anndata as ad

    adata = ad.read_h5ad(her2st_dataset)
    gene = "ERBB2"
    r, diff, n = image_agreement(adata, "C2", gene, tmp_path / "C2.png")
    assert n > 5000
    assert r > 0.9 and diff < 20, (r, diff)
    # control: the same spots without the image do not reproduce the H&E
    r0, diff0, _ = image_agreement(adata, "C2", gene, tmp_path / "C2_bare.png",
                                   with_image=False)
    assert diff0 > 2 * diff and r0 < r - 0.3, (r0, diff0)


# -- the demo cohort (synthetic) --------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory) -> tuple[Path, Path]:
    from slide2expr.demo import DemoSpec, make_demo_cohort

    root = tmp_path_factory.mktemp("scverse_demo")
    demo = make_demo_cohort(root / "demo", DemoSpec(n_slides=2, size_px=2048))
    sheet = pd.read_csv(demo / "samples.tsv", sep="\t")
    rows = sheet.to_dict("records")
    # a 100 um spot is 200 px at 0.5 um/px
    return join_sections(rows, root, spot_px=200.0, mpp=0.5), demo


def test_demo_sc_pl_spatial_draws_the_he_under_the_spots(demo_dataset, tmp_path):
    import anndata as ad

    path, _ = demo_dataset
    adata = ad.read_h5ad(path)
    check_spatial_entry(adata, "demo1", width=2048, height=2048)
    assert adata.uns["spatial"]["demo1"]["scalefactors"]["spot_diameter_fullres"] == 200.0
    gene = next(g for g in adata.var_names if g.startswith("TUMOUR"))
    r, diff, n = image_agreement(adata, "demo2", gene, tmp_path / "demo2.png")
    assert n > 5000
    assert r > 0.9 and diff < 20, (r, diff)


def test_predictions_carry_the_scverse_entries(demo_dataset):
    import anndata as ad

    from slide2expr.train.config import TrainConfig
    from slide2expr.train.run import FoldResult, assemble_predictions

    adata = ad.read_h5ad(demo_dataset[0])
    n = adata.n_obs
    half = np.arange(n) % 2
    genes = np.arange(adata.n_vars)
    results = [FoldResult(fold=k, genes=genes, test_idx=np.flatnonzero(half == k),
                          predicted=np.zeros((int((half == k).sum()), len(genes)), np.float32),
                          baselines={}, info={}, train_mean=np.zeros(len(genes)))
               for k in (0, 1)]
    pred = assemble_predictions(adata, results, fold=half, config=TrainConfig(baselines=()),
                                head="mlp", provenance={})
    assert pred.uns["log1p"] == {"base": None}
    for sid in ("demo1", "demo2"):
        np.testing.assert_array_equal(pred.uns["spatial"][sid]["images"]["hires"],
                                      adata.uns["spatial"][sid]["images"]["hires"])
    assert list(pred.obs["library_id"]) == list(adata.obs["library_id"])
    np.testing.assert_array_equal(pred.X, adata.X)  # X untouched


def test_missing_slide_gives_an_entry_without_images(demo_dataset, tmp_path, caplog):
    import anndata as ad

    _, demo = demo_dataset
    rows = pd.read_csv(demo / "samples.tsv", sep="\t").head(1).to_dict("records")
    slide = Path(rows[0]["slide"])
    table = read_spot_positions(rows[0]["spots"], counts_path=rows[0]["counts"])
    write_spot_features(tmp_path / "features" / "demo1.h5", "demo1", table["spot_id"],
                        width=2048, height=2048, spot_px=200.0, mpp=0.5)
    rows[0]["slide"] = str(tmp_path / "gone.tiff")
    pd.DataFrame(rows).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    sheet = read_sample_sheet(tmp_path / "s.tsv", check_files=False)
    adata = build_dataset(sheet, tmp_path / "features", JoinParams(encoder=ENCODER))
    write_dataset(adata, tmp_path / "d.h5ad")
    back = ad.read_h5ad(tmp_path / "d.h5ad")
    assert back.uns["spatial"]["demo1"]["images"] == {}
    assert back.uns["spatial"]["demo1"]["scalefactors"]["spot_diameter_fullres"] == 200.0
    assert "no H&E image" in caplog.text and slide.exists()


# -- Space Ranger (real output, tiny) ---------------------------------------------------------

def test_space_ranger_gene_ids_kept_and_scanpy_reader(test_data: Path, tmp_path):
    """The real 10x h5 through scanpy.read_10x_h5: symbols, IDs in var['gene_ids']."""
    import scanpy as sc

    from slide2expr.inputs.expression import read_spot_counts

    h5 = test_data / "visium" / "filtered_feature_bc_matrix.h5"
    table = read_spot_counts(h5)
    ref = sc.read_10x_h5(h5)
    assert table.shape == (100, 100)
    assert list(table.genes) == list(ref.var_names)
    assert list(table.gene_ids) == list(ref.var["gene_ids"])
    np.testing.assert_array_equal(table.matrix.toarray(), ref.X.toarray())


# -- SpatialData export (optional extra) -------------------------------------------------------

def test_spatialdata_export_round_trip(demo_dataset, tmp_path):
    """``slide2expr export spatialdata``: spatialdata.read_zarr reads back the image pyramid,
    the spots as circles in level-0 px, the tiles, and the measured and predicted tables."""
    sd = pytest.importorskip("spatialdata", reason="the spatialdata extra is not installed")
    import anndata as ad

    from slide2expr.cli import main
    from slide2expr.contracts.tilemaps import TileMap, write_tile_map

    adata = ad.read_h5ad(demo_dataset[0])
    pred = adata.copy()
    rng = np.random.default_rng(0)
    pred.layers["predicted"] = (np.asarray(adata.X) + rng.normal(0, 0.1, adata.shape)
                                ).astype(np.float32)
    pred.write_h5ad(tmp_path / "mlp.h5ad")
    coords = np.array([[0, 0], [224, 0], [0, 224]], dtype=np.int64)
    tmap = TileMap(values=np.arange(6, dtype=np.float32).reshape(3, 2), genes=["A", "B"],
                   coords=coords, tile_size0=224.0, attrs={"sample_id": "demo1"})
    write_tile_map(tmp_path / "demo1.h5ad", tmap)
    import sys

    argv = sys.argv
    sys.argv = ["slide2expr", "export", "spatialdata", str(tmp_path / "mlp.h5ad"), "-o",
                str(tmp_path / "run.zarr"), "--tile-map", str(tmp_path / "demo1.h5ad")]
    import warnings

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            main()
    except SystemExit as exc:
        assert not exc.code
    finally:
        sys.argv = argv
    assert [str(w.message)[:80] for w in caught] == []  # 24 zarr/ome-zarr warnings before
    back = sd.read_zarr(tmp_path / "run.zarr")
    assert set(back.images) == {"demo1_he", "demo2_he"}
    assert set(back.shapes) == {"demo1_spots", "demo2_spots", "demo1_tiles"}
    assert set(back.tables) == {"measured", "predicted", "predicted_tiles"}
    # the image pyramid is read from the slide: level 0 at full resolution (2048 px, not
    # the 2000 px hires copy), then / 2 down to <= 1024 px, in level-0 px (identity)
    he = back.images["demo1_he"]
    levels = [he[k].image.shape for k in he]
    lib = adata.uns["spatial"]["demo1"]
    assert levels == [(3, 2048, 2048), (3, 1024, 1024)]
    from spatialdata.transformations import get_transformation

    t = get_transformation(he["scale0"].image, to_coordinate_system="demo1")
    corner = t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")) @ [2000, 0, 1]
    assert corner[0] == pytest.approx(2000)
    from slide2expr.inputs.slides import open_slide

    with open_slide(lib["metadata"]["source_image_path"]) as slide:
        want = slide.read_region((1000, 700), 0, (64, 48))
    got = np.moveaxis(np.asarray(he["scale0"].image[:, 700:748, 1000:1064]), 0, -1)
    np.testing.assert_array_equal(got, want)
    # spots: circles at obsm['spatial'] with the spot radius; tables annotate them
    spots = back.shapes["demo1_spots"]
    one = adata[adata.obs.sample_id == "demo1"]
    np.testing.assert_allclose(np.c_[spots.geometry.x, spots.geometry.y], one.obsm["spatial"])
    assert (spots["radius"] == 100.0).all()
    assert list(spots["spot_id"]) == list(one.obs["spot_id"])
    measured, predicted = back.tables["measured"], back.tables["predicted"]
    attrs = measured.uns["spatialdata_attrs"]
    assert attrs["region_key"] == "region" and set(attrs["region"]) == {"demo1_spots",
                                                                        "demo2_spots"}
    rows = (measured.obs["region"] == "demo1_spots").to_numpy()
    np.testing.assert_array_equal(measured.X[rows], np.asarray(one.X))
    np.testing.assert_array_equal(predicted.X[rows], pred[one.obs_names].layers["predicted"])
    tiles = back.shapes["demo1_tiles"]
    assert tiles.geometry.iloc[1].bounds == (224.0, 0.0, 448.0, 224.0)
    np.testing.assert_array_equal(back.tables["predicted_tiles"].X, tmap.values)


def test_spatialdata_export_of_old_predictions_is_one_line_and_writes_nothing(tmp_path, capsys):
    pytest.importorskip("spatialdata", reason="the spatialdata extra is not installed")
    import sys

    import anndata as ad

    from slide2expr.cli import main

    old = ad.AnnData(X=np.ones((3, 2), np.float32),
                     obs=pd.DataFrame({"sample_id": ["a"] * 3}, index=["u0", "u1", "u2"]))
    old.layers["predicted"] = old.X.copy()
    old.obsm["spatial"] = np.zeros((3, 2))
    old.write_h5ad(tmp_path / "old.h5ad")
    argv = sys.argv
    sys.argv = ["slide2expr", "export", "spatialdata", str(tmp_path / "old.h5ad"), "-o",
                str(tmp_path / "out.zarr")]
    try:
        with pytest.raises(SystemExit) as exc:
            main()
    finally:
        sys.argv = argv
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {tmp_path / 'old.h5ad'}: the predictions have no "
                              "uns['spatial']")
    assert list(tmp_path.iterdir()) == [tmp_path / "old.h5ad"]
