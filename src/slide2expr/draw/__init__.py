"""The drawing library under heatmaps, the report and the viewer.

Modules: :mod:`.colours` (colour maps by name, the overlay style, values blended over an
image), :mod:`.raster` (tile values painted into an image of a given downsample),
:mod:`.limits` (robust colour limits, the cohort scale and its ``scale.tsv``),
:mod:`.tissue` (the tissue mask of a thumbnail, its bounding box and outline polygons; the
slide a tile map was made on), :mod:`.names` (the file name of a gene's picture) and
:mod:`.genes` (which genes to draw).

Nothing here predicts or writes a stage's outputs; :mod:`slide2expr.heatmap` draws heatmaps
with it, :mod:`slide2expr.viewer` its gene layers, :mod:`slide2expr.report` links pictures by
their file names.

>>> from slide2expr.draw import colormap, rasterize_tiles, robust_limits
>>> vmin, vmax = robust_limits(values, (1, 99))                                 # doctest: +SKIP
"""

from slide2expr.draw.colours import OverlayStyle, blend_overlay, colormap
from slide2expr.draw.genes import select_genes, split_gene_args, top_report_genes
from slide2expr.draw.limits import (
    check_percentiles,
    cohort_scale,
    read_scale,
    robust_limits,
    write_scale,
)
from slide2expr.draw.names import gene_filename, gene_filenames
from slide2expr.draw.raster import rasterize_tiles, tile_pixel_boxes
from slide2expr.draw.tissue import (
    mask_polygons,
    open_matching_slide,
    region_box,
    resize_mask,
    tissue_box,
    tissue_mask,
)

__all__ = [
    "OverlayStyle",
    "blend_overlay",
    "check_percentiles",
    "cohort_scale",
    "colormap",
    "gene_filename",
    "gene_filenames",
    "mask_polygons",
    "open_matching_slide",
    "rasterize_tiles",
    "read_scale",
    "region_box",
    "resize_mask",
    "robust_limits",
    "select_genes",
    "split_gene_args",
    "tile_pixel_boxes",
    "tissue_box",
    "tissue_mask",
    "top_report_genes",
    "write_scale",
]
