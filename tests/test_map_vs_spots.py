"""Map versus spots: tile maps read at measured spots, against a floor and a ceiling.

Three synthetic sections of three regions each; every region is 4 x 4 tiles of 100 px with one
spot at each tile centre. A tile's first feature is a gradient ``f`` across the section, and a
spot's counts of gene GA grow with ``f`` (GB takes the rest of a fixed total), so a map that
follows ``f`` inside each region localises and one painted with the region's mean does not.
The floor (the head's region prediction on every tile) and the flat oracle (the region's
measured sum on every tile) are scored here independently from the spots; the ceiling (a spot
run's out-of-fold predictions) on the spots that run predicted.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from slide2expr.contracts.features import FeatureWriter
from slide2expr.contracts.tiles import TileSet
from slide2expr.errors import InputError
from slide2expr.report.map_vs_spots import CEILING, METHODS, has_spot_truth, score_maps

TILE, N = 100.0, 4
TOTAL = 200


class GradientHead:
    """A bulk head whose tile map follows the planted gradient (perfect localisation)."""

    genes = ("GA", "GB")

    def predict_tiles(self, x: np.ndarray) -> np.ndarray:
        return np.stack([x[:, 0], -x[:, 0]], axis=1)


def _write_features(path: Path, sample: str, coords: np.ndarray, feats: np.ndarray) -> None:
    tiles = TileSet(coords=coords.astype(np.int64), attrs={"sample_id": sample,
                                                            "tile_px_level0": TILE,
                                                            "slide_mpp": 1.0})
    with FeatureWriter(path, tiles, embed_dim=feats.shape[1],
                       attrs={"encoder": "toy", "weights": "random-init"}) as writer:
        writer.write(0, feats.astype(np.float32))
        writer.finish()


@pytest.fixture(scope="module")
def bulk_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[ad.AnnData, dict]:
    root = tmp_path_factory.mktemp("map_vs_spots")
    rng = np.random.default_rng(0)
    obs, bulk, truth = [], [], {}
    for s, section in enumerate(("S1", "S2", "S3")):
        spot_rows, count_rows = [], []
        for k in range(3):
            x0 = k * N * TILE + 50.0 * k  # regions side by side with gaps
            gx, gy = np.meshgrid(np.arange(N), np.arange(N))
            coords = np.stack([x0 + gx.ravel() * TILE, gy.ravel() * TILE], axis=1)
            f = (coords[:, 0] + coords[:, 1]) / 1000.0 + rng.normal(0, 0.05, len(coords))
            feats = np.column_stack([f, rng.normal(size=(len(coords), 3))])
            sample = f"{section}_{k}"
            _write_features(root / f"{sample}.h5", sample, coords, feats)
            ga = np.clip(np.round(20 + 60 * f + rng.normal(0, 3, len(f))), 1, TOTAL - 1)
            ids = [f"{sample}_{i}" for i in range(len(coords))]
            spot_rows.append(pd.DataFrame({"spot_id": ids, "pixel_x": coords[:, 0] + TILE / 2,
                                           "pixel_y": coords[:, 1] + TILE / 2}))
            count_rows.append(pd.DataFrame({"GA": ga, "GB": TOTAL - ga}, index=ids))
            summed = count_rows[-1].sum(axis=0).to_numpy(float)
            bulk.append(np.log1p(summed / summed.sum() * 1e4))
            obs.append({"sample_id": sample, "patient": "P", "section": section, "fold": s,
                        "features_path": str(root / f"{sample}.h5"),
                        "counts": str(root / f"{section}_counts.tsv"),
                        "spots": str(root / f"{section}_spots.tsv")})
            truth[sample] = (np.log1p(count_rows[-1].to_numpy(float) / TOTAL * 1e4),
                             np.repeat(bulk[-1][None], len(ga), axis=0))
        pd.concat(spot_rows).to_csv(root / f"{section}_spots.tsv", sep="\t", index=False)
        pd.concat(count_rows).to_csv(root / f"{section}_counts.tsv", sep="\t")
    frame = pd.DataFrame(obs)
    frame.index = frame["sample_id"]
    adata = ad.AnnData(X=np.stack(bulk), obs=frame, var=pd.DataFrame(index=["GA", "GB"]))
    adata.layers["predicted"] = np.stack(bulk) + rng.normal(0, 0.3, (len(bulk), 2))
    return adata, truth


def test_localising_map_beats_the_region_mean_floor(bulk_run):
    adata, truth = bulk_run
    assert has_spot_truth(adata.obs)
    heads = {0: GradientHead(), 1: GradientHead(), 2: GradientHead()}
    table, block = score_maps(adata, None, top_n=1, n_boot=200, seed=0, heads=heads)
    assert set(table["method"]) == set(METHODS)
    assert set(table["section"]) == {"S1", "S2", "S3", "all"}
    per = table[table["section"] != "all"].set_index(["section", "method"])
    predicted = pd.DataFrame(adata.layers["predicted"], index=adata.obs_names)
    for section in ("S1", "S2", "S3"):
        spots = np.concatenate([truth[f"{section}_{k}"][0] for k in range(3)])
        flat = np.concatenate([truth[f"{section}_{k}"][1] for k in range(3)])
        floor = np.repeat(predicted.loc[[f"{section}_{k}" for k in range(3)]].to_numpy(),
                          N * N, axis=0)
        for method, painted in (("region_truth", flat), ("floor", floor)):
            expected = np.mean([np.corrcoef(spots[:, g], painted[:, g])[0, 1] for g in (0, 1)])
            assert per.loc[(section, method), "mean_r_all"] == pytest.approx(expected, abs=1e-9)
        assert per.loc[(section, "head"), "mean_r_all"] > 0.9
        assert per.loc[(section, "head"), "mean_r_all"] > per.loc[(section, "floor"), "mean_r_all"]
        assert per.loc[(section, "head"), "n_spots"] == 3 * N * N
        low, high = per.loc[(section, "head"), ["ci_top_low", "ci_top_high"]]
        assert low <= per.loc[(section, "head"), "mean_r_top"] <= high
    assert per.loc[("S1", "spot_ridge"), "mean_r_all"] > 0.8  # spots are linear in the features
    assert CEILING not in set(table["method"]) and block["ceiling_method"] == "spot_ridge"
    diff = block["head_minus_floor_top"]
    assert diff["value"] > 0 and diff["ci"][0] > 0
    json.dumps(block, allow_nan=False)


def test_compare_table_carries_the_map_scores(bulk_run, tmp_path):
    """`slide2expr compare` (and so verify's comparison of runs) shows each map's score."""
    from slide2expr.repro.compare import build_compare, parse_run

    adata, _ = bulk_run
    heads = {0: GradientHead(), 1: GradientHead(), 2: GradientHead()}
    _, block = score_maps(adata, None, top_n=1, n_boot=0, seed=0, heads=heads)
    summary = {"n_genes": 2, "model": {"all": {"mean_r": 0.5}},
               "baselines": {"ridge": {"all": {"mean_r": 0.4}}}, "map_vs_spots": block}
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    table = build_compare([parse_run(f"enc:he2rna:{path}")]).set_index("model")
    assert list(table.index) == ["he2rna", "ridge", "map_floor", "map_region_truth",
                                 "map_spot_ridge"]
    for model, method in (("he2rna", "head"), ("ridge", "ridge"), ("map_floor", "floor"),
                          ("map_region_truth", "region_truth"), ("map_spot_ridge", "spot_ridge")):
        assert table.loc[model, "map_r_top"] == block["methods"][method]["mean_r_top"]
    assert table.loc["he2rna", "map_r_top"] > table.loc["map_floor", "map_r_top"]


def test_report_page_has_its_own_map_vs_spots_section(bulk_run):
    from slide2expr.report.html import map_vs_spots_section

    adata, _ = bulk_run
    heads = {0: GradientHead(), 1: GradientHead(), 2: GradientHead()}
    table, block = score_maps(adata, None, top_n=1, n_boot=50, seed=0, heads=heads)
    page = map_vs_spots_section(table, block)
    assert "<h2>Map versus spots</h2>" in page and "id='map-vs-spots'" in page
    assert page.count("<tr>") == 1 + len(table)  # header + one row a section and map
    assert "region prediction painted on every tile (floor)" in page
    assert map_vs_spots_section(None, None) == ""  # no spot truth: no section


def _spot_run(adata: ad.AnnData, truth: dict, path: Path, *, folds: dict[str, int],
              noise: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A spot run's predictions of S1-S3 (every other spot of each region, measured values
    plus noise; gene GB only, GA missing) written to ``path``; returns them by section."""
    rows, values, by_section = [], [], {}
    for section in ("S1", "S2", "S3"):
        kept = []
        for k in range(3):
            sample = f"{section}_{k}"
            spots = truth[sample][0]
            for i in range(0, len(spots), 2):
                rows.append({"sample_id": section, "spot_id": f"{sample}_{i}",
                             "fold": folds[section]})
                kept.append(spots[i, 1] + rng.normal(0, noise))
        values += kept
        by_section[section] = np.asarray(kept)
    obs = pd.DataFrame(rows)
    obs.index = [f"{r['sample_id']}_{r['spot_id']}" for r in rows]
    spot = ad.AnnData(X=np.zeros((len(rows), 1)), obs=obs, var=pd.DataFrame(index=["GB"]))
    spot.layers["predicted"] = np.asarray(values)[:, None]
    spot.write_h5ad(path)
    return by_section


def test_ceiling_is_the_spot_runs_prediction_on_the_spots_it_predicted(bulk_run, tmp_path):
    adata, truth = bulk_run
    rng = np.random.default_rng(1)
    path = tmp_path / "spot_predictions.h5ad"
    predicted = _spot_run(adata, truth, path, folds={"S1": 2, "S2": 0, "S3": 1}, noise=0.2,
                          rng=rng)
    heads = {0: GradientHead(), 1: GradientHead(), 2: GradientHead()}
    table, block = score_maps(adata, None, top_n=2, n_boot=50, seed=0, heads=heads,
                              ceiling=path)
    per = table.set_index(["section", "method"])
    assert block["ceiling_method"] == CEILING
    for section in ("S1", "S2", "S3"):
        measured = np.concatenate([truth[f"{section}_{k}"][0][::2, 1] for k in range(3)])
        expected = np.corrcoef(measured, predicted[section])[0, 1]
        row = per.loc[(section, CEILING)]
        # GA is missing from the spot run (NaN r), so the mean over genes is GB's r
        assert row["mean_r_all"] == pytest.approx(expected, abs=1e-9)
        assert row["n_spots"] == len(measured) == 3 * N * N // 2
        assert per.loc[(section, "head"), "n_spots"] == row["n_spots"]  # same spots for all
    share = block["head_share_of_ceiling_top"]
    assert share == pytest.approx(block["methods"]["head"]["mean_r_top"]
                                  / block["methods"][CEILING]["mean_r_top"], abs=1e-3)


def test_ceiling_whose_fold_holds_out_two_sections_is_refused(bulk_run, tmp_path):
    adata, truth = bulk_run
    path = tmp_path / "two_per_fold.h5ad"
    _spot_run(adata, truth, path, folds={"S1": 0, "S2": 0, "S3": 1}, noise=0.2,
              rng=np.random.default_rng(2))
    heads = {0: GradientHead(), 1: GradientHead(), 2: GradientHead()}
    with pytest.raises(InputError) as error:
        score_maps(adata, None, top_n=1, n_boot=0, seed=0, heads=heads, ceiling=path)
    line = error.value.one_line()
    assert "fold 0 of the spot run holds out S1 and S2" in line and str(path) in line
    assert "group_by: sample_id" in line and "\n" not in line


def test_report_refuses_a_ceiling_with_the_wrong_folds_in_one_line(bulk_run, tmp_path):
    """`slide2expr report --ceiling` with a spot run whose fold holds out two sections: exit
    2, one line naming the file, and no report written (the ceiling is read before the maps)."""
    import subprocess
    import sys

    from slide2expr.contracts.predictions import write_predictions

    adata, truth = bulk_run
    predictions = tmp_path / "predictions" / "he2rna.h5ad"
    predictions.parent.mkdir()
    written = adata.copy()
    written.layers["baseline_ridge"] = written.layers["predicted"]  # as train writes it
    write_predictions(written, predictions)
    bad = tmp_path / "spot_predictions.h5ad"
    _spot_run(adata, truth, bad, folds={"S1": 0, "S2": 0, "S3": 1}, noise=0.2,
              rng=np.random.default_rng(3))
    out = tmp_path / "report" / "he2rna"
    proc = subprocess.run([sys.executable, "-m", "slide2expr", "-q", "report", str(predictions),
                           "-o", str(out), "--bootstrap", "0", "--ceiling", str(bad)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "holds out S1 and S2" in lines[0]
    assert not out.exists() or not any(out.iterdir())
