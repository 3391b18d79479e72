"""The reader interface every slide backend implements, addressed in micrometres per pixel.

Coordinates are level-0 pixels ``(x, y)`` with the origin top-left, as OpenSlide and QuPath
use them. Resolution is given in micrometres per pixel (mpp), never as a pyramid level: the
reader picks the best level for a requested mpp and resizes from there, so a thumbnail never
decodes level 0 when a smaller level exists. A backend implements :meth:`Slide._read_level`
and :attr:`Slide.level_dimensions`; everything else is shared here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from slide2expr.errors import InputError
from slide2expr.inputs.mpp import MppChoice, resolve_mpp

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
        parts = [box_reduce(read(y, min(step, lh - y)), factor) for y in range(0, lh, step)]
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


def box_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Box-reduce an RGB uint8 image by an integer factor (partial blocks at the edges kept)."""
    return np.asarray(Image.fromarray(image).reduce(factor))
