"""Files of other tools: TRIDENT/CLAM feature files, Space Ranger 3 / Visium HD Parquet
positions, and the real Space Ranger output in the shared test data."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from slide2expr.contracts.features import features_attrs, read_feature_meta, read_features
from slide2expr.errors import InputError
from slide2expr.inputs.spots import read_scalefactors, read_spot_positions


def write_trident(path: Path, *, n: int = 30, dim: int = 16, seed: int = 0,
                  leading_axis: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A features file as TRIDENT's ``extract_patch_features`` saves it (20x patches of 256 px
    from a 40x slide: 512 level-0 px). Raw h5py: another tool's layout, which no writer of
    the package makes."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    coords = (rng.integers(0, 40, size=(n, 2)) * 512).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f["features"] = feats[None] if leading_axis else feats
        f["features"].attrs.update({"name": path.stem, "savetodir": str(path.parent)})
        f["coords"] = coords
        f["coords"].attrs.update({"patch_size": 256, "patch_size_level0": 512,
                                  "level0_magnification": 40, "target_magnification": 20,
                                  "overlap": 0, "name": path.stem,
                                  "savetodir": str(path.parent)})
    return feats, coords


def write_clam(path: Path, *, level: int, downsample: tuple[float, float] | None,
               n: int = 12, dim: int = 8) -> np.ndarray:
    """A CLAM-layout file: patch attrs on coords (patch_level, downsample, level_dim); raw
    h5py, as for TRIDENT's."""
    rng = np.random.default_rng(1)
    with h5py.File(path, "w") as f:
        f["features"] = rng.normal(size=(n, dim)).astype(np.float32)
        f["coords"] = (rng.integers(0, 20, size=(n, 2)) * 1024).astype(np.int32)
        attrs = {"patch_size": 256, "patch_level": level, "level_dim": (20000, 15000),
                 "name": "slideA", "save_path": "x"}
        if downsample is not None:
            attrs["downsample"] = np.asarray(downsample)
        f["coords"].attrs.update(attrs)
    return f


def test_trident_layout_is_read_and_mapped(tmp_path):
    feats, coords = write_trident(tmp_path / "S1.h5")
    fs = read_features(tmp_path / "S1.h5")
    np.testing.assert_array_equal(fs.features, feats)
    np.testing.assert_array_equal(fs.coords, coords)
    assert fs.coords.dtype == np.int64 and fs.spot_ids is None
    a = fs.attrs
    assert a.source_layout == "trident" and a.mode == "grid"
    assert a.tile_px_level0 == 512.0 and a.tile_px == 256
    assert a.embed_dim == 16 and a.n_tiles == 30
    assert a.level0_magnification == 40 and a.slide_name == "S1"
    assert a.sample_id is None and a.encoder is None and a.slide_mpp is None
    meta = read_feature_meta(tmp_path / "S1.h5")
    assert meta.shape == (30, 16) and meta.attrs == a == features_attrs(tmp_path / "S1.h5")


def test_trident_leading_axis_and_encoder_attr(tmp_path):
    feats, _ = write_trident(tmp_path / "S2.h5", leading_axis=True)
    with h5py.File(tmp_path / "S2.h5", "a") as f:
        f["features"].attrs["encoder"] = "uni_v1"
    fs = read_features(tmp_path / "S2.h5")
    np.testing.assert_array_equal(fs.features, feats)
    assert fs.attrs.encoder == "uni_v1"
    assert read_feature_meta(tmp_path / "S2.h5").shape == (30, 16)


def test_clam_layout_patch_size_from_level_downsample(tmp_path):
    write_clam(tmp_path / "c1.h5", level=1, downsample=(4.0, 4.0))
    attrs = read_features(tmp_path / "c1.h5").attrs
    assert attrs.source_layout == "clam"
    assert attrs.tile_px_level0 == 1024.0 and attrs.tile_px == 256
    assert attrs.level0_width is None  # level_dim is at patch_level 1, not level 0
    write_clam(tmp_path / "c0.h5", level=0, downsample=None)
    attrs0 = read_features(tmp_path / "c0.h5").attrs
    assert attrs0.tile_px_level0 == 256.0
    assert (attrs0.level0_width, attrs0.level0_height) == (20000, 15000)
    write_clam(tmp_path / "bad.h5", level=2, downsample=None)
    with pytest.raises(InputError, match="patch_level 2 without a 'downsample'"):
        read_features(tmp_path / "bad.h5")


