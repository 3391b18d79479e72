"""Whole-slide images behind one reader interface, addressed in micrometres per pixel.

One module per backend, each a :class:`Slide` subclass, and one factory that picks the first
backend that reads a file:

- :mod:`.base`: :class:`Slide` (levels, reads in level-0 px and in mpp, thumbnails, the
  low-resolution image for tissue detection) and :class:`MaskImage`;
- :mod:`.openslide_slide`: SVS, NDPI, MRXS, SCN, generic tiled TIFF and DICOM (OpenSlide);
- :mod:`.tifffile_slide`: TIFF / OME-TIFF pyramids that OpenSlide refuses (tifffile);
- :mod:`.plain_image`: JPEG, PNG and BMP (PIL, imagecodecs): a JPEG with a restart marker
  per row of MCUs by bands of rows as regions are read (:mod:`.jpeg_bands`), others whole;
- :mod:`.spaceranger_image`: Space Ranger's tissue PNG in full-resolution coordinates;
- :mod:`.factory`: :func:`open_slide`.

The mpp policy (:mod:`slide2expr.inputs.mpp`): the slide's metadata, else the sample sheet's
``mpp`` column, else the config's ``default_slide_mpp`` (with a warning), each within a
plausible range; with none of these, :class:`~slide2expr.errors.InputError`. The source used
is kept in :attr:`Slide.mpp_source`. Importing this package lifts PIL's pixel limit to
:data:`PLAIN_IMAGE_MAX_PIXELS` (:mod:`.plain_image`).
"""

from slide2expr.inputs.mpp import (
    PLAUSIBLE_MPP,
    MppChoice,
    mpp_from_resolution,
    resolve_mpp,
    split_metadata_mpp,
)
from slide2expr.inputs.slides.base import (
    MASK_COARSER_OK,
    MASK_MAX_PIXELS,
    MASK_STRIPE_ROWS,
    MaskImage,
    Slide,
)
from slide2expr.inputs.slides.factory import open_slide
from slide2expr.inputs.slides.openslide_slide import OpenSlideSlide
from slide2expr.inputs.slides.plain_image import (
    PLAIN_IMAGE_MAX_PIXELS,
    PLAIN_IMAGE_SUFFIXES,
    PlainImageSlide,
)
from slide2expr.inputs.slides.spaceranger_image import SpaceRangerImageSlide
from slide2expr.inputs.slides.tifffile_slide import TIFF_SUFFIXES, TiffFileSlide

__all__ = [
    "MASK_COARSER_OK",
    "MASK_MAX_PIXELS",
    "MASK_STRIPE_ROWS",
    "PLAIN_IMAGE_MAX_PIXELS",
    "PLAIN_IMAGE_SUFFIXES",
    "PLAUSIBLE_MPP",
    "TIFF_SUFFIXES",
    "MaskImage",
    "MppChoice",
    "OpenSlideSlide",
    "PlainImageSlide",
    "Slide",
    "SpaceRangerImageSlide",
    "TiffFileSlide",
    "mpp_from_resolution",
    "open_slide",
    "resolve_mpp",
    "split_metadata_mpp",
]
