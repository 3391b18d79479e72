"""One reader interface over OpenSlide, tifffile and PIL, addressed in micrometres per pixel.

Coordinates are level-0 pixels ``(x, y)`` with the origin top-left, as OpenSlide and QuPath
use them. Resolution is given in micrometres per pixel (mpp), never as a pyramid level: the
reader picks the best level for a requested mpp and resizes from there, so a thumbnail never
decodes level 0 when a smaller level exists.

The mpp policy (:mod:`slide2expr.inputs.mpp`): the slide's metadata, else the sample sheet's
``mpp`` column, else the config's ``default_slide_mpp`` (with a warning), each within a
plausible range; with none of these, :class:`~slide2expr.errors.InputError`. The source used
is kept in :attr:`Slide.mpp_source`.
"""

from __future__ import annotations

import logging
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from slide2expr.errors import InputError
from slide2expr.inputs.mpp import (  # noqa: F401 - the policy's names, imported from here too
    PLAUSIBLE_MPP,
    MppChoice,
    mpp_from_resolution,
    resolve_mpp,
    split_metadata_mpp,
)

try:  # at import, not in open_slide: loading the library is a third of a small slide's tiling
    import openslide
except ImportError:  # pragma: no cover - a dependency; open_slide then names the problem
    openslide = None

log = logging.getLogger(__name__)

#: Pixels a plain image (JPEG, PNG) may have before PIL warns that it could be a
#: decompression bomb; PIL refuses twice this. PIL's default (89 Mpx) is below a legitimate
#: slide scanned as a JPEG (a her2st section: 9274 x 9911 = 92 Mpx); 2^31 px is a
#: 46341 px square, 6.4 GB once decoded to RGB, which is as large as a plain image that is
#: read whole can sensibly be (larger slides come as pyramidal TIFF/SVS), and the limit
#: still stops a file that claims more.
PLAIN_IMAGE_MAX_PIXELS = 2**31
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, PLAIN_IMAGE_MAX_PIXELS)

PLAIN_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".ome.tif", ".ome.tiff"}


#: A mask source may be up to this much coarser than the requested mask resolution: with
#: pyramid levels 2x apart one of them always is, so the mask never needs a finer read.
MASK_COARSER_OK = 1.5
#: The whole-slide image a mask is computed on is kept under this many pixels (about
#: 4,000 x 4,000): its memory and time depend on the slide's area, never on level-0 size.
MASK_MAX_PIXELS = 16_000_000
#: Rows of a pyramid level read at once while reducing it to mask resolution.
MASK_STRIPE_ROWS = 2048


@dataclass(frozen=True)
class MaskImage:
    """A low-resolution image of the whole slide for tissue detection, and where it came from.

    Attributes
    ----------
    image
        ``(H, W, 3)`` uint8 RGB.
    downsample
        Level-0 pixels per image pixel.
    source
        ``"level N"`` or ``"thumbnail"``, with ``", reduced Fx"`` when it was box-reduced.
    """

    image: np.ndarray
    downsample: float
    source: str


