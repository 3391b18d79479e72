"""Read and write the tile stage's file: ``tiles/{tiling}/{sample}.h5``.

Contract (docs/architecture.md): dataset ``coords`` int64 ``(N, 2)``, level-0 pixel ``x, y`` of each
tile's top-left corner; attrs ``slide_mpp``, ``mpp_source``, ``target_mpp``, ``tile_px``,
``tile_px_level0``, ``level0_width``, ``level0_height``, ``mode`` (``"grid"`` or
``"spots"`` or ``"context"``), ``sample_id``, ``slide``; spot mode adds dataset ``spot_ids``
``(N,)`` (UTF-8) and the attr ``spot_diameter_um`` (the patch size in micrometres). Context
tilings ``tiles/ctx{um}/`` (:mod:`slide2expr.tile.context`) hold one window of ``context_um``
micrometres per spot, in the spot tiling's order, with ``spot_ids``, attrs ``context_um``,
``padding`` (``"white"``), ``n_padded`` and dataset ``pad_fraction`` ``(N,)``: windows past
the slide edge are padded, never shifted. Grid context tilings ``tiles/grid_ctx{um}/``
(heatmaps of context heads) are the same windows centred on each grid tile, in the grid
tiling's order, without ``spot_ids`` (attr ``tiling`` = ``"grid_ctx{um}"``). Grid mode adds
the attrs
``tissue_mask_source`` (the image the tissue mask was computed on: ``"level N"``,
``"thumbnail"`` or ``"image, JPEG-decoded at 1/8"``, with ``", reduced Fx"`` after a box
reduction), ``tissue_mask_mpp`` (the mask's resolution, um/px) and ``mask_downsample``.
``slide_fingerprint`` (:func:`slide2expr.hashing.file_fingerprint`: sha256 of the slide
file's size, first and last MiB; absent in older files) lets extract refuse a ``--slide``
that is not the tiles' slide. The file is stamped
``slide2expr_format = "tiles/1"``. The attributes are read and written as a
:class:`TileAttrs` record (a field each; others kept in ``extra``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from slide2expr.atomic import atomic_output
from slide2expr.contracts._attrs import AttrRecord
from slide2expr.contracts._h5 import check_format, format_stamp, open_h5, read_attrs

CONTRACT = "tiles"
VERSION = "1"

#: Attributes every tiles file carries (extract copies them into the features file).
TILING_ATTRS = (
    "sample_id", "slide", "slide_mpp", "mpp_source", "target_mpp", "tile_px", "tile_px_level0",
    "level0_width", "level0_height", "mode",
)
#: Grid-mode attributes that say how the tissue was found (see the module docstring).
TISSUE_MASK_ATTRS = ("tissue_mask_source", "tissue_mask_mpp", "mask_downsample")


@dataclass(kw_only=True, repr=False)
class TileAttrs(AttrRecord):
    """The attributes of a tiles file (module docstring), typed; the rest in ``extra``.

    Fields are declared in the order the tile stage sets them, so that a file it writes
    keeps the attribute order (and bytes) of the dict it used to fill.
    """

    sample_id: str | None = None
    slide: str | None = None
    slide_fingerprint: str | None = None
    slide_mpp: float | None = None
    mpp_source: str | None = None
    tile_px: int | None = None
    level0_width: int | None = None
    level0_height: int | None = None
    min_tissue: float | None = None
    mode: str | None = None
    target_mpp: float | None = None
    tile_px_level0: float | None = None
    tissue_mask_source: str | None = None
    tissue_mask_mpp: float | None = None
    spot_diameter_um: float | None = None
    spots_table: str | None = None
    roi: str | None = None
    roi_spec: str | None = None
    roi_units: str | None = None
    roi_bounds: Any = None
    mask_downsample: float | None = None
    tiling: str | None = None
    context_um: float | None = None
    padding: str | None = None
    n_padded: int | None = None

    @property
    def is_grid(self) -> bool:
        """Grid tiles, or windows centred on them (tiling ``grid_ctx{um}``)."""
        return self.mode == "grid" or str(self.tiling or "").startswith("grid")


def as_tile_attrs(attrs: TileAttrs | Mapping[str, Any]) -> TileAttrs:
    """``attrs`` as a :class:`TileAttrs` (a mapping of attribute names is converted)."""
    return attrs if isinstance(attrs, TileAttrs) else TileAttrs.from_attrs(attrs)


@dataclass
class TileSet:
    """Tiles of one slide.

    Attributes
    ----------
    coords
        ``(N, 2)`` int64 level-0 ``x, y`` of each tile's top-left corner.
    attrs
        The tiling attributes (see module docstring); a mapping given is converted.
    spot_ids
        Spot identifiers in spot mode, aligned with ``coords``; ``None`` in grid mode.
    """

    coords: np.ndarray
    attrs: TileAttrs
    spot_ids: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.attrs = as_tile_attrs(self.attrs)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    @property
    def tile_px_level0(self) -> float:
        """Tile edge in level-0 pixels."""
        if self.attrs.tile_px_level0 is None:
            raise KeyError("tile_px_level0")
        return float(self.attrs.tile_px_level0)


def write_tiles(path: str | Path, tiles: TileSet) -> None:
    """Write ``tiles`` atomically to ``path``."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("coords", data=np.asarray(tiles.coords, dtype=np.int64).reshape(-1, 2))
        if tiles.spot_ids is not None:
            f.create_dataset("spot_ids", data=np.asarray(tiles.spot_ids, dtype=object),
                             dtype=h5py.string_dtype("utf-8"))
        for key, value in tiles.extra.items():
            f.create_dataset(key, data=value)
        for key, value in tiles.attrs.items():
            f.attrs[key] = "" if value is None else value
        f.attrs.update(format_stamp(CONTRACT, VERSION))


def read_tiles(path: str | Path) -> TileSet:
    """Read a tiles file written by :func:`write_tiles`.

    Raises
    ------
    InputError
        If the file is missing or is not a tiles file.
    """
    with open_h5(path, what="tiles file", fix="re-run the tile stage for this sample") as f:
        attrs = read_attrs(f)
        check_format(path, attrs, CONTRACT, (VERSION,))
        coords = f["coords"][:]
        spot_ids = f["spot_ids"].asstr()[:] if "spot_ids" in f else None
    return TileSet(coords=coords, attrs=TileAttrs.from_attrs(attrs), spot_ids=spot_ids)

