"""train.spread: the shipped spread, calibrated on inner validation, ranks and covers errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_selection import _fold_of, _garble_patient

from slide2expr.errors import InputError
from slide2expr.predict import load_trained_head
from slide2expr.report.html import uncertainty_section
from slide2expr.report.uncertainty import spread_calibration
from slide2expr.testing import spot_dataset, train_quick
from slide2expr.train.config import TrainConfig
from slide2expr.train.spread import (
    COVERAGE,
    MIN_UNITS,
    TERMS,
    InnerValidation,
    Z,
    calibrate,
    fit_spread,
)

SETTINGS = {"folds": 4, "max_epochs": 30, "min_epochs": 5, "hidden": 32, "patience": 5,
            "batch_size": 32, "baselines": ["ridge", "mean"], "ensemble": 2, "lr": 0.01}
#: Units whose true expression is above this get :data:`LOUD` noise, the others :data:`QUIET`.
NOISY_ABOVE, LOUD, QUIET = 1.0, 1.0, 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def loud_where_high(features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each gene the absolute value of one embedding dimension (a ridge cannot fit it), plus
    noise 10x larger where that value is high."""
    signal = np.abs(features[:, :4].astype(np.float64))
    return signal + rng.normal(size=signal.shape) * np.where(signal > NOISY_ABOVE, LOUD, QUIET)


def _train(adata, tmp_path: Path, name: str, **settings):
    return train_quick(adata, tmp_path, name, {**SETTINGS, **settings})


def _dataset():
    adata = spot_dataset(n_patients=4, per_patient=80, n_genes=4, signal=loud_where_high,
                         noise_sd=0.0, offset=4.0, seed=3)
    adata.layers["counts"] = np.round(np.expm1(np.asarray(adata.X)) * 10)
    return adata


