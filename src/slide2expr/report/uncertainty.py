"""Does the ensemble's spread mean something? Spread vs error on the held-out units.

``layers['predicted_sd']`` is the standard deviation of a fold's ensemble members around the
shipped prediction. Two checks on the held-out units, in each held-out section
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


def spread_calibration(adata: Any) -> dict[str, Any] | None:
    """How well ``layers['predicted_sd']`` ranks and covers the held-out errors.

    Returns
    -------
    dict or None
        ``spearman_mean`` (mean over sections of the mean over genes of rho(spread, |error|)),
        ``spearman_sections`` (per section), ``share_genes_positive`` (genes with rho > 0,
        over every section's genes), ``coverage_2sd`` (pooled share within +-2 SD),
        ``coverage_sections``, ``n_units`` and ``n_sections``; None without a spread layer
        or without a held-out unit that has one (e.g. every fold shipped ridge).
    """
    if Key.PREDICTED_SD not in adata.layers:
        return None
    sd = _dense(adata.layers[Key.PREDICTED_SD])
    pred = _dense(adata.layers[Key.PREDICTED])
    truth = _dense(adata.X)
    held = np.isfinite(sd).any(axis=1)
    if Key.FOLD in adata.obs:
        held &= adata.obs[Key.FOLD].to_numpy() != NOT_HELD_OUT
    if not held.any():
        return None
    sections = adata.obs[Key.SAMPLE_ID].astype(str).to_numpy()
    rho_by_section: dict[str, float] = {}
    cover_by_section: dict[str, float] = {}
    positive, defined = 0, 0
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
        if finite.size:
            rho_by_section[str(section)] = round(float(finite.mean()), 4)
            positive += int((finite > 0).sum())
            defined += finite.size
    return {
        "spearman_mean": (round(float(np.mean(list(rho_by_section.values()))), 4)
                          if rho_by_section else None),
        "spearman_sections": rho_by_section,
        "share_genes_positive": round(positive / defined, 4) if defined else None,
        "coverage_2sd": round(inside / total, 4) if total else None,
        "coverage_sections": cover_by_section,
        "n_units": int(held.sum()),
        "n_sections": len(cover_by_section),
    }
