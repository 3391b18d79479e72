"""Tissue detection on a low-resolution image of the slide.

Otsu's threshold on HSV saturation (stain is saturated, glass and background are not),
floored at ``min_saturation`` so an empty slide yields no tissue, then morphology in
physical units: closing, hole filling, removal of small objects.

Everything runs at the mask's resolution on uint8 with OpenCV: it converts to HSV, closes
by a disk, labels 4-connected components with their areas and boxes, and sums the mask
(integral image), so a mask of a few megapixels takes milliseconds. The closing treats the
outside of the image as background, as ``ndimage.binary_closing(..., border_value=0)`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


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

    mask_mpp: float = 8.0
    min_saturation: float = 0.07
    max_value: float = 0.98
    closing_um: float = 40.0
    min_object_um2: float = 20_000.0
    max_hole_um2: float = 20_000.0


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` in [0, 1]."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    return _otsu_from_hist(hist.astype(np.float64), (edges[:-1] + edges[1:]) / 2)


def _otsu_from_hist(hist: np.ndarray, centres: np.ndarray) -> float:
    weight_lo = np.cumsum(hist)
    weight_hi = weight_lo[-1] - weight_lo
    mean_lo = np.cumsum(hist * centres) / np.maximum(weight_lo, 1e-12)
    total = (hist * centres).sum()
    mean_hi = (total - np.cumsum(hist * centres)) / np.maximum(weight_hi, 1e-12)
    between = weight_lo * weight_hi * (mean_lo - mean_hi) ** 2
    return float(centres[int(np.argmax(between))])


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of an RGB uint8 image, as uint8 (255 = 1.0)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2HSV)
    return hsv[..., 1], hsv[..., 2]


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
    dim = (value < params.max_value * 255).astype(np.uint8)  # not glare or bare glass
    hist = cv2.calcHist([sat], [0], dim, [256], [0, 256]).ravel().astype(np.float64)
    # uint8 saturation s is s/255 in [0, 1]: bin s of 256 equal bins (255 joins bin 255).
    threshold = (_otsu_from_hist(hist, (np.arange(256) + 0.5) / 256)
                 if hist.sum() else 1.0)
    threshold = max(threshold, params.min_saturation)
    mask = (sat > threshold * 255).astype(np.uint8) & dim
    radius = int(round(params.closing_um / image_mpp))
    if radius >= 1:
        mask = _closing(mask, radius)
    px_area = image_mpp ** 2
    mask = _fill_small_holes(mask, int(params.max_hole_um2 / px_area))
    return _remove_small_objects(mask, int(math.ceil(params.min_object_um2 / px_area)))


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return xx ** 2 + yy ** 2 <= radius ** 2


def _closing(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary closing of a uint8 0/1 mask by a disk; outside the image counts as background
    for both steps (as ``ndimage.binary_closing(..., border_value=0)``)."""
    disk = _disk(radius).astype(np.uint8)
    dilated = cv2.dilate(mask, disk, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return cv2.erode(dilated, disk, borderType=cv2.BORDER_CONSTANT, borderValue=0)


def _remove_small_objects(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Drop 4-connected components of fewer than ``min_px`` pixels; returns bool."""
    labels, area = _components(mask)
    small = area < max(min_px, 1)
    small[0] = False  # label 0 is the background
    out = mask.astype(bool)
    if small.any():
        out[small[labels]] = False
    return out


def _fill_small_holes(mask: np.ndarray, max_px: int) -> np.ndarray:
    """Fill holes (4-connected background components that do not touch the image border)
    of at most ``max_px`` pixels; returns uint8 0/1."""
    labels, area = _components((mask == 0).astype(np.uint8))
    fill = area <= max_px
    border = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    fill[border] = False  # open to the outside: background, not a hole
    fill[0] = False  # label 0 is the tissue itself
    out = mask.copy()
    if fill.any():
        out[fill[labels]] = 1
    return out


def _components(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected components of a 0/1 image: labels (OpenCV; 0 = the zero pixels) and the
    area of each label. (``connectedComponentsWithStats`` is ~10x slower than labelling and
    counting apart.)"""
    n, labels = cv2.connectedComponents(np.ascontiguousarray(binary, dtype=np.uint8),
                                        connectivity=4, ltype=cv2.CV_32S)
    return labels, np.bincount(labels.ravel(), minlength=n)


def tissue_fraction_grid(
    mask: np.ndarray, mask_downsample: float, x0: np.ndarray, y0: np.ndarray, size0: float
) -> np.ndarray:
    """Fraction of tissue under each level-0 square ``(x0, y0, size0)``.

    Uses a summed-area table of the mask, so it costs O(1) a tile.
    """
    sat = cv2.integral(np.ascontiguousarray(mask, dtype=np.uint8), sdepth=cv2.CV_32S)
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