class Slide(ABC):
    """A whole-slide image with a pyramid of levels and a resolution in um/px.

    Subclasses implement :meth:`_read_level`; everything else is shared.
    """

    backend: str = "abstract"

    def __init__(self, path: Path, metadata_mpp: float | None,
                 implausible_metadata_mpp: float | None = None) -> None:
        self.path = Path(path)
        self.metadata_mpp = metadata_mpp
        #: A metadata resolution outside the plausible range, set aside by the mpp policy.
        self.implausible_metadata_mpp = implausible_metadata_mpp
        self.mpp: float | None = metadata_mpp
        self.mpp_source: str | None = "metadata" if metadata_mpp is not None else None

    # -- pyramid description -------------------------------------------------------------
    @property
    @abstractmethod
    def level_dimensions(self) -> list[tuple[int, int]]:
        """``(width, height)`` of each level, level 0 first."""

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 ``(width, height)``."""
        return self.level_dimensions[0]

    @property
    def level_downsamples(self) -> list[float]:
        """Downsample factor of each level relative to level 0."""
        w0 = self.level_dimensions[0][0]
        return [w0 / max(w, 1) for w, _ in self.level_dimensions]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def apply_mpp_policy(
        self, *, sheet_mpp: float | None = None, default_mpp: float | None = None
    ) -> MppChoice:
        """Resolve and store this slide's mpp (see :func:`resolve_mpp`)."""
        choice = resolve_mpp(self.path, self.metadata_mpp, sheet_mpp=sheet_mpp,
                             default_mpp=default_mpp,
                             implausible_metadata_mpp=self.implausible_metadata_mpp)
        self.mpp, self.mpp_source = choice.mpp, choice.source
        return choice

    def best_level_for_downsample(self, downsample: float) -> int:
        """The smallest level whose downsample does not exceed ``downsample``.

        A 1% tolerance absorbs rounding in pyramid sizes (e.g. 4.0003 for a nominal 4x).
        """
        best = 0
        for level, ds in enumerate(self.level_downsamples):
            if ds <= downsample * 1.01:
                best = level
        return best

    # -- reading -------------------------------------------------------------------------
    @abstractmethod
    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """Read ``(height, width, 3)`` uint8 RGB at ``level``; ``x, y`` in that level's px.

        Areas outside the image are white.
        """

    @contextmanager
    def _decoding(self, level: int, x: int, y: int, width: int, height: int) -> Iterator[None]:
        """Turn a failure to decode pixels into an :class:`InputError` naming the region.

        A slide whose header opens but whose image data is truncated or corrupt fails only
        when pixels are decoded, in whichever region is read first; the codecs raise their
        own exception types (OpenSlideError, imagecodecs' Jpeg8Error, PIL's OSError, ...).
        """
        try:
            yield
        except InputError:
            raise
        except Exception as exc:
            detail = (str(exc).splitlines() or [""])[0] or type(exc).__name__
            raise InputError(
                self.path,
                f"cannot decode the image data at pyramid level {level}, region "
                f"x={x} y={y} {width}x{height} px ({type(exc).__name__}: {detail})",
                "the file is truncated or corrupt: copy it again from its source and compare "
                "its size or checksum; outputs of the other slides are not affected",
            ) from exc

    def _checked_read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """:meth:`_read_level`, with decoding failures as :class:`InputError` (see
        :meth:`_decoding`)."""
        with self._decoding(level, x, y, width, height):
            return self._read_level(level, x, y, width, height)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """OpenSlide-style read: ``location`` in level-0 px, ``size`` in level px."""
        ds = self.level_downsamples[level]
        x = int(math.floor(location[0] / ds))
        y = int(math.floor(location[1] / ds))
        return self._checked_read(level, x, y, int(size[0]), int(size[1]))

    def read_region_mpp(
        self, x0: float, y0: float, width0: float, height0: float, out_size: tuple[int, int]
    ) -> np.ndarray:
        """Read the level-0 box ``(x0, y0, width0, height0)`` resized to ``out_size``.

        The pyramid level is the smallest one that is still at least as fine as the output,
        so the result has the requested resolution without decoding more than needed.

        Returns
        -------
        numpy.ndarray
            ``(out_h, out_w, 3)`` uint8 RGB.
        """
        out_w, out_h = int(out_size[0]), int(out_size[1])
        downsample = min(width0 / out_w, height0 / out_h)
        level = self.best_level_for_downsample(downsample)
        ds = self.level_downsamples[level]
        lx, ly = int(math.floor(x0 / ds)), int(math.floor(y0 / ds))
        lw = max(1, int(math.ceil((x0 + width0) / ds)) - lx)
        lh = max(1, int(math.ceil((y0 + height0) / ds)) - ly)
        region = self._checked_read(level, lx, ly, lw, lh)
        if (lw, lh) == (out_w, out_h):
            return region
        return np.asarray(Image.fromarray(region).resize((out_w, out_h), Image.BILINEAR))

    def read_at_mpp(self, mpp: float) -> tuple[np.ndarray, float]:
        """The whole slide at (about) ``mpp`` um/px; returns the image and its downsample."""
        if self.mpp is None:
            raise InputError(self.path, "the slide's mpp is not known yet", "call apply_mpp_policy")
        downsample = max(mpp / self.mpp, 1.0)
        return self.thumbnail_by_downsample(downsample)

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """The whole slide with its longer side at most ``max_size`` px.

        Returns
        -------
        tuple of (numpy.ndarray, float)
            RGB image and its downsample relative to level 0.
        """
        w0, h0 = self.dimensions
        downsample = max(w0, h0) / max_size
        return self.thumbnail_by_downsample(max(downsample, 1.0))

    def thumbnail_by_downsample(self, downsample: float) -> tuple[np.ndarray, float]:
        """The whole slide downsampled by ``downsample`` from the best pyramid level."""
        w0, h0 = self.dimensions
        out_w = max(1, int(round(w0 / downsample)))
        out_h = max(1, int(round(h0 / downsample)))
        level = self.best_level_for_downsample(downsample)
        img = self._whole_level(level, (out_w, out_h))
        if img.shape[1] != out_w or img.shape[0] != out_h:
            img = np.asarray(Image.fromarray(img).resize((out_w, out_h), Image.BILINEAR))
        return img, w0 / out_w

    def _whole_level(self, level: int, target: tuple[int, int]) -> np.ndarray:
        lw, lh = self.level_dimensions[level]
        return self._checked_read(level, 0, 0, lw, lh)

    # -- low-resolution reads for tissue detection -------------------------------------------
    def mask_downsample(self, mpp: float) -> float:
        """Level-0 px per mask px for a mask at ``mpp`` um/px, coarser if the slide is so
        large that the mask would exceed :data:`MASK_MAX_PIXELS`."""
        if self.mpp is None:
            raise InputError(self.path, "the slide's mpp is not known yet", "call apply_mpp_policy")
        w0, h0 = self.dimensions
        return max(mpp / self.mpp, math.sqrt(w0 * h0 / MASK_MAX_PIXELS), 1.0)

    def _mask_sources(self) -> list[tuple[str, float]]:
        """``(name, downsample)`` of each whole-slide image a mask can be read from."""
        return [(f"level {i}", ds) for i, ds in enumerate(self.level_downsamples)]

    def read_for_mask(self, mpp: float) -> MaskImage:
        """The whole slide at about ``mpp`` um/px, from the smallest sufficient source.

        The source is the coarsest pyramid level (or stored thumbnail) at most
        :data:`MASK_COARSER_OK` times coarser than asked; a finer one is box-reduced by the
        integer factor nearest to the request, stripe by stripe, so neither time nor memory
        depends on the level-0 size.
        """
        want = self.mask_downsample(mpp)
        sources = self._mask_sources()
        ok = [src for src in sources if src[1] <= want * MASK_COARSER_OK]
        name, ds = max(ok, key=lambda src: src[1]) if ok else min(sources, key=lambda src: src[1])
        factor = max(1, int(round(want / ds)))
        image = self._read_mask_source(name, factor)
        source = name if factor == 1 else f"{name}, reduced {factor}x"
        return MaskImage(image=image, downsample=self.dimensions[0] / image.shape[1],
                         source=source)

    def _read_mask_source(self, name: str, factor: int) -> np.ndarray:
        """Read the source ``name`` whole, box-reduced by ``factor``."""
        level = int(name.split()[1])
        lh = self.level_dimensions[level][1]
        read = self._stripe_reader(level)
        if factor == 1:
            return read(0, lh)
        step = factor * max(1, MASK_STRIPE_ROWS // factor)
        parts = [_reduce(read(y, min(step, lh - y)), factor) for y in range(0, lh, step)]
        return np.concatenate(parts, axis=0)

    def _stripe_reader(self, level: int) -> Callable[[int, int], np.ndarray]:
        """``read(y, height)``: full-width rows of ``level`` as RGB uint8."""
        lw = self.level_dimensions[level][0]
        return lambda y, h: self._checked_read(level, 0, y, lw, h)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def preload(self) -> None:  # noqa: B027 - optional hook
        """Decode now what reads would decode on first use (a plain image's pixels), so that
        processes forked afterwards share it (:meth:`adopt`) instead of decoding their own."""

    def adopt(self, other: Slide) -> None:  # noqa: B027 - optional hook
        """Take over what ``other`` (the same file, opened in the parent of a forked process)
        has already decoded; its pages stay shared with the parent until written."""

    def provenance_attrs(self) -> dict[str, object]:
        """Facts about the slide's source that tiles record beside ``slide_mpp`` (none)."""
        return {}

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, object]:
        """A JSON-able summary: backend, levels, mpp and its source."""
        return {
            "path": str(self.path),
            "backend": self.backend,
            "level_dimensions": [list(d) for d in self.level_dimensions],
            "level_downsamples": [round(d, 4) for d in self.level_downsamples],
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
        }