def test_fit_spread_puts_the_spread_on_the_term_that_drives_the_error():
    """Residuals whose SD is the level term: the fit leans on that term, ranks fresh residuals
    by it and covers about 95% of them with +-2 SD; a gene never wrong gets scale 0."""
    rng = np.random.default_rng(0)
    n = 4000
    level = rng.uniform(0, 3, size=(n, 2))
    terms = np.stack([np.ones((n, 2)), level, rng.uniform(0, 1, (n, 2)),
                      rng.uniform(0, 1, (n, 2))], axis=-1)
    residual = rng.normal(size=(n, 2)) * (0.05 + level)
    residual[:, 1] = 0.0
    model = fit_spread(terms[: n // 2], residual[: n // 2])
    level_term = TERMS.index("level")
    assert model.coef[0, level_term] > 5 * model.coef[0, [2, 3]].max()
    sd = model.apply(terms[n // 2:])
    inside = np.abs(residual[n // 2:, 0]) <= Z * sd[:, 0]
    assert abs(inside.mean() - COVERAGE) < 0.02
    assert model.scale[1] == 0.0 and np.all(sd[:, 1] == 0.0)
    assert abs(model.inner_coverage - (COVERAGE + 1.0) / 2) < 0.02  # gene 1 covered fully


def test_too_few_inner_units_calibrate_nothing():
    """Below MIN_UNITS inner validation units (bulk mode's few slides) no spread model is
    fitted (the fold keeps the members' SD); at MIN_UNITS one is."""
    rng = np.random.default_rng(0)

    def split(n):
        shape = (n, 3)
        return InnerValidation(units=np.arange(n), head=rng.normal(size=shape),
                               member_sd=rng.uniform(size=shape), ridge=rng.normal(size=shape))

    y = rng.normal(size=(MIN_UNITS, 3))
    assert calibrate([split(MIN_UNITS - 1)], y, "mlp", blend_weight=None, use_ridge=False) is None
    model = calibrate([split(MIN_UNITS)], y, "mlp", blend_weight=None, use_ridge=False)
    assert model is not None and model.n_units == MIN_UNITS


def test_calibrated_spread_ranks_the_loud_units_and_covers_their_errors(tmp_path):
    """Held-out units with 10x the noise (known: their true value is high) get a larger
    spread: per section Spearman(spread, |error|) clearly positive, the loud units' mean
    spread larger than the quiet ones', and +-2 SD covers near 95% of the held-out errors.
    The members' raw SD (``train.spread: members``, same predictions) covers far less."""
    adata = _dataset()
    out, models = _train(adata, tmp_path, "calibrated")
    check = spread_calibration(out)
    assert check["spearman_mean"] > 0.15 and check["share_genes_positive"] > 0.9
    assert min(check["spearman_sections"].values()) > 0.1
    assert 0.88 <= check["coverage_2sd"] <= 0.99
    sd = np.asarray(out.layers["predicted_sd"])
    loud = loud_mask(adata, out)
    assert sd[loud].mean() > 1.1 * sd[~loud].mean()
    record = json.loads((models / "fold0" / "head.json").read_text())["spread"]
    default_terms = [t for t in TERMS if t != "head_ridge_disagreement"]
    assert record["terms"] == default_terms == list(record["coef"])
    assert all(len(c) == len(record["scale"]) == 4 for c in record["coef"].values())
    in_predictions = out.uns["slide2expr"]["train"]["folds"]["fold0"]["spread"]
    np.testing.assert_array_equal(in_predictions["scale"], record["scale"])
    for term in default_terms:
        np.testing.assert_array_equal(in_predictions["coef"][term], record["coef"][term])
    raw, _ = _train(adata, tmp_path, "members", spread="members")
    raw_check = spread_calibration(raw)
    assert raw_check["coverage_2sd"] < check["coverage_2sd"] - 0.2
    np.testing.assert_array_equal(raw.layers["predicted"], out.layers["predicted"])
    page, raw_page = (uncertainty_section({"uncertainty": c}) for c in (check, raw_check))
    assert "calibrated on each fold's inner validation" in page and "0.950" in page
    assert "ensemble members." in raw_page and "calibrated on" not in raw_page
    assert ("counting the genes whose spread is constant" in page) == (
        check["share_genes_ranked"] < 1.0)


def test_prediction_applies_the_folds_calibrated_spread(tmp_path):
    """``predict``/heatmaps (:class:`~slide2expr.predict.TrainedHead`) give a held-out slide
    the same calibrated spread as the training predictions, and a new slide (every fold
    averaged) the folds' calibrated spreads averaged; models without a spread record
    (``train.spread: members``) keep the members' SD."""
    adata = _dataset()
    out, models = _train(adata, tmp_path, "calibrated", max_epochs=6)
    x = np.asarray(adata.obsm["X_toy"])
    per_fold = []
    for k in range(4):
        rows = (out.obs["fold"] == k).to_numpy()
        head = load_trained_head(models, fold=k)
        assert head.fold_spreads is not None
        cols = [list(out.var_names).index(g) for g in head.genes]
        mean, sd = head.predict_tiles_spread(x[rows])
        np.testing.assert_allclose(mean, out.layers["predicted"][rows][:, cols], atol=1e-4)
        np.testing.assert_allclose(sd, out.layers["predicted_sd"][rows][:, cols], rtol=1e-4,
                                   atol=1e-5)
        per_fold.append(head.predict_tiles_spread(x[:10])[1])
    _, new_slide = load_trained_head(models).predict_tiles_spread(x[:10])
    np.testing.assert_allclose(new_slide, np.mean(per_fold, axis=0), rtol=1e-4, atol=1e-5)
    raw, raw_models = _train(adata, tmp_path, "members", max_epochs=6, spread="members")
    head = load_trained_head(raw_models, fold=0)
    assert head.fold_spreads is None
    rows = (raw.obs["fold"] == 0).to_numpy()
    np.testing.assert_allclose(head.predict_tiles_spread(x[rows])[1],
                               raw.layers["predicted_sd"][rows], rtol=1e-4, atol=1e-5)


def loud_mask(adata, out) -> np.ndarray:
    """The (unit, gene) values drawn with the loud noise (the true value above the line)."""
    truth = np.abs(np.asarray(adata.obsm["X_toy"])[:, :4])
    order = [list(adata.obs_names).index(u) for u in out.obs_names]
    genes = [list(adata.var_names).index(g) for g in out.var_names]
    return truth[order][:, genes] > NOISY_ABOVE


@pytest.mark.parametrize("settings", [{}, {"spread": "calibrated_ridge", "select": "off"}])
def test_calibration_never_reads_the_held_out_units(tmp_path, settings):
    """Garbling the held-out patient (features shifted, targets scrambled and shifted) leaves
    the fold's fitted spread model (coefficients, scales, inner coverage) unchanged: with the
    selection's inner predictions, and with the spread's own (select off) and the head-ridge
    disagreement term."""
    adata = _dataset()
    garbled = _garble_patient(adata, "p0")
    records = []
    for name, data in (("clean", adata), ("garbled", garbled)):
        out, models = _train(data, tmp_path, name, max_epochs=6, **settings)
        head = json.loads((models / _fold_of(out, "p0") / "head.json").read_text())
        records.append(head["spread"])
    assert records[0]["n_units"] > 0
    assert ("head_ridge_disagreement" in records[0]["terms"]) == bool(settings)
    assert records[1] == records[0]


def test_unknown_spread_setting_is_refused():
    with pytest.raises(InputError, match=r"train\.spread is .wide."):
        TrainConfig.from_dict({"spread": "wide"})
