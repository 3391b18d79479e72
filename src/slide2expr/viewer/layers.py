"""Expression layers of one slide for the viewer: one small PNG per gene at tile resolution.

A gene layer is the slide's tile grid (one pixel per grid cell, ``tile_px_level0`` level-0 px
across, origin at the slide's top-left as the tile stage lays the grid) with the predicted
value quantised to 8 bits: 0 = no tile, 1..255 = ``lo + (q - 1) / 254 * (hi - lo)`` where
``lo, hi`` are the gene's minimum and maximum on the slide (so the error is at most
``(hi - lo) / 508``). The page colours it with any colour map and scale, fades low values to
transparent and lets OpenSeadragon stretch it over the slide in level-0 coordinates.

Each layer travels inside a JavaScript file (``S2E.gene(...)`` with the PNG as base64), because
a page opened from ``file://`` can load scripts but cannot read the pixels of image files.
The same file carries the measured values at the spots (spot mode) and, when the tile map
has one (``TileMap.spread``, ``layers['predicted_sd']``), the spread of the averaged models
(uncertainty; calibrated on inner validation by default, ``train.spread``).
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from slide2expr.contracts.tilemaps import TileMap
from slide2expr.draw.raster import rasterize_tiles

#: Quantisation levels above the "no value" code 0.
LEVELS = 254


@dataclass
class Grid:
    """Where a slide's tile grid lies: ``cols x rows`` cells of ``step`` level-0 px from (0, 0)."""

    step: float
    cols: int
    rows: int

    def as_json(self) -> dict[str, Any]:
        return {"step": self.step, "cols": self.cols, "rows": self.rows}


@dataclass
class SpotTable:
    """Spots of one slide: centres (level-0 px), IDs, measured and predicted ``(S, G)``."""

    centres: np.ndarray
    ids: list[str]
    genes: list[str]
    measured: np.ndarray
    predicted: np.ndarray
    diameter: float = field(default=0.0)


def tile_grid(tmap: TileMap) -> Grid:
    """The grid that holds every tile of ``tmap`` (one cell per tile)."""
    step = float(tmap.tile_size0)
    width = float(tmap.attrs.level0_width or (tmap.coords[:, 0].max() + step))
    height = float(tmap.attrs.level0_height or (tmap.coords[:, 1].max() + step))
    return Grid(step=step, cols=max(1, math.ceil(width / step)),
                rows=max(1, math.ceil(height / step)))


def tile_cells(tmap: TileMap, grid: Grid) -> np.ndarray:
    """``(N, 2)`` int32 grid cell ``(col, row)`` of each tile (its centre's cell)."""
    cells = np.floor(tmap.centres / grid.step).astype(np.int64)
    cells[:, 0] = np.clip(cells[:, 0], 0, grid.cols - 1)
    cells[:, 1] = np.clip(cells[:, 1], 0, grid.rows - 1)
    return cells.astype(np.int32)


