"""Augmentation views: extracted beside the features, joined, training rows only, TTA."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from slide2expr.contracts.features import read_feature_meta, read_features
from slide2expr.contracts.tiles import TileSet, write_tiles
from slide2expr.errors import InputError
from slide2expr.join.views import read_section_views, stack_views
from slide2expr.keys import Key
from slide2expr.testing import spot_dataset
from slide2expr.train.config import TrainConfig
from slide2expr.train.run import run_training
from slide2expr.train.views import ViewRows

HER2ST_MPP = 0.69
FAST = {"folds": 3, "max_epochs": 8, "min_epochs": 5, "hidden": 32, "patience": 8,
        "batch_size": 32}


def planted_dataset(*, n_patients: int = 6, per_patient: int = 50, dim: int = 12,
                    seed: int = 0):
    """Spot-mode AnnData whose 4 genes are a nonlinear function of 12 toy features."""
    return spot_dataset(n_patients=n_patients, per_patient=per_patient, dim=dim, n_genes=4,
                        signal=lambda f, rng: np.tanh(f[:, :3]) @ rng.normal(size=(3, 4)),
                        noise_sd=0.5, seed=seed)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# -- training rows -----------------------------------------------------------------------------
def test_view_rows_index_training_units_only():
    from slide2expr.train.features import SpotFeatures

    rows = ViewRows(SpotFeatures(np.zeros((30, 2))), 10, ("hed_light", "rot90"),
                    ("hed_light",), ("rot90",))
    train = np.array([0, 3, 4])
    assert rows.train_rows(train).tolist() == [0, 3, 4, 10, 13, 14]
    assert rows.test_rows(np.array([7])).tolist() == [7, 27]
    assert rows.average(np.array([[1.0], [3.0]]), 1).tolist() == [[2.0]]


def split_dataset(view: str = "hed_light", *, seed: int = 0):
    """The planted toy dataset with one fold (patients p0, p1 held out) and a view whose
    values are the features plus noise."""
    adata = planted_dataset(seed=seed)
    adata.obs["split"] = np.where(adata.obs["patient"].isin(["p0", "p1"]), "test", "train")
    rng = np.random.default_rng(1)
    feats = adata.obsm["X_toy"]
    adata.obsm[Key.view("X_toy", view)] = (feats + 0.3 * rng.normal(size=feats.shape)
                                           ).astype(np.float32)
    return adata, (adata.obs["split"] == "test").to_numpy()


def train(adata, tmp_path: Path, name: str, **settings):
    config = TrainConfig.from_dict({**FAST, "baselines": ["ridge"], **settings})
    return run_training(adata, head="mlp", config=config, models_dir=tmp_path / name / "m",
                        predictions_path=tmp_path / name / "p.h5ad")


def test_held_out_units_get_no_augmented_rows(tmp_path):
    adata, test = split_dataset()
    a = train(adata, tmp_path, "a", augment_views=["hed_light"])
    # The held-out units' view rows replaced by garbage: if any of them were used (as
    # training rows, in the standardisation, for early stopping), the predictions would move.
    poisoned = adata.copy()
    key = Key.view("X_toy", "hed_light")
    poisoned.obsm[key] = poisoned.obsm[key].copy()
    poisoned.obsm[key][test] = 1e3 * np.random.default_rng(2).normal(
        size=(int(test.sum()), poisoned.obsm[key].shape[1]))
    b = train(poisoned, tmp_path, "b", augment_views=["hed_light"])
    for layer in (Key.PREDICTED, "baseline_ridge"):
        assert np.array_equal(a.layers[layer][test], b.layers[layer][test]), layer
    # ... while the training units' view rows are used: without them the fit differs
    c = train(adata, tmp_path, "c")
    assert not np.allclose(a.layers["baseline_ridge"][test], c.layers["baseline_ridge"][test])


def test_tta_averages_the_held_out_units_dihedral_views(tmp_path):
    adata, test = split_dataset("rot90")
    plain = train(adata, tmp_path, "plain")
    shift = np.random.default_rng(3).normal(size=adata.obsm["X_toy"].shape).astype(np.float32)
    runs = []
    for sign, name in ((1.0, "plus"), (-1.0, "minus")):
        d = adata.copy()
        d.obsm[Key.view("X_toy", "rot90")] = d.obsm["X_toy"] + sign * shift
        runs.append(train(d, tmp_path, name, tta=True).layers["baseline_ridge"][test])
    base = plain.layers["baseline_ridge"][test]
    assert not np.allclose(runs[0], base, atol=1e-3)  # the view moved the prediction ...
    # ... and the prediction is the mean over the clean and the rot90 row (ridge is linear)
    assert np.allclose((runs[0] + runs[1]) / 2, base, atol=1e-4)


def test_tta_without_dihedral_views_is_an_input_error(tmp_path):
    adata, _ = split_dataset("hed_light")
    with pytest.raises(InputError, match="dihedral"):
        train(adata, tmp_path, "x", tta=True)
    with pytest.raises(InputError, match="rot90"):
        train(adata, tmp_path, "y", augment_views=["rot90"])


# -- extraction and join -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def c3_tiles(her2st: Path, tmp_path_factory) -> Path:
    from slide2expr.inputs.slides import open_slide
    from slide2expr.inputs.spots import read_spot_positions
    from slide2expr.tile.grid import TilingParams, spot_tiles

    with open_slide(her2st / "C3_HE.jpg", sheet_mpp=HER2ST_MPP) as slide:
        table = read_spot_positions(her2st / "C3_selection.tsv", counts_path=her2st / "C3.tsv.gz")
        spots = spot_tiles(slide, table, "C3", TilingParams(), source="C3")
    path = tmp_path_factory.mktemp("tiles") / "C3.h5"
    write_tiles(path, TileSet(coords=spots.coords[:5], attrs=spots.attrs.to_attrs(),
                              spot_ids=spots.spot_ids[:5]))
    return path


def test_views_are_extracted_beside_the_features_and_joined(c3_tiles, tmp_path):
    from slide2expr.extract.encoders import get_encoder
    from slide2expr.extract.run import extract_features

    enc = get_encoder("efficientnet_lite0")
    kw = {"encoder": enc, "device": "cpu", "progress": False, "batch_size": 2}
    spots = tmp_path / "spots"
    plain = extract_features(c3_tiles, tmp_path / "plain.h5", num_workers=0, **kw)
    viewed = extract_features(c3_tiles, spots / "C3.h5", num_workers=1,
                              views=["rot90", "hed_light"], **kw)
    again = extract_features(c3_tiles, tmp_path / "again.h5", num_workers=0,
                             views=["hed_light"], **kw)
    a, v, g = (read_features(r.path) for r in (plain, viewed, again))
    assert read_feature_meta(viewed.path).views == ("rot90", "hed_light")
    assert np.array_equal(a.features, v.features)  # the tile itself is unchanged by views
    assert np.array_equal(v.views["hed_light"], g.views["hed_light"])  # fixed per-tile seeds
    for name in ("rot90", "hed_light"):
        assert v.views[name].shape == a.features.shape and np.isfinite(v.views[name]).all()
        assert not np.allclose(v.views[name], a.features)
    order = list(v.spot_ids[::-1])
    joined = read_section_views(spots, "C3", order, [], encoder="lite")
    assert set(joined) == {"X_lite__rot90", "X_lite__hed_light"}
    assert np.array_equal(joined["X_lite__rot90"], v.views["rot90"][::-1])
    with pytest.raises(InputError, match="different augmentation views"):
        stack_views({"C3": joined, "C4": {}})


def test_grid_tilings_get_no_views(c3_tiles, tmp_path):
    from slide2expr.contracts.tiles import read_tiles
    from slide2expr.extract.encoders import get_encoder
    from slide2expr.extract.run import extract_features

    tiles = read_tiles(c3_tiles)
    grid = tmp_path / "grid.h5"
    write_tiles(grid, TileSet(coords=tiles.coords[:2], attrs=tiles.attrs.to_attrs() | {"mode": "grid"}))
    out = extract_features(grid, tmp_path / "g.h5", encoder=get_encoder("efficientnet_lite0"),
                           device="cpu", progress=False, num_workers=0, views=["rot90"])
    assert read_feature_meta(out.path).views == ()
    with pytest.raises(InputError, match="unknown or repeated"):
        extract_features(grid, tmp_path / "h.h5", encoder="efficientnet_lite0", device="cpu",
                         progress=False, views=["rot45"])
