"""The tile stage: tissue detection, a tissue grid in physical units, spot patches, QC.

:func:`tile_slide` is the stage for one slide; :mod:`.tissue` finds tissue on a low-resolution
image, :mod:`.grid` places grid tiles and spot patches, :mod:`.qc` draws the QC image. The
tiles file is owned by :mod:`slide2expr.contracts.tiles`.
"""

from slide2expr.tile.grid import TilingParams, compute_tissue, grid_tiles, spot_tiles
from slide2expr.tile.run import tile_slide
from slide2expr.tile.tissue import TissueParams

__all__ = ["TilingParams", "TissueParams", "compute_tissue", "grid_tiles", "spot_tiles",
           "tile_slide"]