class OpenSlideSlide(Slide):
    """SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM... through openslide-bin."""

    backend = "openslide"

    def __init__(self, path: Path) -> None:
        if openslide is None:
            raise ImportError("openslide-python is not installed")
        self._osr = openslide.OpenSlide(str(path))
        props = self._osr.properties
        res = _float_or_none(props.get("tiff.XResolution"))
        super().__init__(path, *split_metadata_mpp(
            _float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X)),
            mpp_from_resolution(res or 0.0, props.get("tiff.ResolutionUnit"))))
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR)

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [tuple(d) for d in self._osr.level_dimensions]

    @property
    def level_downsamples(self) -> list[float]:
        return [float(d) for d in self._osr.level_downsamples]

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        rgba = self._osr.read_region((int(round(x * ds)), int(round(y * ds))), level, (width, height))
        return _rgba_on_white(np.asarray(rgba))

    def _thumbnail_downsample(self) -> float | None:
        """Downsample of the slide's stored thumbnail (Aperio), if it shows the whole image."""
        if "thumbnail" not in self._osr.associated_images:
            return None
        try:  # the size without decoding the image
            from openslide import lowlevel

            size = lowlevel.get_associated_image_dimensions(self._osr._osr, "thumbnail")
        except Exception:
            size = self._osr.associated_images["thumbnail"].size
        (w0, h0), (tw, th) = self.dimensions, size
        if min(tw, th) < 16 or abs((w0 / tw) / (h0 / th) - 1) > 0.02:
            return None  # not a picture of level 0 (a label or macro photo, say)
        return w0 / tw

    def _stripe_reader(self, level: int) -> Callable[[int, int], np.ndarray]:
        """Whole-width reads of a TIFF-based slide (SVS, generic tiled TIFF) decode the
        level's tiles with tifffile and imagecodecs, 5-10x faster than OpenSlide's
        ``read_region`` for a whole level; other formats use OpenSlide."""
        page = self._tiff_page(level)
        if page is None:
            return super()._stripe_reader(level)
        lw, lh = self.level_dimensions[level]

        def read(y: int, h: int) -> np.ndarray:
            if y == 0 and h == lh and lw * lh <= MASK_MAX_PIXELS:  # small: tifffile's loop
                with self._decoding(level, 0, 0, lw, lh):
                    return np.ascontiguousarray(page.asarray(maxworkers=1)[..., :3])
            out = np.full((h, lw, 3), 255, dtype=np.uint8)
            with self._decoding(level, 0, y, lw, h):
                _read_tiff_tiles(self._tif.filehandle, page, out, 0, y, (0, y, lw, y + h))
            return out

        return read

    def _tiff_page(self, level: int):  # a tifffile.TiffPage or None
        """The TIFF page of ``level``: tiled, RGB, 8-bit, same size; else None."""
        if not hasattr(self, "_tif"):
            self._tif = None
            if self.path.suffix.lower() in {".svs", ".tif", ".tiff", ".btf"}:
                try:
                    self._tif = tifffile.TiffFile(str(self.path))
                except Exception:  # not a TIFF tifffile reads: OpenSlide does it all
                    self._tif = None
        if self._tif is None:
            return None
        want = self.level_dimensions[level]
        for page in self._tif.pages:
            if (page.is_tiled and (page.imagewidth, page.imagelength) == tuple(want)
                    and page.samplesperpixel == 3 and page.bitspersample == 8
                    and page.photometric in (2, 6) and page.planarconfig == 1):
                return page  # RGB or YCbCr, chunky
        return None

    def _mask_sources(self) -> list[tuple[str, float]]:
        sources = super()._mask_sources()
        ds = self._thumbnail_downsample()
        return sources + ([("thumbnail", ds)] if ds is not None else [])

    def _read_mask_source(self, name: str, factor: int) -> np.ndarray:
        if name != "thumbnail":
            return super()._read_mask_source(name, factor)
        w, h = self._osr.associated_images["thumbnail"].size
        with self._decoding(-1, 0, 0, w, h):
            image = np.asarray(self._osr.associated_images["thumbnail"].convert("RGB"))
        return image if factor == 1 else _reduce(image, factor)

    def close(self) -> None:
        self._osr.close()
        if getattr(self, "_tif", None) is not None:
            self._tif.close()


