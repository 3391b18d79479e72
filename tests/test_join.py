"""The join stage: expression readers, spot/bulk joins, checks, and scanpy compatibility."""

from __future__ import annotations

import gzip
import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import sparse

from slide2expr.contracts.features import read_features
from slide2expr.errors import InputError
from slide2expr.inputs.spots import read_spot_positions
from slide2expr.testing import make_features

HER2ST_SECTIONS = ("C2", "C3", "C4", "C5", "C6")
ENCODER = "toy"


# -- helpers ----------------------------------------------------------------------------------

def write_spot_features(path: Path, sample_id: str, spot_ids, *, width: int, height: int,
                        dim: int = 8, seed: int = 0, encoder: str = ENCODER,
                        coords: np.ndarray | None = None) -> np.ndarray:
    """A spot-mode features file as the extract stage writes it; returns the features."""
    ids = [str(s) for s in spot_ids]
    return make_features(
        path, n=len(ids), dim=dim, seed=seed, encoder=encoder, sample_id=sample_id,
        spot_ids=ids, coords=np.zeros((len(ids), 2)) if coords is None else coords,
        slide_mpp=0.5, target_mpp=0.5, tile_px=224, tile_px_level0=224.0,
        level0_width=width, level0_height=height, spot_diameter_um=112.0).features


def write_bulk_features(path: Path, *, n_tiles: int = 50, dim: int = 8,
                        encoder: str = ENCODER) -> None:
    """A grid features file as the extract stage writes it."""
    make_features(path, n=n_tiles, dim=dim, encoder=encoder, sample_id=path.stem,
                  slide_mpp=0.5, target_mpp=0.5, tile_px=224, tile_px_level0=224.0,
                  level0_width=4096, level0_height=4096)


def declare_huge_features(path: Path, *, n_tiles: int, dim: int,
                          encoder: str = ENCODER) -> None:
    """A grid features file whose rows are declared (chunked) but never written: gigabytes
    to a reader that loads them, a few kB on disk.

    Raw h5py on purpose: the contract's writer allocates every row before writing one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", shape=(n_tiles, dim), dtype="float32",
                         chunks=(min(n_tiles, 4096), dim))
        f["coords"] = np.zeros((1, 2), np.int64)
        f.attrs.update({"encoder": encoder, "embed_dim": dim, "weights": "random-init",
                        "slide_mpp": 0.5, "target_mpp": 0.5, "tile_px": 224,
                        "tile_px_level0": 224, "level0_width": 4096, "level0_height": 4096,
                        "mode": "grid"})


def image_size(path: Path) -> tuple[int, int]:
    """Width, height of an image from its header (the her2st JPEGs are ~92 Mpx)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            return img.size


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    """Run ``slide2expr`` in-process as the console script does; return (exit code, stderr)."""
    from slide2expr import cli

    argv = sys.argv
    sys.argv = ["slide2expr", *map(str, args)]
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = argv
    return code, capsys.readouterr().err


def read_tsv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t", index_col=0)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.stem}")]


# -- her2st (real data) -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def her2st_join(her2st: Path, tmp_path_factory) -> tuple[Path, dict, Path]:
    """Join the five real sections: features written in shuffled order, with an extra spot."""
    root = tmp_path_factory.mktemp("her2st_join")
    rows, feats = [], {}
    rng = np.random.default_rng(1)
    for s in HER2ST_SECTIONS:
        spots = her2st / f"{s}_selection.tsv"
        counts = her2st / f"{s}.tsv.gz"
        width, height = image_size(her2st / f"{s}_HE.jpg")
        table = read_spot_positions(spots)  # all spots, also those without counts
        order = rng.permutation(len(table))  # features need not follow the table's order
        ids = table["spot_id"].to_numpy()[order]
        f = write_spot_features(root / "features" / f"{s}.h5", s, ids, width=width, height=height,
                                seed=len(rows))
        feats[s] = pd.DataFrame(f, index=ids)
        rows.append({"sample_id": s, "slide": str(her2st / f"{s}_HE.jpg"), "patient": "P1",
                     "counts": str(counts), "spots": str(spots)})
    pd.DataFrame(rows).to_csv(root / "samples.tsv", sep="\t", index=False)
    out = root / "dataset.h5ad"
    code = subprocess.run(
        [sys.executable, "-m", "slide2expr.cli", "join", str(root / "samples.tsv"),
         "-f", str(root / "features"), "-o", str(out), "--encoder", ENCODER],
        capture_output=True, text=True, check=False)
    assert code.returncode == 0, code.stderr
    return out, feats, root


@pytest.fixture(scope="module")
def her2st_adata(her2st_join):
    import anndata as ad

    return ad.read_h5ad(her2st_join[0])


