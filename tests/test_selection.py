"""train.select: the head or its ridge, chosen on inner validation only, and shipped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import planted_dataset

import slide2expr.train.folds as train_folds
from slide2expr.errors import InputError
from slide2expr.predict import load_trained_head
from slide2expr.testing import train_quick
from slide2expr.train.baselines import (
    pearson_columns,
    ridge_network,
    ridge_path,
    ridge_predict,
)
from slide2expr.train.config import TrainConfig
from slide2expr.train.scaling import standardise
from slide2expr.train.selection import BLEND_WEIGHTS, Selection, blend_scores, inner_score

QUICK = {"folds": 4, "max_epochs": 3, "min_epochs": 1, "hidden": 16, "patience": 3,
         "batch_size": 32, "baselines": ["ridge", "mean"]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _train(adata, tmp_path: Path, name: str, **settings):
    return train_quick(adata, tmp_path, name, {**QUICK, **settings})


def _garble_patient(adata, patient: str, seed: int = 1):
    """A copy whose ``patient`` units have shifted features and scrambled, shifted targets."""
    rng = np.random.default_rng(seed)
    out = adata.copy()
    rows = np.flatnonzero((out.obs["patient"] == patient).to_numpy())
    out.obsm["X_toy"][rows] = out.obsm["X_toy"][rows] * -3.0 + 5.0
    x = np.asarray(out.X)
    x[rows] = x[rng.permutation(rows)][:, ::-1] + 3.0
    out.X = x
    out.layers["counts"][rows] = np.round(np.expm1(x[rows]) * 10)
    return out


def _fold_of(out, patient: str) -> str:
    return f"fold{int(out.obs.loc[out.obs['patient'] == patient, 'fold'].iloc[0])}"


def _selection_of_fold(adata, tmp_path, name, patient="p0", **settings) -> dict:
    """The selection record (head.json) of the fold that holds ``patient`` out."""
    out, models = _train(adata, tmp_path, name, **settings)
    return json.loads((models / _fold_of(out, patient) / "head.json").read_text())["selection"]


def _leaky_select_model(head, config, members, source, y_fit, y, *, splits, inner_all, rows,
                        **kwargs):
    """A deliberately wrong selection that scores the head on the held-out units too."""
    selection = _honest_select_model(head, config, members, source, y_fit, y, splits=splits,
                                     inner_all=inner_all, rows=rows, **kwargs)
    test = np.setdiff1d(np.arange(len(y)), np.union1d(*splits[0]))  # the held-out units
    for mem in members:
        selection.head_scores.append(inner_score(mem["predicted"], y[test],
                                                 np.zeros(len(test))))
    return selection


_honest_select_model = train_folds.select_model


def test_selection_never_reads_the_held_out_units(tmp_path, monkeypatch):
    """Garbling the held-out patient (features shifted, targets scrambled) changes nothing in
    the selection of the fold that holds it out: not the inner scores, not the winner."""
    adata = planted_dataset(n_patients=4, per_patient=15, n_signal=3, n_noise=2)
    garbled = _garble_patient(adata, "p0")
    clean = _selection_of_fold(adata, tmp_path, "clean", ensemble=2)
    shifted = _selection_of_fold(garbled, tmp_path, "garbled", ensemble=2)
    assert clean["inner_scores"]["mlp"] is not None and clean["inner_scores"]["ridge"] is not None
    assert len(clean["member_scores"]["mlp"]) == 2
    assert shifted == clean
    # The control: a selection that did look at the held-out units would see the garbling,
    # so the comparison above can fail.
    monkeypatch.setattr(train_folds, "select_model", _leaky_select_model)
    leaky_clean = _selection_of_fold(adata, tmp_path, "leaky_clean", ensemble=2)
    leaky_shifted = _selection_of_fold(garbled, tmp_path, "leaky_garbled", ensemble=2)
    assert leaky_shifted["inner_scores"] != leaky_clean["inner_scores"]


def test_each_fold_ships_the_winner_of_its_inner_validation(tmp_path):
    """A head that cannot learn (lr 1e-7) loses to ridge on linear signal: no fold ships the
    head; each fold ships the candidate with the highest recorded inner score (ridge, or the
    blend with ridge's weight in head.json); the predictions are that candidate's (ridge's
    equal the ridge baseline, the blend's the weighted mean of the head's and ridge's), the
    saved model reproduces them, and the head's own stay in layers['predicted_head']."""
    adata = planted_dataset(n_patients=4, per_patient=25, n_signal=3, n_noise=1)
    out, models = _train(adata, tmp_path, "weak", lr=1e-7)
    summary = out.uns["slide2expr"]["train"]["selection"]
    assert summary["shipped"] in ("ridge", "blend", "mixed")
    assert sorted([*summary["ridge_folds"], *summary["blend_folds"]]) == [
        f"fold{k}" for k in range(4)]
    assert not np.allclose(out.layers["predicted_head"], out.layers["predicted"], atol=1e-3)
    folds = out.uns["slide2expr"]["train"]["folds"]
    for k in range(4):
        sel = json.loads((models / f"fold{k}" / "head.json").read_text())["selection"]
        scores = sel["inner_scores"]
        assert sel["compared"] == ["mlp", "blend", "ridge"]
        assert sel["winner"] == _expected_winner(sel)
        assert scores[sel["winner"]] > scores["mlp"]
        # ridge was scored at the alpha that ships (and that the ridge baseline used)
        ridge_alpha = json.loads((models / f"fold{k}" / "ridge" / "head.json").read_text()
                                 )["ridge_alpha"]
        assert sel["ridge_alphas"] == [ridge_alpha] * len(sel["ridge_alphas"])
        assert _fold_info(folds, k)["ridge_alpha"] == ridge_alpha
        rows = (out.obs["fold"] == k).to_numpy()
        ridge, head = out.layers["baseline_ridge"][rows], out.layers["predicted_head"][rows]
        if sel["winner"] == "ridge":
            want = ridge
        else:
            w = sel["blend_weight"]
            assert w in BLEND_WEIGHTS
            assert json.loads((models / f"fold{k}" / "ridge" / "head.json").read_text()
                              )["blend_weight"] == w
            want = (1 - w) * head + w * ridge
        np.testing.assert_allclose(out.layers["predicted"][rows], want, rtol=1e-4, atol=1e-4)
        shipped = load_trained_head(models, fold=k)
        mean, spread = shipped.predict_tiles_spread(adata.obsm["X_toy"][rows])
        np.testing.assert_allclose(mean, out.layers["predicted"][rows], rtol=1e-4, atol=1e-4)
        if sel["winner"] == "blend":
            np.testing.assert_allclose(spread, out.layers["predicted_sd"][rows], rtol=1e-3,
                                       atol=1e-4)


def _expected_winner(sel: dict) -> str:
    """The highest inner score in order of preference on a tie; the blend only where its
    gain's interval over genes is above 0."""
    margin = sel.get("blend_margin")
    eligible = [c for c in sel["compared"]
                if c != "blend" or (margin is not None and margin["ci95"][0] > 0)]
    return max(eligible, key=lambda c: sel["inner_scores"][c])


def _fold_info(folds, k: int) -> dict:
    return folds[k] if isinstance(folds, list) else folds[f"fold{k}"]


def _noisy_copies(noise_head: float, noise_ridge: float, n: int = 3000, genes: int = 4):
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(n, genes))
    return (truth, truth + noise_head * rng.normal(size=truth.shape),
            truth + noise_ridge * rng.normal(size=truth.shape), np.repeat(["a", "b"], n // 2))


def test_blend_wins_when_head_and_ridge_err_independently():
    """Head and ridge with independent errors of the same size: their mean has half the
    error variance, so the blend at weight 0.5 beats both (r 0.82 vs 0.71 for noise SD 1)."""
    truth, head, ridge, groups = _noisy_copies(1.0, 1.0)
    sel = Selection(head="context", mode="auto")
    sel.add_split(head, ridge, truth, groups, alpha=1.0, with_blend=True)
    assert sel.head_score == pytest.approx(inner_score(head, truth, groups))
    assert sel.blend_member_scores == [blend_scores(head, ridge, truth, groups)]
    assert sel.winner == "blend" and sel.blend_weight == 0.5
    assert sel.blend_score == pytest.approx(np.sqrt(1 / 1.5), abs=0.02)
    assert sel.blend_score > max(sel.head_score, sel.ridge_score) + 0.08
    gain, low, _ = sel.blend_margin()
    assert gain == pytest.approx(sel.blend_score - max(sel.head_score, sel.ridge_score),
                                 abs=0.01) and low > 0.05
    record = sel.record()
    assert record["compared"] == ["context", "blend", "ridge"] and record["winner"] == "blend"
    assert record["blend_margin"]["ci95"][0] > 0


def test_a_blend_whose_gain_is_inner_noise_does_not_ship():
    """Ridge = the head plus independent noise (no information the head lacks), so any
    blend is worse than the head in expectation; on this draw (60 units, 40 genes) the
    blend at 0.25 still scores highest (+0.0007), which the highest-score rule would ship.
    Its gain's 95% interval over genes contains 0, so it does not ship; nor does the head,
    whose gain over ridge is inside the noise too: ridge, the simplest, ships."""
    rng = np.random.default_rng(12)
    truth = rng.normal(size=(60, 40))
    head = truth + 1.5 * rng.normal(size=truth.shape)
    ridge = head + 0.3 * rng.normal(size=truth.shape)
    sel = Selection(head="context", mode="auto")
    sel.add_split(head, ridge, truth, np.repeat(["a", "b"], 30), alpha=1.0, with_blend=True)
    assert sel.blend_score > sel.head_score > sel.ridge_score
    gain, low, high = sel.blend_margin()
    assert 0 < gain < 0.005 and low < 0 < high
    assert sel.head_margin()[1] < 0
    assert sel.winner == "ridge"
    assert sel.record()["winner"] == "ridge"
    # the same scores without the per-gene evidence: the highest score (the blend) ships
    assert Selection(head="context", mode="auto", head_scores=sel.head_scores,
                     ridge_scores=sel.ridge_scores,
                     blend_member_scores=sel.blend_member_scores).winner == "blend"


def test_a_head_whose_gain_over_ridge_is_inner_noise_ships_ridge():
    """The head = ridge plus independent noise of a tenth of ridge's error: no information
    ridge lacks, so its inner score can only exceed ridge's by chance. On this draw (60 units,
    40 genes) the head scores higher; its gain's 95% interval over genes contains 0, so ridge
    (the simpler model) ships. A head with half ridge's error clears the margin."""
    rng = np.random.default_rng(3)
    truth = rng.normal(size=(60, 40))
    groups = np.repeat(["a", "b"], 30)
    ridge = truth + 1.5 * rng.normal(size=truth.shape)
    head = ridge + 0.15 * rng.normal(size=truth.shape)
    sel = Selection(head="context", mode="auto")
    sel.add_split(head, ridge, truth, groups, alpha=1.0)
    gain, low, high = sel.head_margin()
    assert low < 0 < high and abs(gain) < 0.01
    assert sel.winner == "ridge" and sel.record()["winner"] == "ridge"
    assert sel.record()["head_margin"]["ci95"][0] < 0
    better = Selection(head="context", mode="auto")
    better.add_split(truth + 0.75 * rng.normal(size=truth.shape), ridge, truth, groups,
                     alpha=1.0)
    assert better.head_margin()[1] > 0 and better.winner == "context"


def test_head_wins_when_ridge_only_adds_error():
    """A head ten times more accurate than ridge: every blend weight (>= 0.25) mixes in more
    error than it removes, so the head ships."""
    truth, head, ridge, groups = _noisy_copies(0.1, 1.0)
    sel = Selection(head="context", mode="auto")
    sel.add_split(head, ridge, truth, groups, alpha=1.0, with_blend=True)
    assert sel.winner == "context" and sel.blend_weight == 0.25
    assert sel.head_score > sel.blend_score > sel.ridge_score


def _linear_net(rng, x, genes, scale):
    return ridge_network(x, x[:, :genes] * scale + rng.normal(size=(len(x), genes)), alpha=1.0)


def test_a_blend_fold_predicts_the_weighted_mean_of_its_members_and_ridge(tmp_path):
    """Two head members and a ridge model saved as a blend fold (weight 0.25): prediction
    is 0.375 * m0 + 0.375 * m1 + 0.25 * ridge, the spread the weighted SD around it (what
    training computes), and a new slide averaged over two folds weighs each fold 1/2."""
    from slide2expr.train.folds import blended
    from slide2expr.train.save import save_head

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    nets = [_linear_net(rng, x, 3, s) for s in (1.0, -2.0, 4.0)]
    meta = {"head": "mlp", "genes": ["g0", "g1", "g2"], "inputs": ["spot"], "mode": "spot"}
    fold = tmp_path / "models" / "fold0"
    save_head(nets[0], fold, meta={**meta, "hparams": nets[0].hparams})
    save_head(nets[1], fold / "member1", meta={**meta, "hparams": nets[1].hparams})
    save_head(nets[2], fold / "ridge", meta={**meta, "hparams": nets[2].hparams,
                                            "model": "blend", "blend_weight": 0.25})
    single = [ridge_predict(net, x) for net in nets]
    want, want_sd = blended(np.stack(single[:2]), single[2], 0.25)
    np.testing.assert_allclose(want, 0.375 * single[0] + 0.375 * single[1] + 0.25 * single[2],
                               rtol=1e-5, atol=1e-5)
    mean, spread = load_trained_head(tmp_path / "models", fold=0).predict_tiles_spread(x)
    np.testing.assert_allclose(mean, want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(spread, want_sd, rtol=1e-4, atol=1e-4)
    # a second fold that ships ridge alone: the average over folds weighs each fold 1/2
    save_head(nets[2], tmp_path / "models" / "fold1" / "ridge",
              meta={**meta, "hparams": nets[2].hparams, "model": "ridge"})
    both = load_trained_head(tmp_path / "models").predict_tiles(x)
    np.testing.assert_allclose(both, 0.5 * want + 0.5 * single[2], rtol=1e-4, atol=1e-4)


def test_select_off_always_ships_the_head(tmp_path):
    adata = planted_dataset(n_patients=4, per_patient=25, n_signal=3, n_noise=1)
    out, models = _train(adata, tmp_path, "off", lr=1e-7, select="off")
    assert "predicted_head" not in out.layers
    assert out.uns["slide2expr"]["train"]["selection"]["shipped"] == "mlp"
    assert not (models / "fold0" / "ridge").exists()
    assert not np.allclose(out.layers["predicted"], out.layers["baseline_ridge"], atol=1e-3)


def test_yaml_off_means_off():
    assert TrainConfig.from_dict({"select": False}).select == "off"
    assert TrainConfig.from_dict({"select": True}).select == "auto"


def test_ridge_network_equals_the_ridge_path():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 30)) * rng.uniform(0.1, 5, size=30) + 2.0
    x[:, 3] = 1.5  # a constant feature: std 0 -> 1 on both sides
    y = x[:, :2] @ rng.normal(size=(2, 4)) + rng.normal(size=(80, 4))
    new = rng.normal(size=(10, 30)) + 2.0
    xs_tr, xs_new = standardise(x, new)
    want = ridge_path(xs_tr, y, xs_new, [10.0])[0]
    got = ridge_predict(ridge_network(x, y, alpha=10.0), new)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_inner_score_is_the_mean_of_per_group_gene_r():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(40, 3))
    pred = obs + rng.normal(size=(40, 3))
    groups = np.repeat(["a", "b"], 20)
    want = np.mean([np.nanmean(pearson_columns(pred[groups == g], obs[groups == g]))
                    for g in ("a", "b")])
    assert inner_score(pred, obs, groups) == pytest.approx(want)


def test_ties_go_to_the_simpler_model_and_missing_ridge_keeps_the_head():
    sel = Selection(head="context", mode="auto", head_scores=[0.3], ridge_scores=[0.3])
    assert sel.winner == "ridge"
    sel = Selection(head="context", mode="auto", head_scores=[0.31], ridge_scores=[0.3])
    assert sel.winner == "context"
    sel = Selection(head="context", mode="auto", head_scores=[0.3], ridge_scores=[0.32],
                    blend_member_scores=[[0.31, 0.32, 0.32]])
    assert sel.winner == "ridge" and sel.blend_weight == 0.5  # a tie goes to ridge
    sel = Selection(head="context", mode="auto", head_scores=[0.3], ridge_scores=[0.32],
                    blend_member_scores=[[0.31, 0.33, 0.32]])
    assert sel.winner == "blend"
    assert Selection(head="context", mode="auto", head_scores=[0.3]).winner == "context"
    sel = Selection(head="context", mode="auto", head_scores=[0.3], ridge_scores=[0.31])
    assert sel.winner == "ridge"
    assert Selection(head="context", mode="off", head_scores=[0.1],
                     ridge_scores=[0.9]).winner == "context"


def test_report_says_plainly_when_ridge_won_and_the_manifest_records_it(tmp_path):
    from slide2expr.report.evaluate import build_report
    from slide2expr.report.html import render_html
    from slide2expr.repro.manifest import model_selection

    adata = planted_dataset(n_patients=4, per_patient=25, n_signal=3, n_noise=1)
    out, _ = _train(adata, tmp_path, "weak", lr=1e-7, folds=2)
    report = build_report(out, top_n=2, n_hvg=2, n_boot=10)
    sel = report.summary["selection"]
    assert sel["shipped"] == "ridge" and "predictions are ridge's" in sel["sentence"]
    assert set(sel["folds"]) == {"fold0", "fold1"}
    page = render_html(report)
    assert "Shipped model." in page and "Model selection (inner validation)" in page
    # the blend was compared (patient-grouped inner validation): its margin is reported
    margins = [f["blend_margin"] for f in sel["folds"].values()]
    assert all(m is not None and len(m["ci95"]) == 2 for m in margins)
    assert "blend gain (95% CI)" in page and f"{margins[0]['gain']:+.4f}" in page
    # the manifest reads the same records from the model folders
    recorded = model_selection(tmp_path / "weak")
    assert {f: v["winner"] for f, v in recorded["mlp"].items()} == {"fold0": "ridge",
                                                                     "fold1": "ridge"}


def test_the_report_sentence_says_when_the_blend_was_compared_and_not_shipped():
    """A run whose folds compared the blend and shipped the head says so; a run that never
    compared it does not mention a blend."""
    from slide2expr.report.evaluate import selection_summary

    def provenance(scores: dict) -> dict:
        folds = {f"fold{k}": {"selection": {"inner_scores": scores, "winner": "context"}}
                 for k in range(2)}
        return {"train": {"head": "context", "folds": folds,
                          "selection": {"shipped": "context", "mode": "auto"}}}

    compared = selection_summary(provenance({"context": 0.2, "blend": 0.21, "ridge": 0.1}))
    assert "it is the shipped model" in compared["sentence"]
    assert "no blend of the two beat it by more than the inner noise" in compared["sentence"]
    plain = selection_summary(provenance({"context": 0.2, "ridge": 0.1}))
    assert "blend" not in plain["sentence"] and "it is the shipped model" in plain["sentence"]


def _spread_adata(sd_of_error):
    import anndata as ad
    import pandas as pd

    rng = np.random.default_rng(0)
    n, g = 40, 5
    truth = rng.normal(size=(n, g))
    err = rng.normal(size=(n, g))
    adata = ad.AnnData(X=truth.astype(np.float32),
                       obs=pd.DataFrame({"sample_id": np.repeat(["a", "b"], n // 2),
                                         "fold": np.repeat([0, 1], n // 2)},
                                        index=[f"u{i}" for i in range(n)]))
    adata.layers["predicted"] = (truth + err).astype(np.float32)
    adata.layers["predicted_sd"] = sd_of_error(np.abs(err)).astype(np.float32)
    return adata


def test_spread_that_tracks_the_error_ranks_it_and_covers_it():
    from slide2expr.report.uncertainty import spread_calibration

    exact = spread_calibration(_spread_adata(lambda e: e))  # spread = |error|
    assert exact["spearman_mean"] == pytest.approx(1.0) and exact["coverage_2sd"] == 1.0
    rng = np.random.default_rng(1)
    blind = spread_calibration(_spread_adata(lambda e: 0.1 * rng.uniform(size=e.shape)))
    assert abs(blind["spearman_mean"]) < 0.2  # a spread unrelated to the error ranks nothing
    assert blind["coverage_2sd"] < 0.25       # and, too small, covers little
    assert set(blind["spearman_sections"]) == {"a", "b"}


def test_a_users_config_gets_the_context_model_and_every_block_it_reads():
    """With nothing set, the schema defaults train the context head, and the tiling and join
    defaults produce every block its inputs name (a user config need not copy her2st's)."""
    from slide2expr.settings import resolve_section

    tiling, join = resolve_section("tiling", None), resolve_section("join", None)
    train = resolve_section("train", None)
    assert train["heads"] == ["context"] and train["select"] == "auto"
    made = {"spot", *(f"ctx{int(um)}" for um in tiling["context_um"]),
            *(f"nbr{int(r)}" for r in join["neighbour_um"]),
            *(["slide"] if join["slide_mean"] else [])}
    needed = set(train["head_inputs"]["context"])
    assert needed <= made, needed - made
    assert {"ctx300", "ctx1000", "nbr300", "slide"} <= needed
    config = TrainConfig.from_dict(train)
    assert config.for_head("context").ensemble == 8  # the spread layer is on by default
    assert config.for_head("mlp").ensemble == 1 and config.inputs_for("mlp") == ["spot"]


def test_the_blend_is_compared_only_where_inner_validation_sees_a_new_patient():
    """``select_blend: patients`` (default): a fold whose inner validation is grouped by
    section (one training patient, or sample-grouped folds) compares head and ridge only."""
    from slide2expr.train.selection import blend_compared

    assert blend_compared("patients", "patient", "patient")
    assert not blend_compared("patients", "sample_id", "patient")  # one training patient
    assert not blend_compared("patients", "sample_id", "sample_id")  # folds by section
    assert not blend_compared("patients", "units", "patient")
    assert blend_compared("always", "sample_id", "patient")
    assert not blend_compared("never", "patient", "patient")
    with pytest.raises(InputError, match="select_blend"):
        TrainConfig.from_dict({"select_blend": "sometimes"})


def test_select_blend_never_compares_head_and_ridge_only(tmp_path):
    adata = planted_dataset(n_patients=4, per_patient=25, n_signal=3, n_noise=1)
    out, models = _train(adata, tmp_path, "never", lr=1e-7, folds=2, select_blend="never")
    for k in range(2):
        sel = json.loads((models / f"fold{k}" / "head.json").read_text())["selection"]
        assert sel["compared"] == ["mlp", "ridge"] and sel["winner"] == "ridge"
        assert "blend" not in sel["inner_scores"]
    np.testing.assert_allclose(out.layers["predicted"], out.layers["baseline_ridge"],
                               rtol=1e-4, atol=1e-4)


def test_members_that_share_a_validation_split_are_scored_as_their_average(tmp_path):
    """Four members on a training fold of two patients validate on one patient each, two
    members per patient: the selection scores two splits, each the average of its two
    members (what the fold ships), not four single members."""
    from slide2expr.train.selection import shared_splits

    a, b = np.arange(5), np.arange(5, 9)
    assert shared_splits([a, b, a[::-1], b]) == [[0, 2], [1, 3]]
    adata = planted_dataset(n_patients=3, per_patient=20, n_signal=2, n_noise=1)
    _, models = _train(adata, tmp_path, "shared", folds=3, ensemble=4, max_epochs=2)
    sel = json.loads((models / "fold0" / "head.json").read_text())["selection"]
    assert len(sel["member_scores"]["mlp"]) == 2 and len(sel["member_scores"]["ridge"]) == 2
