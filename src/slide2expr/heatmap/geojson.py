"""QuPath-importable GeoJSON: one tile object per tile with predicted expression as
measurements, spot detections with measured and predicted expression, and the tissue
outline as an annotation.

The file is a GeoJSON (RFC 7946) ``FeatureCollection`` in level-0 pixel coordinates, the
way QuPath exports and imports objects (File > Import objects, or drag and drop onto the
viewer). Each tile is a ``Feature`` with a ``Polygon`` (one closed ring, counter-clockwise
by the right-hand rule as RFC 7946 asks) and ``properties``: ``objectType`` ``"tile"``,
``name`` and ``measurements``; in QuPath, *Measure > Show measurement maps* colours the
tiles by any of them. Measurement names carry the model and the unit,
``"{head}: {gene} (log1p CP10k)"`` (:func:`measurement_name`), so maps of several heads
and the measured values can sit side by side in one QuPath project. **Predicted values
are clipped at 0** in the export (log1p expression cannot be negative; a regression head
can predict slightly below 0): the tile maps (``.h5ad``) keep the values unclipped.

In spot mode, each measured spot of a training slide is a ``detection`` classified
``Spot``: a circle (a 32-gon) of the spot's diameter around its centre, with
``"measured: {gene} (log1p CP10k)"`` and the out-of-fold ``"{head}: {gene} (log1p
CP10k)"`` (clipped at 0; left out where the spot's fold did not model the gene). The
tissue is one ``annotation`` (``MultiPolygon`` with holes) classified ``Tissue``.

Features are streamed to disk one at a time, so memory does not grow with the tile count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.atomic import atomic_output

#: ``properties.objectType`` values QuPath knows.
QUPATH_OBJECT_TYPES = ("annotation", "detection", "tile", "cell", "tma_core", "root")
_DECIMALS = 2
#: Vertices of a spot's circle.
CIRCLE_VERTICES = 32
#: What the export says about predicted values.
CLIP_NOTE = "predicted values clipped at 0 (log1p expression is not negative)"


def measurement_name(source: str, gene: str, units: str) -> str:
    """A QuPath measurement name: ``"mlp: ERBB2 (log1p CP10k)"``, ``"measured: ERBB2 (...)"``."""
    return f"{source}: {gene} ({units})" if source else f"{gene} ({units})"


def clip_predictions(values: np.ndarray) -> np.ndarray:
    """Predicted log1p values as exported: clipped at 0 (NaN kept)."""
    values = np.asarray(values, dtype=np.float64)
    return np.where(values < 0, 0.0, values)


@dataclass
class SpotDetections:
    """Spots as QuPath detections.

    Attributes
    ----------
    centres
        ``(S, 2)`` level-0 spot centres.
    diameter0
        Spot diameter in level-0 px.
    names
        Spot IDs.
    measurements
        Measurement name -> ``(S,)`` values; NaN values are left out of that spot.
    """

    centres: np.ndarray
    diameter0: float
    names: Sequence[str]
    measurements: dict[str, np.ndarray]


def circle_ring(cx: float, cy: float, diameter: float,
                n: int = CIRCLE_VERTICES) -> list[list[float]]:
    """Closed counter-clockwise ring (right-hand rule) of ``n`` points around a circle."""
    t = 2 * np.pi * np.arange(n) / n
    pts = np.round(np.stack([cx + diameter / 2 * np.cos(t), cy + diameter / 2 * np.sin(t)],
                            axis=1), _DECIMALS).tolist()
    return [*pts, pts[0]]


def spot_features(spots: SpotDetections, *, decimals: int = 4) -> Iterator[dict[str, Any]]:
    """Yield one ``detection`` Feature per spot."""
    columns = {k: np.round(np.asarray(v, dtype=np.float64), decimals)
               for k, v in spots.measurements.items()}
    for i, (cx, cy) in enumerate(np.asarray(spots.centres, dtype=np.float64)):
        yield {
            "type": "Feature",
            "geometry": {"type": "Polygon",
                         "coordinates": [circle_ring(cx, cy, spots.diameter0)]},
            "properties": {
                "objectType": "detection",
                "name": str(spots.names[i]),
                "classification": {"name": "Spot", "color": [60, 60, 200]},
                "measurements": {k: float(v[i]) for k, v in columns.items()
                                 if np.isfinite(v[i])},
            },
        }


def tile_ring(x0: float, y0: float, size0: float) -> list[list[float]]:
    """Closed counter-clockwise ring (right-hand rule) of a square tile, level-0 px."""
    x1, y1 = x0 + size0, y0 + size0
    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return [[round(float(x), _DECIMALS), round(float(y), _DECIMALS)] for x, y in pts]


def tile_features(coords: np.ndarray, size0: float, values: np.ndarray,
                  genes: Sequence[str], *, names: Sequence[str] | None = None,
                  decimals: int = 4) -> Iterator[dict[str, Any]]:
    """Yield one tile ``Feature`` per row of ``coords``/``values``."""
    values = np.round(np.asarray(values, dtype=np.float64), decimals)
    genes = [str(g) for g in genes]
    for i, (x0, y0) in enumerate(np.asarray(coords, dtype=np.float64)):
        yield {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [tile_ring(x0, y0, size0)]},
            "properties": {
                "objectType": "tile",
                "name": names[i] if names is not None else f"tile {i}",
                "measurements": {g: float(v) for g, v in zip(genes, values[i], strict=True)},
            },
        }


def tissue_feature(polygons: list, *, name: str = "Tissue") -> dict[str, Any]:
    """The tissue outline as a QuPath annotation (``MultiPolygon``), classified ``Tissue``."""
    return {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon", "coordinates": polygons},
        "properties": {
            "objectType": "annotation",
            "name": name,
            "classification": {"name": "Tissue", "color": [0, 170, 0]},
            "isLocked": True,
        },
    }


def write_qupath_geojson(path: str | Path, *, coords: np.ndarray, size0: float,
                         values: np.ndarray, genes: Sequence[str],
                         tissue: list | None = None, names: Sequence[str] | None = None,
                         metadata: dict[str, Any] | None = None,
                         spots: SpotDetections | None = None) -> int:
    """Stream a FeatureCollection of tiles (and the tissue annotation) to ``path``.

    Parameters
    ----------
    coords
        ``(N, 2)`` level-0 top-left tile corners.
    size0
        Tile edge in level-0 px.
    values
        ``(N, G)`` measurements.
    genes
        Measurement names (``G``), e.g. from :func:`measurement_name`.
    tissue
        MultiPolygon coordinates from :func:`mask_polygons`; None or empty for none.
    names
        Per-tile names (e.g. spot IDs); default ``tile {i}``.
    metadata
        Written as a foreign member ``slide2expr`` of the collection (ignored by readers).
    spots
        Spot detections written after the tiles (spot-mode training slides).

    Returns
    -------
    int
        Number of features written.
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(coords), len(genes)):
        raise ValueError(f"values have shape {values.shape}, expected ({len(coords)}, {len(genes)})")
    if not np.isfinite(values).all():
        raise ValueError("measurements must be finite")
    n = 0
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        head = {"type": "FeatureCollection"}
        if metadata:
            head["slide2expr"] = metadata
        f.write(json.dumps(head)[:-1] + ', "features": [\n')
        sep = ""
        if tissue:
            f.write(json.dumps(tissue_feature(tissue), separators=(",", ":")))
            sep = ",\n"
            n += 1
        for line in _tile_lines(coords, size0, values, genes, names=names):
            f.write(sep + line)
            sep = ",\n"
            n += 1
        for feature in spot_features(spots) if spots is not None else ():
            f.write(sep + json.dumps(feature, separators=(",", ":")))
            sep = ",\n"
            n += 1
        f.write("\n]}\n")
    return n


