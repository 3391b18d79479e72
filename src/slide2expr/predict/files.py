"""Predicted expression for slides from their features files (``slide2expr predict``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slide2expr.contracts.features import FeatureSet, read_features
from slide2expr.contracts.predictions import write_predictions
from slide2expr.errors import InputError
from slide2expr.keys import Key
from slide2expr.predict.inputs import check_finite_rows, model_inputs
from slide2expr.predict.model import (
    TrainedHead,
    check_encoder,
    choose_fold,
    describe_use,
    load_trained_head,
)
from slide2expr.predict.plausible import check_range

log = logging.getLogger(__name__)

LEVELS = ("auto", "slide", "tile")


class _Models:
    """The model each file's slide gets, loaded once per fold choice."""

    def __init__(self, model_dir: Path, fold: int | None) -> None:
        self.model_dir, self.fold = model_dir, fold
        self._loaded: dict[int | None, TrainedHead] = {}

    def for_sample(self, sample: str) -> tuple[TrainedHead, str]:
        fold, use = choose_fold(self.model_dir, sample, fold=self.fold)
        if fold not in self._loaded:
            self._loaded[fold] = load_trained_head(self.model_dir, fold=fold)
        head = self._loaded[fold]
        return head, describe_use(use, head)


def predict_files(features: list[Path], *, model_dir: Path, output: Path, level: str = "auto",
                  fold: int | None = None):
    """Apply a trained head to feature files and write an AnnData of predictions.

    Parameters
    ----------
    features
        ``features/{encoder}/{tiling}/{sample}.h5`` files.
    model_dir
        ``results/models/{head}`` or one fold directory. Each slide gets the model the
        heatmap gives it (:func:`slide2expr.predict.model.choose_fold`): on a training slide
        the fold model that held it out, on a new slide the average of the fold models;
        ``obs['model_use']`` says which.
    output
        The ``.h5ad`` to write: var = the head's genes, X = predicted log1p CP10k. With
        ``level="slide"`` one row per file (obs ``sample_id``); with ``"tile"`` one row per
        tile/spot (obs ``sample_id``, ``spot_id`` when present, obsm ``spatial`` = tile centre
        in level-0 px). Tile level with several models averaged (fold models, ensemble
        members) adds ``layers['predicted_sd']``, their spread
        (:meth:`~slide2expr.predict.TrainedHead.predict_tiles_spread`: the folds' calibrated
        SD of ``train.spread: calibrated``, else the models' SD, ``ddof=0``).
        A head with context inputs gets its blocks built on the file's tiles as the heatmap
        builds them (:func:`slide2expr.predict.inputs.model_inputs`; the slide block is the
        tiles' mean).
    level
        ``slide``, ``tile`` or ``auto`` (slide for bulk heads, tile for spot heads).
    fold
        Use only this fold's model.

    Raises
    ------
    InputError
        A model trained on another encoder, a ``head.json`` whose genes do not match the
        network's outputs, NaN weights, NaN feature rows: nothing is written.
    """
    if level not in LEVELS:
        raise InputError(None, f"--level is {level!r}", "use auto, slide or tile")
    models = _Models(Path(model_dir), fold)
    parts: list[_FileRows] = []
    head = None
    for path in features:
        fs = read_features(path)
        sample = str(fs.attrs.sample_id or "") or Path(path).stem
        head, use = models.for_sample(sample)
        check_encoder(head, fs.attrs.encoder, source=path)
        if level == "auto":
            level = "slide" if head.kind == "bulk" else "tile"
        parts.append(_predict_file(head, fs, Path(path), sample=sample, use=use, level=level,
                                   model_dir=model_dir))
        log.info("predicted %s (%d tiles; %s)", sample, len(fs), use)
    adata = _predictions_anndata(parts, head=head, level=level, model_dir=model_dir,
                                 output=output)
    write_predictions(adata, output)
    return adata


@dataclass
class _FileRows:
    """One features file's rows of the predictions."""

    values: np.ndarray
    obs: pd.DataFrame
    #: The models' spread (tile level, several models averaged).
    spread: np.ndarray | None = None
    #: Tile centres, level-0 px (tile level).
    centres: np.ndarray | None = None


def _predict_file(head: TrainedHead, fs: FeatureSet, path: Path, *, sample: str, use: str,
                  level: str, model_dir: Path) -> _FileRows:
    """One file through ``head``: one row for its bag (``level="slide"``), else one a tile
    (its input blocks built on the file's tiles when the head has context inputs)."""
    x = _checked_rows(fs, path)
    if level == "slide":
        return _FileRows(head.predict_bag(x, fs.coords)[None],
                         pd.DataFrame({"sample_id": [sample], "n_tiles": [len(x)],
                                       "model_use": [use]}))
    inputs, _ = model_inputs(head.meta, fs, features_path=path, model_source=model_dir)
    values, spread = head.predict_tiles_spread(x if inputs is None else inputs)
    return _FileRows(values, pd.DataFrame({"sample_id": sample, "spot_id": _spot_ids(fs),
                                           "model_use": use}), spread=spread,
                     centres=fs.coords.astype(np.float64)
                     + float(fs.attrs.tile_px_level0 or 0.0) / 2.0)


def _predictions_anndata(parts: list[_FileRows], *, head: TrainedHead, level: str,
                         model_dir: Path, output: Path) -> Any:
    """The predictions AnnData of every file (see :func:`predict_files`), range-checked."""
    import anndata as ad

    adata = ad.AnnData(X=np.concatenate([p.values for p in parts]).astype(np.float32),
                       obs=_obs([p.obs for p in parts], level),
                       var=pd.DataFrame(index=pd.Index(head.genes)))
    spatial = [p.centres for p in parts if p.centres is not None]
    if spatial:
        adata.obsm[Key.SPATIAL] = np.concatenate(spatial)
    spreads = [p.spread for p in parts]
    if level != "slide" and spreads and all(sd is not None for sd in spreads):
        adata.layers[Key.PREDICTED_SD] = np.concatenate(spreads).astype(np.float32)
    adata.uns[Key.PROVENANCE] = {"model_dir": str(model_dir), "head": head.head,
                                 "level": level, "encoder": str(head.meta.get("encoder"))}
    range_check = check_range(adata.X, head.plausible, head.genes, what=str(output))
    if range_check is not None:
        adata.uns[Key.PROVENANCE]["range_check"] = _json_safe(range_check)
    return adata


def _checked_rows(fs: FeatureSet, path: Path) -> np.ndarray:
    """The file's features as float32, refused when empty or with NaN rows."""
    x = np.asarray(fs.features, dtype=np.float32)
    if x.ndim != 2 or len(x) == 0:
        raise InputError(path, f"has features of shape {x.shape}",
                         "re-run the extract stage; a slide needs at least one tile")
    check_finite_rows(x, source=path)
    return x


def _spot_ids(fs: FeatureSet) -> list[str]:
    """The file's spot IDs, else the tile index as text."""
    if fs.spot_ids is not None:
        return [str(s) for s in fs.spot_ids]
    return [str(i) for i in range(len(fs))]


def _obs(frames: list[pd.DataFrame], level: str) -> pd.DataFrame:
    """One obs table: indexed by sample (slide level) or ``sample:spot`` (tile level)."""
    frame = pd.concat(frames, ignore_index=True)
    index = frame["sample_id"] if level == "slide" else (frame["sample_id"] + ":"
                                                         + frame["spot_id"].astype(str))
    frame.index = index.astype(str)
    return frame


def _json_safe(record: dict) -> dict:
    """``record`` without None values (h5ad cannot store them)."""
    return {k: v for k, v in record.items() if v is not None}
