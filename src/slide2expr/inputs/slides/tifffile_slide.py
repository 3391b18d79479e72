"""TIFF / OME-TIFF pyramids that OpenSlide refuses, read tile by tile with tifffile."""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import tifffile

from slide2expr.errors import InputError
from slide2expr.inputs.mpp import mpp_from_resolution, split_metadata_mpp
from slide2expr.inputs.slides.base import Slide

#: File suffixes tifffile is tried on when OpenSlide refuses the file.
TIFF_SUFFIXES = {".tif", ".tiff", ".btf", ".ome.tif", ".ome.tiff"}


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
        read_tiff_tiles(self._tif.filehandle, page, out, x, y, box)

    @lru_cache(maxsize=2)  # noqa: B019 - one slide object per file, cache lives with it
    def _whole_page(self, level: int) -> np.ndarray:
        arr = self._levels[level].asarray()
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        return arr.astype(np.uint8, copy=False)

    def close(self) -> None:
        self._tif.close()


def read_tiff_tiles(fh, page, out: np.ndarray, x: int, y: int,  # fh, page: tifffile's
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
