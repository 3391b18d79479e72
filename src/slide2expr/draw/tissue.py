"""Tissue on the picture: its mask on a thumbnail, its bounding box, its outline as polygons
in level-0 pixels (QuPath's tissue annotation, the viewer's outline), and the slide the
pictures are drawn on, checked against the tiles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from slide2expr.contracts.tilemaps import TileMap
from slide2expr.errors import InputError
from slide2expr.inputs.slides import Slide, open_slide
from slide2expr.tile.tissue import TissueParams, detect_tissue

#: Outline vertices are rounded to this many decimals of a level-0 pixel (as the GeoJSON).
_DECIMALS = 2


def tissue_mask(thumbnail: np.ndarray, downsample: float, *, mpp: float,
                params: TissueParams) -> tuple[np.ndarray, float]:
    """Tissue mask of a thumbnail, computed at (no finer than) ``params.mask_mpp``.

    Morphology sizes are physical, so on a fine thumbnail they become large structuring
    elements; the mask is therefore computed on the thumbnail shrunk to ``mask_mpp``.

    Returns
    -------
    tuple of (numpy.ndarray, float)
        The mask and its downsample (level-0 px per mask px).
    """
    image_mpp = mpp * downsample
    factor = params.mask_mpp / image_mpp
    image = thumbnail
    if factor > 1.0:
        from PIL import Image

        h, w = thumbnail.shape[:2]
        size = (max(1, round(w / factor)), max(1, round(h / factor)))
        image = np.asarray(Image.fromarray(thumbnail).resize(size, Image.BILINEAR))
    mask_ds = downsample * thumbnail.shape[1] / image.shape[1]
    return detect_tissue(image, image_mpp=mpp * mask_ds, params=params), mask_ds


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to ``shape`` (rows, cols)."""
    if mask.shape == tuple(shape):
        return mask
    rows = np.minimum((np.arange(shape[0]) + 0.5) * mask.shape[0] / shape[0], mask.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * mask.shape[1] / shape[1], mask.shape[1] - 1)
    return mask[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def open_matching_slide(slide_path: str | Path, tmap: TileMap, *,
                        default_mpp: float | None = None) -> Slide:
    """Open the slide and check it is the one the tiles came from (same level-0 size)."""
    mpp = tmap.attrs.slide_mpp
    slide = open_slide(slide_path, sheet_mpp=float(mpp) if mpp else None, default_mpp=default_mpp)
    want = (tmap.attrs.level0_width, tmap.attrs.level0_height)
    if None not in want and tuple(int(v) for v in want) != tuple(slide.dimensions):
        slide.close()
        raise InputError(slide_path, f"is {slide.dimensions[0]} x {slide.dimensions[1]} px but the "
                         f"tiles were made on a {want[0]} x {want[1]} px slide",
                         "pass the slide the features file was extracted from")
    return slide


def tissue_box(tissue: np.ndarray, margin: float = 0.04) -> tuple[slice, slice] | None:
    """Row and column slices of the tissue's bounding box in a mask, widened by ``margin`` of
    the image's longer side and kept inside it; None when there is no tissue."""
    rows, cols = np.flatnonzero(tissue.any(axis=1)), np.flatnonzero(tissue.any(axis=0))
    if rows.size == 0:
        return None
    pad = int(round(margin * max(tissue.shape)))
    return (slice(max(0, rows[0] - pad), min(tissue.shape[0], rows[-1] + 1 + pad)),
            slice(max(0, cols[0] - pad), min(tissue.shape[1], cols[-1] + 1 + pad)))


def region_box(bounds: Sequence[float], downsample: float, shape: tuple[int, int],
               margin: float = 0.04) -> tuple[slice, slice]:
    """Row and column slices of a region's bounding box (level-0 ``x0, y0, x1, y1``) on a
    thumbnail of ``shape`` at ``downsample``, widened by ``margin`` of the region's longer
    side: a region sample's overlays show its region, not the whole slide."""
    x0, y0, x1, y1 = (float(v) / downsample for v in np.ravel(bounds)[:4])
    pad = margin * max(x1 - x0, y1 - y0)
    return (slice(max(0, int(y0 - pad)), min(shape[0], int(np.ceil(y1 + pad)))),
            slice(max(0, int(x0 - pad)), min(shape[1], int(np.ceil(x1 + pad)))))


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
