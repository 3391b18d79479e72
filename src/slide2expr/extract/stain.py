"""Stain normalisation (Macenko, Reinhard) and stain perturbation of H&E tiles, in numpy.

The extract stage normalises every tile to one reference before embedding it
(``extract.stain_normalize``). A slide's own stain statistics are fitted **once per slide**,
on the tissue pixels of a low-resolution read of the whole slide (:func:`fit_slide`), never
per tile and never from another slide: a slide's normalisation depends on that slide and the
reference alone, so no held-out section's statistics can reach any other section, and every
tiling of a slide (``spots``, ``grid``, ``ctx{um}``) is normalised the same way. Once fitted,
both methods are pixel-wise, so :class:`StainNormalizer` is applied tile by tile in the
extract dataset (in the DataLoader workers).

- **Macenko** et al. (ISBI 2009): the slide's H and E optical-density (OD) vectors and 99th
  percentile concentrations are found from its tissue pixels; each tile is re-expressed in the
  reference's vectors and concentration range. Default reference: the published fixed one of
  Macenko's code (as in torchstain), so no section of a cohort is the reference.
- **Reinhard** et al. (2001): mean and standard deviation of each channel of the
  l-alpha-beta space of the slide's tissue pixels matched to the reference's. Default
  reference: :data:`REINHARD_TARGET`, fixed statistics measured once (see there).

A pixel is tissue when its OD exceeds :data:`TISSUE_OD` in every channel. Optical densities
are computed from ``(I + 1) / 256`` and clipped to ``[0, OD_MAX]``, so no NaN or infinity can
arise from white, black or saturated pixels.

Also here: :func:`hed_perturb` (Ruifrok-Johnston HED colour deconvolution, each stain scaled
and shifted, Tellez et al. 2018) with :func:`random_hed` (a section-level shift of fixed
strength, the stain-shift benchmark's proxy for another lab) and :func:`jitter_hed` (a
per-tile random draw, for augmentation), and :func:`dihedral` (the 8 rotations and flips).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from slide2expr.contracts.features import FeatureAttrs
from slide2expr.errors import InputError

log = logging.getLogger(__name__)

#: The values of ``extract.stain_normalize``.
METHODS = ("none", "macenko", "reinhard")
Method = Literal["none", "macenko", "reinhard"]

#: A pixel is tissue when its optical density exceeds this in every channel (Macenko's beta).
TISSUE_OD = 0.15
#: Optical densities are clipped to this (an 8-bit pixel reaches at most ln(256) = 5.55).
OD_MAX = 6.0
#: Fewer tissue pixels than this in a slide's low-resolution read, or in a reference image,
#: and no stain statistics are estimated.
MIN_TISSUE_PIXELS = 500
#: At most this many tissue pixels (a seeded random subset) enter a fit.
MAX_FIT_PIXELS = 200_000
#: Resolution (um/px) of the whole-slide read a slide's stains are fitted on, when its mpp is
#: known; else the slide's thumbnail with its longer side :data:`FIT_THUMBNAIL_PX`.
FIT_MPP = 4.0
FIT_THUMBNAIL_PX = 2048
#: Percentile of the stain-angle distribution taken as the extreme stain directions.
MACENKO_ALPHA = 1.0
#: H and E vectors closer than this cosine are one stain: the fit is refused.
MAX_STAIN_COSINE = 0.995

#: The published fixed Macenko reference (Macenko's code, torchstain): H and E OD vectors
#: (rows, normalised to unit length) and 99th-percentile concentrations.
MACENKO_REFERENCE_STAINS = ((0.5626, 0.7201, 0.4062), (0.2159, 0.8012, 0.5581))
MACENKO_REFERENCE_MAX_CONC = (1.9705, 1.0308)

#: Fixed Reinhard target: mean and standard deviation of l-alpha-beta (log10 LMS) over the
#: tissue pixels of OpenSlide's public test slide CMU-1-Small-Region.svs (read whole, 2220 x
#: 2967 px), measured once with :func:`fit_reinhard`.
REINHARD_TARGET = {"mean": (-0.670688, -0.069892, 0.025939), "std": (0.349476, 0.064877, 0.01673)}

#: Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB) in OD space, as
#: scikit-image's ``rgb_from_hed``.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

_RGB2LMS = np.array([[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782],
                     [0.0241, 0.1288, 0.8444]])
_LMS2LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1, 1, 1], [1, 1, -2], [1, -1, 0]], dtype=np.float64)
#: uint8 value -> optical density (a lookup table: every tile is uint8).
_OD_LUT = np.minimum(-np.log((np.arange(256, dtype=np.float64) + 1.0) / 256.0), OD_MAX)


# -- optical density ---------------------------------------------------------------------------
def optical_density(rgb: np.ndarray) -> np.ndarray:
    """``-ln((I + 1) / 256)`` of uint8 RGB, float64 in ``[0, OD_MAX]``, same shape."""
    return _OD_LUT[np.asarray(rgb, dtype=np.uint8)]


def from_optical_density(od: np.ndarray) -> np.ndarray:
    """Inverse of :func:`optical_density`, clipped to uint8 (non-finite OD -> white)."""
    od = np.nan_to_num(np.asarray(od, dtype=np.float64), nan=0.0, posinf=OD_MAX, neginf=0.0)
    rgb = 256.0 * np.exp(-np.clip(od, 0.0, OD_MAX)) - 1.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def tissue_od(rgb: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Optical densities ``(n, 3)`` of the tissue pixels of ``rgb`` (OD > :data:`TISSUE_OD`
    in every channel), at most :data:`MAX_FIT_PIXELS` of them (a seeded random subset)."""
    od = optical_density(rgb).reshape(-1, 3)
    od = od[(od > TISSUE_OD).all(axis=1)]
    if len(od) > MAX_FIT_PIXELS:
        od = od[np.random.default_rng(seed).choice(len(od), MAX_FIT_PIXELS, replace=False)]
    return od


