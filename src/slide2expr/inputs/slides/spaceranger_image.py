"""Space Ranger's tissue image (hires or lowres PNG) in the frame of the full-resolution image."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from slide2expr.inputs.mpp import MppChoice
from slide2expr.inputs.slides.base import Slide
from slide2expr.inputs.slides.plain_image import PlainImageSlide


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
