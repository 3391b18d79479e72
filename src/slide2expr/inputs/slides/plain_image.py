"""Plain images (JPEG, PNG, BMP): one level, no mpp metadata.

A JPEG with a restart marker at every row of MCUs (the her2st H&E images) is decoded a band
of rows at a time, as regions are read (:mod:`.jpeg_bands`): memory is a bounded cache of
bands, whatever the image's size. Any other plain image is decoded whole, once.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
from PIL import Image

from slide2expr.errors import InputError
from slide2expr.inputs.slides.base import MASK_COARSER_OK, MaskImage, Slide
from slide2expr.inputs.slides.jpeg_bands import JpegBands

#: Pixels a plain image (JPEG, PNG) may have before PIL warns that it could be a
#: decompression bomb; PIL refuses twice this. PIL's default (89 Mpx) is below a legitimate
#: slide scanned as a JPEG (a her2st section: 9274 x 9911 = 92 Mpx); 2^31 px is a
#: 46341 px square, 6.4 GB once decoded to RGB, which is as large as a plain image that is
#: read whole can sensibly be (larger slides come as pyramidal TIFF/SVS), and the limit
#: still stops a file that claims more.
PLAIN_IMAGE_MAX_PIXELS = 2**31
Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS or 0, PLAIN_IMAGE_MAX_PIXELS)

PLAIN_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}

class PlainImageSlide(Slide):
    """A large JPEG/PNG (e.g. the her2st H&E images): one level, no mpp metadata.

    Thumbnails use JPEG DCT scaling (``Image.draft``) so they never decode the full image.
    Region reads of a JPEG with a restart marker per row of MCUs decode the bands of rows
    they need (:class:`~slide2expr.inputs.slides.jpeg_bands.JpegBands`, a bounded cache);
    other images are decoded whole on the first region read and kept.
    """

    backend = "pil"

    def __init__(self, path: Path) -> None:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            self._size = im.size
        super().__init__(path, None)  # JFIF density is almost always a 72-dpi placeholder
        self._full: np.ndarray | None = None
        self._bands: JpegBands | None = None
        self._bands_checked = False

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

    def banded(self) -> JpegBands | None:
        """The image's row bands when it is a JPEG that can be decoded by rows, else None."""
        if not self._bands_checked:
            self._bands_checked = True
            with Image.open(self.path) as im:
                if im.format == "JPEG" and im.mode == "RGB":
                    self._bands = JpegBands.open(self.path)
        return self._bands

    def preload(self) -> None:
        if self.banded() is None:
            self._decoded()

    def adopt(self, other: Slide) -> None:
        if isinstance(other, PlainImageSlide) and other.path == self.path:
            self._full = other._full
            self._bands, self._bands_checked = other._bands, other._bands_checked

    def _read_level(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        w0, h0 = self._size
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        x_lo, y_lo, x_hi, y_hi = max(x, 0), max(y, 0), min(x + width, w0), min(y + height, h0)
        if x_hi > x_lo and y_hi > y_lo:
            bands = self.banded() if self._full is None else None
            out[y_lo - y:y_hi - y, x_lo - x:x_hi - x] = (
                bands.rows(y_lo, y_hi, x_lo, x_hi) if bands is not None
                else self._decoded()[y_lo:y_hi, x_lo:x_hi])
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


def too_large(path: Path, exc: Exception) -> InputError:
    """The error for a plain image whose header claims more pixels than PIL will decode."""
    match = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = f"{int(match.group(1)) / 1e6:,.0f} Mpx, " if match else ""
    limit = 2 * (Image.MAX_IMAGE_PIXELS or PLAIN_IMAGE_MAX_PIXELS)
    return InputError(path, f"is too large to read as a plain image ({pixels}more than the "
                      f"{limit / 1e6:,.0f} Mpx a JPEG/PNG may have; it would be decoded whole "
                      "into memory)", "convert it to a tiled pyramidal TIFF (e.g. vips tiffsave "
                      "IN OUT.tif --tile --pyramid --compression jpeg) and use that file")
