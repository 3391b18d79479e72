"""Spatial context: windows past the edge, per-section neighbour means, the context head."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from slide2expr.contracts.tiles import TileSet, read_tiles, write_tiles
from slide2expr.errors import InputError
from slide2expr.join.context import add_context, neighbour_mean, section_mean
from slide2expr.keys import Key
from slide2expr.tile.context import context_windows
from slide2expr.train.config import TrainConfig
from slide2expr.train.cv import inner_groups
from slide2expr.train.run import run_training


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _spot_tiles(centres: np.ndarray, *, mpp: float = 1.0, size: int = 1000) -> TileSet:
    size0 = 112 / mpp
    coords = np.floor(centres - size0 / 2).astype(np.int64)
    attrs = {"sample_id": "s", "slide": "s.jpg", "slide_mpp": mpp, "mpp_source": "sheet",
             "target_mpp": 0.5, "tile_px": 224, "tile_px_level0": size0,
             "level0_width": size, "level0_height": size, "mode": "spots",
             "spot_diameter_um": 112.0}
    return TileSet(coords=coords, attrs=attrs,
                   spot_ids=np.array([f"x{i}" for i in range(len(centres))]))


# -- tile: context windows ------------------------------------------------------------------

def test_windows_are_centred_on_the_spots_and_padded_past_the_edge(tmp_path):
    spots = _spot_tiles(np.array([[500.0, 500.0], [50.0, 500.0], [10.0, 10.0]]))
    windows = context_windows(spots, 300)
    size0 = windows.tile_px_level0
    assert size0 == pytest.approx(300.0)
    centres = windows.coords + size0 / 2
    np.testing.assert_allclose(centres, spots.coords + spots.tile_px_level0 / 2, atol=1.0)
    pad = windows.extra["pad_fraction"]
    assert pad[0] == 0.0
    assert pad[1] == pytest.approx(100 / 300, abs=0.01)   # 100 of 300 px left of x = 0
    assert pad[2] > 0.5
    assert windows.attrs.n_padded == 2 and windows.attrs.padding == "white"
    assert windows.attrs.target_mpp == pytest.approx(300 / 224)
    # a real slide's mpp (her2st 0.69) gives a fractional window edge: inside stays unpadded
    her2st = context_windows(_spot_tiles(np.array([[500.0, 500.0]]) , mpp=0.69), 300)
    assert her2st.extra["pad_fraction"][0] == 0.0 and her2st.attrs.n_padded == 0
    write_tiles(tmp_path / "ctx300.h5", windows)
    back = read_tiles(tmp_path / "ctx300.h5")
    assert back.attrs.mode == "context" and list(back.spot_ids) == list(spots.spot_ids)


def test_the_slide_reader_pads_windows_past_the_edge_white(tmp_path):
    from slide2expr.inputs.slides import open_slide

    path = tmp_path / "slide.png"
    Image.fromarray(np.zeros((200, 200, 3), dtype=np.uint8)).save(path)
    with open_slide(path, sheet_mpp=1.0) as slide:
        img = slide.read_region_mpp(-100.0, 0.0, 200.0, 200.0, (200, 200))
    assert img.shape == (200, 200, 3)
    assert (img[:, :90] == 255).all()          # outside the slide: white padding
    assert (img[:, 110:] == 0).all()           # inside: the (black) slide


def test_context_windows_refuse_a_grid_tiling():
    spots = _spot_tiles(np.array([[500.0, 500.0]]))
    spots.attrs.mode = "grid"
    with pytest.raises(InputError, match="spot tiling"):
        context_windows(spots, 300)


# -- join: neighbour means and the slide mean -----------------------------------------------

def test_neighbour_means_never_use_another_sections_spots():
    rng = np.random.default_rng(0)
    xy = np.array([[0, 0], [100, 0], [0, 100]] * 2, dtype=float)  # sections overlap in space
    sections = np.array(["A"] * 3 + ["B"] * 3)
    feats = np.concatenate([rng.normal(size=(3, 4)), 1000 + rng.normal(size=(3, 4))])
    nbr = neighbour_mean(xy, feats, sections, radius_um=150)
    np.testing.assert_allclose(nbr[0], feats[:3].mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(nbr[3], feats[3:].mean(axis=0), rtol=1e-5)
    assert (np.abs(nbr[:3]) < 100).all()  # no trace of section B's large values
    slide = section_mean(feats, sections)
    np.testing.assert_allclose(slide[1], feats[:3].mean(axis=0), rtol=1e-5)


def test_a_spot_with_no_neighbour_gets_its_own_embedding():
    xy = np.array([[0, 0], [100, 0], [5000, 5000]], dtype=float)
    feats = np.arange(12, dtype=np.float32).reshape(3, 4)
    nbr = neighbour_mean(xy, feats, np.zeros(3), radius_um=150)
    np.testing.assert_array_equal(nbr[2], feats[2])
    np.testing.assert_allclose(nbr[0], feats[:2].mean(axis=0))
    tiny = neighbour_mean(xy, feats, np.zeros(3), radius_um=1)  # below the pitch: itself
    np.testing.assert_array_equal(tiny, feats)
    assert np.isfinite(nbr).all()
    with pytest.raises(InputError, match="not positive"):
        neighbour_mean(xy, feats, np.zeros(3), radius_um=0)


def test_add_context_writes_the_documented_keys():
    obsm = {Key.embedding("enc"): np.ones((4, 3), dtype=np.float32)}
    names = add_context(obsm, encoder="enc", sections=np.array(list("aabb")),
                        xy_um=np.zeros((4, 2)), neighbour_um=[300, 600], slide_mean=True)
    assert names == ["nbr300", "nbr600", "slide"]
    assert set(obsm) == {"X_enc", "X_enc_nbr300", "X_enc_nbr600", "X_enc_slide"}
    assert Key.context("enc", "nbr300") == "X_enc_nbr300" and Key.context("enc", "spot") == "X_enc"


# -- train: inputs, inner grouping, the context head ----------------------------------------

def neighbourhood_dataset(*, seed: int = 0, side: int = 12, dim: int = 8) -> ad.AnnData:
    """Two patients with two sections each on a 100 um grid. The genes follow the mean of
    feature 0 over each spot's 3 x 3 neighbourhood, so the spot alone predicts little and its
    neighbourhood nearly everything (the answer is known)."""
    rng = np.random.default_rng(seed)
    feats, xy, obs, ys = [], [], [], []
    for s in range(4):
        f = rng.normal(size=(side * side, dim)).astype(np.float32)
        grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)
        local = f[:, 0].reshape(side, side)
        padded = np.pad(local, 1, mode="edge")
        smooth = sum(padded[1 + dy:1 + dy + side, 1 + dx:1 + dx + side]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1)).ravel() / 9
        weights = np.array([1.0, -1.0, 0.5])
        y = 2 + np.outer(smooth / smooth.std(), weights) + 0.3 * rng.normal(size=(side * side, 3))
        feats.append(f)
        xy.append(grid * 100.0)
        ys.append(y)
        obs.append(pd.DataFrame({"sample_id": f"s{s}", "patient": f"p{s // 2}"},
                                index=[f"s{s}_{i}" for i in range(side * side)]))
    x = np.concatenate(ys).astype(np.float32)
    adata = ad.AnnData(X=x, obs=pd.concat(obs), var=pd.DataFrame(index=["G0", "G1", "G2"]))
    adata.obsm["spatial"] = np.concatenate(xy)
    adata.obsm["X_toy"] = np.concatenate(feats)
    add_context(adata.obsm, encoder="toy", sections=adata.obs["sample_id"].to_numpy(),
                xy_um=adata.obsm["spatial"], neighbour_um=[150], slide_mean=True)
    adata.uns["slide2expr"] = {"mode": "spot", "encoder": "toy"}
    return adata


FAST = {"folds": "loo", "max_epochs": 30, "min_epochs": 5, "hidden": 32, "patience": 8,
        "batch_size": 32, "baselines": ["ridge"], "genes": {"min_fraction": 0.0}}


def _mean_r(pred: ad.AnnData, layer: str) -> float:
    from slide2expr.train.baselines import pearson_columns

    rs = []
    for s in pred.obs["sample_id"].unique():
        rows = (pred.obs["sample_id"] == s).to_numpy()
        rs.append(np.nanmean(pearson_columns(pred.layers[layer][rows], pred.X[rows])))
    return float(np.mean(rs))


def test_context_head_beats_the_spot_head_when_the_signal_is_in_the_neighbourhood(tmp_path):
    adata = neighbourhood_dataset()
    spot = run_training(adata, head="mlp", config=TrainConfig.from_dict(FAST),
                        models_dir=tmp_path / "m1", predictions_path=tmp_path / "p1.h5ad")
    config = TrainConfig.from_dict({**FAST, "inputs": ["spot", "nbr150", "slide"]})
    ctx = run_training(adata, head="context", config=config,
                       models_dir=tmp_path / "m2", predictions_path=tmp_path / "p2.h5ad")
    r_spot, r_ctx = _mean_r(spot, "predicted"), _mean_r(ctx, "predicted")
    assert r_ctx > 0.6 and r_ctx > r_spot + 0.2, (r_spot, r_ctx)
    # the ridge baseline on the same inputs also sees the neighbourhood
    assert _mean_r(ctx, "baseline_ridge") > _mean_r(spot, "baseline_ridge") + 0.2
    train = ctx.uns["slide2expr"]["train"]
    assert list(train["inputs"]) == ["spot", "nbr150", "slide"]
    # each training fold holds one patient: inner validation is grouped by section
    assert list(train["inner_grouping"]) == ["sample_id"]


def test_ridge_and_the_head_receive_the_same_input_matrix(tmp_path, monkeypatch):
    import slide2expr.train.baselines as baselines
    import slide2expr.train.folds as folds

    seen: dict[str, list[np.ndarray]] = {"ridge": [], "head": []}
    real_ridge, real_module = baselines.ridge_baseline, folds.FoldDataModule

    def ridge(x_train, y_train, x_test, groups_train, **kw):
        seen["ridge"].append(np.concatenate([x_train, x_test]))
        return real_ridge(x_train, y_train, x_test, groups_train, **kw)

    class Module(real_module):
        def __init__(self, source, targets, **kw):
            super().__init__(source, targets, **kw)
            idx = np.concatenate([self.train_idx, self.val_idx, self.test_idx])
            seen["head"].append(source.matrix[np.sort(idx)])

    monkeypatch.setattr(baselines, "ridge_baseline", ridge)
    monkeypatch.setattr(folds, "FoldDataModule", Module)
    adata = neighbourhood_dataset(side=6)
    config = TrainConfig.from_dict({**FAST, "max_epochs": 2, "min_epochs": 1, "ensemble": 1,
                                    "head_inputs": {"context": ["spot", "nbr150"]}})
    run_training(adata, head="context", config=config, models_dir=tmp_path / "m",
                 predictions_path=tmp_path / "p.h5ad")
    expected = np.concatenate([adata.obsm["X_toy"], adata.obsm["X_toy_nbr150"]], axis=1)
    assert len(seen["ridge"]) == len(seen["head"]) == 2
    for r, h in zip(seen["ridge"], seen["head"], strict=True):
        assert r.shape == h.shape == (len(adata), 16)
        # same rows (ridge: train then test; head: sorted) and the same columns
        assert np.allclose(np.sort(r, axis=0), np.sort(h, axis=0))
        assert np.allclose(np.sort(h, axis=0), np.sort(expected, axis=0))


def test_a_missing_input_block_names_the_key_and_the_fix(tmp_path):
    adata = neighbourhood_dataset(side=4)
    config = TrainConfig.from_dict({**FAST, "inputs": ["spot", "ctx300"]})
    with pytest.raises(InputError, match=r"X_toy_ctx300.*tiling.context_um"):
        run_training(adata, head="mlp", config=config, models_dir=tmp_path / "m",
                     predictions_path=tmp_path / "p.h5ad")
    with pytest.raises(InputError, match="start with spot"):
        TrainConfig.from_dict({"inputs": ["nbr150", "spot"]})


def test_inner_grouping_falls_back_from_patients_to_sections_to_units():
    labels, name = inner_groups(np.array(["p1", "p2"]), np.array(["a", "b"]), group_by="patient")
    assert name == "patient" and list(labels) == ["p1", "p2"]
    labels, name = inner_groups(np.array(["p1"] * 3), np.array(["a", "a", "b"]),
                                group_by="patient")
    assert name == "sample_id" and list(labels) == ["a", "a", "b"]
    assert inner_groups(np.array(["p1"] * 2), np.array(["a", "a"]), group_by="patient")[1] == "units"


def test_head_settings_apply_to_their_head_only():
    config = TrainConfig.from_dict({"hidden": 256, "head_settings": {"context": {"hidden": 64}}})
    assert config.for_head("context").hidden == 64 and config.for_head("mlp").hidden == 256
    with pytest.raises(InputError, match=r"head_settings\.context"):
        TrainConfig.from_dict({"head_settings": {"context": {"hiden": 64}}})


def test_ensemble_members_validate_on_different_sections():
    from slide2expr.train.cv import inner_split

    groups = np.repeat(np.array(["a", "b", "c", "d"]), 5)
    masks = [inner_split(groups, fraction=0.25, seed=3, member=m) for m in range(4)]
    held = [set(groups[mask]) for mask in masks]
    assert all(len(h) == 1 for h in held) and set().union(*held) == {"a", "b", "c", "d"}
    np.testing.assert_array_equal(masks[0], inner_split(groups, fraction=0.25, seed=3))


def test_context_head_with_input_pca_and_output_basis_trains_and_reloads(tmp_path):
    from slide2expr.predict import load_trained_head

    adata = neighbourhood_dataset(side=8)
    config = TrainConfig.from_dict({**FAST, "max_epochs": 4, "min_epochs": 1,
                                    "inputs": ["spot", "nbr150"], "input_pca": 4,
                                    "output_rank": 2})
    out = run_training(adata, head="context", config=config, models_dir=tmp_path / "m",
                       predictions_path=tmp_path / "p.h5ad")
    head = load_trained_head(tmp_path / "m", fold=0)
    rows = (out.obs["fold"] == 0).to_numpy()
    x = np.concatenate([adata.obsm["X_toy"], adata.obsm["X_toy_nbr150"]], axis=1)[rows]
    np.testing.assert_allclose(head.predict_tiles(x), out.layers["predicted"][rows],
                               rtol=1e-4, atol=1e-4)
    module = head.members[0] if hasattr(head, "members") else head
    assert np.isfinite(out.layers["predicted"][rows]).all() and module is not None


def test_fold_statistics_of_the_context_head_ignore_the_held_out_sections(tmp_path):
    """Standardisation, input PCA and output basis of a fold come from its training units only:
    shifting every input block of the held-out patient leaves that fold's head unchanged."""
    from safetensors.torch import load_file

    config = TrainConfig.from_dict({**FAST, "max_epochs": 2, "min_epochs": 1,
                                    "inputs": ["spot", "nbr150", "slide"], "input_pca": 4,
                                    "output_rank": 2, "baselines": [], "select": "off"})
    clean = neighbourhood_dataset(side=6)
    shifted = clean.copy()
    held = (shifted.obs["patient"] == "p1").to_numpy()
    for key in ("X_toy", "X_toy_nbr150", "X_toy_slide"):
        shifted.obsm[key][held] += 100.0
    shifted.X[held] += 50.0
    for name, adata in (("clean", clean), ("shifted", shifted)):
        run_training(adata, head="context", config=config, models_dir=tmp_path / name,
                     predictions_path=tmp_path / f"{name}.h5ad")
    splits = pd.read_csv(tmp_path / "clean" / "splits.tsv", sep="\t")
    fold = int(splits.loc[splits["sample_id"] == "s2", "fold"].iloc[0])
    weights = [load_file(str(p)) for p in
               sorted((tmp_path / "clean").glob(f"fold{fold}/**/head.safetensors"))
               + sorted((tmp_path / "shifted").glob(f"fold{fold}/**/head.safetensors"))]
    assert len(weights) >= 2 and len(weights) % 2 == 0
    half = len(weights) // 2
    fitted = [k for k in weights[0] if k.startswith(("feature_", "target_", "pca_"))]
    assert {"feature_mean", "target_basis", "pca_0"} <= set(fitted)
    for a, b in zip(weights[:half], weights[half:], strict=True):
        for key in fitted:
            np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-5,
                                       err_msg=key)
