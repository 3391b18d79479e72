"""Evaluate out-of-fold predictions: the per-gene table and the summary of a report.

Input: the train stage's ``predictions.h5ad`` (obs ``sample_id``, ``patient``, ``fold``;
``X`` = observed log1p(CP10k); ``layers['predicted']``; optional ``layers['baseline_*']``;
optional ``var['train_mean']``; ``uns['slide2expr']`` provenance).
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import slide2expr.report.stats as st
from slide2expr import __version__
from slide2expr.contracts.predictions import read_predictions
from slide2expr.keys import NOT_HELD_OUT, Key
from slide2expr.report.uncertainty import spread_calibration

log = logging.getLogger(__name__)

#: ``obs['fold']`` of units that were never held out (the train stage's convention).
#: Fewer clusters than this and the bootstrap falls back to the next finer level.
MIN_BOOTSTRAP_CLUSTERS = 3

#: Column order of genes.tsv (per-baseline ``baseline_{name}_r`` columns follow).
GENE_COLUMNS = (
    "gene", "pearson_r", "pearson_p", "pearson_q", "pearson_q_holm", "spearman_r", "rmse",
    "rmse_iqr", "baseline_r", "beats_baseline_z", "beats_baseline_p", "beats_baseline_q",
    "significant", "n", "reason", "r_fold_mean", "r_fold_sd", "n_folds", "train_mean",
    "top_mean", "hvg",
)

GENE_SET_LABELS = {
    "all": "all genes",
    "top_mean": "top {top_n} by training mean",
    "hvg": "{n_hvg} highly variable genes",
}


def definitions(*, alpha: float, baseline: str | None, bootstrap_unit: str,
                level: float = 0.95) -> dict[str, str]:
    """The definitions behind every number of the report, in words (shown on the page)."""
    beat = (f"beats the {baseline} baseline: one-sided Steiger (1980) Z test that the model's "
            f"r with the observed values is higher than the {baseline} baseline's r, on the "
            "same units (dependent correlations sharing the observed variable); "
            "Benjamini-Hochberg q over genes. A baseline constant for a gene counts as r = 0"
            if baseline else "no baseline available: the comparison is skipped")
    sig = (f"significantly well predicted: Pearson q < {alpha:g} and r > 0 and beats-baseline "
           f"q < {alpha:g}" if baseline else
           f"significantly well predicted: Pearson q < {alpha:g} and r > 0 "
           "(no baseline to beat)")
    return {
        "units": "every held-out unit (spot or slide) of every fold, pooled: each unit's "
                 "prediction comes from the fold model that did not see its patient",
        "pearson_r": "Pearson correlation of observed log1p(CP10k) and out-of-fold "
                     "prediction over all held-out units pooled; two-sided p from the t "
                     "test (n - 2 df)",
        "pearson_q": "Benjamini-Hochberg q-value of the Pearson p over the genes with a "
                     "defined r; pearson_q_holm: Holm-adjusted p (family-wise)",
        "spearman_r": "Spearman rank correlation, pooled",
        "rmse": "root mean squared error in log1p(CP10k); rmse_iqr: RMSE divided by the "
                "interquartile range of the observed values (empty when the IQR is 0)",
        "per_fold": "r computed within each fold; r_fold_mean and r_fold_sd are the mean and "
                    "standard deviation over folds",
        "undefined": "r is undefined (empty, with a reason) when the observed values or the "
                     "prediction are constant, or fewer than 3 units; such genes are left "
                     "out of means and multiple testing, never counted as 0",
        "beats_baseline": beat,
        "significant": sig,
        "mean_r": f"mean of the defined per-gene r over a gene set; {level:.0%} percentile "
                  f"bootstrap interval resampling {bootstrap_unit}s with replacement",
        "top_mean": "genes with the highest mean expression in training "
                    "(var['train_mean'], else the mean of the observed values)",
        "hvg": "highly variable genes of the observed log data (scanpy "
               "highly_variable_genes, flavor 'seurat': top normalised dispersion)",
        "baselines": "ridge: ridge regression on the standardised features, alpha chosen "
                     "by inner cross-validation; hest: the HEST-Benchmark protocol (PCA to "
                     "256, fixed-alpha ridge); mean: each fold's training mean, constant "
                     "within a fold, so "
                     "its per-fold r is undefined and its pooled r only reflects differences "
                     "between folds (often negative)",
    }


def by_r(genes: pd.DataFrame) -> pd.DataFrame:
    """The gene table best r first, undefined r last (dataset order on ties)."""
    return genes.sort_values("pearson_r", ascending=False, na_position="last",
                             kind="stable").reset_index(drop=True)


@dataclass
class ReportData:
    """Everything a report shows: the tables, and the arrays the plots need.

    ``genes`` rows are in the order of the columns of ``truth`` and ``preds`` (the
    dataset's); the written genes.tsv and the page list them best first (:func:`by_r`).
    """

    genes: pd.DataFrame
    summary: dict[str, Any]
    truth: np.ndarray
    preds: dict[str, np.ndarray]
    folds: np.ndarray
    fold_r: pd.DataFrame = field(default_factory=pd.DataFrame)


def _dense(a: Any) -> np.ndarray:
    if hasattr(a, "toarray"):
        a = a.toarray()
    return np.asarray(a, dtype=np.float64)


def load_predictions(path: str | Path):
    """Read and check a predictions ``.h5ad``; raise :class:`InputError` when malformed."""
    return read_predictions(path)


def select_hvg(truth: np.ndarray, n_hvg: int) -> tuple[np.ndarray, str]:
    """Pick ``n_hvg`` highly variable genes of log data; all genes if there are no more.

    Uses :func:`scanpy.pp.highly_variable_genes` (``flavor='seurat'``, which expects
    log-normalised data); falls back to the largest variance of the log data if scanpy
    fails (it needs some spread of means).
    """
    g = truth.shape[1]
    if g <= n_hvg:
        return np.ones(g, dtype=bool), f"all {g} genes (no more than {n_hvg})"
    try:
        import anndata
        import scanpy as sc

        ad = anndata.AnnData(np.nan_to_num(truth).astype(np.float32))
        sc.pp.highly_variable_genes(ad, n_top_genes=n_hvg, flavor="seurat")
        # scanpy's own cut can keep more than n_top genes on ties of the normalised
        # dispersion (bins holding one gene): rank by it, ties broken by raw dispersion
        norm = ad.var["dispersions_norm"].to_numpy(dtype=np.float64)
        raw = ad.var["dispersions"].to_numpy(dtype=np.float64)
        if np.isfinite(norm).sum() >= n_hvg:
            order = np.lexsort((-np.nan_to_num(raw, nan=-np.inf),
                                -np.nan_to_num(norm, nan=-np.inf)))
            mask = np.zeros(g, dtype=bool)
            mask[order[:n_hvg]] = True
            return mask, ("scanpy highly_variable_genes (flavor 'seurat') on observed log "
                          "data: top normalised dispersion")
    except Exception as exc:  # fall back on any scanpy failure
        log.warning("scanpy highly_variable_genes failed (%s); using the variance of log data",
                    exc)
    var = np.nan_to_num(np.nanvar(truth, axis=0), nan=-1.0)
    mask = np.zeros(g, dtype=bool)
    mask[np.argsort(-var, kind="stable")[:n_hvg]] = True
    return mask, "largest variance of the observed log data"


def _top_mask(values: np.ndarray, n: int) -> np.ndarray:
    mask = np.zeros(values.size, dtype=bool)
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    mask[order[: min(n, values.size)]] = True
    return mask


def _num(x: Any) -> float | None:
    """A JSON-safe float: NaN and infinities become ``None``."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def jsonable(obj: Any) -> Any:
    """Recursively turn numpy/pandas values into JSON-serialisable Python (NaN -> None)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _num(obj)
    if isinstance(obj, (str, type(None))):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _set_summary(r: np.ndarray, mask: np.ndarray, ci: tuple[float, float]) -> dict[str, Any]:
    sub = r[mask]
    ok = sub[np.isfinite(sub)]
    return {
        "n_genes": int(mask.sum()),
        "n_defined": int(ok.size),
        "mean_r": _num(ok.mean()) if ok.size else None,
        "median_r": _num(np.median(ok)) if ok.size else None,
        "mean_r_ci95": [_num(ci[0]), _num(ci[1])],
    }


def _prov(provenance: dict[str, Any], key: str) -> Any:
    """A provenance value at the top level, else under the train stage's ``train`` entry."""
    if provenance.get(key) is not None:
        return provenance[key]
    train = provenance.get("train")
    return train.get(key) if isinstance(train, dict) else None


def _bootstrap_clusters(obs: pd.DataFrame) -> tuple[np.ndarray, str]:
    for column, unit in (("patient", "patient"), ("sample_id", "sample")):
        if column in obs and obs[column].nunique() >= MIN_BOOTSTRAP_CLUSTERS:
            return obs[column].astype(str).to_numpy(), unit
    return np.arange(obs.shape[0]).astype(str), "unit"


def build_report(adata, *, top_n: int = 50, n_hvg: int = 50, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0, baseline: str = "ridge",
                 source: str | Path | None = None) -> ReportData:
    """Compute the per-gene table and the summary of a predictions AnnData.

    Parameters
    ----------
    adata
        Out-of-fold predictions (see the module docstring).
    top_n
        Size of the "top genes by training mean" set.
    n_hvg
        Number of highly variable genes.
    n_boot
        Bootstrap replicates for the confidence intervals (0 disables them).
    alpha
        Significance level for q-values.
    seed
        Bootstrap seed.
    baseline
        Which ``layers['baseline_{name}']`` the model is tested against.
    source
        Path of the input, recorded in the summary.

    Returns
    -------
    ReportData
    """
    held = _held_out(adata, baseline)
    log.info("per-gene statistics: %d units x %d genes, %d fold(s), baselines: %s",
             held.truth.shape[0], held.truth.shape[1], len(np.unique(held.folds)),
             held.baselines or "none")
    table, fold_r, base_r = _gene_table(held, alpha=alpha)
    table, gene_sets, set_info = _gene_sets(adata, held, table, base_r, top_n=top_n,
                                            n_hvg=n_hvg)
    cis, boot = _bootstrap(held, gene_sets, n_boot=n_boot, seed=seed)
    r_all = {"model": table["pearson_r"].to_numpy(), **base_r}
    blocks = {name: {s: _set_summary(r_all[name], m, cis[name][s])
                     for s, m in gene_sets.items()} for name in r_all}
    provenance = jsonable(dict(adata.uns.get("slide2expr", {})))
    summary: dict[str, Any] = {
        **_run_facts(held, fold_r, provenance, source),
        "settings": {"top_n": top_n, "n_hvg": n_hvg, "bootstrap": n_boot, "alpha": alpha,
                     "seed": seed, "baseline": baseline},
        "reference_baseline": held.ref,
        "model": blocks["model"],
        "baselines": {name: blocks[name] for name in held.baselines},
        "counts": _counts(table, alpha=alpha, has_ref=held.ref is not None),
        "gene_sets": set_info,
        "per_fold": _per_fold(held, fold_r),
        "bootstrap": boot,
        "definitions": definitions(alpha=alpha, baseline=held.ref, bootstrap_unit=boot["unit"]),
        "provenance": provenance,
        "report_version": __version__,
    }
    _add_records(summary, adata, provenance)
    return ReportData(genes=table, summary=summary, truth=held.truth, preds=held.preds,
                      folds=held.folds, fold_r=fold_r)


def _run_facts(held: _HeldOut, fold_r: pd.DataFrame, provenance: dict[str, Any],
               source: str | Path | None) -> dict[str, Any]:
    """The summary's first keys: the input, how many units, genes, patients, sections and
    folds, and the encoder, head and mode of the run."""
    return {
        "input": str(source) if source is not None else None,
        "n_units": int(held.truth.shape[0]),
        "n_genes": len(held.names),
        "n_patients": int(held.obs[Key.PATIENT].nunique()),
        "n_samples": int(held.obs[Key.SAMPLE_ID].nunique()),
        "n_folds": len(fold_r.columns),
        "encoder": _prov(provenance, "encoder"),
        "head": _prov(provenance, "head"),
        "mode": _prov(provenance, "mode"),
    }


def _bootstrap(held: _HeldOut, gene_sets: dict[str, np.ndarray], *, n_boot: int,
               seed: int) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, Any]]:
    """Bootstrap CIs of the mean r of every prediction and gene set, resampling patients
    (else sections), and the summary's record of how."""
    clusters, unit = _bootstrap_clusters(held.obs)
    n_clusters = len(np.unique(clusters))
    log.info("bootstrap: %d replicates resampling %d %ss", n_boot, n_clusters, unit)
    cis = st.bootstrap_mean_r(held.truth, held.preds, clusters, gene_sets=gene_sets,
                              n_boot=n_boot, seed=seed)
    record: dict[str, Any] = {"unit": unit, "n_clusters": n_clusters, "n_boot": n_boot,
                              "seed": seed, "level": 0.95, "method": "percentile"}
    if unit != "patient":
        record["note"] = (
            f"fewer than {MIN_BOOTSTRAP_CLUSTERS} patients: the intervals resample {unit}s, "
            "so they do not include patient-to-patient variation")
    return cis, record