class TiffFileSlide(Slide):
    """TIFF / OME-TIFF pyramids that OpenSlide refuses, read tile by tile with tifffile."""

    backend = "tifffile"

    def __init__(self, path: Path) -> None:
        self._tif = tifffile.TiffFile(str(path))
        series = self._tif.series[0]
        self._levels = [lvl.keyframe for lvl in series.levels]
        for page in self._levels:
            if page.shape[-1] not in (3, 4) and page.samplesperpixel not in (3, 4):
                raise InputError(path, f"TIFF level has shape {page.shape}, not an RGB image",
                                 "convert the slide to an RGB pyramidal TIFF")
        page0 = self._levels[0]
        mpp = None
        tags = page0.tags
        if "XResolution" in tags:
            num, den = tags["XResolution"].value
            unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else None
            mpp = mpp_from_resolution(num / den if den else 0.0, getattr(unit, "name", unit))
        super().__init__(path, *split_metadata_mpp(mpp))
        self._dims = [(int(p.imagewidth), int(p.imagelength)) for p in self._levels]

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return self._dims

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        page = self._levels[level]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        lw, lh = self._dims[level]
        x_lo, y_lo = max(x, 0), max(y, 0)
        x_hi, y_hi = min(x + width, lw), min(y + height, lh)
        if x_hi <= x_lo or y_hi <= y_lo:
            return out
        if page.is_tiled:
            self._read_tiles(page, out, x, y, (x_lo, y_lo, x_hi, y_hi))
        else:
            arr = self._whole_page(level)
            out[y_lo - y:y_hi - y, x_lo - x:x_hi - x] = arr[y_lo:y_hi, x_lo:x_hi, :3]
        return out

    def _read_tiles(self, page, out: np.ndarray, x: int, y: int, box: tuple[int, int, int, int]) -> None:
        _read_tiff_tiles(self._tif.filehandle, page, out, x, y, box)

    @lru_cache(maxsize=2)  # noqa: B019 - one slide object per file, cache lives with it
    def _whole_page(self, level: int) -> np.ndarray:
        arr = self._levels[level].asarray()
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return arr.astype(np.uint8, copy=False)

    def close(self) -> None:
        self._tif.close()


