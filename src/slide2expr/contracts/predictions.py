"""The train stage's out-of-fold predictions: ``predictions/{head}.h5ad``.

Contract: the dataset's ``obs`` (units) and ``var`` (the union of the genes the folds
predicted, with ``n_folds_modelled`` and ``train_mean``); ``X`` = the measured values (the
dataset's X), ``layers['predicted']`` (the head's out-of-fold predictions, NaN where no fold
predicted a gene), ``layers['predicted_sd']`` (:attr:`~slide2expr.keys.Key.PREDICTED_SD`;
only with ``train.ensemble > 1``, NaN in folds that shipped ridge alone: with
``train.spread: calibrated``, the default, the fold's spread model of
:mod:`slide2expr.train.spread`, calibrated on its inner validation units so that
``predicted +- 2 SD`` covers 95% of them, recorded in
``uns['slide2expr']['train']['folds'][...]['spread']`` and ``head.json``; with
``train.spread: members`` the standard deviation, ``ddof=0``, of the fold's ensemble
members' predictions around ``predicted``, so two members at ``m - d`` and ``m + d`` give
``d``; absent with one member per fold), ``layers['baseline_{name}']`` (ridge, hest, mean), ``obs['fold']`` (the fold
that held the unit out, :data:`~slide2expr.keys.NOT_HELD_OUT` for training-only units),
``obsm['spatial']`` in spot mode, and ``uns['slide2expr']`` provenance (head, config, folds).
``slide2expr predict`` writes the same layout for new slides (``X`` = predictions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.contracts._anndata import read_anndata, write_anndata
from slide2expr.contracts._h5 import FORMAT_ATTR, check_format, format_stamp
from slide2expr.errors import InputError
from slide2expr.keys import Key

FIX = "pass results/predictions/{head}.h5ad written by `slide2expr train`"
CONTRACT = "predictions"
VERSION = "1"


def read_predictions(path: str | Path, *, need: tuple[str, ...] = (Key.FOLD,)) -> Any:
    """Read and check a predictions file.

    Parameters
    ----------
    path
        The ``.h5ad``.
    need
        ``obs``/``obsm`` keys the caller needs besides ``layers['predicted']`` and
        ``obs['sample_id']`` (e.g. ``spatial`` for spot maps).

    Returns
    -------
    anndata.AnnData
        Without the H&E images of ``uns['spatial']`` (each library's ``images`` is ``{}``):
        no reader of predictions needs them (``slide2expr export`` reads the file itself).

    Raises
    ------
    InputError
        If the file is unreadable, lacks what is needed, or is empty.
    """
    adata = read_anndata(path, what="predictions file", fix=FIX, images=False)
    check_format(path, dict(adata.uns.get(Key.PROVENANCE, {})), CONTRACT, (VERSION,))
    if Key.PREDICTED not in adata.layers:
        raise InputError(path, "has no layers['predicted']",
                         "pass the predictions file of `slide2expr train`, not the dataset")
    for key in (Key.SAMPLE_ID, *need):
        where = "obsm" if key == Key.SPATIAL else "obs"
        present = key in (adata.obsm if where == "obsm" else adata.obs)
        if not present:
            raise InputError(path, f"has no {where}['{key}']", "re-run `slide2expr train`")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise InputError(path, f"is empty ({adata.n_obs} units x {adata.n_vars} genes)",
                         "check the train stage's log")
    return adata


def write_predictions(adata: Any, path: str | Path) -> Path:
    """Write a predictions file atomically, stamped ``predictions/1``."""
    stamp(adata)
    return write_anndata(adata, path)


def stamp(adata: Any) -> None:
    """Stamp ``uns['slide2expr']`` as this contract (replacing the dataset's stamp)."""
    prov = dict(adata.uns.get(Key.PROVENANCE, {}))
    prov.pop(FORMAT_ATTR, None)
    adata.uns[Key.PROVENANCE] = {**format_stamp(CONTRACT, VERSION), **prov}


def uns_value(value: Any) -> Any:
    """A value storable in ``uns``: no ``None``, sequences as homogeneous arrays (strings or
    float64) or, when mixed, as a dict keyed by position."""
    if isinstance(value, dict):
        return {str(k): uns_value(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        items = [uns_value(v) for v in value if v is not None]
        if all(isinstance(v, str) for v in items):
            return np.asarray(items, dtype=object) if items else np.zeros(0)
        if all(isinstance(v, int | float | bool) for v in items):
            return np.asarray(items, dtype=np.float64)
        return {str(i): v for i, v in enumerate(items)}
    if isinstance(value, np.generic):
        return value.item()
    return value


def copy_scverse_entries(source: Any, target: Any) -> None:
    """Carry ``uns['spatial']`` and ``uns['log1p']`` from a dataset to a file derived from it."""
    for key in (Key.SPATIAL_UNS, Key.LOG1P):
        if key in source.uns:
            target.uns[key] = source.uns[key]