def _gene_sets(adata: Any, held: _HeldOut, table: pd.DataFrame, base_r: dict[str, np.ndarray], *,
               top_n: int, n_hvg: int
               ) -> tuple[pd.DataFrame, dict[str, np.ndarray], dict[str, Any]]:
    """The gene table with the training mean, the gene-set flags and the baselines' r (in
    :data:`GENE_COLUMNS` order); the gene sets as masks; and their record for the summary."""
    if "train_mean" in adata.var:
        train_mean = np.asarray(adata.var["train_mean"], dtype=np.float64)
        mean_source = "var['train_mean']"
    else:
        train_mean = np.nanmean(held.truth, axis=0)
        mean_source = "mean of the observed values (no var['train_mean'])"
    table["train_mean"] = train_mean
    top_mask = _top_mask(train_mean, top_n)
    hvg_mask, hvg_method = select_hvg(held.truth, n_hvg)
    table["top_mean"] = top_mask
    table["hvg"] = hvg_mask
    for name in held.baselines:
        table[f"baseline_{name}_r"] = base_r[name]
    table = table.reset_index()
    table = table[list(GENE_COLUMNS) + [f"baseline_{n}_r" for n in held.baselines]]
    gene_sets = {"all": np.ones(len(held.names), dtype=bool), "top_mean": top_mask,
                 "hvg": hvg_mask}
    labels = {k: v.format(top_n=top_n, n_hvg=n_hvg) for k, v in GENE_SET_LABELS.items()}
    info = {
        "all": {"label": labels["all"], "n_genes": len(held.names)},
        "top_mean": {"label": labels["top_mean"], "source": mean_source,
                     "genes": [n for n, m in zip(held.names, top_mask, strict=True) if m]},
        "hvg": {"label": labels["hvg"], "method": hvg_method,
                "genes": [n for n, m in zip(held.names, hvg_mask, strict=True) if m]},
    }
    return table, gene_sets, info