@pytest.mark.slow
def test_her2st_one_row_per_spot_with_counts(her2st_adata, her2st):
    adata = her2st_adata
    assert adata.n_obs == 910
    for s in HER2ST_SECTIONS:
        n_counts = len(pd.read_csv(her2st / f"{s}.tsv.gz", sep="\t", usecols=[0]))
        assert int((adata.obs["sample_id"] == s).sum()) == n_counts
    assert adata.obs_names.is_unique
    assert set(adata.obs["patient"]) == {"P1"}
    assert adata.X.dtype == np.float32
    assert adata.layers["counts"].shape == adata.shape


@pytest.mark.slow
def test_her2st_spatial_is_the_selection_pixel_centre(her2st_adata, her2st):
    adata = her2st_adata
    for s in HER2ST_SECTIONS:
        sel = pd.read_csv(her2st / f"{s}_selection.tsv", sep="\t")
        sel.index = sel["x"].astype(str) + "x" + sel["y"].astype(str)
        part = adata[adata.obs["sample_id"] == s]
        expected = sel.loc[part.obs["spot_id"], ["pixel_x", "pixel_y"]].to_numpy()
        np.testing.assert_allclose(part.obsm["spatial"], expected)
        counted = set(pd.read_csv(her2st / f"{s}.tsv.gz", sep="\t", usecols=[0]).iloc[:, 0])
        assert set(part.obs["spot_id"]) == counted  # spots without counts were dropped


@pytest.mark.slow
def test_her2st_counts_equal_tsv_cells(her2st_adata, her2st):
    adata = her2st_adata
    rng = np.random.default_rng(0)
    for s in ("C2", "C5"):
        tsv = pd.read_csv(her2st / f"{s}.tsv.gz", sep="\t", index_col=0)
        for spot in rng.choice(tsv.index, size=3, replace=False):
            row = tsv.loc[spot]
            genes = list(row[row > 0].index[:5]) + list(row[row == 0].index[:2])
            genes = [g for g in genes if g in adata.var_names]
            got = adata[f"{s}_{spot}", genes].layers["counts"]
            np.testing.assert_array_equal(np.asarray(got).ravel(), row[genes].to_numpy(float))
            # X is log1p(CP10k) of the full row
            x = np.asarray(adata[f"{s}_{spot}", genes].X).ravel()
            np.testing.assert_allclose(x, np.log1p(row[genes].to_numpy(float) / row.sum() * 1e4),
                                       rtol=1e-5)


@pytest.mark.slow
def test_her2st_genes_are_the_union_and_features_align(her2st_join, her2st_adata, her2st):
    _, feats, _ = her2st_join
    adata = her2st_adata
    headers = [gzip.open(her2st / f"{s}.tsv.gz", "rt").readline().rstrip("\n").split("\t")[1:]
               for s in HER2ST_SECTIONS]
    union = set().union(*headers)
    prov = adata.uns["slide2expr"]
    assert adata.n_vars == len(union) - prov["n_genes_dropped_all_zero"]
    assert set(adata.var_names) <= union
    # sections lack some genes: those are counted, and are 0 there
    filled = prov["genes_filled_zero"]
    for s, header in zip(HER2ST_SECTIONS, headers, strict=True):
        assert filled.get(s, 0) == len(union) - len(header)
    first = set(headers[0])
    absent = [g for g in adata.var_names if g not in first][:5]
    assert absent
    assert float(np.abs(adata[adata.obs["sample_id"] == "C2", absent].layers["counts"]).sum()) == 0
    # features are aligned by spot ID, not by file order
    key = f"X_{ENCODER}"
    for s in HER2ST_SECTIONS:
        part = adata[adata.obs["sample_id"] == s]
        np.testing.assert_array_equal(part.obsm[key], feats[s].loc[part.obs["spot_id"]].to_numpy())
    assert prov["encoder"] == ENCODER and prov["mode"] == "spot"
    assert prov["samples"]["C3"]["level0_width"] == image_size(her2st / "C3_HE.jpg")[0]
    assert prov["version"]


@pytest.mark.slow
def test_scanpy_reads_and_plots_without_conversion(her2st_join, tmp_path):
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc

    out, _, _ = her2st_join
    adata = ad.read_h5ad(out)
    sc.pp.highly_variable_genes(adata, n_top_genes=50)
    assert int(adata.var["highly_variable"].sum()) == 50
    ax = sc.pl.embedding(adata, basis="spatial", color="sample_id", show=False)
    assert len(ax.collections[0].get_offsets()) == adata.n_obs
    one = adata[adata.obs["sample_id"] == "C2"].copy()
    gene = adata.var_names[adata.var["highly_variable"]][0]
    # several libraries in uns['spatial']: name one (img_key=None: level-0 coordinates)
    axes = sc.pl.spatial(one, library_id="C2", img_key=None, color=gene, spot_size=145,
                         show=False)
    circles = axes[0].collections[0].get_paths()
    centres = np.array([(c.vertices.min(0) + c.vertices.max(0)) / 2 for c in circles])
    def rows(a):
        return a[np.lexsort(a.T[::-1])]

    np.testing.assert_allclose(rows(centres), rows(one.obsm["spatial"]), atol=1e-6)
    assert axes[0].get_ylim()[0] > axes[0].get_ylim()[1]  # image orientation: y down
    plt.savefig(tmp_path / "spatial.png")
    assert (tmp_path / "spatial.png").stat().st_size > 0
    plt.close("all")


