"""Train stage: folds, gene selection, heads, baselines, outputs, CLI, and the demo's truth."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from slide2expr.contracts.features import read_feature_meta, read_features
from slide2expr.errors import InputError
from slide2expr.predict import load_trained_head
from slide2expr.testing import make_features
from slide2expr.train.baselines import choose_alpha, pearson_columns
from slide2expr.train.config import GeneSelection, TrainConfig
from slide2expr.train.cv import assign_folds
from slide2expr.train.data import FoldDataModule
from slide2expr.train.features import SpotFeatures
from slide2expr.train.gene_selection import select_training_genes
from slide2expr.train.heads import ABMILHead, HE2RNAHead
from slide2expr.train.heads.he2rna import topk_mean
from slide2expr.train.run import run_training

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _one_thread():
    """Small models train fastest on one thread; conftest restores the count afterwards."""
    torch.set_num_threads(1)

FAST = {"folds": 3, "max_epochs": 25, "min_epochs": 5, "hidden": 32, "patience": 8,
        "batch_size": 32}


# -- synthetic data -----------------------------------------------------------------------
def planted_dataset(*, n_patients: int = 6, per_patient: int = 50, dim: int = 12,
                    n_signal: int = 4, n_noise: int = 4, seed: int = 0) -> ad.AnnData:
    """Spot-mode AnnData: SIG genes are a nonlinear function of the features, NOISE genes not.

    X is built directly in log units (no library-size coupling between genes), so the noise
    genes carry no signal at all.
    """
    rng = np.random.default_rng(seed)
    n = n_patients * per_patient
    feats = rng.normal(size=(n, dim)).astype(np.float32)
    weights = rng.normal(size=(3, n_signal))
    signal = np.tanh(feats[:, :3]) @ weights
    signal = (signal - signal.mean(0)) / signal.std(0)
    x_sig = 2.0 + signal + 0.5 * rng.normal(size=(n, n_signal))
    x_noise = 2.0 + rng.normal(size=(n, n_noise))
    x = np.clip(np.concatenate([x_sig, x_noise], axis=1), 0, None).astype(np.float32)
    obs = pd.DataFrame({"sample_id": [f"s{i // per_patient}" for i in range(n)],
                        "patient": [f"p{i // per_patient}" for i in range(n)]},
                       index=[f"u{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"SIG{i}" for i in range(n_signal)] +
                       [f"NOISE{i}" for i in range(n_noise)])
    adata = ad.AnnData(X=x, obs=obs, var=var)
    adata.layers["counts"] = np.round(np.expm1(x) * 10).astype(np.float32)
    adata.obsm["X_toy"] = feats
    adata.obsm["spatial"] = rng.uniform(0, 1000, size=(n, 2))
    adata.uns["slide2expr"] = {"mode": "spot", "encoder": "toy"}
    return adata


def write_bulk_dataset(root: Path, *, n_slides: int = 60, dim: int = 8, seed: int = 0,
                       n_genes: int = 2) -> ad.AnnData:
    """Bulk-mode AnnData with one feature file per slide: eight 'hot' tiles of each slide
    carry the slide's level ``s`` in feature 0, gene 0 follows ``s``, the others are noise."""
    rng = np.random.default_rng(seed)
    rows, paths = [], []
    for i in range(n_slides):
        n_tiles = int(rng.integers(20, 40))
        level = rng.uniform(0, 1)
        feats = rng.normal(size=(n_tiles, dim)).astype(np.float32)
        feats[rng.permutation(n_tiles)[:8], 0] += 4.0 * level
        coords = rng.integers(0, 5000, size=(n_tiles, 2)).astype(np.int64)
        path = root / f"slide{i}.h5"
        make_features(path, features=feats, coords=coords, sample_id=f"slide{i}",
                      tile_px_level0=448.0)
        paths.append(str(path))
        rows.append([2 + 2 * level + 0.1 * rng.normal(), *list(2 + rng.normal(size=n_genes - 1))])
    x = np.asarray(rows, dtype=np.float32)
    obs = pd.DataFrame({"sample_id": [f"slide{i}" for i in range(n_slides)],
                        "patient": [f"p{i}" for i in range(n_slides)], "features_path": paths},
                       index=[f"slide{i}" for i in range(n_slides)])
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    adata.uns["slide2expr"] = {"mode": "bulk", "encoder": "toy"}
    return adata


