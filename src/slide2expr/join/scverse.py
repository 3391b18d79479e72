"""scverse spatial metadata of a spot-mode dataset: what ``sc.pl.spatial`` and squidpy read.

Space Ranger data read by scanpy carries, per library (section),
``uns['spatial'][library_id]`` with

- ``images``: ``hires`` and ``lowres``, downsampled H&E as ``uint8`` arrays ``(h, w, 3)``;
- ``scalefactors``: ``tissue_hires_scalef`` and ``tissue_lowres_scalef`` (image pixels per
  full-resolution pixel, so that ``obsm['spatial'] * scalef`` lands on the image) and
  ``spot_diameter_fullres`` (the spot diameter in full-resolution pixels);
- ``metadata``: where the image came from.

slide2expr's full resolution is the slide's level 0, the frame of ``obsm['spatial']``. The
images are read through :mod:`slide2expr.inputs.slides` from the best pyramid level (a
JPEG is DCT-downscaled), never by decoding level 0 whole: ``hires`` has its longer side
:data:`HIRES_PX`, ``lowres`` :data:`LOWRES_PX` (Space Ranger's sizes). ``obs['library_id']``
(categorical, the sample ID) is the library key. These entries add to a dataset; they
change neither ``X`` nor any ``obsm`` matrix.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slide2expr import __version__
from slide2expr.contracts.features import FeatureAttrs, as_feature_attrs, spot_diameter_level0
from slide2expr.errors import InputError
from slide2expr.inputs.slides import open_slide
from slide2expr.keys import Key

log = logging.getLogger(__name__)

#: Longer side of ``images['hires']`` and ``images['lowres']`` in pixels (as Space Ranger).
HIRES_PX = 2000
LOWRES_PX = 600


def slide_images(slide_path: str | Path, *, hires_px: int = HIRES_PX,
                 lowres_px: int = LOWRES_PX) -> tuple[dict[str, np.ndarray], dict[str, float],
                                                      tuple[int, int]]:
    """The ``hires``/``lowres`` images of a slide and their scale factors.

    Returns
    -------
    images, scalefactors, level0_size
        ``{'hires': uint8 (h, w, 3), 'lowres': ...}``, ``{'tissue_hires_scalef': ...,
        'tissue_lowres_scalef': ...}`` (image px per level-0 px) and the level-0
        ``(width, height)``.

    Raises
    ------
    InputError
        If the slide cannot be read.
    """
    from PIL import Image


    with open_slide(slide_path, require_mpp=False) as slide:
        w0, h0 = slide.dimensions
        hires, _ = slide.thumbnail(min(hires_px, max(w0, h0)))
    hires = np.ascontiguousarray(hires[..., :3], dtype=np.uint8)
    scale = lowres_px / max(hires.shape[:2])
    size = (max(1, round(hires.shape[1] * scale)), max(1, round(hires.shape[0] * scale)))
    lowres = np.asarray(Image.fromarray(hires).resize(size, Image.BILINEAR), dtype=np.uint8)
    scalefactors = {"tissue_hires_scalef": hires.shape[1] / w0,
                    "tissue_lowres_scalef": lowres.shape[1] / w0}
    return {"hires": hires, "lowres": lowres}, scalefactors, (int(w0), int(h0))


def spatial_entry(slide_path: str | Path | None, attrs: FeatureAttrs | dict[str, Any], *,
                  sample_id: str) -> dict[str, Any]:
    """``uns['spatial'][sample_id]`` for one section.

    Parameters
    ----------
    slide_path
        The section's slide (the sample sheet's ``slide``). When it is missing or cannot be
        read, the entry has no images (``sc.pl.spatial`` then draws the spots alone) and a
        warning says so.
    attrs
        The section's feature attrs (spot diameter, mpp, level-0 size).
    sample_id
        Named in the warning.
    """
    attrs = as_feature_attrs(attrs)
    scalefactors: dict[str, float] = {}
    images: dict[str, np.ndarray] = {}
    metadata: dict[str, Any] = {"software_version": f"slide2expr {__version__}",
                                "coordinates": "level-0 pixels (x, y)"}
    if slide_path:
        metadata["source_image_path"] = str(slide_path)
        try:
            images, scalefactors, (w0, h0) = slide_images(slide_path)
            metadata.update(level0_width=w0, level0_height=h0)
            want = (attrs.level0_width, attrs.level0_height)
            if None not in want and (int(want[0]), int(want[1])) != (w0, h0):
                log.warning("%s: the slide is %d x %d px but sample %s's features were made on "
                            "a %s x %s px slide; its images may not match the spots", slide_path,
                            w0, h0, sample_id, want[0], want[1])
        except InputError as exc:
            log.warning("%s: no H&E image in uns['spatial'][%r] (%s)", slide_path, sample_id,
                        exc)
    diameter = spot_diameter_level0(attrs)
    if diameter:
        scalefactors["spot_diameter_fullres"] = diameter
    if attrs.slide_mpp:
        metadata["slide_mpp"] = float(attrs.slide_mpp)
    return {"images": images, "scalefactors": scalefactors, "metadata": metadata}


def add_spatial_metadata(adata: Any, slides: dict[str, str | None],
                         feature_attrs: dict[str, FeatureAttrs]) -> None:
    """Add ``uns['spatial']``, ``obs['library_id']`` to a spot-mode dataset, in place.

    Parameters
    ----------
    adata
        The dataset; ``obs['sample_id']`` names each spot's section.
    slides
        Slide path of each sample ID.
    feature_attrs
        Feature attrs of each sample ID.
    """
    samples = list(dict.fromkeys(adata.obs[Key.SAMPLE_ID].astype(str)))
    adata.obs[Key.LIBRARY_ID] = pd.Categorical(adata.obs[Key.SAMPLE_ID].astype(str),
                                               categories=samples)
    adata.uns[Key.SPATIAL_UNS] = {
        sid: spatial_entry(slides.get(sid), feature_attrs.get(sid) or FeatureAttrs(),
                           sample_id=sid)
        for sid in samples
    }


def add_log1p(adata: Any, values: str) -> None:
    """``uns['log1p'] = {'base': None}`` when ``X`` is a natural log1p (counts, TPM, FPKM)."""
    if values in ("counts", "tpm", "fpkm"):
        adata.uns[Key.LOG1P] = {"base": None}