# -- Space Ranger and h5ad spot inputs -------------------------------------------------------

def make_spaceranger(outs: Path, *, header: bool, seed: int = 0) -> dict:
    """A small Space Ranger outs/ folder; returns what it holds."""
    rng = np.random.default_rng(seed)
    n_spots, genes = 12, ["GAPDH", "ACTB", "KRT19", "ERBB2", "KRT19", "EMPTY1"]
    ids = [f"ENSG0000000000{i}" for i in range(len(genes))] + ["CD3_TotalSeqB"]
    kinds = ["Gene Expression"] * len(genes) + ["Antibody Capture"]
    barcodes = [f"AAAC{i:04d}-1" for i in range(n_spots)]
    dense = rng.poisson(3.0, size=(n_spots, len(ids))).astype(np.int32)
    dense[:, 5] = 0  # a gene zero everywhere
    csc = sparse.csc_matrix(dense.T)  # genes x barcodes, stored by barcode
    (outs / "spatial").mkdir(parents=True)
    with h5py.File(outs / "filtered_feature_bc_matrix.h5", "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"], g["indices"], g["indptr"] = csc.data, csc.indices, csc.indptr
        g["shape"] = np.array(csc.shape, dtype=np.int32)
        feat = g.create_group("features")
        feat["id"] = np.array(ids, dtype="S")
        feat["name"] = np.array([*genes, "CD3"], dtype="S")
        feat["feature_type"] = np.array(kinds, dtype="S")
        feat["genome"] = np.array(["GRCh38"] * len(ids), dtype="S")
    # positions: every counted barcode plus two off-tissue spots without counts
    all_barcodes = [*barcodes, "TTTT0001-1", "TTTT0002-1"]
    rows = rng.permutation(len(all_barcodes))
    pos = pd.DataFrame({
        "barcode": all_barcodes,
        "in_tissue": [1] * n_spots + [0, 0],
        "array_row": rows, "array_col": rows * 2,
        "pxl_row_in_fullres": 1000 + 150 * rows,  # y
        "pxl_col_in_fullres": 2000 + 90 * rows,   # x
    })
    name = "tissue_positions.csv" if header else "tissue_positions_list.csv"
    pos.to_csv(outs / "spatial" / name, index=False, header=header)
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(
        {"spot_diameter_fullres": 89.4, "tissue_hires_scalef": 0.17,
         "tissue_lowres_scalef": 0.05, "fiducial_diameter_fullres": 144.4}))
    return {"dense": dense, "genes": genes, "barcodes": barcodes,
            "positions": pos.set_index("barcode")}


@pytest.mark.parametrize("header", [True, False], ids=["v2-header", "v1-no-header"])
def test_spaceranger_round_trip(tmp_path, header, capsys, caplog):
    import anndata as ad

    caplog.set_level(logging.WARNING)
    outs = tmp_path / "V1" / "outs"
    truth = make_spaceranger(outs, header=header)
    write_spot_features(tmp_path / "features" / "V1.h5", "V1", truth["barcodes"][::-1],
                        width=4000, height=4000)
    pd.DataFrame([{"sample_id": "V1", "slide": "V1.tif", "counts": str(outs),
                   "spots": str(outs)}]).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    out = tmp_path / "dataset.h5ad"
    code, err = run_cli(["join", tmp_path / "s.tsv", "-f", tmp_path / "features", "-o", out,
                         "--encoder", ENCODER], capsys)
    assert code == 0, err
    adata = ad.read_h5ad(out)
    assert list(adata.obs["spot_id"]) == [b for b in truth["positions"].index
                                          if b in set(truth["barcodes"])]
    # antibody capture dropped; duplicate KRT19 summed (warned); EMPTY1 zero everywhere dropped
    assert list(adata.var_names) == ["GAPDH", "ACTB", "KRT19", "ERBB2"]
    assert "KRT19" in caplog.text and "summed" in caplog.text
    assert adata.uns["slide2expr"]["n_genes_dropped_all_zero"] == 1
    dense = pd.DataFrame(truth["dense"][:, :6], index=truth["barcodes"])
    expected = np.stack([dense[0], dense[1], dense[2] + dense[4], dense[3]], axis=1)
    expected = pd.DataFrame(expected, index=truth["barcodes"]).loc[adata.obs["spot_id"]]
    np.testing.assert_array_equal(adata.layers["counts"], expected.to_numpy(np.float32))
    pos = truth["positions"].loc[adata.obs["spot_id"]]
    np.testing.assert_array_equal(adata.obsm["spatial"],
                                  pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float))
    sample_prov = adata.uns["slide2expr"]["samples"]["V1"]
    assert sample_prov["spaceranger_spot_diameter_fullres"] == pytest.approx(89.4)


