"""Does the shipped spread mean something? Spread vs error on the held-out units.

``layers['predicted_sd']`` is, by default (``train.spread: calibrated``), each fold's spread
model of :mod:`slide2expr.train.spread`: per gene a fit of the inner validation units'
absolute residuals on the prediction, the head-ridge disagreement and the ensemble members'
SD, scaled so that +-2 SD covers 95% of them (never the held-out units); with
``train.spread: members`` the members' standard deviation around the shipped prediction.
:func:`spread_method` says which, from the predictions' provenance. Two checks on the held-out units, in each held-out section
(``sample_id``) separately, so that section-to-section offsets do not pass for ranking:

- **ranking**: per gene, the Spearman correlation between the spread and the absolute
  error ``|predicted - observed|`` over the section's units; averaged over genes, then over
  sections (positive: units with a larger spread tend to have a larger error);
- **coverage**: the share of (unit, gene) values whose observed value lies within
  ``predicted +- 2 x spread`` (a calibrated Gaussian spread would cover about 95%).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata

from slide2expr.keys import NOT_HELD_OUT, Key

#: Sections with fewer held-out units than this are skipped (no per-gene ranking).
MIN_SECTION_UNITS = 10


def _dense(matrix: Any) -> np.ndarray:
    return np.asarray(matrix.toarray() if hasattr(matrix, "toarray") else matrix,
                      dtype=np.float64)


def _spearman_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column Spearman rho (average ranks for ties; NaN where a column is constant)."""
    ra = rankdata(a, axis=0)
    rb = rankdata(b, axis=0)
    ra -= ra.mean(axis=0)
    rb -= rb.mean(axis=0)
    denom = np.sqrt((ra ** 2).sum(axis=0) * (rb ** 2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ra * rb).sum(axis=0) / denom, np.nan)


def spread_method(adata: Any) -> dict[str, Any]:
    """What ``layers['predicted_sd']`` is, from ``uns['slide2expr']['train']['folds']``.

    Returns
    -------
    dict
        ``method`` (``calibrated`` when a fold recorded a spread model, else ``members``),
        and for ``calibrated`` its ``description`` and the per-fold ``inner_coverage``
        (share of inner validation residuals within +-2 SD, 0.95 by construction).
    """
    folds = (adata.uns.get(Key.PROVENANCE, {}).get("train", {}).get("folds", {}) or {})
    records = {str(f): info["spread"] for f, info in folds.items()
               if isinstance(info, dict) and info.get("spread")}
    if not records:
        return {"method": "members"}
    first = next(iter(records.values()))
    return {"method": "calibrated", "description": str(first.get("description", "")),
            "inner_coverage": {f: float(r["inner_coverage"]) for f, r in records.items()}}


def _held_out_with_spread(adata: Any, sd: np.ndarray) -> np.ndarray:
    """Units held out by a fold (not trained on) that have a spread."""
    held = np.isfinite(sd).any(axis=1)
    if Key.FOLD in adata.obs:
        held &= adata.obs[Key.FOLD].to_numpy() != NOT_HELD_OUT
    return held


def _rounded_mean(by_section: dict[str, float]) -> float | None:
    """The mean over sections, to 4 decimals; None without a section."""
    return round(float(np.mean(list(by_section.values()))), 4) if by_section else None


def spread_calibration(adata: Any) -> dict[str, Any] | None:
    """How well ``layers['predicted_sd']`` ranks and covers the held-out errors.

    Returns
    -------
    dict or None
        ``spearman_mean`` (mean over sections of the mean over genes of rho(spread, |error|)),
        ``spearman_sections`` (per section), ``share_genes_positive`` (genes with rho > 0,
        over every section's genes with a defined rho), ``spearman_mean_all_genes`` (as
        ``spearman_mean``, a gene whose spread is constant in a section counting 0, not
        skipped), ``share_genes_ranked`` (genes with a defined rho, of every section's genes), ``coverage_2sd`` (pooled share within +-2 SD),
        ``coverage_sections``, ``n_units``, ``n_sections`` and ``spread``
        (:func:`spread_method`); None without a spread layer
        or without a held-out unit that has one (e.g. every fold shipped ridge).
    """
    if Key.PREDICTED_SD not in adata.layers:
        return None
    sd = _dense(adata.layers[Key.PREDICTED_SD])
    pred = _dense(adata.layers[Key.PREDICTED])
    truth = _dense(adata.X)
    held = _held_out_with_spread(adata, sd)
    if not held.any():
        return None
    sections = adata.obs[Key.SAMPLE_ID].astype(str).to_numpy()
    rho_by_section: dict[str, float] = {}
    cover_by_section: dict[str, float] = {}
    rho_all_by_section: dict[str, float] = {}
    positive, defined, ranked = 0, 0, 0
    inside, total = 0, 0
    for section in np.unique(sections[held]):
        rows = held & (sections == section)
        cols = np.isfinite(sd[rows]).all(axis=0)
        s, err = sd[rows][:, cols], np.abs(pred[rows][:, cols] - truth[rows][:, cols])
        within = err <= 2.0 * s
        inside += int(within.sum())
        total += within.size
        cover_by_section[str(section)] = round(float(within.mean()), 4) if within.size else None
        if rows.sum() < MIN_SECTION_UNITS:
            continue
        rho = _spearman_columns(s, err)
        finite = rho[np.isfinite(rho)]
        if rho.size:
            rho_all_by_section[str(section)] = float(np.nan_to_num(rho).mean())
            ranked += rho.size
        if finite.size:
            rho_by_section[str(section)] = round(float(finite.mean()), 4)
            positive += int((finite > 0).sum())
            defined += finite.size
    return {
        "spearman_mean": _rounded_mean(rho_by_section),
        "spearman_sections": rho_by_section,
        "spearman_mean_all_genes": _rounded_mean(rho_all_by_section),
        "share_genes_ranked": round(defined / ranked, 4) if ranked else None,
        "share_genes_positive": round(positive / defined, 4) if defined else None,
        "coverage_2sd": round(inside / total, 4) if total else None,
        "coverage_sections": cover_by_section,
        "n_units": int(held.sum()),
        "n_sections": len(cover_by_section),
        "spread": spread_method(adata),
    }
