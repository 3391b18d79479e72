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
    """The predictions AnnData from the fold results (see :mod:`slide2expr.train.run`)."""
    import anndata as ad

    union = np.unique(np.concatenate([r.genes for r in results]))
    layers = _empty_layers(results, n_units=adata.n_obs, n_genes=len(union), config=config)
    check = RangeCheck(genes=[str(g) for g in np.asarray(adata.var_names)[union]])
    n_folds, train_mean = _fill_layers(layers, results, union, check)
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
    prov["train"] = _train_record(results, fold=fold, config=config, head=head, check=check)
    out.uns[Key.PROVENANCE] = prov
    stamp_predictions(out)
    copy_scverse_entries(adata, out)  # uns['spatial'], uns['log1p']: plots work on predictions
    return out


def _empty_layers(results: list[FoldResult], *, n_units: int, n_genes: int,
                  config: TrainConfig) -> dict[str, np.ndarray]:
    """NaN layers for the head, its spread, its own predictions and each baseline."""
    names = [Key.PREDICTED, *(BASELINE_LAYERS[name] for name in config.baselines)]
    if any(r.predicted_sd is not None for r in results):
        names.append(Key.PREDICTED_SD)
    if config.select != "off":
        names.append(Key.PREDICTED_HEAD)
    return {str(name): np.full((n_units, n_genes), np.nan, dtype=np.float32) for name in names}


def _fill_layers(layers: dict[str, np.ndarray], results: list[FoldResult], union: np.ndarray,
                 check: RangeCheck) -> tuple[np.ndarray, np.ndarray]:
    """Each fold's held-out predictions into ``layers`` (columns: ``union``), checked
    against the fold's plausible ranges; returns the folds modelling each gene and the sum
    of their training means."""
    column = {g: i for i, g in enumerate(union)}
    n_folds = np.zeros(len(union), dtype=np.int64)
    train_mean = np.zeros(len(union))
    for r in results:
        cols = np.array([column[g] for g in r.genes])
        n_folds[cols] += 1
        train_mean[cols] += r.train_mean
        written = _fold_layers(r, layers)
        for layer, pred in written:
            layers[layer][r.test_idx[:, None], cols[None, :]] = pred
        if r.plausible is not None:
            for layer, pred in written:
                if layer != Key.PREDICTED_SD:
                    check.add(str(layer), pred, cols, *r.plausible)
    return n_folds, train_mean


def _fold_layers(r: FoldResult, layers: dict[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    """``(layer, predictions)`` of one fold, for the layers it fills."""
    out = [(str(Key.PREDICTED), r.predicted)]
    if r.predicted_sd is not None:
        out.append((str(Key.PREDICTED_SD), r.predicted_sd))
    if Key.PREDICTED_HEAD in layers and r.head_predicted is not None:
        out.append((str(Key.PREDICTED_HEAD), r.head_predicted))
    out += [(BASELINE_LAYERS[name], pred) for name, pred in r.baselines.items()]
    return out


def _train_record(results: list[FoldResult], *, fold: np.ndarray, config: TrainConfig,
                  head: str, check: RangeCheck) -> dict[str, Any]:
    """``uns['slide2expr']['train']``: settings, inputs, per-fold records, selection, range
    check."""
    return uns_value({
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