def _add_records(summary: dict[str, Any], adata: Any, provenance: dict[str, Any]) -> None:
    """The summary's optional records, where the predictions have them: implausible
    predictions, the mean spread, how it ranks and covers the errors, what ``train.select`` shipped."""
    implausible = implausible_record(provenance)
    if implausible:
        summary["implausible_predictions"] = implausible
        log.warning("%s", implausible["note"])
    spread = mean_spread(adata)
    if spread is not None:
        summary["mean_predicted_sd"] = spread
    calibration = spread_calibration(adata)
    if calibration is not None:
        summary["uncertainty"] = calibration
    selection = selection_summary(provenance)
    if selection is not None:
        summary["selection"] = selection


def implausible_record(provenance: dict[str, Any]) -> dict[str, Any] | None:
    """The train stage's count of predictions outside their gene's plausible range
    (:mod:`slide2expr.train.plausible`) with a one-line note, when there are any."""
    record = (provenance.get("train") or {}).get("range_check")
    if not isinstance(record, dict):
        return None
    layers = {name: v for name, v in (record.get("layers") or {}).items()
              if isinstance(v, dict) and int(v.get("outside", 0)) > 0}
    if not layers:
        return None
    parts = [f"{name} {int(v['outside'])} of {int(v['checked'])} values in "
             f"{int(v['genes_affected'])} gene(s)" for name, v in layers.items()]
    note = (f"Implausible predictions: {'; '.join(parts)} lie outside their gene's plausible "
            f"range ({record.get('rule')}); check the inputs of those units (features unlike "
            "the training ones) before trusting their maps.")
    return {"rule": record.get("rule"), "layers": layers, "note": note}