# -- fits --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MacenkoFit:
    """A Macenko fit: unit H and E OD vectors ``stains`` ``(2, 3)`` and the 99th-percentile
    concentrations ``max_conc`` ``(2,)``."""

    stains: np.ndarray
    max_conc: np.ndarray

    def to_dict(self) -> dict[str, list]:
        """Plain lists, rounded to 6 digits (for attributes and JSON)."""
        return {"stains": np.round(self.stains, 6).tolist(),
                "max_conc": np.round(self.max_conc, 6).tolist()}


@dataclass(frozen=True)
class ReinhardFit:
    """A Reinhard fit: mean and standard deviation ``(3,)`` of l-alpha-beta."""

    mean: np.ndarray
    std: np.ndarray

    def to_dict(self) -> dict[str, list]:
        """Plain lists, rounded to 6 digits (for attributes and JSON)."""
        return {"mean": np.round(self.mean, 6).tolist(), "std": np.round(self.std, 6).tolist()}


Fit = MacenkoFit | ReinhardFit


class TooLittleTissue(ValueError):
    """An image has too few tissue pixels (or too uniform a stain) to fit stain statistics."""


def published_macenko_reference() -> MacenkoFit:
    """The fixed reference of Macenko's code (rows normalised to unit length)."""
    stains = np.array(MACENKO_REFERENCE_STAINS, dtype=np.float64)
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    return MacenkoFit(stains=stains, max_conc=np.array(MACENKO_REFERENCE_MAX_CONC))


def fixed_reinhard_reference() -> ReinhardFit:
    """:data:`REINHARD_TARGET` as a fit."""
    return ReinhardFit(mean=np.array(REINHARD_TARGET["mean"]),
                       std=np.array(REINHARD_TARGET["std"]))


def _require_tissue(od: np.ndarray) -> None:
    if len(od) < MIN_TISSUE_PIXELS:
        raise TooLittleTissue(f"only {len(od)} tissue pixels (optical density above "
                              f"{TISSUE_OD} in every channel); at least {MIN_TISSUE_PIXELS} "
                              "are needed to estimate stain statistics")


