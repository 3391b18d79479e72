"""The predictions file from the fold results: out-of-fold layers for the head, its
ensemble spread and the baselines, the provenance of training, and the plausible-range
check of every written prediction."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from slide2expr.contracts.predictions import copy_scverse_entries, uns_value
from slide2expr.contracts.predictions import stamp as stamp_predictions
from slide2expr.keys import NOT_HELD_OUT, Key
from slide2expr.train.config import TrainConfig
from slide2expr.train.folds import FoldResult
from slide2expr.train.plausible import RangeCheck
from slide2expr.train.selection import shipped_summary

log = logging.getLogger(__name__)

BASELINE_LAYERS = {"ridge": "baseline_ridge", "hest": "baseline_hest", "mean": "baseline_mean"}


def assemble_predictions(adata: Any, results: list[FoldResult], *, fold: np.ndarray,
                         config: TrainConfig, head: str, provenance: dict) -> Any:
    """The predictions AnnData from the fold results (see the module docstring)."""
    import anndata as ad

    union = np.unique(np.concatenate([r.genes for r in results]))
    column = {g: i for i, g in enumerate(union)}
    n = adata.n_obs
    layers = {"predicted": np.full((n, len(union)), np.nan, dtype=np.float32)}
    for name in config.baselines:
        layers[BASELINE_LAYERS[name]] = np.full((n, len(union)), np.nan, dtype=np.float32)
    if any(r.predicted_sd is not None for r in results):
        layers[Key.PREDICTED_SD] = np.full((n, len(union)), np.nan, dtype=np.float32)
    if config.select != "off":
        layers[Key.PREDICTED_HEAD] = np.full((n, len(union)), np.nan, dtype=np.float32)
    n_folds = np.zeros(len(union), dtype=np.int64)
    train_mean = np.zeros(len(union))
    check = RangeCheck(genes=[str(g) for g in np.asarray(adata.var_names)[union]])
    for r in results:
        cols = np.array([column[g] for g in r.genes])
        n_folds[cols] += 1
        train_mean[cols] += r.train_mean
        rows = r.test_idx[:, None]
        layers[Key.PREDICTED][rows, cols[None, :]] = r.predicted
        if r.predicted_sd is not None:
            layers[Key.PREDICTED_SD][rows, cols[None, :]] = r.predicted_sd
        if Key.PREDICTED_HEAD in layers and r.head_predicted is not None:
            layers[Key.PREDICTED_HEAD][rows, cols[None, :]] = r.head_predicted
        for name, pred in r.baselines.items():
            layers[BASELINE_LAYERS[name]][rows, cols[None, :]] = pred
        if r.plausible is not None:
            head_layer = ([(Key.PREDICTED_HEAD, r.head_predicted)]
                          if Key.PREDICTED_HEAD in layers and r.head_predicted is not None
                          else [])
            for layer, pred in ((Key.PREDICTED, r.predicted), *head_layer,
                                *((BASELINE_LAYERS[n], p) for n, p in r.baselines.items())):
                check.add(str(layer), pred, cols, *r.plausible)
    x = adata.X[:, union]
    x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float32)
    obs = adata.obs.copy()
    obs[Key.FOLD] = fold
    var = adata.var.iloc[union].copy()
    var["n_folds_modelled"] = n_folds
    var["train_mean"] = (train_mean / np.maximum(n_folds, 1)).astype(np.float32)
    out = ad.AnnData(X=x, obs=obs, var=var, layers=layers)
    for key in ("spatial",):
        if key in adata.obsm:
            out.obsm[key] = np.asarray(adata.obsm[key])
    prov = uns_value(provenance)
    prov["train"] = uns_value({
        "head": head, "settings": config.to_dict(),
        "inputs": results[0].info.get("inputs") if results else None,
        "inner_grouping": sorted({str(r.info["inner_grouping"]) for r in results
                                  if "inner_grouping" in r.info}),
        "folds": {f"fold{r.fold}": r.info for r in results},
        "selection": shipped_summary({f"fold{r.fold}": r.info["selection"] for r in results
                                      if "selection" in r.info}, head),
        "held_out_units": int((fold != NOT_HELD_OUT).sum()),
        "range_check": check.record(),
    })
    out.uns[Key.PROVENANCE] = prov
    stamp_predictions(out)
    copy_scverse_entries(adata, out)  # uns['spatial'], uns['log1p']: plots work on predictions
    return out


def warn_implausible(predictions: Any, head: str) -> None:
    """Log one warning when any written prediction lies outside its gene's plausible range."""
    record = predictions.uns[Key.PROVENANCE]["train"]["range_check"]
    parts = [f"{layer}: {v['outside']} of {v['checked']} values in {v['genes_affected']} "
             f"gene(s) (e.g. {', '.join(v['genes'][:3])}), most extreme {v['most_extreme']:.4g}"
             for layer, v in record["layers"].items() if v["outside"]]
    if parts:
        log.warning("%s: predictions outside the plausible range of their gene (%s): %s; kept "
                    "and counted in uns['slide2expr']['train']['range_check']", head,
                    record["rule"], "; ".join(parts))