def selection_summary(provenance: dict[str, Any]) -> dict[str, Any] | None:
    """What ``train.select`` compared in each fold, the inner scores, what won, and one
    plain sentence; None for predictions written before the selection existed."""
    train = provenance.get("train") or {}
    overall = train.get("selection")
    if not overall:
        return None
    head = str(train.get("head", "head"))
    folds = {name: {"inner_scores": info["selection"].get("inner_scores"),
                    "blend_margin": info["selection"].get("blend_margin"),
                    "winner": info["selection"].get("winner")}
             for name, info in (train.get("folds") or {}).items()
             if isinstance(info, dict) and info.get("selection")}
    ridge_folds = [str(f) for f in overall.get("ridge_folds", [])]
    blend_folds = [str(f) for f in overall.get("blend_folds", [])]
    shipped = str(overall.get("shipped"))
    if overall.get("mode") == "off":
        sentence = (f"train.select is off: every fold ships the {head} head, whatever inner "
                    "validation says.")
    else:
        compared = any("blend" in (v.get("inner_scores") or {}) for v in folds.values())
        sentence = _selection_sentence(head, {f: v["winner"] for f, v in folds.items()},
                                       blend=compared)
    return {"mode": overall.get("mode"), "head": head, "shipped": shipped,
            "ridge_folds": ridge_folds, "blend_folds": blend_folds, "folds": folds,
            "sentence": sentence}