def demo_dataset(demo_dir: Path) -> ad.AnnData:
    """Spot dataset of the demo cohort with colour-statistics features of 100 um patches.

    Targets are log1p of counts per 10k *reference* counts (the noise and housekeeping
    genes, whose rates do not depend on the tissue): with plain CP10k the planted genes'
    large changes move the library size, which gives every noise gene a real, tissue-driven
    signal and would make "noise genes are not predicted" false by construction.
    """
    from slide2expr.inputs.slides import open_slide

    truth = pd.read_csv(demo_dir / "truth" / "genes.tsv", sep="\t").set_index("gene")
    sheet = pd.read_csv(demo_dir / "samples.tsv", sep="\t")
    feats, counts, obs = [], [], []
    for row in sheet.itertuples():
        spots = pd.read_csv(row.spots, sep="\t", dtype={"spot_id": str})
        table = pd.read_csv(row.counts, sep="\t", index_col=0)
        table.index = table.index.astype(str)
        slide = open_slide(row.slide)
        half = 50.0 / slide.mpp
        for s in spots.itertuples():
            img = slide.read_region_mpp(int(s.pixel_x - half), int(s.pixel_y - half),
                                        int(2 * half), int(2 * half), out_size=(50, 50))
            feats.append(_colour_features(img))
        slide.close()
        counts.append(table.loc[spots["spot_id"]].to_numpy(dtype=np.float32))
        obs.append(pd.DataFrame({"sample_id": row.sample_id, "patient": row.patient},
                                index=row.sample_id + ":" + spots["spot_id"]))
    c = np.concatenate(counts)
    genes = list(table.columns)
    reference = truth.loc[genes, "kind"].isin(["noise", "housekeeping"]).to_numpy()
    size = c[:, reference].sum(axis=1, keepdims=True)
    adata = ad.AnnData(X=np.log1p(c / size * 1e4).astype(np.float32), obs=pd.concat(obs),
                       var=pd.DataFrame(index=genes))
    adata.layers["counts"] = c
    adata.obsm["X_colour"] = np.asarray(feats, dtype=np.float32)
    adata.uns["slide2expr"] = {"mode": "spot", "encoder": "colour"}
    return adata


def _colour_features(img: np.ndarray) -> np.ndarray:
    x = img.reshape(-1, 3).astype(np.float32) / 255
    gray = x.mean(axis=1)
    return np.concatenate([x.mean(0), x.std(0), np.quantile(gray, [0.05, 0.25, 0.5, 0.75, 0.95]),
                           [(gray < 0.45).mean(), (gray < 0.6).mean(), (gray > 0.85).mean(),
                            ((x[:, 2] - x[:, 1]) > 0.15).mean()]])


def _train(adata, tmp_path: Path, *, head: str = "mlp", name: str = "run", **settings):
    config = TrainConfig.from_dict({**FAST, **settings})
    models = tmp_path / name / "models" / head
    preds = tmp_path / name / "predictions" / f"{head}.h5ad"
    out = run_training(adata, head=head, config=config, models_dir=models, predictions_path=preds)
    return out, models, preds


# -- folds --------------------------------------------------------------------------------
def test_folds_are_grouped_seeded_and_balanced():
    groups = np.repeat([f"p{i}" for i in range(10)], [5, 9, 12, 3, 7, 8, 10, 4, 6, 11])
    a = assign_folds(groups, 5, seed=1)
    assert np.array_equal(a, assign_folds(groups, 5, seed=1))
    for g in np.unique(groups):  # a patient never straddles folds
        assert len(np.unique(a[groups == g])) == 1
    sizes = np.bincount(a)
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 12
    others = [assign_folds(groups, 5, seed=s) for s in range(2, 8)]
    assert any(not np.array_equal(a, o) for o in others)
    loo = assign_folds(groups, "loo", seed=0)
    assert len(np.unique(loo)) == 10


def test_fewer_patients_than_folds_is_an_input_error():
    with pytest.raises(InputError, match="3 patient groups are fewer than the 5 folds"):
        assign_folds(np.array(["a", "b", "c", "a"]), 5, seed=0)
    with pytest.raises(InputError, match="one group"):
        assign_folds(np.array(["a", "a"]), 2, seed=0)


def test_split_column_without_training_units_is_an_input_error(tmp_path):
    adata = planted_dataset(n_patients=3, per_patient=10)
    adata.obs["split"] = "test"
    with pytest.raises(InputError, match="no training data"):
        _train(adata, tmp_path)


