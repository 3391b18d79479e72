"""The plausible range of a predicted value, and the count of predictions outside it.

A model that is fed features unlike its training ones (a near-constant feature that shifts in
a held-out section, another encoder) can predict values its target never takes: 355 on a
log1p CP10k scale whose measured maximum is 7.2 (issue 21, case 6). Such values are kept (they
are what the model says) but counted, logged and recorded in the predictions file, so the
report, the maps and the exports can warn.

The rule, per gene and per fold: a prediction is *implausible* when it lies outside
``[train min - RANGE_MARGIN x range, train max + RANGE_MARGIN x range]``, where min, max and
range (max - min) are the gene's values over the fold's training units. A margin of half the
training range leaves room for a held-out section that truly expresses a gene more than any
training section did, and is far below the tens-of-ranges excursions of a broken input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: How far beyond the training range (as a fraction of it) a prediction is still plausible.
RANGE_MARGIN = 0.5
#: The rule in words, recorded beside the counts.
RULE = (f"per gene and fold: outside [train min - {RANGE_MARGIN:g} x range, train max + "
        f"{RANGE_MARGIN:g} x range] of the fold's training units (range = max - min)")
#: Genes named per layer in the record (the most affected first).
NAMED_GENES = 10


def plausible_bounds(y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


@dataclass
class RangeCheck:
    """Counts of implausible predictions per layer, accumulated over folds."""

    genes: Sequence[str]
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # layer -> per gene
    checked: dict[str, int] = field(default_factory=dict)
    worst: dict[str, float] = field(default_factory=dict)  # layer -> most extreme value

    def add(self, layer: str, predicted: np.ndarray, columns: np.ndarray,
            low: np.ndarray, high: np.ndarray) -> None:
        """Check one fold's predictions ``(n, len(columns))`` of ``layer``."""
        mask = outside(predicted, low, high)
        per_gene = self.counts.setdefault(layer, np.zeros(len(self.genes), dtype=np.int64))
        np.add.at(per_gene, columns, mask.sum(axis=0))
        self.checked[layer] = self.checked.get(layer, 0) + int(np.isfinite(predicted).sum())
        if mask.any():
            values = np.asarray(predicted, dtype=np.float64)[mask]
            extreme = float(values[np.argmax(np.abs(values))])
            if abs(extreme) > abs(self.worst.get(layer, 0.0)):
                self.worst[layer] = extreme

    def total(self, layer: str) -> int:
        """Implausible values of ``layer``."""
        return int(self.counts.get(layer, np.zeros(0)).sum())

    def record(self) -> dict[str, object]:
        """The JSON-able record kept in the predictions file's ``uns``."""
        out: dict[str, object] = {"rule": RULE, "margin": RANGE_MARGIN, "layers": {}}
        for layer, per_gene in self.counts.items():
            order = np.argsort(-per_gene, kind="stable")
            named = [str(self.genes[i]) for i in order[:NAMED_GENES] if per_gene[i] > 0]
            out["layers"][layer] = {  # type: ignore[index]
                "outside": int(per_gene.sum()), "checked": self.checked.get(layer, 0),
                "genes_affected": int((per_gene > 0).sum()), "genes": named,
                "most_extreme": self.worst.get(layer)}
        return out


def implausible_total(record: Mapping[str, object] | None, layer: str = "predicted") -> int:
    """The count of ``layer``'s implausible values in a record (0 when absent)."""
    layers = (record or {}).get("layers") or {}
    return int((layers.get(layer) or {}).get("outside", 0))  # type: ignore[union-attr]
