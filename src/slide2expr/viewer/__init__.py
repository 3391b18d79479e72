"""A zoomable slide viewer with predicted-expression layers, for pathologists.

``build_viewer`` writes ``results/viewer/``: one OpenSeadragon page for the cohort, a Deep
Zoom pyramid of every slide at full resolution, and per slide one layer per predicted gene
(the measured expression at the spots and the spread of the averaged models, ensemble
members or folds, calibrated on inner validation by default, when the tile map has one). The folder works from ``file://`` and over
``slide2expr view --serve``.

>>> from slide2expr.viewer import build_viewer, ViewerOptions
>>> result = build_viewer("results", options=ViewerOptions(head="mlp"))  # doctest: +SKIP
>>> result.index                                                          # doctest: +SKIP
PosixPath('results/viewer/index.html')
"""

from slide2expr.errors import EnvironmentFault
from slide2expr.viewer.build import ViewerOptions, ViewerResult, build_viewer
from slide2expr.viewer.serve import make_server, serve_in_thread, viewer_url

__all__ = [
    "EnvironmentFault",
    "ViewerOptions",
    "ViewerResult",
    "build_viewer",
    "make_server",
    "serve_in_thread",
    "viewer_url",
]