def test_own_files_are_not_remapped(tmp_path):
    # raw h5py: one of ours with a stray foreign attr on coords, which no writer of ours makes
    with h5py.File(tmp_path / "ours.h5", "w") as f:
        f["features"] = np.zeros((2, 3), np.float32)
        f["coords"] = np.zeros((2, 2), np.int64)
        f["coords"].attrs["patch_size"] = 99  # even with a stray attr there
        f.attrs.update({"slide2expr_format": "features/1", "tile_px_level0": 224.0,
                        "encoder": "toy"})
    attrs = read_features(tmp_path / "ours.h5").attrs
    assert attrs.tile_px_level0 == 224.0 and attrs.source_layout is None


def test_bulk_join_train_inputs_and_tile_map_accept_trident_files(tmp_path, capsys):
    """TRIDENT files go through the bulk join, the train stage's bag reader and the tile map."""
    import anndata as ad

    from slide2expr.inputs.samples import read_sample_sheet
    from slide2expr.join.run import JoinParams, build_dataset
    from slide2expr.predict import predict_tile_map
    from slide2expr.predict.bags import read_bag

    samples = ["S1", "S2", "S3"]
    for i, s in enumerate(samples):
        write_trident(tmp_path / "features" / f"{s}.h5", seed=i)
    pd.DataFrame({"sample_id": samples, "slide": [f"{s}.svs" for s in samples]}).to_csv(
        tmp_path / "s.tsv", sep="\t", index=False)
    rng = np.random.default_rng(0)
    pd.DataFrame(rng.poisson(5, size=(3, 4)) + 1, index=samples,
                 columns=["A", "B", "C", "D"]).to_csv(tmp_path / "expr.tsv", sep="\t")
    sheet = read_sample_sheet(tmp_path / "s.tsv", mode="bulk", check_files=False)
    adata = build_dataset(sheet, tmp_path / "features", JoinParams(mode="bulk", encoder="uni"),
                          expression=tmp_path / "expr.tsv")
    assert isinstance(adata, ad.AnnData) and list(adata.obs["n_tiles"]) == [30, 30, 30]
    assert adata.uns["slide2expr"]["embed_dim"] == 16
    feats, coords = read_bag(tmp_path / "features" / "S1.h5")
    assert feats.shape == (30, 16) and coords.shape == (30, 2)
    fs = read_features(tmp_path / "features" / "S1.h5")

    class Head:  # a trained head's interface: genes and per-tile predictions
        genes = ("A", "B")

        def predict_tiles(self, x):
            return np.stack([x[:, 0], x[:, 1]], axis=1)

    tmap = predict_tile_map(fs, Head(), source=tmp_path / "features" / "S1.h5")
    assert tmap.tile_size0 == 512.0
    np.testing.assert_array_equal(tmap.coords, fs.coords)
    np.testing.assert_array_equal(tmap.values[:, 0], fs.features[:, 0])


# -- Space Ranger -----------------------------------------------------------------------------

def test_real_space_ranger_positions_and_parquet(test_data: Path, tmp_path):
    """Space Ranger 1 CSV (real, no header) and the same table as Space Ranger 3 Parquet."""
    visium = test_data / "visium"
    csv = read_spot_positions(visium)
    assert len(csv) == 100 and csv["spot_id"].str.endswith("-1").all()
    sf = read_scalefactors(visium / "spatial")
    assert sf["spot_diameter_fullres"] == pytest.approx(89.43, abs=0.01)
    raw = pd.read_csv(visium / "spatial" / "tissue_positions_list.csv", header=None,
                      names=["barcode", "in_tissue", "array_row", "array_col",
                             "pxl_row_in_fullres", "pxl_col_in_fullres"])
    np.testing.assert_array_equal(csv["x"], raw["pxl_col_in_fullres"].to_numpy(float))
    # Space Ranger 3 / Visium HD: outs/spatial/tissue_positions.parquet, with a header
    spatial = tmp_path / "outs" / "spatial"
    spatial.mkdir(parents=True)
    raw.to_parquet(spatial / "tissue_positions.parquet", index=False)
    (spatial / "scalefactors_json.json").write_text(json.dumps(sf))
    for where in (tmp_path / "outs", spatial, spatial / "tissue_positions.parquet"):
        pq = read_spot_positions(where)
        pd.testing.assert_frame_equal(pq[["spot_id", "x", "y"]], csv[["spot_id", "x", "y"]])
    counts = read_spot_positions(spatial / "tissue_positions.parquet",
                                 counts_path=visium / "filtered_feature_bc_matrix.h5")
    assert len(counts) == 100


def test_bad_parquet_is_one_input_error(tmp_path):
    (tmp_path / "tissue_positions.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="cannot read Space Ranger positions"):
        read_spot_positions(tmp_path / "tissue_positions.parquet")
