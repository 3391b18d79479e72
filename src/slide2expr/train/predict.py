"""Predicted expression for slides without RNA-seq (``slide2expr predict``)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.contracts.features import read_feature_meta
from slide2expr.contracts.predictions import write_predictions
from slide2expr.errors import InputError
from slide2expr.keys import Key
from slide2expr.train.features import read_bag
from slide2expr.train.trained import load_trained_head

log = logging.getLogger(__name__)


def predict_files(features: list[Path], *, model_dir: Path, output: Path, level: str = "auto",
                  fold: int | None = None):
    """Apply a trained head to feature files and write an AnnData of predictions.

    Parameters
    ----------
    features
        ``features/{encoder}/{tiling}/{sample}.h5`` files.
    model_dir
        ``results/models/{head}`` (fold models averaged) or one fold directory.
    output
        The ``.h5ad`` to write: var = the head's genes, X = predicted log1p CP10k. With
        ``level="slide"`` one row per file (obs ``sample_id``); with ``"tile"`` one row per
        tile/spot (obs ``sample_id``, ``spot_id`` when present, obsm ``spatial`` = tile centre
        in level-0 px). Tile level with several models averaged (fold models, ensemble
        members) adds ``layers['predicted_sd']``, their standard deviation (``ddof=0``).
        A head with context inputs gets its blocks built on the file's tiles as the heatmap
        builds them (:mod:`slide2expr.heatmap.context`; the slide block is the tiles' mean).
    level
        ``slide``, ``tile`` or ``auto`` (slide for bulk heads, tile for spot heads).
    fold
        Use only this fold's model.
    """
    import anndata as ad


    if level not in ("auto", "slide", "tile"):
        raise InputError(None, f"--level is {level!r}", "use auto, slide or tile")
    head = load_trained_head(model_dir, fold=fold)
    if level == "auto":
        level = "slide" if head.kind == "bulk" else "tile"
    rows, spreads, obs, spatial = [], [], [], []
    for path in features:
        x, coords = read_bag(path)
        sample, spot_ids, tile_px0 = _file_info(path)
        if level == "slide":
            rows.append(head.predict_bag(x, coords)[None])
            obs.append(pd.DataFrame({"sample_id": [sample], "n_tiles": [len(x)]}))
        else:
            values, spread = head.predict_tiles_spread(_inputs(head, x, path))
            rows.append(values)
            spreads.append(spread)
            frame = pd.DataFrame({"sample_id": sample,
                                  "spot_id": spot_ids if spot_ids is not None else
                                  [str(i) for i in range(len(x))]})
            obs.append(frame)
            spatial.append(coords.astype(np.float64) + tile_px0 / 2.0)
        log.info("predicted %s (%d tiles)", sample, len(x))
    obs_frame = pd.concat(obs, ignore_index=True)
    obs_frame.index = (obs_frame["sample_id"] if level == "slide" else
                       obs_frame["sample_id"] + ":" + obs_frame["spot_id"].astype(str)).astype(str)
    adata = ad.AnnData(X=np.concatenate(rows).astype(np.float32), obs=obs_frame,
                       var=pd.DataFrame(index=pd.Index(head.genes)))
    if spatial:
        adata.obsm[Key.SPATIAL] = np.concatenate(spatial)
    if spreads and all(sd is not None for sd in spreads):
        adata.layers[Key.PREDICTED_SD] = np.concatenate(spreads).astype(np.float32)
    adata.uns[Key.PROVENANCE] = {"model_dir": str(model_dir), "head": head.head,
                               "level": level, "encoder": str(head.meta.get("encoder"))}
    write_predictions(adata, output)
    return adata


def _inputs(head, x: np.ndarray, path: Path) -> np.ndarray:
    """``x``, or for a head with context inputs its blocks on the file's tiles."""
    from slide2expr.contracts.features import read_features
    from slide2expr.heatmap.context import grid_input_matrix, head_input_blocks
    from slide2expr.keys import SPOT_BLOCK

    blocks = head_input_blocks(head.meta, source=path)
    if blocks == [SPOT_BLOCK]:
        return x
    matrix, _ = grid_input_matrix(read_features(path), blocks, features_path=path,
                                  encoder=head.meta.get("encoder"))
    return matrix


def _file_info(path: Path) -> tuple[str, np.ndarray | None, float]:
    meta = read_feature_meta(path)
    sample = meta.sample_id or Path(path).stem
    return sample, meta.spot_ids, float(meta.attrs.get("tile_px_level0", 0.0))
