"""The files stages hand on: one module owns each on-disk contract.

Each module reads and writes one kind of file, names its keys and attributes, and stamps a
format version that its reader checks, as anndata's IO specs do; every other module goes
through it.

============================  ==========================  =============================
file                          module                      written by -> read by
============================  ==========================  =============================
``tiles/{grid,spots}/*.h5``   :mod:`.tiles`               tile -> extract
``features/.../*.h5``         :mod:`.features`            extract -> join, train, heatmap
``dataset.h5ad``              :mod:`.dataset`             join -> train, report, heatmap
``models/{head}/fold{k}/``    :mod:`.models`              train -> predict, heatmap
``predictions/{head}.h5ad``   :mod:`.predictions`         train -> report, heatmap
``heatmaps/{head}/*.h5ad``    :mod:`.tilemaps`            heatmap -> heatmap, viewer
``report/{head}/genes.tsv``,  :mod:`.report`              report, heatmap-scale ->
``summary.json``,                                         heatmap, viewer, compare
``heatmaps/{head}/scale.tsv``
============================  ==========================  =============================

The attributes of tiles, features and tile maps are typed records (:mod:`._attrs`:
:class:`~.tiles.TileAttrs`, :class:`~.features.FeatureAttrs`,
:class:`~.tilemaps.TileMapAttrs`), so nothing outside this package reads an attribute by a
string. Shared helpers (h5 attributes, format versions) are in :mod:`._h5`; shared key names
in :mod:`slide2expr.keys`. Modules are imported one by one, so that reading tiles does not
import torch.
"""