def test_split_column_overrides_cross_validation(tmp_path):
    adata = planted_dataset(n_patients=4, per_patient=30)
    adata.obs["split"] = np.where(adata.obs["patient"] == "p3", "test", "train")
    out, models, _ = _train(adata, tmp_path, max_epochs=3)
    test = (adata.obs["split"] == "test").to_numpy()
    assert (out.obs["fold"].to_numpy()[test] == 0).all()
    assert (out.obs["fold"].to_numpy()[~test] == -1).all()
    assert np.isfinite(out.layers["predicted"][test]).all()
    assert np.isnan(out.layers["predicted"][~test]).all()
    assert len(load_trained_head(models, sample_id="s0").members) == 1  # never held out: fold 0


def test_all_constant_targets_is_an_input_error(tmp_path):
    adata = planted_dataset(n_patients=3, per_patient=10)
    adata.X = np.full(adata.shape, 1.5, dtype=np.float32)
    with pytest.raises(InputError, match="constant"):
        _train(adata, tmp_path)


def test_wrong_head_for_the_mode_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="bulk mode"):
        _train(planted_dataset(n_patients=3, per_patient=10), tmp_path, head="he2rna")


# -- gene selection and standardisation ---------------------------------------------------
def test_gene_selection_ignores_held_out_units(tmp_path):
    """LEAK is huge in patient p0's spots only: no fold that holds p0 out may pick it."""
    adata = planted_dataset(n_patients=4, per_patient=20, n_signal=3, n_noise=3)
    x = adata.X.copy()
    leak = np.where(adata.obs["patient"] == "p0", 9.0, 0.0)[:, None].astype(np.float32)
    x = np.concatenate([x, leak], axis=1)
    new = ad.AnnData(X=x, obs=adata.obs, var=pd.DataFrame(index=[*adata.var_names, "LEAK"]),
                     obsm=dict(adata.obsm), uns=dict(adata.uns))
    out, _, _ = _train(new, tmp_path, folds=4, max_epochs=2, genes={"method": "mean", "n_top": 3})
    folds = out.uns["slide2expr"]["train"]["folds"]
    p0_fold = int(out.obs.loc[out.obs["patient"] == "p0", "fold"].iloc[0])
    assert "LEAK" not in list(folds[f"fold{p0_fold}"]["genes"])
    # ... while folds that train on p0 see it as the most expressed gene.
    assert all("LEAK" in list(f["genes"]) for k, f in folds.items() if k != f"fold{p0_fold}")
    held = (out.obs["fold"] == p0_fold).to_numpy()
    assert np.isnan(out.layers["predicted"][held, list(out.var_names).index("LEAK")]).all()


def test_select_genes_filters_and_ranks():
    rng = np.random.default_rng(0)
    x = rng.gamma(2.0, size=(50, 6)).astype(np.float32) * np.array([1, 2, 3, 4, 5, 6])
    x[:, 0] = 0.0                      # constant: never selected
    x[:45, 1] = 0.0                    # detected in 10% of units
    chosen = select_training_genes(x, np.arange(6), settings=GeneSelection(method="mean", n_top=2))
    assert list(chosen) == [4, 5]
    everything = select_training_genes(x, np.arange(6), settings=GeneSelection(min_fraction=0.2))
    assert list(everything) == [2, 3, 4, 5]
    hvg = select_training_genes(x, np.arange(6), settings=GeneSelection(method="hvg", n_top=3))
    assert len(hvg) == 3 and 0 not in hvg


def test_gene_list_restricts_the_candidates(tmp_path):
    x = np.random.default_rng(0).gamma(2.0, size=(30, 4)).astype(np.float32)
    names = np.array(["A", "B", "C", "D"])
    listed = tmp_path / "genes.txt"
    listed.write_text("# a published set\nD\nB\nNOT_THERE\n")
    chosen = select_training_genes(x, names, settings=GeneSelection(list=str(listed)))
    assert list(names[chosen]) == ["B", "D"]
    with pytest.raises(InputError, match="does not exist"):
        select_training_genes(x, names, settings=GeneSelection(list=str(tmp_path / "missing.txt")))


def test_standardisation_is_fitted_on_training_units_only():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 3)).astype(np.float32)
    feats[30:] += 100.0                # held-out units are far away
    y = rng.normal(size=(40, 2)).astype(np.float32)
    y[30:] += 50.0
    data = FoldDataModule(SpotFeatures(feats), y, train_idx=np.arange(25),
                          val_idx=np.arange(25, 30), test_idx=np.arange(30, 40), batch_size=8)
    stats = data.standardisation()
    np.testing.assert_allclose(stats["feature_mean"], feats[:25].astype(np.float64).mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["target_std"], y[:25].astype(np.float64).std(0), rtol=1e-9)


