"""QuPath-importable GeoJSON: one tile object per tile with predicted expression as
measurements, and the tissue outline as an annotation.

The file is a GeoJSON (RFC 7946) ``FeatureCollection`` in level-0 pixel coordinates, the
way QuPath exports and imports objects (File > Import objects, or drag and drop onto the
viewer). Each tile is a ``Feature`` with a ``Polygon`` (one closed ring, counter-clockwise
by the right-hand rule as RFC 7946 asks) and ``properties``: ``objectType`` ``"tile"``,
``name`` and ``measurements`` ``{gene: value}``; in QuPath, *Measure > Show measurement
maps* colours the tiles by any gene. The tissue is one ``annotation`` (``MultiPolygon``
with holes) classified ``Tissue``.

Features are streamed to disk one at a time, so memory does not grow with the tile count.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.atomic import atomic_output

#: ``properties.objectType`` values QuPath knows.
QUPATH_OBJECT_TYPES = ("annotation", "detection", "tile", "cell", "tma_core", "root")
_DECIMALS = 2


def tile_ring(x0: float, y0: float, size0: float) -> list[list[float]]:
    """Closed counter-clockwise ring (right-hand rule) of a square tile, level-0 px."""
    x1, y1 = x0 + size0, y0 + size0
    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1), (x0, y0)]
    return [[round(float(x), _DECIMALS), round(float(y), _DECIMALS)] for x, y in pts]


def mask_polygons(mask: np.ndarray, downsample: float, *,
                  bounds: tuple[float, float] | None = None) -> list[list[list[list[float]]]]:
    """Outlines of a boolean mask as polygons with holes, in level-0 px.

    Contours are traced at the 0.5 level between pixel centres (pixel ``j`` has its centre at
    level-0 ``(j + 0.5) * downsample``). Exterior rings are counter-clockwise and holes
    clockwise (right-hand rule); every ring is closed. ``bounds`` = level-0 ``(width,
    height)`` clips the outline to the slide (the thumbnail's rounding can overshoot by a
    fraction of a pixel).

    Returns
    -------
    list
        MultiPolygon coordinates: ``[polygon][ring][point][x, y]``.
    """
    import contourpy

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return []
    padded = np.pad(mask.astype(np.float64), 1)
    gen = contourpy.contour_generator(z=padded, fill_type=contourpy.FillType.OuterOffset,
                                      name="serial")
    points_list, offsets_list = gen.filled(0.5, 1.5)
    polygons: list[list[list[list[float]]]] = []
    for points, offsets in zip(points_list, offsets_list, strict=True):
        rings = []
        for k in range(len(offsets) - 1):
            ring = np.asarray(points[offsets[k]:offsets[k + 1]], dtype=np.float64)
            ring = (ring - 1.0 + 0.5) * downsample  # undo padding; pixel centres
            if bounds is not None:
                ring = np.clip(ring, 0.0, np.asarray(bounds, dtype=np.float64))
            ring = _close(_drop_collinear(ring))
            if len(ring) < 4:
                continue
            exterior = k == 0
            if (_signed_area(ring) > 0) != exterior:
                ring = ring[::-1]
            rings.append(np.round(ring, _DECIMALS).tolist())
        if rings and len(rings[0]) >= 4:
            polygons.append(rings)
    return polygons


def _drop_collinear(ring: np.ndarray) -> np.ndarray:
    """Remove points that lie on the straight line through their neighbours (open ring)."""
    if len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < 4:
        return ring
    prev, nxt = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    cross = ((ring[:, 0] - prev[:, 0]) * (nxt[:, 1] - ring[:, 1])
             - (ring[:, 1] - prev[:, 1]) * (nxt[:, 0] - ring[:, 0]))
    keep = np.abs(cross) > 1e-9
    return ring[keep] if keep.sum() >= 3 else ring


def _close(ring: np.ndarray) -> np.ndarray:
    if len(ring) and not np.array_equal(ring[0], ring[-1]):
        ring = np.vstack([ring, ring[:1]])
    return ring


def _signed_area(ring: Sequence[Sequence[float]]) -> float:
    """Shoelace area: positive for counter-clockwise rings (x right, y up)."""
    a = np.asarray(ring, dtype=np.float64)
    x, y = a[:, 0], a[:, 1]
    return float(0.5 * (np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


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
                         metadata: dict[str, Any] | None = None) -> int:
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
        Measurement names (``G``).
    tissue
        MultiPolygon coordinates from :func:`mask_polygons`; None or empty for none.
    names
        Per-tile names (e.g. spot IDs); default ``tile {i}``.
    metadata
        Written as a foreign member ``slide2expr`` of the collection (ignored by readers).

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


def validate_geojson(obj: dict[str, Any], *, width: float | None = None,
                     height: float | None = None) -> list[str]:
    """Check a FeatureCollection against RFC 7946 and the QuPath conventions used here.

    Checks: collection and feature structure; geometry types with valid nesting; positions of
    two finite numbers; linear rings closed with at least four positions; exterior rings
    counter-clockwise and holes clockwise; coordinates inside ``[0, width] x [0, height]``
    (level-0 px) when given; ``properties.objectType`` one QuPath knows;
    ``measurements`` a mapping of names to finite numbers.

    Returns
    -------
    list of str
        Problems found (empty when valid).
    """
    problems: list[str] = []
    if not isinstance(obj, dict) or obj.get("type") != "FeatureCollection":
        return ["top level is not a FeatureCollection"]
    features = obj.get("features")
    if not isinstance(features, list):
        return ["'features' is not an array"]
    for i, feat in enumerate(features):
        where = f"features[{i}]"
        if not isinstance(feat, dict) or feat.get("type") != "Feature":
            problems.append(f"{where}: not a Feature")
            continue
        if "properties" not in feat or not isinstance(feat["properties"], dict | type(None)):
            problems.append(f"{where}: 'properties' missing or not an object")
        problems += [f"{where}: {p}" for p in _check_geometry(feat.get("geometry"), width, height)]
        props = feat.get("properties") or {}
        otype = props.get("objectType")
        if otype is not None and otype not in QUPATH_OBJECT_TYPES:
            problems.append(f"{where}: unknown objectType {otype!r}")
        meas = props.get("measurements")
        if meas is not None:
            if not isinstance(meas, dict):
                problems.append(f"{where}: measurements is not an object")
            else:
                for k, v in meas.items():
                    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                        problems.append(f"{where}: measurement {k!r} is not a finite number")
        if len(problems) > 50:
            problems.append("... (stopped after 50 problems)")
            break
    return problems


def _check_geometry(geom: Any, width: float | None, height: float | None) -> list[str]:
    if not isinstance(geom, dict):
        return ["geometry is not an object"]
    kind, coords = geom.get("type"), geom.get("coordinates")
    if kind == "Polygon":
        polygons = [coords]
    elif kind == "MultiPolygon":
        if not isinstance(coords, list):
            return ["MultiPolygon coordinates are not an array"]
        polygons = coords
    else:
        return [f"geometry type {kind!r} is not Polygon or MultiPolygon"]
    problems: list[str] = []
    for p, rings in enumerate(polygons):
        if not isinstance(rings, list) or not rings:
            problems.append(f"polygon {p} has no rings")
            continue
        for r, ring in enumerate(rings):
            problems += [f"polygon {p} ring {r}: {m}"
                         for m in _check_ring(ring, exterior=r == 0, width=width, height=height)]
    return problems


def _check_ring(ring: Any, *, exterior: bool, width: float | None,
                height: float | None) -> list[str]:
    if not isinstance(ring, list) or len(ring) < 4:
        return ["a linear ring needs at least 4 positions"]
    for pos in ring:
        if (not isinstance(pos, list) or len(pos) != 2
                or not all(isinstance(c, int | float) and not isinstance(c, bool)
                           and math.isfinite(c) for c in pos)):
            return [f"position {pos!r} is not two finite numbers"]
    out: list[str] = []
    if ring[0] != ring[-1]:
        out.append("ring is not closed (first position != last)")
    area = _signed_area(ring)
    if area == 0:
        out.append("ring has zero area")
    elif (area > 0) != exterior:
        out.append(f"{'exterior' if exterior else 'hole'} ring winds the wrong way "
                   "(RFC 7946 right-hand rule)")
    xs = [c[0] for c in ring]
    ys = [c[1] for c in ring]
    if min(xs) < 0 or min(ys) < 0:
        out.append("negative coordinates (not level-0 px)")
    if width is not None and max(xs) > width + 1e-6:
        out.append(f"x up to {max(xs)} beyond the slide width {width}")
    if height is not None and max(ys) > height + 1e-6:
        out.append(f"y up to {max(ys)} beyond the slide height {height}")
    return out
