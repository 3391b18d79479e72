"""QC image of the tile stage: thumbnail, tissue mask, grid tiles and spot patches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from slide2expr.atomic import atomic_output
from slide2expr.contracts.tiles import TileSet


def draw_qc(
    image: np.ndarray,
    downsample: float,
    mask: np.ndarray,
    out_path: str | Path,
    *,
    grid: TileSet | None = None,
    spots: TileSet | None = None,
    max_px: int = 2048,
    region: Any = None,
) -> None:
    """Write a PNG: thumbnail with the tissue outline (green), tiles (blue), spots (orange).

    Parameters
    ----------
    image
        Thumbnail RGB at ``downsample`` (level-0 px per thumbnail px).
    mask
        Tissue mask, same shape as ``image`` (resized if not).
    out_path
        Destination PNG, written atomically.
    grid, spots
        Tilings to draw.
    max_px
        Longest side of the PNG.
    region
        A region sample's polygon (level-0 px, shapely), outlined in magenta.
    """
    scale = min(1.0, max_px / max(image.shape[:2]))
    canvas = Image.fromarray(image)
    if scale < 1.0:
        canvas = canvas.resize((int(image.shape[1] * scale), int(image.shape[0] * scale)))
    ds = downsample / scale
    m = Image.fromarray(mask.astype(np.uint8) * 255).resize(canvas.size, Image.NEAREST)
    m = np.asarray(m) > 0
    edge = m & ~ndimage.binary_erosion(m, iterations=2)
    rgb = np.asarray(canvas).copy()
    rgb[~m] = (0.6 * rgb[~m] + 0.4 * 255).astype(np.uint8)  # fade background
    rgb[edge] = (0, 170, 0)
    canvas = Image.fromarray(rgb)
    draw = ImageDraw.Draw(canvas)
    for tiles, colour in ((grid, (30, 90, 220)), (spots, (240, 120, 0))):
        if tiles is None or len(tiles) == 0:
            continue
        size = tiles.tile_px_level0 / ds
        for x, y in tiles.coords / ds:
            if tiles is spots:
                draw.ellipse((x, y, x + size, y + size), outline=colour, width=1)
            else:
                draw.rectangle((x, y, x + size, y + size), outline=colour, width=1)
    if region is not None:
        for ring in _rings(region):
            draw.line([(x / ds, y / ds) for x, y in ring], fill=(220, 0, 180), width=2)
    with atomic_output(out_path) as tmp:
        canvas.save(tmp, format="PNG")


def _rings(region: Any) -> list[list[tuple[float, float]]]:
    """The outer rings of a (Multi)Polygon."""
    polygons = getattr(region, "geoms", [region])
    return [list(p.exterior.coords) for p in polygons]
