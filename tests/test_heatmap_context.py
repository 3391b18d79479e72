"""Heatmaps of context heads (their input blocks built on grid tiles) and the spread of the
averaged models (ensemble members, fold models) in predictions, tile maps and the report."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from slide2expr.contracts.tiles import TileSet
from slide2expr.errors import InputError
from slide2expr.heatmap import load_or_predict, read_tile_map, write_tile_map
from slide2expr.keys import Key
from slide2expr.testing import make_features, make_linear_model
from slide2expr.tile.context import context_windows, grid_context_windows

MPP = 0.5
TILE0 = 224.0           # level-0 px: 112 um tiles
NX, NY = 8, 3           # 8 x 3 grid tiles, feature 0 = 1 on the left half, 0 on the right


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _grid_tiles(nx: int = NX, ny: int = NY, *, x0: int = 224, y0: int = 224) -> TileSet:
    gx, gy = np.meshgrid(np.arange(nx), np.arange(ny))
    coords = np.stack([x0 + gx.ravel() * TILE0, y0 + gy.ravel() * TILE0], 1).astype(np.int64)
    attrs = {"sample_id": "toy", "slide": "toy.png", "slide_mpp": MPP, "mpp_source": "sheet",
             "target_mpp": 0.5, "tile_px": 224, "tile_px_level0": TILE0,
             "level0_width": 2400, "level0_height": 1200, "mode": "grid"}
    return TileSet(coords=coords, attrs=attrs)


def _write_features(path: Path, tiles: TileSet, feats: np.ndarray, **extra) -> Path:
    make_features(path, features=feats.astype(np.float32), tiles=tiles, encoder_attrs=extra)
    return path


def _neighbour_mean_brute(centres_um: np.ndarray, values: np.ndarray, r: float) -> np.ndarray:
    """Independent of the package: the mean of ``values`` over the points within ``r``."""
    d = np.linalg.norm(centres_um[:, None, :] - centres_um[None, :, :], axis=-1)
    return np.array([values[row <= r].mean() for row in d])


# -- tile: grid context windows -------------------------------------------------------------

def test_grid_context_windows_are_centred_on_the_grid_tiles_and_padded():
    grid = _grid_tiles()
    windows = grid_context_windows(grid, 300)
    size0 = 300 / MPP
    assert windows.tile_px_level0 == pytest.approx(size0)
    assert windows.attrs.tiling == "grid_ctx300" and windows.attrs.mode == "context"
    np.testing.assert_allclose(windows.coords + size0 / 2, grid.coords + TILE0 / 2, atol=1.0)
    assert windows.attrs.target_mpp == pytest.approx(300 / 224)
    assert windows.attrs.n_padded == 0  # 300 um around centres >= 168 um from the edge
    # 1000 um windows reach past the top-left corner: centre (168, 168) um, window from
    # -332 um on a 1200 x 600 um slide, so 668 x 600 um of it lies on the slide, the rest
    # is padded (white, recorded)
    big = grid_context_windows(grid, 1000)
    assert big.extra["pad_fraction"][0] == pytest.approx(1 - 0.668 * 0.600, abs=1e-3)
    assert big.attrs.n_padded == len(grid) and big.attrs.padding == "white"
    with pytest.raises(InputError, match="grid tiling"):
        grid_context_windows(TileSet(coords=grid.coords, attrs=grid.attrs.to_attrs() | {"mode": "spots"},
                                     spot_ids=np.arange(len(grid)).astype(str)), 300)
    with pytest.raises(InputError, match="spot tiling"):
        context_windows(grid, 300)


def test_context_tiles_command_takes_a_grid_tiles_file(tmp_path):
    from typer.testing import CliRunner

    from slide2expr.cli import app
    from slide2expr.contracts.tiles import read_tiles, write_tiles

    write_tiles(tmp_path / "grid.h5", _grid_tiles())
    out = tmp_path / "grid_ctx1000" / "toy.h5"
    result = CliRunner().invoke(app, ["context-tiles", str(tmp_path / "grid.h5"), "--um", "1000",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    back = read_tiles(out)
    assert back.attrs.tiling == "grid_ctx1000" and len(back) == NX * NY
    assert back.spot_ids is None


# -- heatmap: a context head's blocks on grid tiles, the answer known ----------------------

@pytest.fixture()
def context_run(tmp_path):
    """Grid features (feature 0 a step: 1 left, 0 right), grid_ctx300 features (feature 0 =
    5 + column), a dataset with the slide's spot vector, and two linear heads: ``spot``
    reads feature 0 of the tile, ``context`` reads feature 0 of each of its blocks
    [spot, ctx300, nbr300, slide] into one gene each."""
    grid = _grid_tiles()
    col = ((grid.coords[:, 0] - grid.coords[:, 0].min()) / TILE0).round().astype(int)
    feats = np.zeros((len(grid), 2), dtype=np.float32)
    feats[:, 0] = (col < NX // 2).astype(np.float32)
    feats[:, 1] = np.arange(len(grid)) / len(grid)      # an unused column, never read
    features = _write_features(tmp_path / "features" / "toy" / "grid" / "toy.h5", grid, feats)
    windows = grid_context_windows(grid, 300)
    ctx = np.zeros_like(feats)
    ctx[:, 0] = 5.0 + col
    _write_features(tmp_path / "features" / "toy" / "grid_ctx300" / "toy.h5", windows, ctx,
                    n_padded=windows.attrs.n_padded)
    dataset = tmp_path / "dataset.h5ad"
    obs = pd.DataFrame({"sample_id": ["other", "toy", "toy"]}, index=["u0", "u1", "u2"])
    data = ad.AnnData(X=np.zeros((3, 1), dtype=np.float32), obs=obs)
    data.obsm["X_toy"] = np.zeros((3, 2), dtype=np.float32)
    data.obsm["X_toy_slide"] = np.array([[9, 9], [7, 0], [7, 0]], dtype=np.float32)
    data.write_h5ad(dataset)

    genes = ["G_spot", "G_ctx", "G_nbr", "G_slide"]
    weight = np.zeros((4, 8))
    for g in range(4):
        weight[g, 2 * g] = 1.0                        # feature 0 of block g
    make_linear_model(tmp_path / "models" / "context" / "fold0", weight, np.zeros(4), genes=genes,
                 inputs=["spot", "ctx300", "nbr300", "slide"], blocks=[2, 2, 2, 2])
    spot_weight = np.zeros((4, 2))
    spot_weight[:, 0] = 1.0
    make_linear_model(tmp_path / "models" / "mlp" / "fold0", spot_weight, np.zeros(4), genes=genes,
                 inputs=["spot"])
    centres_um = (grid.coords + TILE0 / 2) * MPP
    return {"features": features, "dataset": dataset, "models": tmp_path / "models",
            "feats": feats, "col": col, "centres_um": centres_um, "tmp": tmp_path}


def test_a_context_head_paints_a_map_from_its_blocks_on_the_grid(context_run):
    run = context_run
    tmap, predicted = load_or_predict(run["features"], model_dir=run["models"] / "context",
                                      dataset=run["dataset"])
    spot_map, _ = load_or_predict(run["features"], model_dir=run["models"] / "mlp")
    assert predicted and tmap.genes == ["G_spot", "G_ctx", "G_nbr", "G_slide"]
    values = {g: tmap.column(g) for g in tmap.genes}
    step = run["feats"][:, 0]
    np.testing.assert_allclose(values["G_spot"], step, atol=1e-6)
    np.testing.assert_allclose(spot_map.column("G_nbr"), step, atol=1e-6)
    # ctx300: the window centred on each tile, in the grid's order
    np.testing.assert_allclose(values["G_ctx"], 5.0 + run["col"], atol=1e-5)
    # nbr300: the mean over grid tiles within 300 um (2 columns each side, not the corners)
    expected = _neighbour_mean_brute(run["centres_um"], step, 300.0)
    np.testing.assert_allclose(values["G_nbr"], expected, atol=1e-5)
    # ... so the map blurs the step where the spot-only map keeps it: lower just left of the
    # edge, higher just right of it, unchanged far from it
    nbr, col = values["G_nbr"], run["col"]
    assert (nbr[col == NX // 2 - 1] < 1 - 0.2).all() and (nbr[col == NX // 2] > 0.2).all()
    assert (nbr[col == 0] == pytest.approx(1.0)) and (nbr[col == NX - 1] == pytest.approx(0.0))
    # slide: the vector the spot model saw (the dataset's, for a slide with spots)
    np.testing.assert_allclose(values["G_slide"], 7.0, atol=1e-6)
    assert "dataset" in tmap.attrs.slide_block
    assert list(tmap.attrs.inputs) == ["spot", "ctx300", "nbr300", "slide"]


def test_a_new_slide_gets_the_grid_mean_as_its_slide_vector(context_run):
    run = context_run
    tmap, _ = load_or_predict(run["features"], model_dir=run["models"] / "context")
    np.testing.assert_allclose(tmap.column("G_slide"), run["feats"][:, 0].mean(), atol=1e-6)
    assert "grid tiles" in tmap.attrs.slide_block


def test_missing_or_misaligned_grid_context_features_are_one_clear_error(context_run):
    run = context_run
    ctx_path = run["features"].parent.parent / "grid_ctx300" / "toy.h5"
    shifted = _grid_tiles(x0=0)  # another tiling of the slide: centres 224 px off
    _write_features(ctx_path, grid_context_windows(shifted, 300),
                    np.zeros((NX * NY, 2), dtype=np.float32))
    with pytest.raises(InputError, match="not centred on the grid tiles"):
        load_or_predict(run["features"], model_dir=run["models"] / "context")
    ctx_path.unlink()
    with pytest.raises(InputError, match=r"grid context features.*not found"):
        load_or_predict(run["features"], model_dir=run["models"] / "context")


def test_a_multi_block_head_without_recorded_inputs_is_refused(context_run):
    run = context_run
    meta_path = run["models"] / "context" / "fold0" / "head.json"
    meta = json.loads(meta_path.read_text())
    meta.pop("inputs")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="does not name them"):
        load_or_predict(run["features"], model_dir=run["models"] / "context")


def test_heatmap_cli_paints_a_context_head(context_run):
    from typer.testing import CliRunner

    from slide2expr.cli import app

    run = context_run
    out = run["tmp"] / "heatmaps" / "context"
    result = CliRunner().invoke(app, [
        "heatmap", str(run["features"]), "--model-dir", str(run["models"] / "context"),
        "--dataset", str(run["dataset"]), "-o", str(out), "--map-only"])
    assert result.exit_code == 0, result.output
    tmap = read_tile_map(out / "toy.h5ad")
    np.testing.assert_allclose(tmap.column("G_slide"), 7.0, atol=1e-6)


# -- spread of the averaged models -----------------------------------------------------------

def test_tile_map_spread_equals_the_members_disagreement(context_run, tmp_path):
    """Two members of one fold predicting m - d and m + d: the map is m, the spread d; one
    member: no spread (None, no layer)."""
    from slide2expr.viewer.layers import tile_spread

    run = context_run
    models = tmp_path / "ens"
    weight = np.zeros((2, 2))
    weight[:, 0] = 1.0
    d = np.array([0.25, 1.5])
    make_linear_model(models / "fold0", weight, -d, genes=["A", "B"], inputs=["spot"])
    make_linear_model(models / "fold0" / "member1", weight, d, genes=["A", "B"], inputs=["spot"],
                 member=1)
    tmap, _ = load_or_predict(run["features"], model_dir=models)
    step = run["feats"][:, :1]
    np.testing.assert_allclose(tmap.values, np.repeat(step, 2, axis=1), atol=1e-6)
    np.testing.assert_allclose(tmap.spread, np.broadcast_to(d, tmap.values.shape), atol=1e-5)
    assert tmap.attrs.n_models == 2
    write_tile_map(tmp_path / "map.h5ad", tmap)
    back = read_tile_map(tmp_path / "map.h5ad")
    np.testing.assert_allclose(back.spread, tmap.spread)
    assert Key.PREDICTED_SD in ad.read_h5ad(tmp_path / "map.h5ad").layers
    np.testing.assert_allclose(tile_spread(back), tmap.spread)  # the viewer's hook sees it

    single, _ = load_or_predict(run["features"], model_dir=models / "fold0" / "member1")
    assert single.spread is None and single.attrs.n_models == 1
    write_tile_map(tmp_path / "one.h5ad", single)
    assert read_tile_map(tmp_path / "one.h5ad").spread is None
    assert Key.PREDICTED_SD not in ad.read_h5ad(tmp_path / "one.h5ad").layers


def test_fold_models_spread_on_a_new_slide(context_run, tmp_path):
    """A new slide averages every fold model: the spread is theirs (three folds at
    m - 1, m, m + 1: population SD sqrt(2/3))."""
    run = context_run
    weight = np.array([[1.0, 0.0]])
    for k, b in enumerate((-1.0, 0.0, 1.0)):
        make_linear_model(tmp_path / "folds" / f"fold{k}", weight, np.array([b]), genes=["A"],
                     inputs=["spot"], fold=k)
    tmap, _ = load_or_predict(run["features"], model_dir=tmp_path / "folds")
    np.testing.assert_allclose(tmap.spread, np.sqrt(2 / 3), atol=1e-5)


# -- train: the ensemble's spread in the predictions, and the report's line ----------------

def _two_patient_dataset(seed: int = 0, n: int = 40) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    feats, obs, ys = [], [], []
    for s in range(4):
        f = rng.normal(size=(n, 6)).astype(np.float32)
        y = 2 + np.outer(f[:, 0], [1.0, -0.5]) + 0.3 * rng.normal(size=(n, 2))
        feats.append(f)
        ys.append(y)
        obs.append(pd.DataFrame({"sample_id": f"s{s}", "patient": f"p{s // 2}"},
                                index=[f"s{s}_{i}" for i in range(n)]))
    adata = ad.AnnData(X=np.concatenate(ys).astype(np.float32), obs=pd.concat(obs),
                       var=pd.DataFrame(index=["G0", "G1"]))
    adata.obsm["X_toy"] = np.concatenate(feats)
    adata.obsm["X_toy_slide"] = np.concatenate([np.repeat(f.mean(0, keepdims=True), n, 0)
                                                for f in feats])
    adata.uns["slide2expr"] = {"mode": "spot", "encoder": "toy"}
    return adata


def test_ensemble_spread_is_written_per_unit_and_reported(tmp_path):
    from slide2expr.predict import load_fold_head
    from slide2expr.report.evaluate import build_report
    from slide2expr.train.config import TrainConfig
    from slide2expr.train.run import run_training

    adata = _two_patient_dataset()
    settings = {"folds": 2, "max_epochs": 3, "min_epochs": 1, "hidden": 8, "batch_size": 32,
                "baselines": ["ridge"], "genes": {"min_fraction": 0.0},
                "inputs": ["spot", "slide"], "select": "off",  # the head's members ship
                "spread": "members"}  # their SD as it is (train.spread; calibrated: test_spread)
    pred = run_training(adata, head="context", config=TrainConfig.from_dict(
        {**settings, "ensemble": 2}), models_dir=tmp_path / "m", predictions_path=tmp_path / "p.h5ad")
    sd = pred.layers[Key.PREDICTED_SD]
    x = np.concatenate([adata.obsm["X_toy"], adata.obsm["X_toy_slide"]], axis=1)
    for k in (0, 1):
        rows = (pred.obs["fold"] == k).to_numpy()
        outs = []
        for member in (tmp_path / "m" / f"fold{k}", tmp_path / "m" / f"fold{k}" / "member1"):
            module, meta = load_fold_head(member)
            assert meta["inputs"] == ["spot", "slide"]
            with torch.no_grad():
                outs.append(module.unstandardise(module.tile_outputs(
                    torch.from_numpy(x[rows]))).numpy())
        cols = [list(pred.var_names).index(g) for g in meta["genes"]]
        np.testing.assert_allclose(sd[np.ix_(rows, cols)], np.abs(outs[0] - outs[1]) / 2,
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(pred.layers[Key.PREDICTED][np.ix_(rows, cols)],
                                   (outs[0] + outs[1]) / 2, rtol=1e-4, atol=1e-5)
    assert (sd > 0).mean() > 0.9  # two seeds and validation sections: members differ
    report = build_report(pred, top_n=2, n_hvg=2, n_boot=10)
    assert report.summary["mean_predicted_sd"] == pytest.approx(float(np.nanmean(sd)), rel=1e-5)

    single = run_training(adata, head="mlp", config=TrainConfig.from_dict(
        {**settings, "inputs": ["spot"]}), models_dir=tmp_path / "m1",
        predictions_path=tmp_path / "p1.h5ad")
    assert Key.PREDICTED_SD not in single.layers
    assert "mean_predicted_sd" not in build_report(single, top_n=2, n_hvg=2,
                                                   n_boot=10).summary


def test_predict_builds_a_context_heads_blocks_on_a_new_slides_tiles(context_run):
    """`slide2expr predict` on grid features gives the heatmap's values for a context head
    (a new slide: the slide block is the grid tiles' mean)."""
    from slide2expr.predict import predict_files

    run = context_run
    out = predict_files([run["features"]], model_dir=run["models"] / "context",
                        output=run["tmp"] / "new.h5ad", level="tile")
    tmap, _ = load_or_predict(run["features"], model_dir=run["models"] / "context")
    np.testing.assert_allclose(np.asarray(out.X), tmap.values, atol=1e-6)
    np.testing.assert_allclose(out[:, "G_slide"].X.ravel(), run["feats"][:, 0].mean(),
                               atol=1e-6)
