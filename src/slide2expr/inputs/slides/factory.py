"""The factory: the first backend that reads a slide file, and its mpp policy applied."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from slide2expr.errors import InputError
from slide2expr.inputs.slides.base import Slide
from slide2expr.inputs.slides.openslide_slide import OpenSlideSlide
from slide2expr.inputs.slides.plain_image import PLAIN_IMAGE_SUFFIXES, PlainImageSlide, too_large
from slide2expr.inputs.slides.spaceranger_image import SpaceRangerImageSlide
from slide2expr.inputs.slides.tifffile_slide import TIFF_SUFFIXES, TiffFileSlide


def open_slide(
    path: str | Path,
    *,
    sheet_mpp: float | None = None,
    default_mpp: float | None = None,
    require_mpp: bool = True,
) -> Slide:
    """Open a whole-slide image with the first backend that can read it.

    Parameters
    ----------
    path
        Slide file: SVS, NDPI, MRXS, SCN, TIFF/OME-TIFF, DICOM (one file of the series),
        JPEG or PNG.
    sheet_mpp, default_mpp
        Fallback resolutions, applied by the mpp policy (see :func:`resolve_mpp`).
    require_mpp
        When true, raise if no mpp can be found; when false, leave ``mpp`` as ``None``.

    Returns
    -------
    Slide
        The opened slide with ``mpp`` and ``mpp_source`` set.

    Raises
    ------
    InputError
        When the file is missing, is not a slide any backend can read, or has no mpp.
    """
    path = Path(path)
    slide = _open_backend(path)
    try:
        slide.apply_mpp_policy(sheet_mpp=sheet_mpp, default_mpp=default_mpp)
    except InputError:
        if require_mpp or isinstance(slide, SpaceRangerImageSlide):
            slide.close()
            raise
    return slide


def _open_backend(path: Path) -> Slide:
    """The first backend that reads ``path``: Space Ranger's image, a plain image by its
    suffix, else OpenSlide, else tifffile for a TIFF."""
    if not path.exists():
        raise InputError(path, "the slide file does not exist",
                         "check the 'slide' column of the sample sheet (paths are relative to "
                         "the directory snakemake runs in)")
    from slide2expr.inputs.spaceranger import is_spaceranger_image

    if is_spaceranger_image(path):
        return SpaceRangerImageSlide(path)
    if path.is_dir():
        raise InputError(path, "is a directory, not a slide file",
                         "point to one file of the slide (for DICOM, any .dcm of the series), "
                         "or to a Space Ranger outs/ folder")
    errors: list[str] = []
    if _suffix(path) in PLAIN_IMAGE_SUFFIXES:
        slide = _try_plain_image(path, errors)
    else:
        slide = _try_openslide(path, errors)
        if slide is None and _suffix(path) in TIFF_SUFFIXES:
            slide = _try_tifffile(path, errors)
    if slide is None:
        detail = "; ".join(e.splitlines()[0] for e in errors) or "unknown format"
        raise InputError(
            path,
            f"cannot be read as a slide ({detail})",
            "check that the file is complete (re-copy it) and in a supported format: SVS, "
            "NDPI, MRXS, SCN, DICOM, tiled TIFF/OME-TIFF, JPEG or PNG",
        )
    return slide


def _suffix(path: Path) -> str:
    """The lower-case suffix, ``.ome.tif(f)`` as one."""
    if path.name.lower().endswith((".ome.tif", ".ome.tiff")):
        return "".join(path.suffixes[-2:]).lower()
    return path.suffix.lower()


def _try_plain_image(path: Path, errors: list[str]) -> Slide | None:
    """A JPEG/PNG/BMP through PIL, or None (the reason appended to ``errors``)."""
    try:
        return PlainImageSlide(path)
    except Image.DecompressionBombError as exc:
        raise too_large(path, exc) from None
    except Exception as exc:  # PIL raises many types for broken files
        errors.append(f"PIL: {exc}")
        return None


def _try_openslide(path: Path, errors: list[str]) -> Slide | None:
    """The slide through OpenSlide, or None (the reason appended to ``errors``)."""
    try:
        return OpenSlideSlide(path)
    except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
        errors.append(f"OpenSlide: {exc}")
        return None


def _try_tifffile(path: Path, errors: list[str]) -> Slide | None:
    """A TIFF pyramid through tifffile, its smallest level decoded as proof, or None (the
    reason appended to ``errors``)."""
    try:
        slide = TiffFileSlide(path)
        slide._read_level(slide.level_count - 1, 0, 0, 1, 1)  # proves decodability
        return slide
    except InputError:
        raise
    except Exception as exc:
        errors.append(f"tifffile: {exc}")
        return None
