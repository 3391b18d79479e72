"""The report stage: statistics against scipy, NaN handling, bootstrap coverage, the page.

``make_predictions`` builds a small ``predictions.h5ad`` with a known truth: *signal* genes
(``SIGNAL1``...) that the model predicts well and the ridge baseline poorly, *noise* genes
with predictions independent of the truth, a gene constant in the observed data and one
constant in the prediction, and genes whose names are hostile to HTML and mathtext.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from slide2expr.report import stats as st

XSS = "<script>alert(1)</script>"
MATH = r"$\frac{1$"
REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- fixture builder
def make_predictions(path: Path, *, n_patients: int = 6, units_per_patient: int = 30,
                     n_signal: int = 6, n_noise: int = 14, n_folds: int = 3, seed: int = 0,
                     baselines: tuple[str, ...] = ("ridge", "hest", "mean"),
                     hostile_names: bool = True, missing_fold_gene: bool = True,
                     train_mean: bool = True) -> dict:
    """Write a predictions ``.h5ad`` as the train stage does, with a known truth.

    Returns a dict with the gene lists (``signal``, ``noise``, ``constant_truth``,
    ``constant_pred``, ``missing``) and the arrays (``truth``, ``predicted``, ``folds``).
    """
    import anndata as ad

    rng = np.random.default_rng(seed)
    n = n_patients * units_per_patient
    patients = np.repeat([f"P{i}" for i in range(n_patients)], units_per_patient)
    samples = np.array([f"{p}_s{k % 2}" for k, p in enumerate(patients)])
    folds = np.repeat(np.arange(n_patients) % n_folds, units_per_patient)
    signal = [f"SIGNAL{i + 1}" for i in range(n_signal)]
    noise = [f"NOISE{i + 1}" for i in range(n_noise)]
    if hostile_names:
        signal[-1] = MATH
        noise[-1] = XSS
    genes = [*signal, *noise, "CONSTTRUTH", "CONSTPRED"]
    g = len(genes)
    z = rng.normal(size=n)  # the latent "morphology" the model sees
    truth = np.empty((n, g))
    pred = np.empty((n, g))
    ridge = np.empty((n, g))
    hest = np.empty((n, g))
    for j in range(n_signal):
        level = 1.0 + 0.3 * j
        truth[:, j] = level + 0.8 * z + rng.normal(0, 0.4 + 0.1 * j, n)
        pred[:, j] = level + 0.7 * z + rng.normal(0, 0.2, n)
        ridge[:, j] = level + 0.3 * z + rng.normal(0, 0.8, n)
        hest[:, j] = level + 0.5 * z + rng.normal(0, 0.6, n)
    for j in range(n_signal, n_signal + n_noise):
        truth[:, j] = 0.5 + rng.normal(0, 0.5, n)
        pred[:, j] = 0.5 + rng.normal(0, 0.2, n)
        ridge[:, j] = 0.5 + rng.normal(0, 0.2, n)
        hest[:, j] = 0.5 + rng.normal(0, 0.2, n)
    truth[:, -2] = 0.0  # CONSTTRUTH: never observed
    pred[:, -2] = rng.normal(0, 0.1, n)
    truth[:, -1] = rng.normal(1.0, 0.5, n)
    pred[:, -1] = 1.0  # CONSTPRED: the model predicts a constant
    ridge[:, -2:] = rng.normal(0, 0.1, (n, 2))
    hest[:, -2:] = rng.normal(0, 0.1, (n, 2))
    truth = np.clip(truth, 0, None)
    mean_base = np.empty((n, g))
    for k in range(n_folds):
        train = folds != k if n_folds > 1 else np.ones(n, dtype=bool)
        mean_base[folds == k] = truth[train].mean(axis=0)
    missing = []
    if missing_fold_gene:  # like the train stage: fold 0 did not model NOISE1
        pred[folds == 0, n_signal] = np.nan
        ridge[folds == 0, n_signal] = np.nan
        missing.append(genes[n_signal])
    layers = {"predicted": pred.astype(np.float32)}
    all_base = {"ridge": ridge, "hest": hest, "mean": mean_base}
    for name in baselines:
        layers[f"baseline_{name}"] = all_base[name].astype(np.float32)
    obs = pd.DataFrame({"sample_id": samples, "patient": patients, "fold": folds},
                       index=[f"u{i}" for i in range(n)])
    var = pd.DataFrame(index=genes)
    if train_mean:
        var["train_mean"] = truth.mean(axis=0)
    adata = ad.AnnData(X=truth.astype(np.float32), obs=obs, var=var, layers=layers)
    adata.uns["slide2expr"] = {"encoder": "demo-encoder", "mode": "spot",
                               "train": {"head": "mlp", "settings": {"folds": n_folds}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return {"signal": signal, "noise": noise, "constant_truth": "CONSTTRUTH",
            "constant_pred": "CONSTPRED", "missing": missing, "genes": genes,
            "truth": truth.astype(np.float32).astype(np.float64),
            "predicted": pred.astype(np.float32).astype(np.float64),
            "ridge": ridge.astype(np.float32).astype(np.float64), "folds": folds}


@pytest.fixture(scope="module")
def predictions(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    path = tmp_path_factory.mktemp("pred") / "predictions" / "mlp.h5ad"
    return path, make_predictions(path)


@pytest.fixture(scope="module")
def written(predictions: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory):
    from slide2expr.report import write_report

    path, truth = predictions
    out = tmp_path_factory.mktemp("report") / "mlp"
    data = write_report(path, out, n_boot=200, seed=1, n_scatter=4)
    return out, data, truth


# --------------------------------------------------------------------------- statistics
def test_gene_stats_match_scipy() -> None:
    rng = np.random.default_rng(3)
    t = rng.normal(size=(40, 6))
    p = t * np.linspace(-0.5, 2.0, 6) + rng.normal(size=(40, 6))
    p[:, 5] = rng.integers(0, 3, 40)  # ties for Spearman
    table = st.gene_stats(t, p, genes=list("abcdef"))
    for j, gene in enumerate("abcdef"):
        ref = stats.pearsonr(t[:, j], p[:, j])
        assert table.loc[gene, "pearson_r"] == pytest.approx(ref.statistic, abs=1e-12)
        assert table.loc[gene, "pearson_p"] == pytest.approx(ref.pvalue, rel=1e-9)
        rho = stats.spearmanr(t[:, j], p[:, j]).statistic
        assert table.loc[gene, "spearman_r"] == pytest.approx(rho, abs=1e-12)
        rmse = math.sqrt(np.mean((p[:, j] - t[:, j]) ** 2))
        assert table.loc[gene, "rmse"] == pytest.approx(rmse, rel=1e-12)
        assert table.loc[gene, "rmse_iqr"] == pytest.approx(rmse / stats.iqr(t[:, j]), rel=1e-12)
        assert table.loc[gene, "n"] == 40
        assert table.loc[gene, "reason"] == ""


def test_pearson_p_known_value() -> None:
    # r = 0.5 with n = 12: t = 0.5 * sqrt(10 / 0.75) = 1.8257..., two-sided p(t, 10 df)
    t = 0.5 * math.sqrt(10 / 0.75)
    assert st.pearson_p(np.array([0.5]), 12)[0] == pytest.approx(2 * stats.t.sf(t, 10), rel=1e-12)
    assert st.pearson_p(np.array([1.0]), 12)[0] == 0.0
    assert np.isnan(st.pearson_p(np.array([np.nan]), 12)[0])


def test_bh_and_holm() -> None:
    p = np.array([0.01, 0.04, np.nan, 0.03, 0.005, 0.9])
    q = st.bh(p)
    ok = np.isfinite(p)
    np.testing.assert_allclose(q[ok], stats.false_discovery_control(p[ok], method="bh"))
    assert np.isnan(q[2])
    # Holm by hand over the 5 finite p: sorted .005 .01 .03 .04 .9 times 5 4 3 2 1,
    # running maximum: .025 .04 .09 .09 .9
    np.testing.assert_allclose(st.holm(p)[ok], [0.04, 0.09, 0.09, 0.025, 0.9])
    assert np.isnan(st.holm(p)[2])
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    rng = np.random.default_rng(0)
    many = rng.uniform(0, 0.2, 50) ** 2
    np.testing.assert_allclose(st.holm(many), multitest.multipletests(many, method="holm")[1])
    np.testing.assert_allclose(st.bh(many), multitest.multipletests(many, method="fdr_bh")[1])


def test_constant_and_missing_values_give_nan_with_reason() -> None:
    rng = np.random.default_rng(1)
    t = rng.normal(size=(20, 6))
    p = t + rng.normal(size=(20, 6))
    t[:, 0] = 2.0                     # constant truth
    p[:, 1] = -1.0                    # constant prediction
    t[:, 2] = 0.0
    p[:, 2] = 0.0                     # both
    p[:, 3] = 5.0 + 1e-9 * rng.normal(size=20).astype(np.float32)  # constant to float32
    t[3:, 4] = np.nan                 # only 3 finite units... then 2
    t[2, 4] = np.nan
    t[[1, 7, 11], 5] = np.nan         # a few missing units: dropped for this gene only
    p[4, 5] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from NaN arithmetic either
        table = st.gene_stats(t, p)
        q = st.bh(table["pearson_p"].to_numpy())
    assert table["reason"].tolist()[:5] == [st.REASON_TRUTH, st.REASON_PRED, st.REASON_BOTH,
                                            st.REASON_PRED, st.REASON_FEW]
    assert table["pearson_r"].iloc[:5].isna().all()
    assert table["spearman_r"].iloc[:5].isna().all()
    assert np.isnan(q[:5]).all()
    keep = np.isfinite(t[:, 5]) & np.isfinite(p[:, 5])
    assert table["n"].iloc[5] == keep.sum() == 16
    ref = stats.pearsonr(t[keep, 5], p[keep, 5])
    assert table["pearson_r"].iloc[5] == pytest.approx(ref.statistic, abs=1e-12)
    assert table["pearson_p"].iloc[5] == pytest.approx(ref.pvalue, rel=1e-9)
    assert table["reason"].iloc[5] == ""
    # the RMSE of a constant-truth gene is still defined; its RMSE/IQR is not (IQR = 0)
    assert np.isfinite(table["rmse"].iloc[0]) and np.isnan(table["rmse_iqr"].iloc[0])


def test_fast_pearson_path_agrees_with_gene_stats() -> None:
    rng = np.random.default_rng(8)
    t = rng.normal(size=(30, 7))
    p = t + rng.normal(size=(30, 7))
    t[:, 0] = 1.0
    p[:, 1] = 0.0
    t[::3, 2] = np.nan
    p[:28, 3] = np.nan
    p[5, 4] = 7.0 * (1 + 1e-8)
    p[p[:, 4] != 7.0 * (1 + 1e-8), 4] = 7.0  # constant up to 1e-8 relative
    t[4, 5] = np.inf
    r, n = st.pearson_r(t, p)
    table = st.gene_stats(t, p)
    np.testing.assert_allclose(r, table["pearson_r"], atol=1e-12, equal_nan=True)
    np.testing.assert_array_equal(n, table["n"])
    assert np.isnan(r[[0, 1, 3, 4]]).all() and np.isfinite(r[[2, 5, 6]]).all()


def _steiger_by_hand(r12: float, r13: float, r23: float, n: int) -> tuple[float, float]:
    """Steiger (1980) eq. 14 with the pooled r, written out step by step."""
    rm = (r12 + r13) / 2
    psi = r23 * (1 - 2 * rm * rm) - 0.5 * rm * rm * (1 - 2 * rm * rm - r23 * r23)
    c = psi / (1 - rm * rm) ** 2
    z12 = 0.5 * math.log((1 + r12) / (1 - r12))
    z13 = 0.5 * math.log((1 + r13) / (1 - r13))
    z = (z12 - z13) * math.sqrt(n - 3) / math.sqrt(2 - 2 * c)
    return z, 0.5 * math.erfc(z / math.sqrt(2))  # one-sided, upper tail


@pytest.mark.parametrize(("r12", "r13", "r23", "n"), [
    (0.50, 0.30, 0.40, 100), (0.20, 0.25, 0.80, 50), (0.70, 0.10, -0.20, 30),
    (-0.10, 0.35, 0.50, 200),
])
def test_steiger_matches_hand_computation(r12, r13, r23, n) -> None:
    z, p = st.steiger_test(np.array([r12]), np.array([r13]), np.array([r23]), n)
    z_ref, p_ref = _steiger_by_hand(r12, r13, r23, n)
    assert z[0] == pytest.approx(z_ref, rel=1e-10)
    assert p[0] == pytest.approx(p_ref, rel=1e-9)
    _, p2 = st.steiger_test(np.array([r12]), np.array([r13]), np.array([r23]), n,
                            alternative="two-sided")
    assert p2[0] == pytest.approx(2 * min(p_ref, 1 - p_ref), rel=1e-9)


def test_compare_to_baseline_uses_the_data_correlations() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(size=(150, 3))
    t = z + rng.normal(size=(150, 3))
    model = z + 0.5 * rng.normal(size=(150, 3))
    base = 0.3 * z + rng.normal(size=(150, 3))
    base[:, 2] = 1.0  # a constant baseline counts as r = 0
    out = st.compare_to_baseline(t, model, base)
    for j in range(2):
        r12 = stats.pearsonr(t[:, j], model[:, j]).statistic
        r13 = stats.pearsonr(t[:, j], base[:, j]).statistic
        r23 = stats.pearsonr(model[:, j], base[:, j]).statistic
        z_ref, p_ref = _steiger_by_hand(r12, r13, r23, 150)
        assert out["beats_baseline_z"].iloc[j] == pytest.approx(z_ref, rel=1e-9)
        assert out["beats_baseline_p"].iloc[j] == pytest.approx(p_ref, rel=1e-8)
    assert np.isnan(out["baseline_r"].iloc[2])
    z_ref, p_ref = _steiger_by_hand(stats.pearsonr(t[:, 2], model[:, 2]).statistic, 0, 0, 150)
    assert out["beats_baseline_p"].iloc[2] == pytest.approx(p_ref, rel=1e-8)
    assert (out["beats_baseline_p"] < 1e-3).all()


def test_steiger_is_calibrated_under_the_null() -> None:
    """Equal true correlations: about 5% of one-sided p below 0.05; unequal: power."""
    rng = np.random.default_rng(11)
    n, reps = 80, 600
    truth = rng.normal(size=(n, reps))
    shared = rng.normal(size=(n, reps))
    a = 0.5 * truth + 0.6 * shared + 0.6 * rng.normal(size=(n, reps))
    b = 0.5 * truth + 0.6 * shared + 0.6 * rng.normal(size=(n, reps))
    out = st.compare_to_baseline(truth, a, b)
    rate = float((out["beats_baseline_p"] < 0.05).mean())
    assert 0.025 <= rate <= 0.085, rate
    better = 0.9 * truth + 0.6 * shared + 0.3 * rng.normal(size=(n, reps))
    power = float((st.compare_to_baseline(truth, better, b)["beats_baseline_p"] < 0.05).mean())
    assert power > 0.8, power


def test_per_fold_r() -> None:
    rng = np.random.default_rng(2)
    t = rng.normal(size=(60, 2))
    p = t + rng.normal(size=(60, 2))
    folds = np.repeat([0, 1, 2], 20)
    p[folds == 2, 1] = 3.0  # constant within fold 2 only
    table = st.per_fold_r(t, p, folds)
    assert list(table.columns) == [0, 1, 2]
    for k in range(3):
        m = folds == k
        assert table.loc[0, k] == pytest.approx(stats.pearsonr(t[m, 0], p[m, 0]).statistic)
    assert np.isnan(table.loc[1, 2]) and np.isfinite(table.loc[1, 1])


def test_bootstrap_ci_covers_the_truth_about_95_percent() -> None:
    """Simulated cohorts with known per-gene correlations: the 95% CI of the mean r,
    resampling patients, contains the true mean in about 95% of cohorts."""
    rng = np.random.default_rng(2024)
    n_genes, n_patients, per_patient, n_sims = 12, 24, 8, 200
    rho = np.linspace(0.1, 0.6, n_genes)
    true_mean = rho.mean()
    clusters = np.repeat(np.arange(n_patients), per_patient)
    hits = 0
    for _ in range(n_sims):
        n = n_patients * per_patient
        x = rng.normal(size=(n, n_genes))
        y = rho * x + np.sqrt(1 - rho ** 2) * rng.normal(size=(n, n_genes))
        lo, hi = st.bootstrap_mean_r(x, {"m": y}, clusters, n_boot=300,
                                     seed=int(rng.integers(1 << 30)))["m"]["all"]
        assert lo < hi
        hits += lo <= true_mean <= hi
    coverage = hits / n_sims
    assert 0.89 <= coverage <= 0.99, coverage


def test_bootstrap_matches_direct_recomputation_and_is_seeded() -> None:
    rng = np.random.default_rng(4)
    t = rng.normal(size=(50, 4))
    p = t + rng.normal(size=(50, 4))
    p[:10, 3] = np.nan
    clusters = np.repeat(list("abcde"), 10)
    one = st.bootstrap_mean_r(t, {"m": p}, clusters, n_boot=50, seed=7)
    two = st.bootstrap_mean_r(t, {"m": p}, clusters, n_boot=50, seed=7)
    assert one == two
    # replicate by hand: the same multinomial draws, pooled units, gene_stats, mean r
    draws = np.random.default_rng(7).multinomial(5, np.full(5, 0.2), size=50)
    means = []
    for w in draws:
        idx = np.concatenate([np.flatnonzero(clusters == c).repeat(1)
                              for c, k in zip("abcde", w, strict=True) for _ in range(k)])
        r = st.gene_stats(t[idx], p[idx])["pearson_r"].to_numpy()
        means.append(np.nanmean(r))
    lo, hi = np.quantile(means, [0.025, 0.975])
    assert one["m"]["all"] == pytest.approx((lo, hi), abs=1e-9)
    single = st.bootstrap_mean_r(t, {"m": p}, np.zeros(50), n_boot=50)
    assert all(math.isnan(v) for v in single["m"]["all"])


# --------------------------------------------------------------------------- report outputs
def test_report_files_and_numbers(written) -> None:
    out, _, truth = written
    genes = pd.read_csv(out / "genes.tsv", sep="\t", keep_default_na=False,
                        na_values=["NaN", ""])
    required = ["gene", "pearson_r", "pearson_p", "pearson_q", "pearson_q_holm", "spearman_r",
                "rmse", "rmse_iqr", "baseline_r", "beats_baseline_p", "beats_baseline_q",
                "significant", "n", "reason", "r_fold_mean", "r_fold_sd"]
    assert set(required) <= set(genes.columns)
    assert sorted(genes["gene"]) == sorted(truth["genes"])
    g = genes.set_index("gene")
    # the planted genes come out on top, all significantly well predicted
    best = genes.sort_values("pearson_r", ascending=False)["gene"].head(len(truth["signal"]))
    assert set(best) == set(truth["signal"])
    assert g.loc[truth["signal"], "significant"].all()
    assert not g.loc[truth["noise"], "significant"].any()
    # constant genes: NaN with a reason, not 0
    assert np.isnan(g.loc["CONSTTRUTH", "pearson_r"])
    assert g.loc["CONSTTRUTH", "reason"] == st.REASON_TRUTH
    assert g.loc["CONSTPRED", "reason"] == st.REASON_PRED
    # numbers agree with scipy on the pooled units (NaN units dropped for NOISE1)
    t, p, folds = truth["truth"], truth["predicted"], truth["folds"]
    for name in (truth["signal"][0], truth["missing"][0]):
        j = truth["genes"].index(name)
        m = np.isfinite(p[:, j])
        ref = stats.pearsonr(t[m, j], p[m, j])
        assert g.loc[name, "pearson_r"] == pytest.approx(ref.statistic, abs=1e-6)
        assert g.loc[name, "n"] == m.sum()
        per_fold = [stats.pearsonr(t[m & (folds == k), j], p[m & (folds == k), j]).statistic
                    for k in np.unique(folds[m])]
        assert g.loc[name, "r_fold_mean"] == pytest.approx(np.mean(per_fold), abs=1e-6)
        assert g.loc[name, "r_fold_sd"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-6)
    assert g.loc[truth["missing"][0], "n_folds"] == 2
    j = truth["genes"].index(truth["signal"][1])
    assert g.loc[truth["signal"][1], "baseline_r"] == pytest.approx(
        stats.pearsonr(t[:, j], truth["ridge"][:, j]).statistic, abs=1e-6)
    np.testing.assert_allclose(
        genes["pearson_q"].dropna(),
        stats.false_discovery_control(genes["pearson_p"].dropna(), method="bh"), rtol=1e-6)
    # best first, undefined last
    r = genes["pearson_r"].to_numpy()
    assert (np.diff(r[np.isfinite(r)]) <= 0).all() and np.isnan(r[-2:]).all()
    # the significance rule, as defined
    rule = (genes["pearson_q"] < 0.05) & (genes["pearson_r"] > 0) & (genes["beats_baseline_q"] < 0.05)
    assert (genes["significant"] == rule).all()

    summary = json.loads((out / "summary.json").read_text())
    model = summary["model"]
    assert model["all"]["mean_r"] == pytest.approx(genes["pearson_r"].mean(), abs=1e-6)
    assert model["all"]["median_r"] == pytest.approx(genes["pearson_r"].median(), abs=1e-6)
    assert model["all"]["n_defined"] == len(genes) - 2
    lo, hi = model["all"]["mean_r_ci95"]
    assert lo < model["all"]["mean_r"] < hi
    assert set(summary["baselines"]) == {"ridge", "hest", "mean"}
    assert summary["baselines"]["ridge"]["all"]["mean_r"] < model["all"]["mean_r"]
    assert summary["counts"]["n_significant"] == int(genes["significant"].sum())
    assert summary["counts"]["n_q_below_alpha_positive"] == int(
        ((genes["pearson_q"] < 0.05) & (genes["pearson_r"] > 0)).sum())
    assert len(summary["per_fold"]) == 3
    assert sum(f["n_units"] for f in summary["per_fold"]) == len(folds)
    assert summary["bootstrap"]["unit"] == "patient"
    assert summary["head"] == "mlp" and summary["encoder"] == "demo-encoder"
    assert summary["provenance"]["train"]["settings"]["folds"] == 3
    # the fixture has 22 genes: the "top 50" and "50 HVG" sets are every gene
    assert model["top_mean"]["n_genes"] == model["hvg"]["n_genes"] == len(genes)
    assert set(summary["definitions"]) >= {"pearson_r", "significant", "beats_baseline"}


def test_scatter_plots_show_the_best_and_worst_genes(written) -> None:
    from slide2expr.report.html import _top_bottom

    _, data, truth = written
    top, bottom = _top_bottom(data.genes, 3)
    r = data.genes["pearson_r"].to_numpy()
    assert set(data.genes["gene"].iloc[top]) <= set(truth["signal"])
    assert r[top].min() >= np.nanmax(np.delete(r, top + bottom)) >= r[bottom].max()
    for i in top + bottom:  # the plotted columns are the named genes' columns
        m = np.isfinite(data.preds["model"][:, i])
        assert stats.pearsonr(data.truth[m, i], data.preds["model"][m, i]).statistic == \
            pytest.approx(r[i], abs=1e-9)


def test_gene_sets_when_there_are_more_genes(tmp_path: Path) -> None:
    from slide2expr.report import write_report

    path = tmp_path / "p.h5ad"
    make_predictions(path, n_signal=4, n_noise=30, hostile_names=False, train_mean=False)
    data = write_report(path, tmp_path / "r", top_n=5, n_hvg=6, n_boot=0, n_scatter=2)
    s = data.summary
    assert s["model"]["top_mean"]["n_genes"] == 5
    assert s["model"]["hvg"]["n_genes"] == 6
    assert "scanpy" in s["gene_sets"]["hvg"]["method"]
    assert s["gene_sets"]["top_mean"]["source"].startswith("mean of the observed")
    # top by mean: the signal genes have the highest levels by construction
    assert set(s["gene_sets"]["top_mean"]["genes"]) >= {"SIGNAL1", "SIGNAL2", "SIGNAL3"}
    assert s["model"]["all"]["mean_r_ci95"] == [None, None]


def test_report_without_baselines_and_one_patient(tmp_path: Path) -> None:
    from slide2expr.report import write_report

    path = tmp_path / "p.h5ad"
    make_predictions(path, n_patients=1, units_per_patient=60, n_folds=1, baselines=(),
                     hostile_names=False)
    import anndata as ad

    a = ad.read_h5ad(path)
    a.obs["fold"] = np.repeat([0, 1, 2], 20)  # one patient, three sections
    a.obs["sample_id"] = np.repeat(["s1", "s2", "s3"], 20)
    a.write_h5ad(path)
    data = write_report(path, tmp_path / "r", n_boot=50, n_scatter=2)
    s = data.summary
    assert s["reference_baseline"] is None and s["baselines"] == {}
    assert s["counts"]["n_beats_baseline"] is None
    assert s["bootstrap"]["unit"] == "sample" and "note" in s["bootstrap"]
    sig = data.genes["significant"]
    rule = (data.genes["pearson_q"] < 0.05) & (data.genes["pearson_r"] > 0)
    assert (sig == rule).all() and sig.any()
    page = (tmp_path / "r" / "index.html").read_text()
    assert "not tested against a baseline" in page


def test_html_is_self_contained_and_escaped(written) -> None:
    out, _, _ = written
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert XSS not in page
    assert page.count("<script>") == 1  # only the page's own sorting script
    assert "$\\frac{1$" in page
    # nothing is fetched: no external URLs in src/href, all images inline
    import re

    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:|//)", page)
    images = re.findall(r"<img[^>]*src='([^']*)'", page)
    assert len(images) >= 3 and all(i.startswith("data:image/png;base64,") for i in images)
    assert "id='headline'" in page and "id='genes'" in page and "id='folds'" in page


@pytest.fixture(scope="module")
def in_results(tmp_path_factory: pytest.TempPathFactory):
    """A report written inside a results/ tree: one heatmap PNG and QC images exist."""
    from PIL import Image

    from slide2expr.report import write_report

    results = tmp_path_factory.mktemp("run") / "results"
    path = results / "predictions" / "mlp.h5ad"
    truth = make_predictions(path)
    png = Image.new("RGB", (8, 8), (200, 30, 30))
    (results / "heatmaps" / "mlp" / "P0_s0").mkdir(parents=True)
    png.save(results / "heatmaps" / "mlp" / "P0_s0" / "SIGNAL1.png")
    (results / "qc").mkdir()
    png.save(results / "qc" / "P0_s1.png")
    (results / "config.json").write_text("{}")
    import anndata as ad

    a = ad.read_h5ad(path)  # provenance as the join writes it: the config as a JSON string
    a.uns["slide2expr"]["config"] = json.dumps({"join": {"mode": "spot", "encoder": "lite0"},
                                                "train": {"heads": ["mlp"]}})
    a.write_h5ad(path)
    out = results / "report" / "mlp"
    data = write_report(path, out, n_boot=20, seed=1, n_scatter=1)
    return out, data, truth


def test_page_links_heatmaps_viewer_qc_and_shows_yaml(in_results) -> None:
    import html as htmlmod
    import re

    out, _, truth = in_results
    page = (out / "index.html").read_text(encoding="utf-8")
    hrefs = [htmlmod.unescape(h) for h in re.findall(r"href='([^']*)'", page)]
    # a PNG present when the page was written is linked, relative to the page
    assert "../../heatmaps/mlp/P0_s0/SIGNAL1.png" in hrefs
    assert (out / "../../heatmaps/mlp/P0_s0/SIGNAL1.png").resolve().is_file()
    assert not any(h.endswith("/SIGNAL2.png") for h in hrefs)  # none for absent ones
    # every gene links to the viewer; names are URL-quoted and HTML-escaped
    viewer = [h for h in hrefs if h.startswith("../../viewer/index.html#gene=")]
    assert len(viewer) == len(truth["genes"])
    assert "../../viewer/index.html#gene=%3Cscript%3Ealert%281%29%3C%2Fscript%3E" in viewer
    assert XSS not in page and page.count("<script>") == 1
    assert "../../qc/P0_s1.png" in hrefs and "../../qc/P0_s0.png" not in hrefs
    assert "../../heatmaps/mlp/P0_s0/" in hrefs and "../../heatmaps/mlp/P1_s0/" not in hrefs
    table = page[page.index("id='genes'"):]
    assert "data-heatmaps" not in table and "new Image()" not in page  # no probing script
    # provenance: YAML, the config a nested mapping rather than one escaped JSON line
    prov = htmlmod.unescape(page[page.index("<h2>Provenance</h2>"):].split("<pre>")[1]
                            .split("</pre>")[0])
    import yaml

    parsed = yaml.safe_load(prov)
    assert parsed["config"]["join"]["encoder"] == "lite0"
    assert "  encoder: lite0" in prov and '\\"join\\"' not in prov


def test_search_box_filters_and_links_only_existing_files(in_results, chromium,
                                                         tmp_path: Path) -> None:
    """In a browser: #q= filters the gene table; the heatmap written with the page is
    linked; one written after it is not (the page links only files that existed)."""
    import re

    from PIL import Image

    out, _, _ = in_results
    late = out.parent.parent / "heatmaps" / "mlp" / "P1_s1"
    late.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (0, 0, 200)).save(late / "SIGNAL2.png")
    url = (out / "index.html").resolve().as_uri() + "#q=signal"
    res = _headless(chromium, tmp_path, "--allow-file-access-from-files", "--dump-dom", url)
    dom = res.stdout
    assert 'data-ready="1"' in dom, res.stderr[-2000:]
    rows = re.findall(r"<tr( style=\"display: none;\")?><td class=\"t\">(.*?)</td>", dom)
    shown = [g for hidden, g in rows if not hidden]
    assert shown and all("SIGNAL" in g.upper() for g in shown)
    assert len(shown) < len(rows)
    assert re.search(r"<span id=\"gene-count\"[^>]*>\d+ of \d+ genes</span>", dom)
    assert 'href="../../heatmaps/mlp/P1_s1/SIGNAL2.png"' not in dom  # not there when written
    assert 'href="../../heatmaps/mlp/P0_s0/SIGNAL1.png"' in dom


def test_page_opens_with_zero_console_errors(in_results, tmp_path: Path) -> None:
    """Selenium + Debian's chromium-driver: the report page logs no console error (the heatmap
    probe of pictures never drawn logged one per missing PNG), and every relative link and
    image on it names a file that exists."""
    from urllib.parse import unquote, urlparse

    driver = _selenium_chromium(tmp_path)
    try:
        out, _, _ = in_results
        driver.get((out / "index.html").resolve().as_uri())
        end = time.monotonic() + 20
        while driver.execute_script("return document.body.getAttribute('data-ready')") != "1":
            assert time.monotonic() < end, "the page's script never finished"
            time.sleep(0.05)
        time.sleep(0.5)  # let any late resource request fail
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        targets = driver.execute_script(
            "return Array.from(document.querySelectorAll('a[href], img[src]'))"
            ".map(e => e.href || e.src)")
    finally:
        driver.quit()
    assert errors == []
    files = [unquote(urlparse(t).path) for t in targets if t.startswith("file:")]
    assert files, "no links to check"
    viewer = str((out / "../../viewer/index.html").resolve())
    missing = [f for f in files if f != viewer and not Path(f).exists()]
    assert missing == []


def _selenium_chromium(tmp_path: Path):
    """Headless Chromium through Selenium and Debian's chromedriver, logging the console."""
    paths = (Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver"))
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if webdriver is None or not all(p.exists() for p in paths):
        message = "chromium, chromium-driver (apt) or selenium (pip) missing"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = str(paths[0])
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--allow-file-access-from-files",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(paths[1])), options=options)


def _cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    """Run ``slide2expr ARGS`` in-process (as the console script does); return the status."""
    from slide2expr.cli import main

    monkeypatch.setattr(sys, "argv", ["slide2expr", *args])
    try:
        main()
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_cli_report_and_bad_input(predictions, tmp_path: Path, monkeypatch, capsys) -> None:
    path, _ = predictions
    status = _cli(monkeypatch, "report", str(path), "-o", str(tmp_path / "r"),
                  "--bootstrap", "20", "--n-scatter", "2")
    out = capsys.readouterr()
    assert status == 0, out.err
    assert "significantly well predicted" in out.out
    assert {p.name for p in (tmp_path / "r").iterdir()} == {"genes.tsv", "summary.json",
                                                            "index.html"}
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["bootstrap"]["n_boot"] == 20
    import anndata as ad

    bad = ad.read_h5ad(path)
    del bad.layers["predicted"]
    bad_path = tmp_path / "dataset.h5ad"
    bad.write_h5ad(bad_path)
    status = _cli(monkeypatch, "report", str(bad_path), "-o", str(tmp_path / "bad"))
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert err[-1].startswith(f"error: {bad_path}: has no layers['predicted']")
    assert not (tmp_path / "bad").exists()
    assert _cli(monkeypatch, "report", str(tmp_path / "missing.h5ad"), "-o",
                str(tmp_path / "bad")) == 2
    assert "predictions file not found" in capsys.readouterr().err


# --------------------------------------------------------------------------- browser
def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _headless(chromium: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}",
         "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120)


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 2000) -> Path:
    """Render ``html`` in headless Chromium to ``png``."""
    chromium = _chromium()
    if chromium is None:
        raise FileNotFoundError("chromium")
    res = _headless(chromium, png.parent, f"--screenshot={png}",
                    f"--window-size={width},{height}", html.resolve().as_uri())
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot: {res.stderr[-2000:]}")
    return png


