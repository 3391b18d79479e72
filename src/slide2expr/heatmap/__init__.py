"""Predicted-expression heatmaps for pathologists: slide overlays and QuPath layers.

For one slide, a trained head is applied to every grid tile (spot heads paint a dense map
beyond the measured spots; bulk heads give their per-tile scores), and the result is

- a tile map ``heatmaps/{head}/{sample}.h5ad`` (one row per tile, one column per gene),
- overlays ``heatmaps/{head}/{sample}/{gene}.png`` drawn on the slide thumbnail from tile
  coordinates (level 0 is never rendered),
- a QuPath GeoJSON ``heatmaps/{head}/{sample}.geojson`` (tiles with measurements named
  ``"{head}: {gene} (log1p CP10k)"``, predictions clipped at 0; spot detections with
  measured and predicted values on spot-mode training slides; tissue outline as an
  annotation),
- for spot-mode training slides, measured vs predicted expression at the spots.

>>> from slide2expr.heatmap import load_or_predict, open_matching_slide, make_heatmaps
>>> tmap, new = load_or_predict("features.h5", model_dir="results/models/mlp")  # doctest: +SKIP
>>> with open_matching_slide("slide.svs", tmap) as slide:                        # doctest: +SKIP
...     make_heatmaps(tmap, slide, "results/heatmaps/mlp", report="genes.tsv")
"""

from slide2expr.contracts.tilemaps import UNITS, TileMap, read_tile_map, write_tile_map
from slide2expr.heatmap.gene_choice import (
    gene_filename,
    gene_filenames,
    select_genes,
    top_report_genes,
)
from slide2expr.heatmap.geojson import (
    SpotDetections,
    mask_polygons,
    measurement_name,
    write_qupath_geojson,
)
from slide2expr.heatmap.overlay import OverlayStyle, blend_overlay, read_image_box, save_overlay_png
from slide2expr.heatmap.raster import rasterize_tiles, tile_pixel_boxes
from slide2expr.heatmap.run import (
    HeatmapOptions,
    HeatmapResult,
    load_or_predict,
    make_heatmaps,
    open_matching_slide,
)
from slide2expr.heatmap.scale import cohort_scale, read_scale, robust_limits, write_scale

__all__ = [
    "UNITS",
    "HeatmapOptions",
    "HeatmapResult",
    "OverlayStyle",
    "SpotDetections",
    "TileMap",
    "blend_overlay",
    "cohort_scale",
    "gene_filename",
    "gene_filenames",
    "load_or_predict",
    "make_heatmaps",
    "mask_polygons",
    "measurement_name",
    "open_matching_slide",
    "rasterize_tiles",
    "read_image_box",
    "read_scale",
    "read_tile_map",
    "robust_limits",
    "save_overlay_png",
    "select_genes",
    "tile_pixel_boxes",
    "top_report_genes",
    "write_qupath_geojson",
    "write_scale",
    "write_tile_map",
]