def _selection_sentence(head: str, winners: dict[str, str], *, blend: bool = True) -> str:
    """One plain sentence: which model (head, ridge, blend) each fold ships and why
    (``blend``: whether the blend was among the candidates)."""
    n = len(winners)
    by = {w: [f for f, v in winners.items() if v == w] for w in ("ridge", "blend")}
    ridge, blend_won = by["ridge"], by["blend"]
    names = {"ridge": "ridge regression on the same inputs",
             "blend": f"the blend of the {head} head and ridge on the same inputs"}
    noise = (", and no blend of the two beat it by more than the inner noise (95% interval "
             "over genes)") if blend else ""
    if n and len(ridge) == n:
        return (f"The {head} head did not beat ridge regression on the same inputs on inner "
                "validation by more than the inner noise (95% interval over genes of its "
                f"gain) in any fold ({n}){noise}: the shipped model and these predictions "
                f"are ridge's, not the {head} head's.")
    if n and len(blend_won) == n:
        return (f"The blend of the {head} head and ridge on the same inputs beat both on "
                f"inner validation in every fold ({n}): the shipped model and these "
                "predictions are the blend's (weights in head.json).")
    parts = [f"{names[w]} was chosen on inner validation in {len(folds)} of {n} folds "
             f"({', '.join(folds)})" for w, folds in by.items() if folds]
    if parts:
        text = "; ".join(parts)
        others = (f", the others the {head} head's" if len(ridge) + len(blend_won) < n else "")
        return f"{text[0].upper()}{text[1:]}: those folds ship that model's predictions{others}."
    return (f"The {head} head beat ridge regression on the same inputs on inner validation "
            f"by more than the inner noise in every fold ({n}){noise}: it is the shipped "
            "model.")


def mean_spread(adata) -> float | None:
    """Mean of ``layers['predicted_sd']`` (the shipped spread, log1p CP10k) over
    the held-out units and modelled genes, or None when the predictions have no spread
    (a single model per fold)."""
    if Key.PREDICTED_SD not in adata.layers:
        return None
    sd = _dense(adata.layers[Key.PREDICTED_SD])
    if Key.FOLD in adata.obs:
        sd = sd[adata.obs[Key.FOLD].to_numpy() != NOT_HELD_OUT]
    values = sd[np.isfinite(sd)]
    return float(values.mean()) if values.size else None


@dataclass
class _HeldOut:
    """The units with out-of-fold predictions: truth, predictions, folds, baselines."""

    obs: pd.DataFrame
    names: list[str]
    truth: np.ndarray
    preds: dict[str, np.ndarray]
    folds: np.ndarray
    ref: str | None
    baselines: list[str]


def _held_out(adata, baseline: str) -> _HeldOut:
    """Dense truth and predictions of the units some fold held out (the others carry no
    prediction at all), with the reference baseline first among the baselines."""
    obs = adata.obs.copy()
    if "patient" not in obs:
        obs[Key.PATIENT] = obs[Key.SAMPLE_ID]
    names = [str(g) for g in adata.var_names]
    truth = _dense(adata.X)
    preds = {"model": _dense(adata.layers[Key.PREDICTED])}
    for key in sorted(adata.layers.keys()):
        if key.startswith("baseline_") and key != "baseline_":
            preds[key.removeprefix("baseline_")] = _dense(adata.layers[key])
    held = np.isfinite(preds["model"]).any(axis=1) & (obs[Key.FOLD].to_numpy() != NOT_HELD_OUT)
    if not held.all():
        log.info("%d of %d units have no out-of-fold prediction; left out",
                 int((~held).sum()), held.size)
        truth, obs = truth[held], obs.loc[held]
        preds = {k: v[held] for k, v in preds.items()}
    ref = baseline if baseline in preds and baseline != "model" else None
    known = ["ridge", "hest", "mean"]
    baselines = sorted((k for k in preds if k != "model"),
                       key=lambda k: (k != ref, known.index(k) if k in known else 99, k))
    if ref is None:
        log.warning("no layers['baseline_%s'] in the predictions: the baseline test is skipped",
                    baseline)
    return _HeldOut(obs=obs, names=names, truth=truth, preds=preds,
                    folds=obs[Key.FOLD].to_numpy(), ref=ref, baselines=baselines)