@pytest.fixture(scope="module")
def chromium() -> str:
    found = _chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium not found (apt-get install chromium); required under CI")
        pytest.skip("chromium not installed")
    return found


def _colour_pixels(img: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> np.ndarray:
    return (np.abs(img[..., :3].astype(int) - np.array(rgb)) <= tol).all(axis=-1)


def test_page_renders_in_headless_chromium(written, chromium, tmp_path: Path) -> None:
    from PIL import Image

    out, _, _ = written
    png = screenshot(out / "index.html", tmp_path / "shot.png")
    img = np.asarray(Image.open(png).convert("RGB"))
    assert img.shape[:2] == (2000, 1280)
    grey = img.mean(axis=-1)
    # not blank: real contrast and a good share of non-white pixels
    assert grey.std() > 20
    assert (grey < 200).mean() > 0.03
    # the headline table: its dark-blue header row (#1f3a5f) near the top of the page
    header = _colour_pixels(img[:700], (0x1F, 0x3A, 0x5F))
    rows = np.flatnonzero(header.sum(axis=1) > 300)  # full-width-ish table header rows
    assert rows.size >= 10, "headline table header not visible"
    # the plots: the model's histogram fill (#1f77b4 at alpha 0.45 on white), the ridge
    # (#ff7f0e) and hest (#2ca02c) outlines; none of these colours is used by the page's CSS
    fill = tuple(round(0.45 * c + 0.55 * 255) for c in (0x1F, 0x77, 0xB4))
    assert _colour_pixels(img, fill).sum() > 2000, "r distribution plot not visible"
    assert _colour_pixels(img, (0xFF, 0x7F, 0x0E)).sum() > 300, "ridge histogram not visible"
    assert _colour_pixels(img, (0x2C, 0xA0, 0x2C)).sum() > 300, "hest histogram not visible"


def test_page_script_runs_and_sorts(written, chromium, tmp_path: Path) -> None:
    """The inline script runs (data-ready set) and sorts the gene table from the URL hash."""
    out, data, _ = written
    url = (out / "index.html").resolve().as_uri() + "#sort=gene:asc"
    res = _headless(chromium, tmp_path, "--dump-dom", url)
    dom = res.stdout
    assert 'data-ready="1"' in dom, res.stderr[-2000:]
    assert 'data-sorted-by="gene"' in dom
    table = dom[dom.index('id="genes"'):]
    table = table[: table.index("</table>")]
    import html as htmlmod
    import re

    first_cells = [htmlmod.unescape(re.sub(r"<[^>]+>", "", m)) for m in
                   re.findall(r"<tr><td class=\"t\">(.*?)</td>", table)]
    assert len(first_cells) == len(data.genes)
    assert first_cells == sorted(first_cells, key=str.lower)
    # the hostile gene name is text in the DOM, never an element
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert "<script>alert(1)" not in dom


# --------------------------------------------------------------------------- workflow
@pytest.mark.slow
def test_report_rule_and_snakemake_report(tmp_path: Path) -> None:
    """The `report` rule runs through Snakemake, and `--report` bundles the page."""
    make_predictions(tmp_path / "fixture.h5ad", hostile_names=False)
    # a stand-in for the train stage, so the report becomes a default target
    (tmp_path / "Snakefile").write_text(
        "import json, os, shlex\n"
        "from snakemake.utils import validate\n"
        "config.setdefault('report', {'bootstrap': 50})\n"
        f"validate(config['report'], {str(REPO / 'workflow/schemas/report.schema.yaml')!r})\n"
        # what workflow/rules/common.smk defines for a run with one encoder
        "RESULTS = 'results'\nSWEEP = False\nENC_RESULTS = RESULTS\nENC_TAG = ''\n"
        "CEILING_PREDICTIONS = None\n"
        f"CONDA_ENV = {str(REPO / 'envs' / 'slide2expr.yaml')!r}\n"
        "def config_json(*keys):\n"
        "    return shlex.quote(json.dumps({k: config[k] for k in keys}))\n"
        "rule train:\n    input: 'fixture.h5ad'\n"
        "    output: 'results/predictions/{head}.h5ad'\n    shell: 'cp {input} {output}'\n"
        f"include: {str(REPO / 'workflow/rules/report.smk')!r}\n"
        "rule all:\n    input: 'results/report/mlp/index.html'\n    default_target: True\n")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    snake = [sys.executable, "-m", "snakemake", "--cores", "1", "--nolock"]
    run = subprocess.run(snake, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    outdir = tmp_path / "results" / "report" / "mlp"
    assert {p.name for p in outdir.iterdir()} == {"genes.tsv", "summary.json", "index.html"}
    assert (tmp_path / "results" / "logs" / "report" / "mlp.log").exists()
    assert (tmp_path / "results" / "benchmarks" / "report" / "mlp.tsv").exists()
    assert json.loads((outdir / "summary.json").read_text())["bootstrap"]["n_boot"] == 50
    rep = subprocess.run([*snake, "--report", "report.zip"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    import zipfile

    with zipfile.ZipFile(tmp_path / "report.zip") as z:
        names = z.namelist()
        pages = [n for n in names if n.startswith("report/data/") and n.endswith("index.html")]
        assert len(pages) == 1, names
        assert z.read(pages[0]) == (outdir / "index.html").read_bytes()
        main = z.read("report/report.html").decode("utf-8", "replace")
    assert "Per-gene report" in main
    assert "Steiger" in main  # the caption