def _tile_lines(coords: np.ndarray, size0: float, values: np.ndarray, genes: Sequence[str], *,
                names: Sequence[str] | None, decimals: int = 4,
                chunk: int = 4096) -> Iterator[str]:
    """The same features as :func:`tile_features`, formatted without building dicts.

    Numbers are formatted in blocks with NumPy, so writing 200,000 tiles takes seconds.
    """
    d = f"%.{_DECIMALS}f"
    pt = f"[{d},{d}]"
    meas = ",".join(json.dumps(str(g)).replace("%", "%%") + ":%.12g" for g in genes)
    template = ('{"type":"Feature","geometry":{"type":"Polygon","coordinates":[['
                + ",".join([pt] * 5) + ']]},"properties":{"objectType":"tile","name":%s,'
                + '"measurements":{' + meas + "}}}")
    for start in range(0, len(coords), chunk):
        xy = np.round(coords[start:start + chunk], _DECIMALS)
        x1 = np.round(xy + size0, _DECIMALS)
        ring = np.stack([xy[:, 0], xy[:, 1], x1[:, 0], xy[:, 1], x1[:, 0], x1[:, 1],
                         xy[:, 0], x1[:, 1], xy[:, 0], xy[:, 1]], axis=1).tolist()
        vals = np.round(values[start:start + chunk], decimals).tolist()
        for i, (r, v) in enumerate(zip(ring, vals, strict=True)):
            name = json.dumps(str(names[start + i]) if names is not None else f"tile {start + i}")
            yield template % (*r, name, *v)
