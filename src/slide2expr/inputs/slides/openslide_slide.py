"""SVS, NDPI, MRXS, SCN, generic tiled TIFF and DICOM through OpenSlide (openslide-bin)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile

from slide2expr.inputs.mpp import mpp_from_resolution, split_metadata_mpp
from slide2expr.inputs.slides.base import MASK_MAX_PIXELS, Slide, box_reduce
from slide2expr.inputs.slides.tifffile_slide import read_tiff_tiles

try:  # at import, not in open_slide: loading the library is a third of a small slide's tiling
    import openslide
except ImportError:  # pragma: no cover - a dependency; open_slide then names the problem
    openslide = None


class OpenSlideSlide(Slide):
    """SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM... through openslide-bin."""

    backend = "openslide"

    def __init__(self, path: Path) -> None:
        if openslide is None:
            raise ImportError("openslide-python is not installed")
        self._osr = openslide.OpenSlide(str(path))
        props = self._osr.properties
        res = float_or_none(props.get("tiff.XResolution"))
        super().__init__(path, *split_metadata_mpp(
            float_or_none(props.get(openslide.PROPERTY_NAME_MPP_X)),
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
        return rgba_on_white(np.asarray(rgba))

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
                read_tiff_tiles(self._tif.filehandle, page, out, 0, y, (0, y, lw, y + h))
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
        return image if factor == 1 else box_reduce(image, factor)

    def close(self) -> None:
        self._osr.close()
        if getattr(self, "_tif", None) is not None:
            self._tif.close()


def float_or_none(value: object) -> float | None:
    """``value`` as a float (an OpenSlide property is a string), or None when it is not one."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite premultiplied RGBA from OpenSlide onto white."""
    if rgba[..., 3].min() == 255:  # opaque everywhere: the usual case, no arithmetic
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    out = rgb + (255 - alpha)
    return np.clip(out, 0, 255).astype(np.uint8)
