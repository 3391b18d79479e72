"""Paint tile values onto a low-resolution image of the slide.

Everything works on the thumbnail grid: a tile ``(x0, y0, size0)`` in level-0 px covers the
thumbnail pixels whose centres fall inside it, so adjacent tiles share no pixel and leave no
gap. Painting uses a 2-D difference array and two cumulative sums: O(N + H*W) whatever the
tile size, so a 100k x 100k slide with hundreds of thousands of tiles costs the same as a
small one at the same thumbnail size. Level 0 is never touched.
"""

from __future__ import annotations

import numpy as np


def tile_pixel_boxes(coords: np.ndarray, size0: float, downsample: float,
                     shape: tuple[int, int]) -> np.ndarray:
    """Thumbnail pixel boxes ``(N, 4)`` = ``col0, row0, col1, row1`` (end exclusive).

    Pixel ``j`` (centre at level-0 ``(j + 0.5) * downsample``) belongs to a tile when that
    centre lies in ``[x0, x0 + size0)``. Tiles smaller than a pixel still get one pixel.
    Boxes are clipped to ``shape`` (rows, cols).
    """
    coords = np.asarray(coords, dtype=np.float64).reshape(-1, 2)
    h, w = shape
    first = np.ceil(coords / downsample - 0.5)
    last = np.ceil((coords + size0) / downsample - 0.5)
    last = np.maximum(last, first + 1)
    c0 = np.clip(first[:, 0], 0, w).astype(np.int64)
    r0 = np.clip(first[:, 1], 0, h).astype(np.int64)
    c1 = np.clip(last[:, 0], 0, w).astype(np.int64)
    r1 = np.clip(last[:, 1], 0, h).astype(np.int64)
    return np.stack([c0, r0, c1, r1], axis=1)


def rasterize_tiles(coords: np.ndarray, size0: float, values: np.ndarray, *, downsample: float,
                    shape: tuple[int, int]) -> np.ndarray:
    """An image ``shape`` of tile values: the mean of the tiles covering each pixel, NaN where
    none does.

    Parameters
    ----------
    coords
        ``(N, 2)`` level-0 top-left corners.
    size0
        Tile edge in level-0 px.
    values
        ``(N,)`` one value per tile.
    downsample
        Level-0 px per image px.
    shape
        ``(rows, cols)`` of the image.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols)`` float32.
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    boxes = tile_pixel_boxes(coords, size0, downsample, shape)
    h, w = shape
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, values = boxes[keep], values[keep]
    total = _paint(boxes, values, (h, w))
    count = _paint(boxes, np.ones_like(values), (h, w))
    out = np.full((h, w), np.nan, dtype=np.float32)
    covered = count > 0.5
    out[covered] = (total[covered] / count[covered]).astype(np.float32)
    return out


def _paint(boxes: np.ndarray, weights: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Sum of ``weights`` over the boxes covering each pixel (difference array)."""
    h, w = shape
    diff = np.zeros((h + 1, w + 1), dtype=np.float64)
    c0, r0, c1, r1 = boxes.T
    np.add.at(diff, (r0, c0), weights)
    np.add.at(diff, (r0, c1), -weights)
    np.add.at(diff, (r1, c0), -weights)
    np.add.at(diff, (r1, c1), weights)
    return np.cumsum(np.cumsum(diff, axis=0), axis=1)[:h, :w]
