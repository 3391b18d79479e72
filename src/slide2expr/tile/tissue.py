"""Tissue detection on a low-resolution image of the slide.

Otsu's threshold on HSV saturation (stain is saturated, glass and background are not),
floored at ``min_saturation`` so an empty slide yields no tissue, then morphology in
physical units: closing, hole filling, removal of small objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class TissueParams:
    """Parameters of :func:`detect_tissue`, in micrometres where they are sizes.

    Attributes
    ----------
    mask_mpp
        Resolution of the image the mask is computed on (um/px).
    min_saturation
        Saturation (0-1) below which a pixel is never tissue, whatever Otsu says.
    max_value
        Brightness (0-1) above which a pixel is background even if saturated (glare).
    closing_um
        Radius of the morphological closing that joins nearby tissue fragments.
    min_object_um2
        Connected components smaller than this area are dropped (dust, debris).
    max_hole_um2
        Holes smaller than this area inside tissue are filled.
    """

    mask_mpp: float = 4.0
    min_saturation: float = 0.07
    max_value: float = 0.98
    closing_um: float = 40.0
    min_object_um2: float = 20_000.0
    max_hole_um2: float = 20_000.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1]."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_lo = np.cumsum(hist)
    weight_hi = weight_lo[-1] - weight_lo
    mean_lo = np.cumsum(hist * centres) / np.maximum(weight_lo, 1e-12)
    total = (hist * centres).sum()
    mean_hi = (total - np.cumsum(hist * centres)) / np.maximum(weight_hi, 1e-12)
    between = weight_lo * weight_hi * (mean_lo - mean_hi) ** 2
    return float(centres[int(np.argmax(between))])


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of an RGB uint8 image, as float32 in [0, 1]."""
    rgb = rgb.astype(np.float32) / 255.0
    vmax = rgb.max(axis=2)
    vmin = rgb.min(axis=2)
    sat = np.where(vmax > 0, (vmax - vmin) / np.maximum(vmax, 1e-6), 0.0)
    return sat.astype(np.float32), vmax


def detect_tissue(rgb: np.ndarray, *, image_mpp: float, params: TissueParams) -> np.ndarray:
    """Boolean tissue mask of ``rgb``, an image of the slide at ``image_mpp`` um/px.

    Parameters
    ----------
    rgb
        ``(H, W, 3)`` uint8 low-resolution image of the whole slide.
    image_mpp
        Its resolution, so morphology sizes in micrometres become pixels.
    params
        Thresholds and morphology sizes.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` bool, true on tissue.
    """
    sat, value = saturation_value(rgb)
    candidates = sat[value < params.max_value]
    threshold = otsu_threshold(candidates) if candidates.size else 1.0
    threshold = max(threshold, params.min_saturation)
    mask = (sat > threshold) & (value < params.max_value)
    radius = int(round(params.closing_um / image_mpp))
    if radius >= 1:
        mask = ndimage.binary_closing(mask, structure=_disk(radius), iterations=1,
                                      border_value=0)
    px_area = image_mpp ** 2
    mask = _fill_small_holes(mask, int(params.max_hole_um2 / px_area))
    return _remove_small_objects(mask, int(math.ceil(params.min_object_um2 / px_area)))


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx ** 2 + yy ** 2 <= radius ** 2


def _remove_small_objects(mask: np.ndarray, min_px: int) -> np.ndarray:
    labels, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= max(min_px, 1)
    keep[0] = False
    return keep[labels]


def _fill_small_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    fill = sizes <= max_px
    fill[0] = False
    return mask | fill[labels]


def tissue_fraction_grid(
    mask: np.ndarray, mask_downsample: float, x0: np.ndarray, y0: np.ndarray, size0: float
) -> np.ndarray:
    """Fraction of tissue under each level-0 square ``(x0, y0, size0)``.

    Uses a summed-area table of the mask, so it costs O(1) a tile.
    """
    sat = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    sat[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    h, w = mask.shape
    xa = np.clip(np.round(x0 / mask_downsample).astype(int), 0, w)
    ya = np.clip(np.round(y0 / mask_downsample).astype(int), 0, h)
    xb = np.clip(np.round((x0 + size0) / mask_downsample).astype(int), 0, w)
    yb = np.clip(np.round((y0 + size0) / mask_downsample).astype(int), 0, h)
    xb = np.maximum(xb, xa + 1)
    yb = np.maximum(yb, ya + 1)
    area = (xb - xa) * (yb - ya)
    inside = sat[yb.clip(max=h), xb.clip(max=w)] - sat[ya, xb.clip(max=w)] - sat[yb.clip(max=h), xa] + sat[ya, xa]
    return inside / np.maximum(area, 1)