class PlainImageSlide(Slide):
    """A large JPEG/PNG (e.g. the her2st H&E images): one level, no mpp metadata.

    Thumbnails use JPEG DCT scaling (``Image.draft``) so they never decode the full image;
    region reads decode it once and keep it.
    """

    backend = "pil"

    def __init__(self, path: Path) -> None:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            self._size = im.size
        super().__init__(path, None)  # JFIF density is almost always a 72-dpi placeholder
        self._full: np.ndarray | None = None

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [self._size]

    def _decoded(self) -> np.ndarray:
        """The whole image, decoded once into one array.

        A JPEG is decoded by libjpeg(-turbo) through imagecodecs straight into the array (the
        same pixels as PIL's decoder); anything else by PIL, copied out in bands. PIL's own
        ``np.asarray(im.convert("RGB"))`` held three full-size images at its peak (PIL keeps
        RGB at 4 bytes a pixel): 1.27 GB max RSS to decode a 9,300 x 9,900 px her2st JPEG,
        against 0.30 GB (imagecodecs) and 0.80 GB (PIL, bands).
        """
        if self._full is None:
            self._full = _decode_jpeg(self.path, self._size)
        if self._full is None:
            with Image.open(self.path) as im:
                if im.mode != "RGB":
                    self._full = np.asarray(im.convert("RGB"))
                else:
                    im.load()
                    full = np.empty((im.height, im.width, 3), dtype=np.uint8)
                    _copy_rows(im, full)
                    self._full = full
        return self._full

    def preload(self) -> None:
        self._decoded()

    def adopt(self, other: Slide) -> None:
        if isinstance(other, PlainImageSlide) and other.path == self.path:
            self._full = other._full

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        full = self._decoded()
        h0, w0 = full.shape[:2]
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x_lo, y_lo, x_hi, y_hi = max(x, 0), max(y, 0), min(x + width, w0), min(y + height, h0)
        if x_hi > x_lo and y_hi > y_lo:
            out[y_lo - y:y_hi - y, x_lo - x:x_hi - x] = full[y_lo:y_hi, x_lo:x_hi]
        return out

    def read_for_mask(self, mpp: float) -> MaskImage:
        """The image at about ``mpp`` um/px: JPEG DCT scaling (1/2, 1/4, 1/8) to the
        coarsest scale at most :data:`MASK_COARSER_OK` times coarser, then a box reduction."""
        want = self.mask_downsample(mpp)
        w0, h0 = self._size
        limit = want * MASK_COARSER_OK
        if self._full is not None:
            img, name = Image.fromarray(self._full), "image"
        else:
            with self._decoding(0, 0, 0, w0, h0):
                img = Image.open(self.path)
                img.draft("RGB", (math.ceil(w0 / limit), math.ceil(h0 / limit)))
                img = img.convert("RGB")
            name = "image" if img.width == w0 else f"image, JPEG-decoded at 1/{round(w0 / img.width)}"
        factor = max(1, int(round(want * img.width / w0)))
        image = np.asarray(img) if factor == 1 else np.asarray(img.reduce(factor))
        if factor > 1:
            name += f", reduced {factor}x"
        return MaskImage(image=image, downsample=w0 / image.shape[1], source=name)

    def thumbnail_by_downsample(self, downsample: float) -> tuple[np.ndarray, float]:
        w0, h0 = self._size
        out_w = max(1, int(round(w0 / downsample)))
        out_h = max(1, int(round(h0 / downsample)))
        if self._full is not None:
            img = Image.fromarray(self._full)
        else:
            with self._decoding(0, 0, 0, w0, h0):
                img = Image.open(self.path)
                img.draft("RGB", (out_w, out_h))  # DCT-domain downscale, up to 8x, for JPEG
                img = img.convert("RGB")
        img = img.resize((out_w, out_h), Image.BILINEAR)
        return np.asarray(img), w0 / out_w