def quantise(values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """8-bit codes of ``values`` (0 for NaN) and the ``lo, hi`` they span."""
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if not finite.any():
        return np.zeros(v.shape, dtype=np.uint8), 0.0, 1.0
    lo, hi = float(v[finite].min()), float(v[finite].max())
    if not hi > lo:
        hi = lo + max(abs(lo) * 1e-6, 1e-6)
    q = np.zeros(v.shape, dtype=np.uint8)
    q[finite] = 1 + np.rint((v[finite] - lo) / (hi - lo) * LEVELS).astype(np.uint8)
    return q, lo, hi


def layer_png(tmap: TileMap, values: np.ndarray, grid: Grid) -> tuple[bytes, float, float]:
    """The PNG of one value per tile on ``grid``: ``(png bytes, lo, hi)``."""
    from PIL import Image

    image = rasterize_tiles(tmap.coords, tmap.tile_size0, values, downsample=grid.step,
                            shape=(grid.rows, grid.cols))
    codes, lo, hi = quantise(image)
    buf = io.BytesIO()
    Image.fromarray(codes, mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue(), lo, hi


def b64(data: bytes) -> str:
    """ASCII base64."""
    return base64.b64encode(data).decode("ascii")


def gene_layer(tmap: TileMap, gene: str, grid: Grid, *, slide_limits: tuple[float, float],
               spots: SpotTable | None = None,
               spread: np.ndarray | None = None) -> dict[str, Any]:
    """Everything the page needs to draw ``gene`` on one slide (JSON-able).

    Parameters
    ----------
    tmap
        The slide's tile map.
    gene
        One of ``tmap.genes``.
    grid
        The slide's tile grid.
    slide_limits
        This slide's colour limits for the gene (robust percentiles).
    spots
        Measured (and out-of-fold predicted) values at the slide's spots, or None.
    spread
        ``(N,)`` spread of the fold models at each tile (uncertainty), or None.
    """
    values = tmap.column(gene)
    png, lo, hi = layer_png(tmap, values, grid)
    out: dict[str, Any] = {
        "png": b64(png), "lo": lo, "hi": hi, "slide_limits": list(slide_limits),
        "mean": float(np.mean(values)),
    }
    if spots is not None and gene in spots.genes:
        j = spots.genes.index(gene)
        meas, lo_m, hi_m = quantise(spots.measured[:, j])
        pred, lo_p, hi_p = quantise(spots.predicted[:, j])
        out["spots"] = {"measured": b64(meas.tobytes()), "mlo": lo_m, "mhi": hi_m,
                        "predicted": b64(pred.tobytes()), "plo": lo_p, "phi": hi_p,
                        "r": _pearson(spots.measured[:, j], spots.predicted[:, j])}
    if spread is not None:
        png_s, lo_s, hi_s = layer_png(tmap, spread, grid)
        out["spread"] = {"png": b64(png_s), "lo": lo_s, "hi": hi_s}
    return out


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or a[ok].std() == 0 or b[ok].std() == 0:
        return None
    return round(float(np.corrcoef(a[ok], b[ok])[0, 1]), 4)


def tile_spread(tmap: TileMap) -> np.ndarray | None:
    """The uncertainty layer: ``(N, G)`` spread of the averaged models, when the map has one.

    ``slide2expr heatmap`` writes the spread of the ensemble members' (or, on a new slide,
    every fold model's) predictions (:meth:`slide2expr.predict.TrainedHead.predict_tiles_spread`)
    as ``layers['predicted_sd']``, read back as
    ``TileMap.spread`` (:mod:`slide2expr.contracts.tilemaps`). A map painted by one model has
    none: this is None and the page says the layer is not available.
    """
    spread = getattr(tmap, "spread", None)
    if spread is None:
        return None
    spread = np.asarray(spread, dtype=np.float32)
    return spread if spread.shape == tmap.values.shape else None


def spot_table(spots: Any, diameter: float | None = None) -> SpotTable:
    """A :class:`SpotTable` from ``slide2expr.heatmap.spot_overlay.SpotValues``.

    The disc diameter defaults to the spot diameter the predictions record, else half the
    median distance between neighbouring spots (ST: 100 um spots on a 200 um pitch; Visium:
    55 um on 100 um).
    """
    centres = np.asarray(spots.centres, dtype=np.float64)
    ids = [str(i) for i in (spots.spot_ids if spots.spot_ids is not None
                            else [f"spot{i}" for i in range(len(centres))])]
    if diameter is None:
        diameter = spots.diameter0 or 0.5 * _pitch(centres)
    return SpotTable(centres=centres, ids=ids, genes=list(spots.genes),
                     measured=np.asarray(spots.measured, dtype=np.float32),
                     predicted=np.asarray(spots.predicted, dtype=np.float32),
                     diameter=float(diameter))


def _pitch(centres: np.ndarray) -> float:
    if len(centres) < 2:
        return 100.0
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(centres).query(centres, k=2)
    return float(np.median(dist[:, 1]))