def fit_macenko(rgb: np.ndarray, *, seed: int = 0) -> MacenkoFit:
    """Macenko stain vectors and concentration range of the tissue pixels of ``rgb``.

    Raises
    ------
    TooLittleTissue
        Fewer than :data:`MIN_TISSUE_PIXELS` tissue pixels, or H and E not separable.
    """
    od = tissue_od(rgb, seed=seed)
    _require_tissue(od)
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]  # the plane of the two largest eigenvectors
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [MACENKO_ALPHA, 100 - MACENKO_ALPHA])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)  # haematoxylin absorbs more red
    stains = np.stack([h, e])
    stains *= np.where(stains.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    if abs(float(stains[0] @ stains[1])) > MAX_STAIN_COSINE:
        raise TooLittleTissue("the tissue shows a single stain colour (H and E vectors "
                              "coincide); stain vectors cannot be separated")
    conc = od @ np.linalg.pinv(stains)
    max_conc = np.maximum(np.percentile(conc, 99, axis=0), 1e-3)
    return MacenkoFit(stains=stains, max_conc=max_conc)


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB ``(..., 3)`` -> Reinhard's l-alpha-beta (float64, finite)."""
    x = np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0
    lms = np.log10(np.maximum(x @ _RGB2LMS.T, 1e-4))
    return (lms @ _LMS2LAB.T).reshape(np.shape(rgb))


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_lab`, clipped to uint8."""
    lms = np.asarray(lab, dtype=np.float64).reshape(-1, 3) @ np.linalg.inv(_LMS2LAB).T
    lms = 10.0 ** np.clip(np.nan_to_num(lms, nan=0.0), -4.0, 1.0)
    rgb = lms @ np.linalg.inv(_RGB2LMS).T
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8).reshape(np.shape(lab))


def fit_reinhard(rgb: np.ndarray, *, seed: int = 0) -> ReinhardFit:
    """l-alpha-beta mean and standard deviation of the tissue pixels of ``rgb``.

    Raises
    ------
    TooLittleTissue
        Fewer than :data:`MIN_TISSUE_PIXELS` tissue pixels.
    """
    od = tissue_od(rgb, seed=seed)
    _require_tissue(od)
    lab = rgb_to_lab(from_optical_density(od))
    return ReinhardFit(mean=lab.mean(axis=0), std=np.maximum(lab.std(axis=0), 1e-4))


def fit_image(method: Method, rgb: np.ndarray) -> Fit:
    """The ``method``'s fit of ``rgb`` (see :func:`fit_macenko`, :func:`fit_reinhard`)."""
    if method == "macenko":
        return fit_macenko(rgb)
    if method == "reinhard":
        return fit_reinhard(rgb)
    raise ValueError(f"no stain fit for method {method!r}")


# -- the normaliser ----------------------------------------------------------------------------
@dataclass
class StainNormalizer:
    """Maps tiles of one slide (stain statistics ``source``) onto ``reference``.

    Picklable (numpy arrays only), so DataLoader workers receive it with the dataset.

    Parameters
    ----------
    method
        ``"macenko"`` or ``"reinhard"``.
    reference
        The reference's fit (same method).
    source
        The slide's own fit, from :func:`fit_slide`.
    """

    method: Method
    reference: Fit
    source: Fit
    _matrix: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.method == "macenko":
            ref, src = self.reference, self.source
            assert isinstance(ref, MacenkoFit) and isinstance(src, MacenkoFit)
            # od_out = conc_src * (ref.max / src.max) @ ref.stains, conc_src = od @ pinv(src)
            scale = np.diag(ref.max_conc / src.max_conc)
            self._matrix = np.linalg.pinv(src.stains) @ scale @ ref.stains
        else:
            self._matrix = np.eye(3)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """The tile ``rgb`` (uint8 ``(..., 3)``) in the reference's stains, uint8, same shape."""
        if self.method == "macenko":
            od = optical_density(rgb).reshape(-1, 3)
            return from_optical_density(od @ self._matrix).reshape(np.shape(rgb))
        ref, src = self.reference, self.source
        assert isinstance(ref, ReinhardFit) and isinstance(src, ReinhardFit)
        lab = rgb_to_lab(rgb).reshape(-1, 3)
        lab = (lab - src.mean) / src.std * ref.std + ref.mean
        return lab_to_rgb(lab).reshape(np.shape(rgb))


def reference_fit(method: Method, path: str | Path | None) -> tuple[Fit, dict[str, str]]:
    """The reference of ``method``: the fixed one (``path`` None) or fitted on an image.

    Parameters
    ----------
    method
        ``"macenko"`` or ``"reinhard"``.
    path
        An H&E image (any format ``slide2expr`` reads: a whole-slide image or a PNG/JPEG/TIFF);
        it is read at low resolution (longer side at most :data:`FIT_THUMBNAIL_PX`).

    Returns
    -------
    tuple of (Fit, dict)
        The fit, and attributes describing it: ``stain_reference`` (``"published"`` /
        ``"fixed"`` or the path), ``stain_reference_sha256`` for a file.

    Raises
    ------
    InputError
        The image cannot be read, or is not tissue (too few tissue pixels).
    """
    if path is None:
        if method == "macenko":
            return published_macenko_reference(), {"stain_reference": "published"}
        return fixed_reinhard_reference(), {"stain_reference": "fixed"}
    from slide2expr.hashing import sha256_file
    from slide2expr.inputs.slides import open_slide

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "the stain reference image does not exist",
                         "set extract.stain_reference to an H&E image, or null for the "
                         "fixed reference")
    with open_slide(path, require_mpp=False) as slide:
        image, _ = slide.thumbnail(FIT_THUMBNAIL_PX)
    try:
        fit = fit_image(method, image)
    except TooLittleTissue as exc:
        raise InputError(path, f"is not usable as a stain reference: {exc}",
                         "give an H&E image with tissue (not background, a mask or a "
                         "label), or set extract.stain_reference to null") from None
    return fit, {"stain_reference": str(path), "stain_reference_sha256": sha256_file(path)}


def slide_fit_image(slide_path: str | Path, slide_mpp: float | None) -> tuple[np.ndarray, str]:
    """The low-resolution whole-slide image a slide's stains are fitted on, and its source.

    At :data:`FIT_MPP` um/px from the smallest sufficient pyramid level (as the tissue mask
    is read) when the slide's mpp is known, else its thumbnail.
    """
    from slide2expr.inputs.slides import open_slide

    with open_slide(slide_path, sheet_mpp=slide_mpp, require_mpp=False) as slide:
        if slide.mpp is not None:
            read = slide.read_for_mask(FIT_MPP)
            return read.image, f"{read.source} ({slide.mpp * read.downsample:.2f} um/px)"
        image, downsample = slide.thumbnail(FIT_THUMBNAIL_PX)
        return image, f"thumbnail, downsample {downsample:.1f}"


def fit_slide(method: Method, image: np.ndarray) -> tuple[Fit | None, str]:
    """A slide's own stain fit from its low-resolution image, or None when it has too
    little tissue (then the slide is not normalised: the documented fallback).

    Returns
    -------
    tuple of (Fit or None, str)
        The fit and a status: ``"normalised"`` or ``"not normalised: <why>"``.
    """
    try:
        return fit_image(method, image), "normalised"
    except TooLittleTissue as exc:
        return None, f"not normalised: {exc}"


def build_normalizer(method: Method, slide_path: str | Path, *, slide_mpp: float | None = None,
                     reference: str | Path | None = None
                     ) -> tuple[StainNormalizer | None, FeatureAttrs]:
    """The normaliser of one slide and the attributes that record it.

    Parameters
    ----------
    method
        ``"none"``, ``"macenko"`` or ``"reinhard"``.
    slide_path, slide_mpp
        The slide (its own stains are fitted on its low-resolution read) and its mpp.
    reference
        The reference image, or None for the fixed reference.

    Returns
    -------
    tuple of (StainNormalizer or None, FeatureAttrs)
        None when ``method`` is ``"none"`` or the slide has too little tissue (a warning is
        logged). Attrs: ``stain_normalize``, and with a method ``stain_reference``,
        ``stain_reference_sha256`` (a file), ``stain_reference_fit``, ``stain_status``,
        ``stain_fit`` (the slide's, JSON) and ``stain_fit_source``.
    """
    if method not in METHODS:
        raise InputError(None, f"unknown stain normalisation {method!r}",
                         f"use one of {', '.join(METHODS)}")
    attrs = FeatureAttrs(stain_normalize=method)
    if method == "none":
        return None, attrs
    ref, ref_attrs = reference_fit(method, reference)
    image, source = slide_fit_image(slide_path, slide_mpp)
    fit, status = fit_slide(method, image)
    attrs.update(ref_attrs)
    attrs.stain_reference_fit = json.dumps(ref.to_dict())
    attrs.stain_status = status
    attrs.stain_fit_source = source
    if fit is None:
        log.warning("%s: %s; its tiles are embedded without stain normalisation",
                    slide_path, status.removeprefix("not normalised: "))
        return None, attrs
    attrs.stain_fit = json.dumps(fit.to_dict())
    return StainNormalizer(method, ref, fit), attrs


# -- perturbation and augmentation -------------------------------------------------------------
def hed_perturb(rgb: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Scale and shift the H, E, DAB concentrations of uint8 RGB: ``c' = scale * c + shift``.

    Parameters
    ----------
    rgb
        uint8 ``(..., 3)``.
    scale, shift
        ``(3,)`` per stain (H, E, DAB); ``shift`` in optical-density units.
    """
    od = optical_density(rgb).reshape(-1, 3)
    conc = od @ HED_FROM_RGB
    conc = conc * np.asarray(scale, dtype=np.float64) + np.asarray(shift, dtype=np.float64)
    return from_optical_density(conc @ RGB_FROM_HED).reshape(np.shape(rgb))


def random_hed(strength: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A section-level stain shift of fixed magnitude and random direction, for
    :func:`hed_perturb`: H and E scaled by ``1 +- strength`` and shifted by
    ``+- strength / 5`` OD (random signs); DAB untouched."""
    scale, shift = np.ones(3), np.zeros(3)
    scale[:2] = 1 + strength * rng.choice([-1.0, 1.0], 2)
    shift[:2] = strength / 5 * rng.choice([-1.0, 1.0], 2)
    return scale, shift


def jitter_hed(strength: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A per-tile augmentation draw for :func:`hed_perturb`: H and E scale ~ U(1 - s, 1 + s),
    shift ~ U(-s/5, s/5) OD."""
    scale, shift = np.ones(3), np.zeros(3)
    scale[:2] = rng.uniform(1 - strength, 1 + strength, 2)
    shift[:2] = rng.uniform(-strength / 5, strength / 5, 2)
    return scale, shift


def dihedral(tile: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th (0-7) element of the dihedral group of an ``(H, W, C)`` tile: ``k % 4``
    quarter turns, then a left-right flip for ``k >= 4``."""
    out = np.rot90(tile, k % 4, axes=(0, 1))
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


# -- augmentation views ------------------------------------------------------------------------
#: HED jitter strengths of the ``hed_light`` / ``hed_strong`` views (:func:`jitter_hed`).
HED_VIEW_STRENGTH = {"hed_light": 0.05, "hed_strong": 0.2}
#: Dihedral views: name -> element of :func:`dihedral` (``rot90`` = a quarter turn, ``flip`` =
#: left-right mirror, ``flip_rot90`` = the mirror of the quarter turn...).
DIHEDRAL_VIEWS = {"rot90": 1, "rot180": 2, "rot270": 3, "flip": 4, "flip_rot90": 5,
                  "flip_rot180": 6, "flip_rot270": 7}
#: Every view name ``extract.views`` accepts.
VIEWS = (*DIHEDRAL_VIEWS, *HED_VIEW_STRENGTH)
#: Seeds the per-tile HED draws: tile ``i`` of view ``v`` uses ``[VIEW_SEED, index of v, i]``.
VIEW_SEED = 14


def check_views(views: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``views`` as a tuple, refusing unknown or repeated names."""
    bad = [v for v in views if v not in VIEWS]
    if bad or len(set(views)) != len(views):
        raise InputError(None, f"extract.views {list(views)} has unknown or repeated names",
                         f"use distinct names from {', '.join(VIEWS)}")
    return tuple(views)


def apply_view(tile: np.ndarray, view: str, row: int) -> np.ndarray:
    """The augmentation ``view`` of tile number ``row`` (uint8 ``(H, W, 3)``).

    Dihedral views are exact pixel permutations; HED views draw their jitter from a seed fixed
    by the view and the tile's row, so a rerun (or a resumed run) gives the same pixels.
    """
    if view in DIHEDRAL_VIEWS:
        return dihedral(tile, DIHEDRAL_VIEWS[view])
    rng = np.random.default_rng([VIEW_SEED, VIEWS.index(view), int(row)])
    scale, shift = jitter_hed(HED_VIEW_STRENGTH[view], rng)
    return hed_perturb(tile, scale, shift)
