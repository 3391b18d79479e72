"""The train stage: cross-validated heads and baselines -> out-of-fold predictions.

Outputs (paths chosen by the caller; the workflow uses these):

- ``results/models/{head}/fold{k}/``: ``best.ckpt`` (Lightning), ``head.safetensors`` and
  ``head.json`` (hyperparameters, gene order, standardisation inside the weights),
  ``metrics.csv`` (per-epoch losses and Pearson r);
- ``results/models/{head}/splits.tsv``: ``unit, sample_id, group, fold``;
- ``results/predictions/{head}.h5ad``: the dataset's obs plus ``obs['fold']``; var = genes
  modelled in at least one fold (dataset order); ``X`` = the targets (log1p CP10k);
  ``var['n_folds_modelled']``, ``var['train_mean']`` (mean over folds of the training-fold
  mean); ``layers['predicted']`` and ``layers['baseline_ridge' | 'baseline_hest' | 'baseline_mean']``
  out-of-fold, ``layers['predicted_sd']`` (the ensemble members' spread, ``train.ensemble``
  > 1 only), NaN where a unit's fold did not model the gene (or a unit was never held
  out, with a ``split`` column); with ``train.select: auto`` ``predicted`` is the shipped
  model's (ridge's in a fold where ridge won the inner selection,
  :mod:`slide2expr.train.selection`) and ``layers['predicted_head']`` the head's own; ``uns['slide2expr']`` = the dataset's provenance plus
  ``train`` (settings, per-fold genes, ridge alpha, epochs, best validation r); the
  dataset's ``uns['spatial']``, ``uns['log1p']``, ``obs['library_id']`` and
  ``var['gene_ids']`` are carried over, so ``sc.pl.spatial`` draws the predictions (a
  layer) on the H&E too.

The stage by job: :mod:`.sources` (the dataset's mode, its feature blocks, the checks),
:mod:`.folds` (one fold: genes, ensemble members of :mod:`.members`, selection, baselines),
:mod:`.assembly` (the predictions file from the fold results); :func:`run_training` runs
them under one atomic write of both outputs. Their public names are importable from here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from slide2expr.atomic import atomic_outputs
from slide2expr.contracts._anndata import write_h5ad
from slide2expr.contracts.models import write_splits
from slide2expr.train.assembly import BASELINE_LAYERS, assemble_predictions, warn_implausible
from slide2expr.train.config import TrainConfig
from slide2expr.train.cv import fold_ids
from slide2expr.train.folds import FoldResult, fit_baselines, select_model, ship_ridge, train_fold
from slide2expr.train.members import configure_determinism, fit_member, quiet_lightning
from slide2expr.train.sources import (
    TrainingInputs,
    check_dataset,
    dataset_mode,
    feature_source,
    spot_blocks,
    spot_key,
    training_inputs,
)

__all__ = [
    "BASELINE_LAYERS",
    "FoldResult",
    "assemble_predictions",
    "configure_determinism",
    "dataset_mode",
    "feature_source",
    "fit_baselines",
    "fit_member",
    "quiet_lightning",
    "run_training",
    "select_model",
    "ship_ridge",
    "spot_blocks",
    "spot_key",
    "train_fold",
    "warn_implausible",
]

log = logging.getLogger(__name__)


def run_training(adata: Any, *, head: str, config: TrainConfig, models_dir: str | Path,
                 predictions_path: str | Path, dataset_path: str | Path | None = None) -> Any:
    """Cross-validate ``head`` and the baselines on ``adata``; write models and predictions.

    Parameters
    ----------
    adata
        The join stage's dataset (see docs/architecture.md).
    head
        A name in :data:`slide2expr.train.heads.HEADS`; its kind must match the dataset's mode.
    config
        Train settings.
    models_dir
        ``results/models/{head}``: fold directories and ``splits.tsv`` (replaced atomically,
        and only if slide2expr made the folder: :func:`slide2expr.atomic.check_replaceable`).
    predictions_path
        ``results/predictions/{head}.h5ad``.
    dataset_path
        Where ``adata`` came from (error messages; relative feature paths).

    Returns
    -------
    anndata.AnnData
        The predictions, as written.

    Raises
    ------
    InputError
        Bad dataset or settings: wrong mode for the head, fewer patient groups than folds, a
        fold without training data, constant targets, missing features.
    """
    src = None if dataset_path is None else str(dataset_path)
    dataset_path = None if dataset_path is None else Path(dataset_path)
    check_dataset(adata, head, src)
    config = config.for_head(head)
    inputs = training_inputs(adata, head=head, config=config, dataset_path=dataset_path)
    # Both outputs appear together or not at all; the models folder replaces an earlier one
    # only if slide2expr made it (checked before training), and one run at a time writes them.
    with atomic_outputs(models_dir, predictions_path) as (tmp_dir, predictions_tmp):
        results = [_train_fold(inputs, k, head=head, config=config, models_dir=tmp_dir,
                               source_path=src)
                   for k in tqdm(fold_ids(inputs.fold), desc=f"training {head}", unit="fold",
                                 disable=None)]
        write_splits(tmp_dir, units=adata.obs_names.astype(str), sample_ids=inputs.sections,
                     groups=inputs.groups, fold=inputs.fold)
        predictions = assemble_predictions(adata, results, fold=inputs.fold, config=config,
                                           head=head, provenance=inputs.provenance)
        warn_implausible(predictions, head)
        write_h5ad(predictions, predictions_tmp)  # uns['spatial'] images compressed
    return predictions


def _train_fold(inputs: TrainingInputs, k: int, *, head: str, config: TrainConfig,
                models_dir: Path, source_path: str | None) -> FoldResult:
    """:func:`train_fold` of fold ``k`` into ``models_dir/fold{k}``, logged."""
    result = train_fold(head=head, config=config, source=inputs.source, x=inputs.x,
                        counts=inputs.counts, var_names=inputs.var_names, groups=inputs.groups,
                        fold=inputs.fold, k=k, fold_dir=models_dir / f"fold{k}",
                        provenance=inputs.provenance, source_path=source_path,
                        sections=inputs.sections, views=inputs.views)
    log.info("fold %d: %d genes, epochs %s, best val r %s, ridge alpha %s",
             k, len(result.genes), result.info["epochs"],
             result.info["best_val_pearson"], result.info.get("ridge_alpha"))
    return result
