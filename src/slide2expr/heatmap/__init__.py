"""Predicted-expression heatmaps for pathologists: slide overlays and QuPath layers.

For one slide, a trained head is applied to every grid tile (:mod:`slide2expr.predict`:
spot heads paint a dense map beyond the measured spots; bulk heads give their per-tile
scores), and the result is

- a tile map ``heatmaps/{head}/{sample}.h5ad`` (one row per tile, one column per gene),
- overlays ``heatmaps/{head}/{sample}/{gene}.png`` drawn on the slide thumbnail from tile
  coordinates (level 0 is never rendered),
- a QuPath GeoJSON ``heatmaps/{head}/{sample}.geojson`` (tiles with measurements named
  ``"{head}: {gene} (log1p CP10k)"``, predictions clipped at 0; spot detections with
  measured and predicted values on spot-mode training slides; tissue outline as an
  annotation),
- for spot-mode training slides, measured vs predicted expression at the spots.

Colours, rasters, limits, the tissue outline and file names come from :mod:`slide2expr.draw`.

>>> from slide2expr.draw import open_matching_slide
>>> from slide2expr.heatmap import load_or_predict, make_heatmaps
>>> tmap, new = load_or_predict("features.h5", model_dir="results/models/mlp")  # doctest: +SKIP
>>> with open_matching_slide("slide.svs", tmap) as slide:                        # doctest: +SKIP
...     make_heatmaps(tmap, slide, "results/heatmaps/mlp", report="genes.tsv")
"""

from slide2expr.contracts.tilemaps import UNITS, TileMap, read_tile_map, write_tile_map
from slide2expr.heatmap.geojson import SpotDetections, measurement_name, write_qupath_geojson
from slide2expr.heatmap.overlay import read_image_box, save_overlay_png
from slide2expr.heatmap.run import HeatmapOptions, HeatmapResult, load_or_predict, make_heatmaps

__all__ = [
    "UNITS",
    "HeatmapOptions",
    "HeatmapResult",
    "SpotDetections",
    "TileMap",
    "load_or_predict",
    "make_heatmaps",
    "measurement_name",
    "read_image_box",
    "read_tile_map",
    "save_overlay_png",
    "write_qupath_geojson",
    "write_tile_map",
]