# -- heads --------------------------------------------------------------------------------
def test_topk_mean_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    scores = torch.tensor(rng.normal(size=(3, 7, 2)), dtype=torch.float32)
    n_valid = [7, 4, 1]
    mask = torch.tensor([[i < n for i in range(7)] for n in n_valid])
    ks = [1, 2, 5]
    got = topk_mean(scores, mask, ks).numpy()
    for b, n in enumerate(n_valid):
        for g in range(2):
            s = np.sort(scores[b, :n, g].numpy())[::-1]
            expected = np.mean([s[:min(k, n)].mean() for k in ks])
            assert got[b, g] == pytest.approx(expected, rel=1e-5)


def test_bulk_heads_expose_tile_outputs_consistent_with_the_slide_output():
    torch.manual_seed(0)
    x = torch.randn(30, 8)
    he2rna = HE2RNAHead(in_dim=8, n_genes=3, hidden=16, ks=[1, 5, 10]).eval()
    tiles = he2rna.tile_outputs(x)
    slide = he2rna({"x": x[None]})[0]
    top = tiles.sort(dim=0, descending=True).values
    expected = torch.stack([top[:k].mean(0) for k in (1, 5, 10)]).mean(0)
    torch.testing.assert_close(slide, expected)
    abmil = ABMILHead(in_dim=8, n_genes=3, hidden=16, attention_dim=8).eval()
    weights = abmil.attention(x)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(abmil({"x": x[None]})[0], weights @ abmil.tile_outputs(x))
    # Padding must not change a bag's output.
    padded = torch.cat([x, torch.zeros(5, 8)])[None]
    mask = torch.tensor([[True] * 30 + [False] * 5])
    torch.testing.assert_close(abmil({"x": padded, "mask": mask})[0], abmil({"x": x[None]})[0])
    torch.testing.assert_close(he2rna({"x": padded, "mask": mask})[0], slide)


# -- training end to end ------------------------------------------------------------------
def test_spot_training_recovers_signal_not_noise_and_writes_the_contract(tmp_path):
    adata = planted_dataset()
    out, models, preds = _train(adata, tmp_path)
    assert preds.is_file() and list(out.obs_names) == list(adata.obs_names)
    # One member a fold: no spread, unless a fold ships the blend of the head and ridge
    # (two models, so their weighted spread); the selection decides, as recorded.
    blend_folds = out.uns["slide2expr"]["train"]["selection"]["blend_folds"]
    assert set(out.layers) == {"predicted", "predicted_head", "baseline_ridge", "baseline_hest",
                               "baseline_mean", *(["predicted_sd"] if len(blend_folds) else [])}
    assert np.isfinite(out.layers["predicted"]).all()  # every unit exactly one OOF prediction
    splits = pd.read_csv(models / "splits.tsv", sep="\t")
    assert list(splits["unit"]) == list(adata.obs_names)
    assert np.array_equal(splits["fold"].to_numpy(), out.obs["fold"].to_numpy())
    assert sorted(splits["fold"].unique()) == [0, 1, 2]
    r = pd.Series(pearson_columns(out.layers["predicted"], out.X), index=out.var_names)
    assert r.filter(like="SIG").min() > 0.6, r
    assert r.filter(like="NOISE").abs().max() < 0.2, r
    ridge = pearson_columns(out.layers["baseline_ridge"], out.X)
    assert np.nanmean(ridge[:4]) > 0.4

    for k in range(3):
        fold_dir = models / f"fold{k}"
        assert {"best.ckpt", "head.safetensors", "head.json"} <= {p.name for p in fold_dir.iterdir()}
        meta = json.loads((fold_dir / "head.json").read_text())
        assert meta["genes"] == list(adata.var_names) and meta["head"] == "mlp"
    # The public API reproduces the out-of-fold predictions from the saved heads.
    sample = "s0"
    head = load_trained_head(models, sample_id=sample)
    rows = (adata.obs["sample_id"] == sample).to_numpy()
    got = head.predict_tiles(adata.obsm["X_toy"][rows])
    np.testing.assert_allclose(got, out.layers["predicted"][rows], rtol=1e-4, atol=1e-4)
    ensemble = load_trained_head(models)
    # a fold that ships the blend contributes its head and its ridge
    assert ensemble.genes == list(adata.var_names)
    assert len(ensemble.members) == 3 + len(blend_folds)