def test_h5ad_spot_input_round_trip(tmp_path, capsys):
    import anndata as ad

    rng = np.random.default_rng(3)
    counts = rng.poisson(2.0, size=(10, 7)).astype(np.float32)
    counts[:, 0] += 1
    xy = rng.uniform(100, 900, size=(10, 2))
    src = ad.AnnData(X=sparse.csr_matrix(counts),
                     obs=pd.DataFrame(index=[f"s{i}" for i in range(10)]),
                     var=pd.DataFrame(index=[f"G{j}" for j in range(7)]))
    src.obsm["spatial"] = xy
    src.write_h5ad(tmp_path / "section.h5ad")
    write_spot_features(tmp_path / "f" / "A.h5", "A", list(src.obs_names), width=1000, height=1000)
    pd.DataFrame([{"sample_id": "A", "slide": "A.tif", "counts": tmp_path / "section.h5ad",
                   "spots": tmp_path / "section.h5ad"}]).to_csv(tmp_path / "s.tsv", sep="\t",
                                                              index=False)
    code, err = run_cli(["join", tmp_path / "s.tsv", "-f", tmp_path / "f", "-o",
                         tmp_path / "d.h5ad", "--encoder", ENCODER], capsys)
    assert code == 0, err
    adata = ad.read_h5ad(tmp_path / "d.h5ad")
    keep = counts.sum(axis=0) > 0
    np.testing.assert_array_equal(adata.layers["counts"], counts[:, keep])
    np.testing.assert_allclose(adata.obsm["spatial"], xy)


# -- demo cohort ------------------------------------------------------------------------------

def demo_spot_setup(demo_dir: Path, root: Path, *, n: int = 2) -> Path:
    """A copy of the first ``n`` demo samples with their spot features; returns the sheet."""
    sheet = pd.read_csv(demo_dir / "samples.tsv", sep="\t").head(n)
    rows = []
    for r in sheet.itertuples():
        counts = root / "counts" / f"{r.sample_id}.tsv"
        spots = root / "spots" / f"{r.sample_id}.tsv"
        for src, dst in ((r.counts, counts), (r.spots, spots)):
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(Path(src).read_text())
        table = read_spot_positions(spots, counts_path=counts)
        write_spot_features(root / "features" / f"{r.sample_id}.h5", r.sample_id,
                            table["spot_id"], width=4096, height=4096)
        rows.append({"sample_id": r.sample_id, "slide": r.slide, "patient": r.patient,
                     "counts": counts, "spots": spots})
    pd.DataFrame(rows).to_csv(root / "samples.tsv", sep="\t", index=False)
    return root / "samples.tsv"


def test_demo_spot_join(demo_dir, tmp_path, capsys):
    import anndata as ad

    sheet = demo_spot_setup(demo_dir, tmp_path, n=6)
    code, err = run_cli(["join", sheet, "-f", tmp_path / "features", "-o",
                         tmp_path / "d.h5ad", "--encoder", ENCODER], capsys)
    assert code == 0, err
    adata = ad.read_h5ad(tmp_path / "d.h5ad")
    truth = pd.read_csv(demo_dir / "truth" / "spots.tsv", sep="\t")
    assert adata.n_obs == len(truth)
    assert set(adata.var_names) <= set(pd.read_csv(demo_dir / "truth" / "genes.tsv",
                                                   sep="\t")["gene"])
    demo1 = read_tsv(tmp_path / "counts" / "demo1.tsv")
    part = adata[adata.obs["sample_id"] == "demo1"]
    np.testing.assert_array_equal(part.layers["counts"],
                                  demo1.loc[part.obs["spot_id"], adata.var_names].to_numpy())
    assert dict(zip(adata.obs["sample_id"], adata.obs["patient"], strict=True))["demo2"] == "P2"


def test_sparse_option_gives_the_same_values(demo_dir, tmp_path, capsys):
    import anndata as ad

    sheet = demo_spot_setup(demo_dir, tmp_path, n=1)
    for flag, name in (("--sparse", "s.h5ad"), ("--dense", "d.h5ad")):
        code, err = run_cli(["join", sheet, "-f", tmp_path / "features", "-o", tmp_path / name,
                             "--encoder", ENCODER, flag], capsys)
        assert code == 0, err
    s, d = ad.read_h5ad(tmp_path / "s.h5ad"), ad.read_h5ad(tmp_path / "d.h5ad")
    assert sparse.issparse(s.X) and not sparse.issparse(d.X)
    np.testing.assert_array_equal(s.X.toarray(), d.X)
    np.testing.assert_array_equal(s.layers["counts"].toarray(), d.layers["counts"])


