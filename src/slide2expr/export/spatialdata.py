"""A SpatialData zarr store of a spot-mode run (``slide2expr export spatialdata``).

One coordinate system per section, named by its sample ID, in the slide's level-0 pixels
(the frame of ``obsm['spatial']`` and of every slide2expr file). Per section:

- image ``{sample}_he``: the H&E as a multiscale image read from the slide itself (the path
  in ``uns['spatial'][sample]['metadata']['source_image_path']``): level 0 at full resolution,
  read lazily in :data:`CHUNK_PX` blocks, then coarser levels by 2 until the longer side is
  at most :data:`SMALLEST_PX`, so napari zooms down to the cells. When the slide cannot be
  opened (moved, another machine) or is a Space Ranger stand-in image, the ``hires`` image
  of ``uns['spatial']`` (with levels by 2 and 4, scaled into level-0 pixels) is written
  instead, with a warning;
- shapes ``{sample}_spots``: the measured spots as circles (``radius`` = half the spot
  diameter in level-0 px), indexed ``0..n-1`` with the spot ID as a column;
- shapes ``{sample}_tiles``: the grid tiles as squares, when the tile maps of
  ``heatmaps/{head}/{sample}.h5ad`` are given.

Tables: ``measured`` (``X`` = the measured log1p CP10k) and ``predicted`` (``X`` = the
out-of-fold predictions, NaN where a spot's fold did not model a gene), both annotating the
spots (``region`` = ``{sample}_spots``, ``instance_id``); ``predicted_tiles`` annotating the
tiles when tile maps are given. Needs the ``spatialdata`` extra.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slide2expr.atomic import atomic_output
from slide2expr.contracts.tilemaps import read_tile_map
from slide2expr.errors import InputError
from slide2expr.keys import Key

log = logging.getLogger(__name__)

#: Coarser levels of the hires stand-in image, each by this factor from the previous.
SCALE_FACTORS = (2, 2)
#: Level-0 blocks read from the slide (and zarr chunks), px.
CHUNK_PX = 2048
#: The slide pyramid's coarsest level has its longer side at most this, px.
SMALLEST_PX = 1024
#: Library warnings of a write that a user cannot act on: zarr announces a future default
#: (once per array, 24 for two sections), ome-zarr a deprecated default of its own.
QUIET_WARNINGS = (("zarr v3 autosharding", UserWarning),
                  ("Call to deprecated class Scaler", DeprecationWarning))


@contextmanager
def _quiet_library_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        for message, category in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=f".*{message}", category=category)
        yield


def _require() -> Any:
    try:
        with _quiet_library_warnings():
            import spatialdata
    except ImportError as exc:
        raise InputError(None, "the SpatialData export needs the spatialdata package",
                         "pip install 'slide2expr[spatialdata]'") from exc
    return spatialdata


def _image(hires: np.ndarray, scalef: float, cs: str) -> Any:
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale

    array = np.moveaxis(np.asarray(hires, dtype=np.uint8), -1, 0)  # (c, y, x)
    to_level0 = Scale([1.0 / scalef, 1.0 / scalef], axes=("y", "x"))
    return Image2DModel.parse(array, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
                              scale_factors=list(SCALE_FACTORS),
                              transformations={cs: to_level0})


def slide_levels(width: int, height: int) -> list[int]:
    """Scale factors (2 each) from level 0 down to a longer side of at most SMALLEST_PX."""
    n = max(0, math.ceil(math.log2(max(width, height) / SMALLEST_PX)))
    return [2] * n


def _slide_image(path: str, cs: str) -> Any | None:
    """The slide as a lazily read multiscale image in level-0 px, or None when it cannot be
    opened or holds no more than the stand-in (a Space Ranger ``spatial/`` image)."""
    import dask.array as da
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity

    from slide2expr.inputs.slides import SpaceRangerImageSlide, open_slide

    try:
        slide = open_slide(path, require_mpp=False)
    except (InputError, OSError) as exc:
        log.warning("%s: cannot open the slide (%s); the SpatialData image is the 2000 px "
                    "hires copy", path, exc)
        return None
    if isinstance(slide, SpaceRangerImageSlide):
        slide.close()
        return None
    width, height = slide.dimensions

    def read(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        (_, _), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        region = slide.read_region((x0, y0), 0, (x1 - x0, y1 - y0))
        return np.moveaxis(region, -1, 0)

    template = da.zeros((3, height, width), dtype=np.uint8, chunks=(3, CHUNK_PX, CHUNK_PX))
    level0 = template.map_blocks(read, dtype=np.uint8)
    return Image2DModel.parse(level0, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
                              scale_factors=slide_levels(width, height) or None,
                              chunks=(3, CHUNK_PX, CHUNK_PX),
                              transformations={cs: Identity()})


def _spots(xy: np.ndarray, diameter: float, spot_ids: Sequence[str], cs: str) -> Any:
    import geopandas as gpd
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    frame = gpd.GeoDataFrame(
        {"radius": np.full(len(xy), diameter / 2.0), "spot_id": list(map(str, spot_ids))},
        geometry=gpd.points_from_xy(xy[:, 0], xy[:, 1]), index=pd.RangeIndex(len(xy)))
    return ShapesModel.parse(frame, transformations={cs: Identity()})


def _tiles(coords: np.ndarray, size0: float, cs: str) -> Any:
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel
    from spatialdata.transformations import Identity

    c = np.asarray(coords, dtype=np.float64)
    boxes = shapely.box(c[:, 0], c[:, 1], c[:, 0] + size0, c[:, 1] + size0)
    frame = gpd.GeoDataFrame(geometry=boxes, index=pd.RangeIndex(len(c)))
    return ShapesModel.parse(frame, transformations={cs: Identity()})


def _table(x: np.ndarray, obs: pd.DataFrame, var: pd.DataFrame, regions: list[str]) -> Any:
    import anndata as ad
    from spatialdata.models import TableModel

    obs = obs.copy()
    obs["region"] = pd.Categorical(obs["region"], categories=regions)
    table = ad.AnnData(X=np.asarray(x, dtype=np.float32), obs=obs, var=var)
    return TableModel.parse(table, region=regions, region_key="region",
                            instance_key="instance_id")


def build_spatialdata(predictions: Any, *, tile_maps: Sequence[Any] = ()) -> Any:
    """The SpatialData object of a spot-mode predictions AnnData (see the module docstring).

    Parameters
    ----------
    predictions
        ``predictions/{head}.h5ad`` as read by anndata.
    tile_maps
        :class:`~slide2expr.contracts.tilemaps.TileMap` objects of the same run (optional).

    Raises
    ------
    InputError
        Not spot-mode predictions, or no ``uns['spatial']`` (a dataset joined before it was
        written: re-run join and train).
    """
    sd = _require()
    for what, ok in (("obsm['spatial']", Key.SPATIAL in predictions.obsm),
                     ("layers['predicted']", Key.PREDICTED in predictions.layers),
                     ("uns['spatial']", Key.SPATIAL_UNS in predictions.uns)):
        if not ok:
            raise InputError(None, f"the predictions have no {what}",
                             "export spot-mode predictions of a run joined by this version")
    samples = list(dict.fromkeys(predictions.obs[Key.SAMPLE_ID].astype(str)))
    images, shapes, rows = {}, {}, []
    for sid in samples:
        image, spots, idx = _section(predictions, sid)
        if image is not None:
            images[f"{sid}_he"] = image
        shapes[f"{sid}_spots"] = spots
        rows.append((sid, idx))
    tables = _spot_tables(predictions, rows)
    if tile_maps:
        tables["predicted_tiles"] = _tile_table(tile_maps, shapes)
    return sd.SpatialData(images=images, shapes=shapes, tables=tables)


def _section(predictions: Any, sid: str) -> tuple[Any, Any, np.ndarray]:
    """One section's H&E image (the slide, else the hires image; None without either), its
    spots as circles, and its rows in the predictions."""
    obs_all = predictions.obs
    lib = predictions.uns[Key.SPATIAL_UNS].get(sid, {})
    sf = dict(lib.get("scalefactors", {}))
    hires = dict(lib.get("images", {})).get("hires")
    source = dict(lib.get("metadata", {})).get("source_image_path")
    image = _slide_image(str(source), sid) if source else None
    if image is None and hires is not None and sf.get("tissue_hires_scalef"):
        image = _image(hires, float(sf["tissue_hires_scalef"]), sid)
    idx = np.flatnonzero(obs_all[Key.SAMPLE_ID].astype(str).to_numpy() == sid)
    xy = np.asarray(predictions.obsm[Key.SPATIAL], dtype=np.float64)[idx]
    ids = (obs_all[Key.SPOT_ID] if Key.SPOT_ID in obs_all else obs_all.index)
    diameter = float(sf.get("spot_diameter_fullres") or 1.0)
    return image, _spots(xy, diameter, np.asarray(ids)[idx], sid), idx


def _spot_tables(predictions: Any, rows: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    """The measured and predicted tables of the spots, section by section."""
    import scipy.sparse as sp

    obs_all = predictions.obs
    order = np.concatenate([idx for _, idx in rows])
    obs = pd.DataFrame({
        "region": np.concatenate([[f"{sid}_spots"] * len(idx) for sid, idx in rows]),
        "instance_id": np.concatenate([np.arange(len(idx)) for _, idx in rows]),
        Key.SAMPLE_ID: obs_all[Key.SAMPLE_ID].astype(str).to_numpy()[order],
    }, index=predictions.obs_names[order].astype(str))
    var = pd.DataFrame(index=predictions.var_names.astype(str))
    x = predictions.X[order]
    x = x.toarray() if sp.issparse(x) else x
    regions = [f"{sid}_spots" for sid, _ in rows]
    return {
        "measured": _table(x, obs, var, regions),
        "predicted": _table(np.asarray(predictions.layers[Key.PREDICTED])[order], obs, var,
                            regions),
    }


def _tile_table(tile_maps: Sequence[Any], shapes: dict[str, Any]) -> Any:
    """The predicted table of every tile map's tiles (the first map's genes), their squares
    added to ``shapes``."""
    tile_rows, values, tile_regions = [], [], []
    genes = list(tile_maps[0].genes)
    for tmap in tile_maps:
        sid = tmap.sample_id
        shapes[f"{sid}_tiles"] = _tiles(tmap.coords, tmap.tile_size0, sid)
        tile_regions.append(f"{sid}_tiles")
        col = [tmap.genes.index(g) for g in genes]
        values.append(np.asarray(tmap.values)[:, col])
        tile_rows.append(pd.DataFrame({"region": f"{sid}_tiles",
                                       "instance_id": np.arange(len(tmap.coords)),
                                       Key.SAMPLE_ID: sid}))
    tobs = pd.concat(tile_rows, ignore_index=True)
    tobs.index = tobs.index.astype(str)
    return _table(np.vstack(values), tobs, pd.DataFrame(index=genes), tile_regions)


def write_spatialdata(predictions_path: str | Path, out: str | Path, *,
                      tile_maps: Sequence[str | Path] = ()) -> Path:
    """Write the SpatialData zarr store of a predictions file (replacing ``out`` whole).

    The store is written to a hidden sibling and renamed when complete, so a failed export
    leaves nothing that looks finished; an existing ``out`` is replaced only if slide2expr
    made it (:func:`slide2expr.atomic.check_replaceable`).
    """
    import anndata as ad


    _require()
    predictions_path, out = Path(predictions_path), Path(out)
    if not predictions_path.is_file():
        raise InputError(predictions_path, "predictions file not found",
                         "pass results/predictions/{head}.h5ad")
    try:
        adata = ad.read_h5ad(predictions_path)
    except Exception as exc:  # anndata/h5py raise many types
        raise InputError(predictions_path, f"is not a readable predictions file ({exc})",
                         "pass results/predictions/{head}.h5ad") from exc
    maps = []
    if tile_maps:

        maps = [read_tile_map(p) for p in tile_maps]
    try:
        sdata = build_spatialdata(adata, tile_maps=maps)
    except InputError as exc:
        raise InputError(predictions_path, exc.problem, exc.fix) from exc
    import dask

    with atomic_output(out) as tmp:  # replaces ``out`` only if slide2expr made it
        # one block at a time: slide readers are not shared between threads
        with _quiet_library_warnings(), dask.config.set(scheduler="synchronous"):
            sdata.write(tmp)
    log.info("wrote %s: %d images, %d shapes, tables %s", out, len(sdata.images),
             len(sdata.shapes), ", ".join(sdata.tables))
    return out