def test_two_cpu_runs_give_identical_predictions(tmp_path):
    adata = planted_dataset(n_patients=4, per_patient=30)
    a, _, _ = _train(adata, tmp_path, name="a", max_epochs=6)
    b, _, _ = _train(adata, tmp_path, name="b", max_epochs=6)
    for layer in ("predicted", "baseline_ridge", "baseline_hest"):
        assert np.array_equal(a.layers[layer], b.layers[layer])
    c, _, _ = _train(adata, tmp_path, name="c", max_epochs=6, seed=1)
    assert not np.array_equal(a.layers["predicted"], c.layers["predicted"])


def test_ensemble_members_and_refit_are_saved_and_reproduced(tmp_path):
    adata = planted_dataset(n_patients=3, per_patient=20)
    out, models, _ = _train(adata, tmp_path, max_epochs=3, ensemble=2, refit=True, select="off")
    assert (models / "fold0" / "member1" / "head.safetensors").is_file()
    meta = json.loads((models / "fold0" / "head.json").read_text())
    assert meta["refit"] and meta["train_units"] == int((out.obs["fold"] != 0).sum())
    head = load_trained_head(models, fold=0)
    assert len(head.members) == 2
    rows = (out.obs["fold"] == 0).to_numpy()
    np.testing.assert_allclose(head.predict_tiles(adata.obsm["X_toy"][rows]),
                               out.layers["predicted"][rows], rtol=1e-4, atol=1e-4)


def test_ridge_alpha_is_tuned_on_the_training_fold():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 150))    # more features than units: alpha matters
    y = x[:, :2] @ np.array([[1.0, -1.0], [0.5, 1.0]]) + rng.normal(size=(120, 2))
    groups = np.repeat(np.arange(6), 20)
    alphas = [1e-3, 1e1, 1e2, 1e3, 1e7]
    alpha, scores = choose_alpha(x, y, groups, alphas, seed=0)
    assert alpha == alphas[int(np.nanargmax(scores))]
    assert alpha >= 1e2 and scores[0] < scores.max() - 0.1


@pytest.mark.slow
@pytest.mark.parametrize("head", ["he2rna", "abmil"])
def test_bulk_heads_train_on_streamed_bags(tmp_path, head):
    adata = write_bulk_dataset(tmp_path)
    # select off: this is the bulk head's own test (with select auto a fold whose head beats
    # ridge by less than the inner noise ships ridge, e.g. he2rna's fold 0 here)
    out, models, _ = _train(adata, tmp_path, head=head, folds=3, max_epochs=30, hidden=16,
                            lr=3e-3, bag_batch_size=4, supertiles=0, baselines=["ridge", "mean"],
                            select="off")
    assert np.isfinite(out.layers["predicted"]).all()
    assert "baseline_hest" not in out.layers
    r = pearson_columns(out.layers["predicted"], out.X)
    assert r[0] > 0.5, r
    trained = load_trained_head(models, fold=0)
    held = np.flatnonzero(out.obs["fold"].to_numpy() == 0)
    for i in held[:2]:
        bag = read_features(adata.obs["features_path"].iloc[i])
        feats, coords = bag.features, bag.coords
        np.testing.assert_allclose(trained.predict_bag(feats, coords), out.layers["predicted"][i],
                                   rtol=1e-4, atol=1e-4)
        assert trained.predict_tiles(feats).shape == (len(feats), adata.n_vars)


def test_he2rna_with_supertiles(tmp_path):
    adata = write_bulk_dataset(tmp_path, n_slides=9)  # tiny: checks the plumbing only
    out, models, _ = _train(adata, tmp_path, head="he2rna", folds=3, max_epochs=4, hidden=8,
                            supertiles=10, baselines=["mean"])
    assert np.isfinite(out.layers["predicted"]).all()
    meta = json.loads((models / "fold0" / "head.json").read_text())
    assert meta["supertiles"] == 10


