"""Measured next to predicted expression at the spots of a spot-mode training slide.

Reads the train stage's ``predictions/{head}.h5ad`` (``X`` = measured log1p CP10k,
``layers['predicted']`` = out-of-fold predictions, ``obs['sample_id']``,
``obsm['spatial']`` = spot centres in level-0 px) and draws, for each gene, the measured
and the predicted values as discs on the faded thumbnail, on one shared colour scale, with
the Pearson r of the slide's spots.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.atomic import atomic_output
from slide2expr.contracts.features import spot_diameter_level0
from slide2expr.contracts.predictions import read_predictions
from slide2expr.heatmap.overlay import PNG_COMPRESS_LEVEL, OverlayStyle, colormap
from slide2expr.heatmap.scale import robust_limits
from slide2expr.keys import Key

log = logging.getLogger(__name__)


@dataclass
class SpotValues:
    """Measured and predicted expression of one slide's spots.

    Attributes
    ----------
    centres
        ``(S, 2)`` level-0 spot centres.
    measured, predicted
        ``(S, G)`` log1p CP10k; predicted may be NaN where a spot's fold did not model a gene.
    genes
        Column names.
    ids
        Spot IDs (the predictions' ``obs_names``), when read from a file.
    """

    centres: np.ndarray
    measured: np.ndarray
    predicted: np.ndarray
    genes: list[str]
    spot_ids: list[str] | None = None
    diameter0: float | None = None

    def subset(self, genes: Sequence[str]) -> SpotValues | None:
        """The columns of ``genes`` that are here, in that order (None if none is)."""
        cols = [self.genes.index(g) for g in genes if g in self.genes]
        if not cols:
            return None
        return SpotValues(centres=self.centres, measured=self.measured[:, cols],
                          predicted=self.predicted[:, cols], genes=[self.genes[c] for c in cols],
                          spot_ids=self.spot_ids, diameter0=self.diameter0)


def read_spot_values(path: str | Path, sample_id: str, genes: Sequence[str]) -> SpotValues | None:
    """The spots of ``sample_id`` in a predictions file, or None when it has none.

    Raises
    ------
    InputError
        If the file is unreadable, lacks ``layers['predicted']``, ``obsm['spatial']`` or
        ``obs['sample_id']``.
    """
    import scipy.sparse as sp

    adata = read_predictions(path, need=(Key.SPATIAL,))
    rows = np.flatnonzero(adata.obs[Key.SAMPLE_ID].astype(str).to_numpy() == sample_id)
    var = {g: i for i, g in enumerate(map(str, adata.var_names))}
    keep = [g for g in genes if g in var]
    if rows.size == 0 or not keep:
        return None
    cols = np.array([var[g] for g in keep])

    def take(matrix: Any) -> np.ndarray:
        block = matrix[rows][:, cols]
        return np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float32)

    measured = take(adata.X)
    predicted = take(adata.layers[Key.PREDICTED])
    centres = np.asarray(adata.obsm[Key.SPATIAL], dtype=np.float64)[rows]
    ids = adata.obs[Key.SPOT_ID] if Key.SPOT_ID in adata.obs else adata.obs_names
    return SpotValues(centres=centres, measured=measured, predicted=predicted, genes=keep,
                      spot_ids=[str(v) for v in np.asarray(ids)[rows]],
                      diameter0=_spot_diameter(adata, sample_id))


def _spot_diameter(adata: Any, sample_id: str) -> float | None:
    """Spot diameter in level-0 px: ``uns['spatial']``'s scale factors, else provenance."""

    lib = dict(adata.uns.get(Key.SPATIAL_UNS, {})).get(sample_id, {})
    value = dict(lib.get("scalefactors", {})).get("spot_diameter_fullres")
    if value:
        return float(value)
    samples = dict(dict(adata.uns.get(Key.PROVENANCE, {})).get("samples", {}))
    return spot_diameter_level0(dict(samples.get(sample_id, {})))


def draw_spot_comparison(path: str | Path, spots: SpotValues, *, thumbnail: np.ndarray,
                         downsample: float, sample_id: str, percentiles: Sequence[float] = (1, 99),
                         style: OverlayStyle | None = None, model: str = "") -> dict[str, float]:
    """Write a PNG: one row per gene, measured left and predicted right.

    Returns
    -------
    dict
        Pearson r of measured vs predicted per gene over the slide's spots (NaN when
        undefined).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    style = style or OverlayStyle()
    h, w = thumbnail.shape[:2]
    faded = (0.55 * thumbnail.astype(np.float32) + 0.45 * 255).astype(np.uint8)
    xy = spots.centres / downsample
    marker_px = _marker_diameter(xy)
    # zoom on the spots: their bounding box plus two disc diameters
    pad = 2 * marker_px
    x_lo, x_hi = max(0.0, xy[:, 0].min() - pad), min(float(w), xy[:, 0].max() + pad)
    y_lo, y_hi = max(0.0, xy[:, 1].min() - pad), min(float(h), xy[:, 1].max() + pad)
    view_w, view_h = max(x_hi - x_lo, 1.0), max(y_hi - y_lo, 1.0)
    panel_in = 3.6
    aspect = view_h / view_w
    n = len(spots.genes)
    fig = Figure(figsize=(2 * panel_in + 0.9, n * panel_in * aspect + 0.7), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 2, squeeze=False)
    cmap = colormap(style.cmap)
    rs: dict[str, float] = {}
    points_per_px = 72.0 / fig.dpi * (panel_in * fig.dpi / view_w)
    for row, gene in enumerate(spots.genes):
        meas, pred = spots.measured[:, row], spots.predicted[:, row]
        vmin, vmax = robust_limits(np.concatenate([meas, pred]), percentiles)
        ok = np.isfinite(meas) & np.isfinite(pred)
        r = (float(np.corrcoef(meas[ok], pred[ok])[0, 1])
             if ok.sum() > 2 and meas[ok].std() > 0 and pred[ok].std() > 0 else float("nan"))
        rs[gene] = r
        for col, (label, vals) in enumerate((("measured", meas), ("predicted", pred))):
            ax = axes[row, col]
            ax.imshow(faded, extent=(0, w, h, 0), interpolation="bilinear")
            good = np.isfinite(vals)
            sc = ax.scatter(xy[good, 0], xy[good, 1], c=vals[good], cmap=cmap, vmin=vmin,
                            vmax=vmax, s=(marker_px * points_per_px) ** 2, linewidths=0,
                            marker="o")
            ax.set_xlim(x_lo, x_hi)
            ax.set_ylim(y_hi, y_lo)
            ax.set_xticks([])
            ax.set_yticks([])
            title = f"{gene}: {label}"
            if col == 1:
                title += f" (out-of-fold, r = {r:.2f})" if np.isfinite(r) else " (out-of-fold)"
            ax.set_title(title, fontsize=9)
        bar = fig.colorbar(sc, ax=axes[row, :].tolist(), fraction=0.04, pad=0.02)
        bar.set_label("log1p CP10k", fontsize=8)
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(f"{sample_id}: measured vs predicted at the spots"
                 + (f" ({model})" if model else ""), fontsize=10)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return rs


def _marker_diameter(xy: np.ndarray) -> float:
    """Disc diameter in image px: 80% of the median nearest-neighbour distance."""
    if len(xy) < 2:
        return 6.0
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(xy).query(xy, k=2)
    return max(float(np.median(dist[:, 1])) * 0.8, 1.0)