class SpaceRangerImageSlide(Slide):
    """Space Ranger's ``tissue_hires_image.png`` (or lowres) read in full-resolution pixels.

    Level 0 is the frame of the image given to ``spaceranger --image`` (``1 / scalef`` times
    the PNG), so Space Ranger's positions need no change; it holds no more detail than the
    PNG (level 1), from which every read is interpolated. The mpp is the full-resolution
    one derived from the run (:mod:`slide2expr.inputs.spaceranger`); ``image_mpp`` is the
    PNG's real resolution.
    """

    backend = "spaceranger"

    def __init__(self, path: Path) -> None:
        from slide2expr.inputs.spaceranger import find_image

        self.spaceranger = find_image(Path(path))
        self._png = PlainImageSlide(self.spaceranger.image)
        super().__init__(Path(path), self.spaceranger.fullres_mpp)
        w, h = self._png.dimensions
        scalef = self.spaceranger.scalef
        self._fullres = (int(round(w / scalef)), int(round(h / scalef)))

    @property
    def level_dimensions(self) -> list[tuple[int, int]]:
        return [self._fullres, self._png.dimensions]

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        if level == 1:
            return self._png._read_level(0, x, y, width, height)
        s = self.spaceranger.scalef
        bx, by = int(math.floor(x * s)), int(math.floor(y * s))
        bw = max(1, int(math.ceil((x + width) * s)) - bx + 1)
        bh = max(1, int(math.ceil((y + height) * s)) - by + 1)
        region = Image.fromarray(self._png._read_level(0, bx, by, bw, bh))
        box = (x * s - bx, y * s - by, (x + width) * s - bx, (y + height) * s - by)
        return np.asarray(region.resize((width, height), Image.BILINEAR, box=box))

    def apply_mpp_policy(
        self, *, sheet_mpp: float | None = None, default_mpp: float | None = None
    ) -> MppChoice:
        """The run's full-resolution mpp (a sheet value that disagrees is warned about)."""
        choice = super().apply_mpp_policy(sheet_mpp=sheet_mpp, default_mpp=default_mpp)
        self.mpp_source = "spaceranger"
        return MppChoice(choice.mpp, "spaceranger")

    def describe(self) -> dict[str, object]:
        return {**super().describe(), **self.provenance_attrs()}

    def provenance_attrs(self) -> dict[str, object]:
        """What the tiles record about the stand-in image (:func:`grid._base_attrs`)."""
        sr = self.spaceranger
        return {"spaceranger_image": str(sr.image), "spaceranger_image_scalef": sr.scalef,
                "spaceranger_image_mpp": sr.image_mpp, "spaceranger_mpp_from": sr.mpp_from}

    def close(self) -> None:
        self._png.close()


