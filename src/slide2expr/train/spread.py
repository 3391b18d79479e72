"""The shipped spread (``layers['predicted_sd']``), calibrated on the fold's inner validation.

The ensemble members' standard deviation alone ranks a held-out unit's error poorly (her2st,
two patients: Spearman of spread vs absolute error per gene -0.03 to +0.05, a +-2 SD band
covering 5-20%). With ``train.spread: calibrated`` (the default) a fold ships instead, per
gene,

    sd = scale * (c0 + c1 * level + c3 * member_sd)

where ``level`` is the shipped prediction (clipped at 0: log1p counts vary more where the
expression is higher) and ``member_sd`` the members' spread (``ddof=1``);
``calibrated_ridge`` adds ``c2 * |head - ridge|``, the disagreement between the head's
ensemble mean and ridge on the same inputs (on her2st it lowered the ranking on the other
patient: docs/benchmarks.md). The non-negative ``c`` are a least-squares fit of the absolute
residual on those terms, and ``scale`` makes ``prediction +- 2 sd`` cover 95% of the
residuals; both are fitted on the inner validation units of the fold (the ensemble members'
validation groups, patients or sections), where the head's predictions come from its inner
checkpoints and ridge's from a fit on the same inner training units. The outer fold's
held-out units are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import nnls

from slide2expr.contracts.models import SPREAD_TERMS
from slide2expr.predict.spread import apply_spread, member_sd, spread_terms

#: The terms of the spread model, in the order of its coefficients.
TERMS = SPREAD_TERMS
#: The band ``prediction +- Z * sd`` is calibrated to cover :data:`COVERAGE` of the inner
#: validation residuals.
Z = 2.0
COVERAGE = 0.95
#: Fewer inner validation units than this (e.g. bulk mode's few slides) calibrate nothing:
#: the fold keeps the members' SD.
MIN_UNITS = 20
#: How each term reads in the record's description.
TERM_WORDS = {"constant": "c0", "level": "c1 * prediction",
              "head_ridge_disagreement": "c2 * |head - ridge|", "member_sd": "c3 * members' SD"}


def describe(terms: tuple[str, ...]) -> str:
    """What the shipped spread is, in words (provenance, head.json, report)."""
    return (f"per gene, scale * ({' + '.join(TERM_WORDS[t] for t in terms)}), c >= 0 fitted "
            "to the absolute residuals of the fold's inner validation units and scale set so "
            "that prediction +- 2 SD covers 95% of them")


@dataclass
class InnerValidation:
    """The shipped model's ingredients on one distinct inner validation split.

    Attributes
    ----------
    units
        The split's validation units (indices into the fold's units; training units only).
    head
        ``(n, G)`` the mean of the members that validate on these units (inner checkpoints).
    member_sd
        ``(n, G)`` their standard deviation (``ddof=1``); zeros with one member.
    ridge
        ``(n, G)`` ridge on the same inputs, fitted on the split's inner training units.
    """

    units: np.ndarray
    head: np.ndarray
    member_sd: np.ndarray
    ridge: np.ndarray


@dataclass
class SpreadModel:
    """Per-gene coefficients ``(G, 4)`` over :data:`TERMS` and scales ``(G,)``; recorded as
    ``coef`` (per term, one value a gene) and ``scale`` (one a gene), in the fold's gene
    order."""

    coef: np.ndarray
    scale: np.ndarray
    n_units: int
    inner_coverage: float
    #: The terms the fit could use (the others are zero on inner validation and at test).
    terms: tuple[str, ...] = TERMS

    def apply(self, terms: np.ndarray) -> np.ndarray:
        """The calibrated SD ``(n, G)`` float32 of :func:`spread_terms` ``terms``."""
        return apply_spread(self.coef, self.scale, terms).astype(np.float32)

    def record(self, genes: list[str] | None = None) -> dict[str, Any]:
        """A JSON-ready record: what the spread is, the fitted coefficients and scales."""
        used = [(TERMS.index(t), t) for t in self.terms]
        return {
            "method": "calibrated", "description": describe(self.terms),
            "terms": list(self.terms),
            "band_sd": Z, "target_coverage": COVERAGE, "n_units": self.n_units,
            "inner_coverage": round(self.inner_coverage, 4),
            "median_coef": {t: round(float(np.median(self.coef[:, i])), 6) for i, t in used},
            "genes_using": {t: int((self.coef[:, i] > 0).sum()) for i, t in used},
            **({"genes": list(genes)} if genes is not None else {}),
            "coef": {t: np.round(self.coef[:, i], 6).tolist() for i, t in used},
            "scale": np.round(self.scale, 6).tolist(),
        }


def fit_spread(terms: np.ndarray, residual: np.ndarray) -> SpreadModel:
    """Fit :class:`SpreadModel` to inner validation ``terms`` ``(n, G, 4)`` and residuals
    ``(n, G)`` (observed minus shipped prediction).

    Per gene: non-negative least squares of ``|residual|`` on the terms, the fitted values
    floored at 1e-3 of the gene's mean absolute residual (so that a unit never gets a zero
    spread), then the scale that puts :data:`COVERAGE` of ``|residual| / fitted`` within
    :data:`Z`. Deterministic (no random draw).
    """
    terms = np.asarray(terms, dtype=np.float64)
    err = np.abs(np.asarray(residual, dtype=np.float64))
    n, n_genes, n_terms = terms.shape
    coef = np.zeros((n_genes, n_terms))
    scale = np.zeros(n_genes)
    for g in range(n_genes):
        coef[g] = _fit_gene(terms[:, g], err[:, g])
        base = terms[:, g] @ coef[g]
        if err[:, g].max() > 0:
            scale[g] = np.quantile(err[:, g] / base, COVERAGE, method="higher") / Z
    inside = err <= Z * scale * np.einsum("ngt,gt->ng", terms, coef)
    return SpreadModel(coef=coef, scale=scale, n_units=n, inner_coverage=float(inside.mean()))


def _fit_gene(terms: np.ndarray, err: np.ndarray) -> np.ndarray:
    """One gene's non-negative coefficients, with the floor added to the constant term."""
    coef = np.zeros(terms.shape[1])
    if err.max() <= 0:
        coef[0] = 1.0  # a gene never wrong on inner validation: a unit spread, scale 0
        return coef
    coef, _ = nnls(terms, err)
    floor = 1e-3 * err.mean()
    base = terms @ coef
    if base.min() < floor:
        coef[0] += floor - base.min()
    return coef