def _gene_table(held: _HeldOut, *, alpha: float
                ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, np.ndarray]]:
    """Per-gene statistics of the model (r, q, per-fold r, the test against the reference
    baseline, significance), the per-fold r table and each baseline's r."""
    truth, model = held.truth, held.preds["model"]
    table = st.gene_stats(truth, model, genes=held.names)
    table["pearson_q"] = st.bh(table["pearson_p"].to_numpy())
    table["pearson_q_holm"] = st.holm(table["pearson_p"].to_numpy())
    fold_r = st.per_fold_r(truth, model, held.folds)
    fold_vals = fold_r.to_numpy()
    n_folds_def = np.isfinite(fold_vals).sum(axis=1)
    with warnings.catch_warnings():  # all-NaN rows (genes undefined in every fold) give NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        table["r_fold_mean"] = np.nanmean(fold_vals, axis=1)
        table["r_fold_sd"] = np.where(n_folds_def >= 2, np.nanstd(fold_vals, axis=1, ddof=1),
                                      np.nan)
    table["n_folds"] = n_folds_def
    base_r = {name: st.pearson_r(truth, held.preds[name])[0] for name in held.baselines}
    if held.ref is not None:
        cmp = st.compare_to_baseline(truth, model, held.preds[held.ref])
        table["baseline_r"] = cmp["baseline_r"].to_numpy()
        table["beats_baseline_z"] = cmp["beats_baseline_z"].to_numpy()
        table["beats_baseline_p"] = cmp["beats_baseline_p"].to_numpy()
        table["beats_baseline_q"] = st.bh(table["beats_baseline_p"].to_numpy())
    else:
        for col in ("baseline_r", "beats_baseline_z", "beats_baseline_p", "beats_baseline_q"):
            table[col] = np.nan
    r = table["pearson_r"].to_numpy()
    positive = (table["pearson_q"].to_numpy() < alpha) & (r > 0)
    beats = table["beats_baseline_q"].to_numpy() < alpha
    table["significant"] = positive & beats if held.ref is not None else positive
    return table, fold_r, base_r


def _counts(table: pd.DataFrame, *, alpha: float, has_ref: bool) -> dict[str, Any]:
    """How many genes are defined, below the FDR level, beat the baseline, significant."""
    r = table["pearson_r"].to_numpy()
    positive = (table["pearson_q"].to_numpy() < alpha) & (r > 0)
    beats = table["beats_baseline_q"].to_numpy() < alpha
    return {
        "n_defined": int(np.isfinite(r).sum()),
        "n_undefined": int((~np.isfinite(r)).sum()),
        "n_q_below_alpha": int((table["pearson_q"].to_numpy() < alpha).sum()),
        "n_q_below_alpha_positive": int(positive.sum()),
        "n_holm_below_alpha_positive": int(
            ((table["pearson_q_holm"].to_numpy() < alpha) & (r > 0)).sum()),
        "n_beats_baseline": int(beats.sum()) if has_ref else None,
        "n_significant": int(table["significant"].to_numpy(dtype=bool).sum()),
    }


def _per_fold(held: _HeldOut, fold_r: pd.DataFrame) -> list[dict[str, Any]]:
    """One summary row a fold: its units, patients, samples, and model and baseline mean r."""
    fold_vals = fold_r.to_numpy()
    rows = []
    for j, k in enumerate(fold_r.columns):
        m = held.folds == k
        row: dict[str, Any] = {
            "fold": jsonable(k), "n_units": int(m.sum()),
            "n_patients": int(held.obs.loc[m, "patient"].nunique()),
            "n_samples": int(held.obs.loc[m, "sample_id"].nunique()),
        }
        rk = fold_vals[:, j]
        ok = rk[np.isfinite(rk)]
        row["model_mean_r"] = _num(ok.mean()) if ok.size else None
        row["model_median_r"] = _num(np.median(ok)) if ok.size else None
        row["model_n_defined"] = int(ok.size)
        for name in held.baselines:
            rb = st.per_fold_r(held.truth[m], held.preds[name][m], held.folds[m]).to_numpy()[:, 0]
            okb = rb[np.isfinite(rb)]
            row[f"{name}_mean_r"] = _num(okb.mean()) if okb.size else None
        rows.append(row)
    return rows