def test_patient_units_of_several_slides(tmp_path):
    """join.patient_slides 'average' makes one unit of a patient's slides (features_path
    ";"-joined): the unit's bag is the union of their tiles, supertiles are made per slide, and
    the heatmap's out-of-fold model for one of those slides is the fold that held the unit."""
    from slide2expr.train.features import BagFeatures
    from slide2expr.train.run import feature_source

    slides = write_bulk_dataset(tmp_path, n_slides=18)
    pairs = [(2 * i, 2 * i + 1) for i in range(9)]
    obs = pd.DataFrame({
        "sample_id": [f"slide{a};slide{b}" for a, b in pairs],
        "patient": [f"p{i}" for i in range(9)],
        "features_path": [";".join(slides.obs["features_path"].iloc[[a, b]]) for a, b in pairs],
    }, index=[f"p{i}" for i in range(9)])
    x = np.stack([slides.X[[a, b]].mean(axis=0) for a, b in pairs])
    adata = ad.AnnData(X=x, obs=obs, var=slides.var.copy())
    adata.uns["slide2expr"] = {"mode": "bulk", "encoder": "toy"}

    bags = feature_source(adata, config=TrainConfig.from_dict({"supertiles": 3}),
                          dataset_path=None)
    assert isinstance(bags, BagFeatures) and all(len(unit) == 2 for unit in bags.paths)
    sizes = [sum(read_feature_meta(p).shape[0] for p in unit) for unit in bags.paths]
    assert list(bags.n_tiles) == sizes
    assert all(len(np.unique(labels)) == 6 for labels in bags.labels)  # 3 per slide

    out, models, _ = _train(adata, tmp_path, head="he2rna", folds=3, max_epochs=3, hidden=8,
                            supertiles=3, baselines=["mean"])
    assert np.isfinite(out.layers["predicted"]).all()
    unit_fold = int(out.obs.loc["p1", "fold"])  # p1 = slide2 + slide3
    other = next(k for k in range(3) if k != unit_fold)
    held_out = load_trained_head(models, sample_id="slide3")
    assert len(held_out.members) == 1 and held_out.meta["fold"] == unit_fold
    assert load_trained_head(models, fold=other).meta["fold"] == other


# -- CLI ----------------------------------------------------------------------------------
def test_cli_train_and_predict(tmp_path):
    from typer.testing import CliRunner

    from slide2expr.cli import app

    adata = planted_dataset(n_patients=3, per_patient=20)
    dataset = tmp_path / "dataset.h5ad"
    adata.write_h5ad(dataset)
    runner = CliRunner()
    settings = json.dumps({"train": {**FAST, "max_epochs": 3}})
    result = runner.invoke(app, ["train", str(dataset), "--head", "mlp", "--models-dir",
                                 str(tmp_path / "models" / "mlp"), "--predictions",
                                 str(tmp_path / "pred.h5ad"), "--config-json", settings])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred.h5ad").is_file()

    feats = tmp_path / "new.h5"
    make_features(feats, features=adata.obsm["X_toy"][:7], coords=np.zeros((7, 2)),
                  spot_ids=[f"sp{i}" for i in range(7)], sample_id="newslide",
                  tile_px_level0=100.0)
    result = runner.invoke(app, ["predict", str(feats), "--model", str(tmp_path / "models" / "mlp"),
                                 "-o", str(tmp_path / "new.h5ad")])
    assert result.exit_code == 0, result.output
    new = ad.read_h5ad(tmp_path / "new.h5ad")
    assert new.shape == (7, adata.n_vars) and list(new.obs["spot_id"]) == [f"sp{i}" for i in range(7)]
    np.testing.assert_allclose(new.obsm["spatial"], 50.0)
    # a new slide averages the fold models: their spread (SD, ddof=0) sits beside the mean
    from slide2expr.predict import load_trained_head

    folds = sorted((tmp_path / "models" / "mlp").glob("fold*"))
    assert len(folds) > 1
    each = np.stack([load_trained_head(f).predict_tiles(adata.obsm["X_toy"][:7])
                     for f in folds])
    np.testing.assert_allclose(new.X, each.mean(axis=0), rtol=1e-4, atol=1e-5)
    # the spread is over every model averaged: each fold's head, and its ridge where the fold
    # ships the blend, weighted as in the mean (1/n_folds a fold, split by the blend weight)
    models = [(m, w) for f in folds
              for m, w in zip(*_single_models(load_trained_head(f)), strict=True)]
    preds = np.stack([m.predict_tiles(adata.obsm["X_toy"][:7]) for m, _ in models])
    weights = np.array([w for _, w in models]) / len(folds)
    mean = np.tensordot(weights, preds, axes=1)
    spread = np.sqrt(np.maximum(np.tensordot(weights, preds ** 2, axes=1) - mean ** 2, 0))
    np.testing.assert_allclose(new.X, mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new.layers["predicted_sd"], spread, rtol=1e-4, atol=1e-4)