def shipped_validation(inner: InnerValidation, winner: str, *, blend_weight: float | None
                       ) -> np.ndarray:
    """The shipped model's predictions on one inner split: the head's, ridge's or their
    blend's (``winner`` as in :mod:`slide2expr.train.selection`)."""
    if winner == "ridge":
        return inner.ridge
    if winner == "blend" and blend_weight is not None:
        return (1.0 - blend_weight) * inner.head + blend_weight * inner.ridge
    return inner.head


def calibrate(inner: list[InnerValidation], y: np.ndarray, winner: str, *,
              blend_weight: float | None, use_ridge: bool) -> SpreadModel | None:
    """:func:`fit_spread` on every inner split's units pooled; None with fewer than
    :data:`MIN_UNITS` of them.

    ``use_ridge``: whether the spread uses the head-ridge disagreement (``calibrated_ridge``
    with ridge's held-out predictions at hand); else that term is zero here and at test."""
    if sum(len(split.units) for split in inner) < MIN_UNITS:
        return None
    terms, residual = [], []
    for split in inner:
        shipped = shipped_validation(split, winner, blend_weight=blend_weight)
        terms.append(spread_terms(shipped, split.head, split.ridge if use_ridge else None,
                                  split.member_sd))
        residual.append(y[split.units] - shipped)
    model = fit_spread(np.concatenate(terms), np.concatenate(residual))
    if not use_ridge:
        model.terms = tuple(t for t in TERMS if t != "head_ridge_disagreement")
    return model


__all__ = [
    "COVERAGE",
    "MIN_UNITS",
    "TERMS",
    "InnerValidation",
    "SpreadModel",
    "Z",
    "calibrate",
    "describe",
    "fit_spread",
    "member_sd",
    "shipped_validation",
    "spread_terms",
]
