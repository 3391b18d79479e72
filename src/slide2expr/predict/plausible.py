"""The plausible range of a predicted value: the rule, and the check applied to every
prediction a trained model writes (training's out-of-fold predictions, tile maps, ``slide2expr
predict``).

A model fed features unlike its training ones (a near-constant feature that shifts in a new
section, another scanner) can predict values its target never takes: 355 on a log1p CP10k
scale whose measured maximum is 7.2 (issue 21, case 6). Such values are kept (they are what
the model says) but counted, logged and recorded beside the prediction, so a map, a viewer or
an export can say so.

The rule, per gene: a prediction is *implausible* when it lies outside ``[train min -
RANGE_MARGIN x range, train max + RANGE_MARGIN x range]``, where min, max and range (max - min)
are the gene's values over the training units of the model's fold. Training records these
bounds in every fold's ``head.json`` (:func:`bounds_record`); a model averaged over several
folds allows the union of their bounds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

#: How far beyond the training range (as a fraction of it) a prediction is still plausible.
RANGE_MARGIN = 0.5
#: The rule in words, recorded beside the counts.
RULE = (f"per gene and fold: outside [train min - {RANGE_MARGIN:g} x range, train max + "
        f"{RANGE_MARGIN:g} x range] of the fold's training units (range = max - min)")
#: ``head.json`` key holding a fold's bounds.
META_KEY = "plausible"

Bounds = tuple[np.ndarray, np.ndarray]


def plausible_bounds(y_train: np.ndarray) -> Bounds:
    """Per-gene ``(low, high)`` bounds from training targets ``(n, G)`` (NaN ignored)."""
    y = np.asarray(y_train, dtype=np.float64)
    low, high = np.nanmin(y, axis=0), np.nanmax(y, axis=0)
    margin = RANGE_MARGIN * (high - low)
    return low - margin, high + margin


def outside(predicted: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Mask of the finite predictions ``(n, G)`` below ``low`` or above ``high`` (per gene)."""
    p = np.asarray(predicted, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.isfinite(p) & ((p < low[None, :]) | (p > high[None, :]))


def bounds_record(low: np.ndarray, high: np.ndarray) -> dict[str, object]:
    """The JSON-able bounds kept in ``head.json`` (gene order: the head's ``genes``)."""
    return {"rule": RULE, "low": [float(v) for v in low], "high": [float(v) for v in high]}


def bounds_from_metas(metas: Sequence[Mapping[str, object]], genes: Sequence[str]
                      ) -> Bounds | None:
    """The union of the bounds that ``metas`` (``head.json`` of each averaged model) allow
    for ``genes``; None when any of them has none (a model trained before the bounds were
    recorded)."""
    low = np.full(len(genes), np.inf)
    high = np.full(len(genes), -np.inf)
    for meta in metas:
        record = meta.get(META_KEY)
        if not isinstance(record, Mapping):
            return None
        index = {str(g): i for i, g in enumerate(meta.get("genes") or [])}
        columns = np.array([index[str(g)] for g in genes], dtype=np.int64)
        low = np.minimum(low, np.asarray(record["low"], dtype=np.float64)[columns])
        high = np.maximum(high, np.asarray(record["high"], dtype=np.float64)[columns])
    return low, high


def check_range(values: np.ndarray, bounds: Bounds | None, genes: Sequence[str], *,
                what: str) -> dict[str, object] | None:
    """Count the values ``(n, G)`` outside ``bounds`` and log one warning when any are.

    Returns
    -------
    dict or None
        ``{"rule", "outside", "checked", "genes_affected", "genes", "most_extreme"}`` for the
        output's attributes; None without bounds.
    """
    if bounds is None:
        return None
    mask = outside(values, *bounds)
    per_gene = mask.sum(axis=0)
    order = np.argsort(-per_gene, kind="stable")
    named = [str(genes[i]) for i in order[:10] if per_gene[i] > 0]
    extreme = None
    if mask.any():
        picked = np.asarray(values, dtype=np.float64)[mask]
        extreme = float(picked[np.argmax(np.abs(picked))])
        log.warning("%s: %d predicted values outside the plausible range of their gene (%s; "
                    "most extreme %.3g; genes %s); kept, but the model is extrapolating: check "
                    "that these features resemble the training slides'", what, int(mask.sum()),
                    RULE, extreme, ", ".join(named))
    return {"rule": RULE, "outside": int(mask.sum()), "checked": int(np.isfinite(values).sum()),
            "genes_affected": int((per_gene > 0).sum()), "genes": named,
            "most_extreme": extreme}