def _single_models(head):
    """The members of a loaded fold as one-member heads, with their weights in the fold."""
    from dataclasses import replace

    singles = [replace(head, members=[m], member_columns=[c], member_weights=None)
               for m, c in zip(head.members, head.member_columns, strict=True)]
    return singles, head.weights()


def test_cli_bad_input_is_one_line_and_status_2(tmp_path, monkeypatch, capsys):
    import sys

    from slide2expr.cli import main

    adata = planted_dataset(n_patients=2, per_patient=10)
    dataset = tmp_path / "dataset.h5ad"
    adata.write_h5ad(dataset)
    monkeypatch.setattr(sys, "argv", [
        "slide2expr", "train", str(dataset), "--models-dir", str(tmp_path / "m"),
        "--predictions", str(tmp_path / "p.h5ad"), "--folds", "5"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "fewer than the 5 folds" in last and "Fix:" in last
    assert not (tmp_path / "p.h5ad").exists() and not (tmp_path / "m").exists()


# -- config -------------------------------------------------------------------------------
def test_schema_defaults_match_the_code_defaults():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "train.schema.yaml").read_text())
    defaults = TrainConfig().to_dict()
    for key, spec in schema["properties"].items():
        if key == "genes":
            for gkey, gspec in spec["properties"].items():
                assert gspec["default"] == defaults["genes"][gkey], gkey
            assert set(spec["properties"]) == set(defaults["genes"])
        else:
            assert spec["default"] == defaults[key], key
    assert set(schema["properties"]) == set(defaults)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    TrainConfig.from_dict(config.get("train"))  # the shipped section is valid


def test_unknown_setting_is_an_input_error():
    with pytest.raises(InputError, match="unknown train setting"):
        TrainConfig.from_dict({"epochs": 3})


# -- the demo cohort ----------------------------------------------------------------------
@pytest.mark.slow
def test_demo_planted_genes_are_recovered_and_noise_genes_are_not(demo_dir, tmp_path):
    adata = demo_dataset(demo_dir)
    truth = pd.read_csv(demo_dir / "truth" / "genes.tsv", sep="\t").set_index("gene")
    out, _, _ = _train(adata, tmp_path, hidden=64, max_epochs=30)
    r = pd.Series(pearson_columns(out.layers["predicted"], out.X), index=out.var_names)
    kind = truth.loc[r.index, "kind"]
    planted = r[kind.isin(["tumour", "stroma"])]
    noise = r[kind == "noise"]
    assert planted.min() > 0.6, planted
    assert noise.abs().mean() < 0.1, noise
    assert noise.abs().max() < 0.3, noise


# -- real data: her2st --------------------------------------------------------------------
def her2st_dataset(her2st: Path) -> ad.AnnData:
    """Spot dataset of the five her2st sections (genes in every section), colour features of
    112 um patches (cheap stand-ins for encoder features: this test checks the protocol)."""
    from slide2expr.inputs.slides import open_slide

    parts = []
    for section in ("C2", "C3", "C4", "C5", "C6"):
        counts = pd.read_csv(her2st / f"{section}.tsv.gz", sep="\t", index_col=0)
        sel = pd.read_csv(her2st / f"{section}_selection.tsv", sep="\t")
        sel.index = sel["x"].astype(str) + "x" + sel["y"].astype(str)
        sel = sel.loc[sel.index.intersection(counts.index)]
        counts = counts.loc[sel.index]
        slide = open_slide(her2st / f"{section}_HE.jpg", sheet_mpp=0.69)
        half = 56.0 / 0.69
        feats = [_colour_features(slide.read_region_mpp(
            int(x - half), int(y - half), int(2 * half), int(2 * half), out_size=(28, 28)))
            for x, y in zip(sel["pixel_x"], sel["pixel_y"], strict=True)]
        slide.close()
        part = ad.AnnData(X=counts.to_numpy(np.float32), var=pd.DataFrame(index=counts.columns),
                          obs=pd.DataFrame({"sample_id": section, "patient": "her2st"},
                                           index=section + "_" + counts.index))
        part.obsm["X_colour"] = np.asarray(feats, dtype=np.float32)
        parts.append(part)
    adata = ad.concat(parts, join="inner")
    adata.layers["counts"] = adata.X.copy()
    adata.X = np.log1p(adata.X / adata.X.sum(axis=1, keepdims=True) * 1e4).astype(np.float32)
    adata.uns["slide2expr"] = {"mode": "spot", "encoder": "colour"}
    return adata


