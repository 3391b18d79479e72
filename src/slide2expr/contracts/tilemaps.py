"""The heatmap stage's tile maps: ``heatmaps/{head}/{sample}.h5ad``, read by the viewer.

Contract: one row per tile of the features file (grid tiling for heatmaps), in its order;
``X`` float32 ``(N, G)`` predicted expression in the model's units (log1p CP10k), one column
per gene the model predicts; ``obsm['spatial']`` float64 tile centres in level-0 px (x, y);
``obsm['coords']`` int64 top-left corners (as in the tiles file); ``obs`` ``x``, ``y``
(centres) and ``spot_id`` when the features carry spot IDs; ``layers['predicted_sd']``
float32 ``(N, G)`` (:attr:`slide2expr.keys.Key.PREDICTED_SD`), when the map averages several
models: their spread at each tile (:meth:`slide2expr.predict.TrainedHead.predict_tiles_spread`:
each fold's calibrated SD of ``train.spread: calibrated``, averaged over the folds on a new
slide; else the standard deviation, ``ddof=0``, of the ensemble members of the fold that
held the slide out, or of every fold model and member on a new slide); absent when one model painted the map (``TileMap.spread`` is None; the
viewer's uncertainty layer is then unavailable). ``uns['slide2expr']['heatmap']``: sample,
model directory, head, kind, folds used, ``n_models`` averaged, encoder, units, tiling attrs,
and for a context head its ``inputs`` and ``slide_block`` (:mod:`slide2expr.predict.inputs`),
read and written as a :class:`TileMapAttrs` record (a field each; others kept in ``extra``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.contracts._anndata import read_anndata, write_anndata
from slide2expr.contracts._h5 import (
    FORMAT_ATTR,
    check_format,
    format_stamp,
    plain_attr,
    storable_attrs,
)
from slide2expr.contracts.features import FeatureAttrs
from slide2expr.contracts.tiles import TileAttrs
from slide2expr.errors import InputError
from slide2expr.keys import Key

log = logging.getLogger(__name__)

FIX = "pass heatmaps/{head}/{sample}.h5ad written by `slide2expr heatmap`"
CONTRACT = "tilemaps"
VERSION = "1"
#: Units of every predicted value (the dataset's X).
UNITS = "log1p CP10k"


@dataclass(kw_only=True, repr=False)
class TileMapAttrs(FeatureAttrs):
    """The provenance of a tile map (``uns['slide2expr']['heatmap']``), typed; the rest in
    ``extra``: the features file's attributes (:class:`FeatureAttrs`) and how the map was
    predicted, declared in the order :mod:`slide2expr.predict.tiles` sets them."""

    model_dir: str | None = None
    head: str | None = None
    kind: str | None = None
    model_use: str | None = None
    features: str | None = None
    n_models: int | None = None
    inputs: Any = None
    slide_block: str | None = None
    units: str | None = None
    implausible_values: int | None = None
    plausible_checked: int | None = None
    plausible_rule: str | None = None
    tile_size0: float | None = None


def as_tile_map_attrs(attrs: TileMapAttrs | TileAttrs | Mapping[str, Any]) -> TileMapAttrs:
    """``attrs`` as a :class:`TileMapAttrs` (a mapping or another record is converted)."""
    if isinstance(attrs, TileMapAttrs):
        return attrs
    if isinstance(attrs, TileAttrs):
        return attrs.to_record(TileMapAttrs)
    return TileMapAttrs.from_attrs(attrs)


@dataclass
class TileMap:
    """Predictions of every tile of one slide.

    Attributes
    ----------
    values
        ``(N, G)`` float32 predicted expression.
    genes
        Column names.
    coords
        ``(N, 2)`` int64 level-0 top-left corners.
    tile_size0
        Tile edge in level-0 px.
    attrs
        Tiling and provenance attributes (sample_id, slide_mpp, level0_width, ...).
    spot_ids
        Spot IDs when the features are spot patches.
    spread
        ``(N, G)`` float32 standard deviation of the averaged models' predictions (the
        viewer's uncertainty layer), or None when one model painted the map.
    """

    values: np.ndarray
    genes: list[str]
    coords: np.ndarray
    tile_size0: float
    attrs: TileMapAttrs
    spot_ids: np.ndarray | None = None
    spread: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.attrs = as_tile_map_attrs(self.attrs)

    @property
    def centres(self) -> np.ndarray:
        """``(N, 2)`` float64 tile centres in level-0 px."""
        return self.coords.astype(np.float64) + self.tile_size0 / 2.0

    @property
    def sample_id(self) -> str:
        return str(self.attrs.sample_id or "")

    def column(self, gene: str) -> np.ndarray:
        """The values of one gene, ``(N,)``."""
        try:
            return self.values[:, self.genes.index(gene)]
        except ValueError:
            raise InputError(None, f"gene {gene!r} is not in the tile predictions",
                             f"pick one of {', '.join(self.genes[:5])} ...") from None


def tile_map_to_anndata(tmap: TileMap) -> Any:
    """The AnnData of the module contract."""
    import anndata as ad
    import pandas as pd

    centres = tmap.centres
    obs = pd.DataFrame({"x": centres[:, 0], "y": centres[:, 1]},
                       index=pd.Index([f"tile{i}" for i in range(len(centres))], name="tile"))
    if tmap.spot_ids is not None:
        obs[Key.SPOT_ID] = np.asarray(tmap.spot_ids, dtype=str)
    var = pd.DataFrame(index=pd.Index(tmap.genes, name="gene"))
    adata = ad.AnnData(X=np.ascontiguousarray(tmap.values, dtype=np.float32), obs=obs, var=var)
    adata.obsm[Key.SPATIAL] = centres
    adata.obsm[Key.COORDS] = tmap.coords
    if tmap.spread is not None:
        adata.layers[Key.PREDICTED_SD] = np.ascontiguousarray(tmap.spread, dtype=np.float32)
    attrs = tmap.attrs.copy()
    attrs.tile_size0 = tmap.tile_size0
    attrs.update(format_stamp(CONTRACT, VERSION))
    adata.uns[Key.PROVENANCE] = {"heatmap": storable_attrs(attrs.to_attrs())}
    return adata


def write_tile_map(path: str | Path, tmap: TileMap) -> None:
    """Write ``tmap`` to ``path`` (``.h5ad``) atomically."""
    adata = tile_map_to_anndata(tmap)
    write_anndata(adata, path)


def read_tile_map(path: str | Path) -> TileMap:
    """Read a tile map written by :func:`write_tile_map`.

    Raises
    ------
    InputError
        If the file is not such a tile map.
    """
    path = Path(path)
    adata = read_anndata(path, what="tile map", fix=FIX)
    try:
        attrs = dict(adata.uns[Key.PROVENANCE]["heatmap"])
        coords = np.asarray(adata.obsm[Key.COORDS], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"is not a tile-prediction file (no {exc})", FIX) from exc
    attrs = {k: plain_attr(v, arrays_as_lists=True) for k, v in attrs.items()}
    check_format(path, attrs, CONTRACT, (VERSION,))
    attrs.pop(FORMAT_ATTR, None)
    if "tile_size0" not in attrs:
        raise InputError(path, "is not a tile-prediction file (no tile_size0)", FIX)
    spot_ids = adata.obs[Key.SPOT_ID].to_numpy(str) if "spot_id" in adata.obs else None
    spread = (np.asarray(adata.layers[Key.PREDICTED_SD], dtype=np.float32)
              if Key.PREDICTED_SD in adata.layers else None)
    return TileMap(values=np.asarray(adata.X, dtype=np.float32), genes=list(map(str, adata.var_names)),
                   coords=coords, tile_size0=float(attrs["tile_size0"]),
                   attrs=TileMapAttrs.from_attrs(attrs),
                   spot_ids=spot_ids, spread=spread)


def subset_genes(tmap: TileMap, genes: Sequence[str]) -> TileMap:
    """A copy of ``tmap`` with only ``genes`` (in that order)."""
    idx = [tmap.genes.index(g) for g in genes]
    return TileMap(values=tmap.values[:, idx], genes=list(genes), coords=tmap.coords,
                   tile_size0=tmap.tile_size0, attrs=tmap.attrs.copy(), spot_ids=tmap.spot_ids,
                   spread=None if tmap.spread is None else tmap.spread[:, idx])