# -- bulk -------------------------------------------------------------------------------------

def bulk_setup(demo_dir: Path, root: Path, *, patients: list[str] | None = None) -> Path:
    sheet = pd.read_csv(demo_dir / "samples_bulk.tsv", sep="\t")
    if patients is not None:
        sheet["patient"] = patients
    for sid in sheet["sample_id"]:
        write_bulk_features(root / "grid" / f"{sid}.h5")
    sheet.to_csv(root / "samples.tsv", sep="\t", index=False)
    return root / "samples.tsv"


def bulk_join(sheet: Path, expression: Path, out: Path, capsys, *extra) -> tuple[int, str]:
    return run_cli(["join", sheet, "-f", sheet.parent / "grid", "-o", out, "--mode", "bulk",
                    "--encoder", ENCODER, "--expression", expression, *extra], capsys)


def test_bulk_both_orientations_give_the_same_anndata(demo_dir, tmp_path, capsys):
    import anndata as ad

    sheet = bulk_setup(demo_dir, tmp_path)
    matrix = read_tsv(demo_dir / "bulk_counts.tsv")
    matrix.T.rename_axis("gene").to_csv(tmp_path / "genes_x_samples.csv")
    ad.AnnData(matrix.to_numpy(np.float32), obs=pd.DataFrame(index=matrix.index),
               var=pd.DataFrame(index=matrix.columns)).write_h5ad(tmp_path / "bulk.h5ad")
    runs = {
        "tsv-auto": (demo_dir / "bulk_counts.tsv", ()),
        "csv-T-auto": (tmp_path / "genes_x_samples.csv", ()),
        "csv-T-set": (tmp_path / "genes_x_samples.csv", ("--orientation", "genes_x_samples")),
        "h5ad": (tmp_path / "bulk.h5ad", ()),
    }
    results = {}
    for name, (expr, extra) in runs.items():
        code, err = bulk_join(sheet, expr, tmp_path / f"{name}.h5ad", capsys, *extra)
        assert code == 0, f"{name}: {err}"
        results[name] = ad.read_h5ad(tmp_path / f"{name}.h5ad")
    ref = results["tsv-auto"]
    assert ref.n_obs == len(matrix) and list(ref.obs_names) == list(matrix.index)
    np.testing.assert_array_equal(ref.layers["counts"], matrix.loc[:, ref.var_names].to_numpy())
    expected_x = np.log1p(matrix.to_numpy() / matrix.to_numpy().sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(ref.X, expected_x[:, matrix.columns.get_indexer(ref.var_names)],
                               rtol=1e-6)
    for name, other in results.items():
        assert list(other.var_names) == list(ref.var_names), name
        assert list(other.obs_names) == list(ref.obs_names), name
        np.testing.assert_array_equal(other.X, ref.X)
        np.testing.assert_array_equal(other.layers["counts"], ref.layers["counts"])
        pd.testing.assert_frame_equal(other.obs, ref.obs)
    assert ref.obs["features_path"].str.endswith(".h5").all()
    assert (ref.obs["n_tiles"] == 50).all()
    assert "obsm" not in ref.uns["slide2expr"] and len(ref.obsm) == 0


def test_bulk_ensembl_ids_mapped_and_summed(tmp_path, capsys, caplog):
    import anndata as ad

    caplog.set_level(logging.WARNING)
    ids = ["ENSG00000141510.16", "ENSG00000146648.18", "ENSG00000111640.15",
           "ENSG00000111640.14", "ENSG00000999999.1"]
    symbols = ["TP53", "EGFR", "GAPDH", "GAPDH", ""]
    values = np.array([[5, 1, 0], [0, 4, 2], [10, 20, 30], [1, 1, 1], [3, 0, 0]], dtype=float)
    samples = ["S1", "S2", "S3"]
    frame = pd.DataFrame(values, index=pd.Index(ids, name="gene_id"), columns=samples)
    frame.insert(0, "gene_name", symbols)
    frame.to_csv(tmp_path / "tpm.tsv", sep="\t")
    frame.drop(columns="gene_name").to_csv(tmp_path / "tpm_ids.tsv", sep="\t")
    pd.DataFrame({"gene_id": [i.split(".")[0] for i in ids[:4]], "gene_name": symbols[:4]}).to_csv(
        tmp_path / "map.csv", index=False)
    sheet = tmp_path / "samples.tsv"
    pd.DataFrame({"sample_id": samples, "slide": ["a", "b", "c"]}).to_csv(sheet, sep="\t", index=False)
    for s in samples:
        write_bulk_features(tmp_path / "grid" / f"{s}.h5")
    results = {}
    for name, gene_map, expr in (("column", "gene_name", "tpm.tsv"),
                                 ("file", str(tmp_path / "map.csv"), "tpm_ids.tsv")):
        code, err = bulk_join(sheet, tmp_path / expr, tmp_path / f"{name}.h5ad", capsys,
                              "--values", "tpm", "--gene-map", gene_map)
        assert code == 0, f"{name}: {err}"
        results[name] = ad.read_h5ad(tmp_path / f"{name}.h5ad")
    for adata in results.values():
        assert list(adata.var_names) == ["TP53", "EGFR", "GAPDH", "ENSG00000999999"]
        np.testing.assert_array_equal(adata[:, "GAPDH"].layers["counts"].ravel(), [11, 21, 31])
        np.testing.assert_allclose(adata[:, "GAPDH"].X.ravel(), np.log1p([11, 21, 31]), rtol=1e-6)
        assert adata.uns["slide2expr"]["transform"] == "log1p"
    assert "summed" in caplog.text and "no symbol" in caplog.text


def test_bulk_patient_average_and_match_on_patient(demo_dir, tmp_path, capsys):
    import anndata as ad

    patients = ["P1", "P1", "P2", "P3", "P3", "P3"]
    sheet = bulk_setup(demo_dir, tmp_path, patients=patients)
    matrix = read_tsv(demo_dir / "bulk_counts.tsv")
    code, err = bulk_join(sheet, demo_dir / "bulk_counts.tsv", tmp_path / "avg.h5ad", capsys,
                          "--patient-slides", "average")
    assert code == 0, err
    avg = ad.read_h5ad(tmp_path / "avg.h5ad")
    assert list(avg.obs_names) == ["P1", "P2", "P3"]
    np.testing.assert_allclose(avg["P3"].layers["counts"].ravel(),
                               matrix.loc[["demo4", "demo5", "demo6"], avg.var_names].mean().to_numpy(),
                               rtol=1e-6)
    assert avg.obs.loc["P1", "features_path"].count(";") == 1
    assert avg.obs.loc["P3", "n_tiles"] == 150 and avg.obs.loc["P3", "n_slides"] == 3
    # one profile per patient, every slide its own row
    per_patient = matrix.iloc[[0, 2, 3]].set_axis(["P1", "P2", "P3"])
    per_patient.to_csv(tmp_path / "patients.tsv", sep="\t")
    code, err = bulk_join(sheet, tmp_path / "patients.tsv", tmp_path / "pat.h5ad", capsys,
                          "--match-on", "patient")
    assert code == 0, err
    pat = ad.read_h5ad(tmp_path / "pat.h5ad")
    assert pat.n_obs == 6
    np.testing.assert_array_equal(pat["demo2"].layers["counts"], pat["demo1"].layers["counts"])


def test_bulk_does_not_load_features(tmp_path, demo_dir):
    """Features declared far larger than the join's memory: only shapes are read."""
    sheet = pd.read_csv(demo_dir / "samples_bulk.tsv", sep="\t").head(4)
    sheet.to_csv(tmp_path / "samples.tsv", sep="\t", index=False)
    n_tiles, dim = 1_000_000, 256  # 1 GB of float32 per slide, 4 GB in all; a few kB on disk
    for sid in sheet["sample_id"]:
        declare_huge_features(tmp_path / "grid" / f"{sid}.h5", n_tiles=n_tiles, dim=dim)
    matrix = read_tsv(demo_dir / "bulk_counts.tsv").head(4)
    matrix.to_csv(tmp_path / "bulk.tsv", sep="\t")
    out = tmp_path / "d.h5ad"
    if not Path("/proc/self/status").exists():
        pytest.skip("peak RSS is read from /proc (Linux)")
    code = (
        "import sys\n"
        "from slide2expr.cli import main\n"
        f"sys.argv = ['slide2expr', 'join', {str(tmp_path / 'samples.tsv')!r}, '-f', "
        f"{str(tmp_path / 'grid')!r}, '-o', {str(out)!r}, '--mode', 'bulk', '--encoder', "
        f"{ENCODER!r}, '--expression', {str(tmp_path / 'bulk.tsv')!r}]\n"
        "try:\n    main()\n"
        "finally:\n"
        "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "    print('PEAK_KB', hwm.split()[1])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    peak_mb = int(proc.stdout.split("PEAK_KB")[1].split()[0]) / 1024
    declared_mb = 4 * n_tiles * dim * 4 / 2**20
    assert peak_mb < 700 < declared_mb / 4, f"peak RSS {peak_mb:.0f} MB"
    import anndata as ad

    adata = ad.read_h5ad(out)
    assert (adata.obs["n_tiles"] == n_tiles).all()


# -- bad inputs -------------------------------------------------------------------------------

def _edit_counts(root: Path, edit) -> Path:
    path = root / "counts" / "demo1.tsv"
    frame = read_tsv(path)
    frame = edit(frame)
    frame.to_csv(path, sep="\t")
    return path


def _set_cell(value):
    def edit(frame):
        frame = frame.astype(object)
        frame.iloc[2, 3] = value
        return frame
    return edit


SPOT_CASES = {
    "nan": (lambda r: _edit_counts(r, _set_cell("NaN")), "counts/demo1.tsv", "1 missing or NaN"),
    "inf": (lambda r: _edit_counts(r, _set_cell("inf")), "counts/demo1.tsv", "1 infinite"),
    "negative": (lambda r: _edit_counts(r, _set_cell(-3)), "counts/demo1.tsv", "1 negative"),
    "non-numeric": (lambda r: _edit_counts(r, _set_cell("seven")), "counts/demo1.tsv",
                    "1 non-numeric cell"),
    "duplicate-spot": (lambda r: _edit_counts(r, lambda f: pd.concat([f, f.iloc[:2]])),
                       "counts/demo1.tsv", "2 duplicate spot ID"),
    "duplicate-gene": (lambda r: _edit_counts(
        r, lambda f: f.set_axis([*f.columns[:-1], f.columns[0]], axis=1)),
        "counts/demo1.tsv", "1 duplicate column name"),
    "spot-outside-slide": (lambda r: _edit_spots(r, lambda t: t.assign(
        pixel_x=np.where(t.index < 3, 5000.0, t.pixel_x))), "spots/demo1.tsv",
        "3 of"),
    "counts-without-position": (lambda r: _edit_spots(r, lambda t: t.iloc[2:]), "counts/demo1.tsv",
                                "2 spot(s) with counts have no position"),
    "spots-without-features": (lambda r: _drop_feature_rows(r, 4), "features/demo1.h5",
                               "4 of"),
    "features-spot-ids-mismatch": (lambda r: _truncate_spot_ids(r), "features/demo1.h5",
                                   "do not match"),
    "encoder-mismatch": (lambda r: _set_attr(r, "encoder", "resnet50"), "features/demo1.h5",
                         "resnet50"),
    "features-of-another-sample": (lambda r: _set_attr(r, "sample_id", "demo2"),
                                   "features/demo1.h5", "sample 'demo2'"),
}


def _edit_spots(root: Path, edit) -> Path:
    path = root / "spots" / "demo1.tsv"
    edit(pd.read_csv(path, sep="\t")).to_csv(path, sep="\t", index=False)
    return path


def _drop_feature_rows(root: Path, n: int) -> None:
    path = root / "features" / "demo1.h5"
    ids = read_features(path).spot_ids
    write_spot_features(path, "demo1", ids[n:], width=4096, height=4096)


def _truncate_spot_ids(root: Path) -> None:
    """One spot ID fewer than feature rows: a malformed file, so raw h5py."""
    path = root / "features" / "demo1.h5"
    with h5py.File(path, "r+") as f:
        ids = f["spot_ids"].asstr()[:]
        del f["spot_ids"]
        f.create_dataset("spot_ids", data=np.asarray(ids[:-1], dtype=object),
                         dtype=h5py.string_dtype("utf-8"))


def _set_attr(root: Path, key: str, value) -> None:
    """An attribute changed behind the writer's back (a bad value on purpose): raw h5py."""
    with h5py.File(root / "features" / "demo1.h5", "r+") as f:
        f.attrs[key] = value


@pytest.mark.parametrize("case", list(SPOT_CASES))
def test_bad_spot_input_exits_nonzero_and_writes_nothing(case, demo_dir, tmp_path, capsys):
    sheet = demo_spot_setup(demo_dir, tmp_path)
    breaker, culprit, count_text = SPOT_CASES[case]
    breaker(tmp_path)
    out = tmp_path / "out" / "dataset.h5ad"
    out.parent.mkdir()
    code, err = run_cli(["join", sheet, "-f", tmp_path / "features", "-o", out,
                         "--encoder", ENCODER], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and culprit in line and count_text in line, line
    assert "Fix:" in line
    assert_nothing_written(out)


def test_spots_without_features_are_dropped_with_on_missing_drop(demo_dir, tmp_path, capsys):
    import anndata as ad

    sheet = demo_spot_setup(demo_dir, tmp_path)
    _drop_feature_rows(tmp_path, 4)
    full = len(read_tsv(tmp_path / "counts" / "demo1.tsv"))
    code, err = run_cli(["join", sheet, "-f", tmp_path / "features", "-o", tmp_path / "d.h5ad",
                         "--encoder", ENCODER, "--on-missing", "drop"], capsys)
    assert code == 0, err
    adata = ad.read_h5ad(tmp_path / "d.h5ad")
    assert int((adata.obs["sample_id"] == "demo1").sum()) == full - 4
    assert adata.uns["slide2expr"]["dropped"]["spots_without_features"]["demo1"] == 4


@pytest.mark.parametrize("case", ["sheet-sample-missing", "matrix-sample-extra"])
def test_bulk_missing_samples_error_or_drop(case, demo_dir, tmp_path, capsys):
    import anndata as ad

    sheet = bulk_setup(demo_dir, tmp_path)
    matrix = read_tsv(demo_dir / "bulk_counts.tsv")
    if case == "sheet-sample-missing":
        matrix = matrix.drop(index=["demo2", "demo5"])
        expected, n_rows = "2 sample_id(s) of the sample sheet have no expression (demo2, demo5)", 4
    else:
        matrix = pd.concat([matrix, matrix.iloc[:1].set_axis(["ghost"])])
        expected, n_rows = "1 expression sample(s) are not in the sample sheet (ghost)", 6
    matrix.to_csv(tmp_path / "bulk.tsv", sep="\t")
    out = tmp_path / "d.h5ad"
    code, err = bulk_join(sheet, tmp_path / "bulk.tsv", out, capsys)
    assert code == 2 and "bulk.tsv" in err and expected in err, err
    assert_nothing_written(out)
    code, err = bulk_join(sheet, tmp_path / "bulk.tsv", out, capsys, "--on-missing", "drop")
    assert code == 0, err
    assert ad.read_h5ad(out).n_obs == n_rows


@pytest.mark.parametrize("case, expected", [
    ("duplicate-sample", "1 duplicate sample ID(s) (e.g. demo3)"),
    ("negative", "1 negative value(s) (e.g. in row 'demo4')"),
    ("non-numeric", "1 non-numeric cell(s) (e.g. row 'demo1', column 'TUMOUR2': 'n/a?')"),
])
def test_bad_bulk_matrix(case, expected, demo_dir, tmp_path, capsys):
    sheet = bulk_setup(demo_dir, tmp_path)
    matrix = read_tsv(demo_dir / "bulk_counts.tsv").astype(object)
    if case == "duplicate-sample":
        matrix = pd.concat([matrix, matrix.loc[["demo3"]]])
    elif case == "negative":
        matrix.loc["demo4", "NOISE1"] = -1
    else:
        matrix.loc["demo1", "TUMOUR2"] = "n/a?"
    matrix.to_csv(tmp_path / "bulk.tsv", sep="\t")
    out = tmp_path / "d.h5ad"
    code, err = bulk_join(sheet, tmp_path / "bulk.tsv", out, capsys,
                          "--orientation", "samples_x_genes")
    assert code == 2 and expected in err and "bulk.tsv" in err, err
    assert_nothing_written(out)


def test_log_values_may_be_negative(tmp_path):
    from slide2expr.inputs.expression import check_values

    m = np.array([[-1.0, 2.0]])
    check_values(m, source="x", values="log")
    with pytest.raises(InputError, match="1 negative"):
        check_values(m, source="x", values="tpm")


# -- spot tables ------------------------------------------------------------------------------

def test_read_spot_positions_layouts(her2st, tmp_path):
    t = read_spot_positions(her2st / "C3_selection.tsv", counts_path=her2st / "C3.tsv.gz")
    sel = pd.read_csv(her2st / "C3_selection.tsv", sep="\t")
    assert len(sel) == 182 and len(t) == 180  # two spots have a position but no counts
    sel.index = sel["x"].astype(str) + "x" + sel["y"].astype(str)
    np.testing.assert_array_equal(t[["x", "y"]].to_numpy(),
                                  sel.loc[t["spot_id"], ["pixel_x", "pixel_y"]].to_numpy())
    # generic CSV with a barcode column
    pd.DataFrame({"barcode": ["a", "b"], "pixel_x": [1.5, 2.5], "pixel_y": [3, 4]}).to_csv(
        tmp_path / "s.csv", index=False)
    g = read_spot_positions(tmp_path / "s.csv")
    assert list(g["spot_id"]) == ["a", "b"] and list(g["y"]) == [3.0, 4.0]
    with pytest.raises(InputError, match="layout not recognised"):
        pd.DataFrame({"a": [1], "b": [2]}).to_csv(tmp_path / "bad.tsv", sep="\t", index=False)
        read_spot_positions(tmp_path / "bad.tsv")


def test_r_style_header_and_ensembl_versions(tmp_path):
    from slide2expr.inputs.expression import read_bulk_matrix, strip_version

    # R's write.table: the header names only the data columns
    (tmp_path / "r.tsv").write_text("ENSG00000141510.16\tMYC\nS1\t1\t2\nS2\t3\t4\n")
    table = read_bulk_matrix(tmp_path / "r.tsv", orientation="samples_x_genes")
    assert list(table.genes) == ["ENSG00000141510", "MYC"]
    np.testing.assert_array_equal(table.dense(), [[1, 2], [3, 4]])
    assert strip_version("ENSG00000182378.14_PAR_Y") == "ENSG00000182378"
    assert strip_version("FO538757.1") == "FO538757.1"  # not Ensembl: a real her2st symbol