@pytest.mark.slow
def test_her2st_leave_one_section_out(her2st, tmp_path):
    adata = her2st_dataset(her2st)
    out, models, _ = _train(adata, tmp_path, folds="loo", group_by="sample_id", max_epochs=3,
                            genes={"method": "mean", "n_top": 50, "min_fraction": 0.0})
    assert out.n_obs == adata.n_obs == 910
    splits = pd.read_csv(models / "splits.tsv", sep="\t")
    assert splits.groupby("sample_id")["fold"].nunique().eq(1).all()  # a section is one fold
    assert sorted(splits["fold"].unique()) == [0, 1, 2, 3, 4]
    folds = out.uns["slide2expr"]["train"]["folds"]
    all_genes = list(out.var_names)
    differs = 0
    for k in range(5):
        held = (out.obs["fold"] == k).to_numpy()
        genes = list(folds[f"fold{k}"]["genes"])
        # Every held-out spot has exactly one prediction, for exactly its fold's 50 genes.
        cols = [all_genes.index(g) for g in genes]
        assert len(genes) == 50 and np.isfinite(out.layers["predicted"][np.ix_(held, cols)]).all()
        # The fold's genes are the top 50 of the *training* sections, recomputed here.
        train_mean = adata.X[~held].astype(np.float64).mean(axis=0)
        expected = set(adata.var_names[np.argsort(-train_mean, kind="stable")[:50]])
        assert set(genes) == expected
        all_mean = adata.X.astype(np.float64).mean(axis=0)
        differs += expected != set(adata.var_names[np.argsort(-all_mean, kind="stable")[:50]])
    assert differs >= 1  # so selecting on all spots would have been caught


# -- networks apart from their Lightning wrappers -------------------------------------------
def test_saved_heads_hold_the_network_keys_of_before_and_load_without_lightning(tmp_path):
    """``head.safetensors`` keeps the key names the LightningModule saved before the split
    (models trained then still load), and loading a head never imports Lightning."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from slide2expr.predict import load_fold_head
    from slide2expr.predict.nets import MLPNet
    from slide2expr.train.heads import MLPHead
    from slide2expr.train.save import save_head

    torch.manual_seed(0)
    head = MLPHead(in_dim=5, n_genes=3, hidden=4)
    save_head(head, tmp_path / "fold0", meta={"head": "mlp", "genes": ["A", "B", "C"],
                                              "hparams": {"in_dim": 5, "n_genes": 3,
                                                          "hidden": 4, "lr": 0.01}})
    keys = set(load_file(str(tmp_path / "fold0" / "head.safetensors")))
    assert keys == {"feature_mean", "feature_std", "target_mean", "target_std",
                    "net.1.weight", "net.1.bias", "net.4.weight", "net.4.bias"}
    net, _ = load_fold_head(tmp_path / "fold0")
    assert isinstance(net, MLPNet) and not net.training
    x = torch.randn(7, 5)
    torch.testing.assert_close(net.tile_outputs(x), head.eval().tile_outputs(x))
    code = ("import sys; from slide2expr.predict import load_trained_head; "
            f"h = load_trained_head({str(tmp_path / 'fold0')!r}); "
            "print(sorted(m for m in ('pytorch_lightning', 'lightning', 'torchmetrics') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_pearson_loss_term_is_one_minus_the_mean_per_gene_r_and_is_used_when_weighted(tmp_path):
    from slide2expr.train.heads.base import batch_pearson

    rng = np.random.default_rng(0)
    target = rng.normal(size=(40, 3))
    pred = np.stack([target[:, 0], -target[:, 1], rng.normal(size=40)], axis=1)
    expected = np.mean([np.corrcoef(pred[:, g], target[:, g])[0, 1] for g in range(3)])
    got = float(batch_pearson(torch.tensor(pred), torch.tensor(target)))
    assert got == pytest.approx(expected, abs=1e-6)
    constant = torch.zeros(10, 2)
    assert torch.isfinite(batch_pearson(constant, torch.randn(10, 2)))

    # the weight reaches the loss: same seed and data, different predictions, still learning
    adata = planted_dataset()
    plain, _, _ = _train(adata, tmp_path, name="mse", select="off")  # the head's own output
    mixed, _, _ = _train(adata, tmp_path, name="pearson", pearson_weight=1.0, select="off")
    assert not np.allclose(plain.layers["predicted"], mixed.layers["predicted"])
    sig = [g.startswith("SIG") for g in mixed.var_names]
    r = pearson_columns(mixed.layers["predicted"][:, sig], np.asarray(mixed.X)[:, sig])
    assert np.nanmean(r) > 0.3