def _decode_jpeg(path: Path, size: tuple[int, int]) -> np.ndarray | None:
    """A baseline/progressive 8-bit RGB JPEG decoded into one ``(H, W, 3)`` array, or None
    when it is not one imagecodecs decodes to that shape (the caller falls back to PIL)."""
    try:
        import imagecodecs
    except ImportError:  # pragma: no cover - a dependency
        return None
    with Image.open(path) as im:
        if im.format != "JPEG" or im.mode != "RGB":
            return None
    width, height = size
    out = np.empty((height, width, 3), dtype=np.uint8)
    try:
        decoded = imagecodecs.jpeg8_decode(path.read_bytes(), out=out)
    except Exception:  # an unusual JPEG (CMYK, 12-bit, damaged): PIL decides
        return None
    return decoded if decoded is out else None


def _copy_rows(im: Image.Image, out: np.ndarray, rows: int = 256) -> None:
    """Copy a loaded RGB image into ``out`` in bands of ``rows`` rows (one band's bytes at a
    time, not the whole image's)."""
    for y in range(0, im.height, rows):
        band = im.crop((0, y, im.width, min(y + rows, im.height)))
        out[y:y + band.height] = np.asarray(band)


def _float_or_none(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _read_tiff_tiles(fh, page, out: np.ndarray, x: int, y: int,  # fh, page: tifffile's
                     box: tuple[int, int, int, int]) -> None:
    """Decode the tiles of a tiled TIFF ``page`` that meet ``box`` (level px, exclusive
    ends) into ``out``, whose top-left is ``(x, y)`` in level px."""
    x_lo, y_lo, x_hi, y_hi = box
    tw, th = page.tilewidth, page.tilelength
    tiles_across = math.ceil(page.imagewidth / tw)
    for ty in range(y_lo // th, (y_hi - 1) // th + 1):
        for tx in range(x_lo // tw, (x_hi - 1) // tw + 1):
            index = ty * tiles_across + tx
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            if count == 0:
                continue
            fh.seek(offset)
            data = fh.read(count)
            tile, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
            tile = np.asarray(tile).reshape(th, tw, -1)[..., :3]
            # Intersect tile with the requested box, in level coordinates.
            gx0, gy0 = tx * tw, ty * th
            ix0, iy0 = max(gx0, x_lo), max(gy0, y_lo)
            ix1, iy1 = min(gx0 + tw, x_hi), min(gy0 + th, y_hi)
            out[iy0 - y:iy1 - y, ix0 - x:ix1 - x] = tile[iy0 - gy0:iy1 - gy0, ix0 - gx0:ix1 - gx0]


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-reduce an RGB uint8 image by an integer factor (partial blocks at the edges kept)."""
    return np.asarray(Image.fromarray(image).reduce(factor))


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite premultiplied RGBA from OpenSlide onto white."""
    if rgba[..., 3].min() == 255:  # opaque everywhere: the usual case, no arithmetic
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = rgb + (255 - alpha)
    return np.clip(out, 0, 255).astype(np.uint8)


def _too_large(path: Path, exc: Exception) -> InputError:
    """The error for a plain image whose header claims more pixels than PIL will decode."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(match.group(1)) / 1e6:,.0f} Mpx, " if match else ""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or PLAIN_IMAGE_MAX_PIXELS)
    return InputError(path, f"is too large to read as a plain image ({pixels}more than the "
                      f"{limit / 1e6:,.0f} Mpx a JPEG/PNG may have; it would be decoded whole "
                      "into memory)", "convert it to a tiled pyramidal TIFF (e.g. vips tiffsave "
                      "IN OUT.tif --tile --pyramid --compression jpeg) and use that file")


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
    if not path.exists():
        raise InputError(path, "the slide file does not exist",
                         "check the 'slide' column of the sample sheet (paths are relative to "
                         "the directory snakemake runs in)")
    from slide2expr.inputs.spaceranger import is_spaceranger_image

    if is_spaceranger_image(path):
        slide = SpaceRangerImageSlide(path)
        slide.apply_mpp_policy(sheet_mpp=sheet_mpp, default_mpp=default_mpp)
        return slide
    if path.is_dir():
        raise InputError(path, "is a directory, not a slide file",
                         "point to one file of the slide (for DICOM, any .dcm of the series), "
                         "or to a Space Ranger outs/ folder")
    suffix = "".join(path.suffixes[-2:]).lower() if path.name.lower().endswith(
        (".ome.tif", ".ome.tiff")) else path.suffix.lower()
    errors: list[str] = []
    slide: Slide | None = None
    if suffix in PLAIN_IMAGE_SUFFIXES:
        try:
            slide = PlainImageSlide(path)
        except Image.DecompressionBombError as exc:
            raise _too_large(path, exc) from None
        except Exception as exc:  # PIL raises many types for broken files
            errors.append(f"PIL: {exc}")
    else:
        try:
            slide = OpenSlideSlide(path)
        except Exception as exc:  # OpenSlideUnsupportedFormatError, OpenSlideError, OSError
            errors.append(f"OpenSlide: {exc}")
        if slide is None and suffix in TIFF_SUFFIXES:
            try:
                slide = TiffFileSlide(path)
                slide._read_level(slide.level_count - 1, 0, 0, 1, 1)  # proves decodability
            except InputError:
                raise
            except Exception as exc:
                slide = None
                errors.append(f"tifffile: {exc}")
    if slide is None:
        detail = "; ".join(e.splitlines()[0] for e in errors) or "unknown format"
        raise InputError(
            path,
            f"cannot be read as a slide ({detail})",
            "check that the file is complete (re-copy it) and in a supported format: SVS, "
            "NDPI, MRXS, SCN, DICOM, tiled TIFF/OME-TIFF, JPEG or PNG",
        )
    try:
        slide.apply_mpp_policy(sheet_mpp=sheet_mpp, default_mpp=default_mpp)
    except InputError:
        if require_mpp:
            slide.close()
            raise
    return slide
