"""Colour scales: robust per-slide limits, or one scale shared by a cohort.

A scale file (``heatmaps/{head}/scale.tsv``) has columns ``gene, vmin, vmax, n_tiles,
n_slides``; the heatmap stage reads it to draw every slide of a cohort on the same scale.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from slide2expr.contracts.report import SCALE_COLUMNS, read_scale, write_scale
from slide2expr.errors import InputError

__all__ = ["SCALE_COLUMNS", "check_percentiles", "cohort_scale", "read_scale", "robust_limits",
           "write_scale"]



def check_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    """Validate ``(low, high)`` percentiles: ``0 <= low < high <= 100``."""
    if len(percentiles) != 2:
        raise InputError(None, f"clip percentiles must be two numbers (got {list(percentiles)})",
                         "pass e.g. --clip-percentiles 1 99")
    low, high = (float(p) for p in percentiles)
    if not 0 <= low < high <= 100:
        raise InputError(None, f"clip percentiles must satisfy 0 <= low < high <= 100 "
                         f"(got {low:g}, {high:g})", "pass e.g. --clip-percentiles 1 99")
    return low, high


def robust_limits(values: np.ndarray, percentiles: Sequence[float] = (1.0, 99.0)) -> tuple[float, float]:
    """``(vmin, vmax)``: the given percentiles of the finite ``values``.

    A constant map gets a small symmetric range around its value so a colour bar can be drawn.
    """
    low, high = check_percentiles(percentiles)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(x) for x in np.percentile(v, [low, high]))
    if not vmax > vmin:
        pad = max(abs(vmin) * 1e-3, 1e-6)
        vmin, vmax = vmin - pad, vmax + pad
    return vmin, vmax


def cohort_scale(maps: Iterable[tuple[str, Sequence[str], np.ndarray]], genes: Sequence[str], *,
                 percentiles: Sequence[float] = (1.0, 99.0)) -> pd.DataFrame:
    """One ``vmin, vmax`` a gene over the tiles of every slide.

    Parameters
    ----------
    maps
        ``(source, genes, values)`` per slide: its genes and ``(N, G)`` predictions.
    genes
        Genes to scale; each must be in every map.
    percentiles
        Robust limits over the pooled tiles.
    """
    pooled: dict[str, list[np.ndarray]] = {g: [] for g in genes}
    n_slides = 0
    for source, map_genes, values in maps:
        index = {g: i for i, g in enumerate(map_genes)}
        missing = [g for g in genes if g not in index]
        if missing:
            raise InputError(source, f"has no prediction for {', '.join(missing[:5])}",
                             "make every tile map with the same model")
        for g in genes:
            pooled[g].append(np.asarray(values[:, index[g]], dtype=np.float32))
        n_slides += 1
    if n_slides == 0:
        raise InputError(None, "no tile maps to scale", "pass at least one tile-prediction file")
    rows = []
    for g in genes:
        v = np.concatenate(pooled[g])
        vmin, vmax = robust_limits(v, percentiles)
        rows.append({"gene": g, "vmin": vmin, "vmax": vmax, "n_tiles": int(v.size),
                     "n_slides": n_slides})
    return pd.DataFrame(rows, columns=list(SCALE_COLUMNS))
