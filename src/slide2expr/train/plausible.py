"""The count of training's out-of-fold predictions outside their plausible range
(the rule: :mod:`slide2expr.predict.plausible`).

Training checks every fold's held-out predictions (head, baselines) and records the counts in
the predictions file, so the report and the maps can warn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from slide2expr.predict.plausible import RANGE_MARGIN, RULE, outside, plausible_bounds

#: Genes named per layer in the record (the most affected first).
NAMED_GENES = 10


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

__all__ = ["NAMED_GENES", "RANGE_MARGIN", "RULE", "RangeCheck", "implausible_total",
           "outside", "plausible_bounds"]
