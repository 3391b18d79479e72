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
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

import slide2expr.train.baselines as baselines
from slide2expr.atomic import atomic_outputs
from slide2expr.contracts._anndata import write_h5ad
from slide2expr.contracts.models import RIDGE_DIR, write_splits
from slide2expr.contracts.predictions import copy_scverse_entries, uns_value
from slide2expr.contracts.predictions import stamp as stamp_predictions
from slide2expr.errors import InputError
from slide2expr.keys import NOT_HELD_OUT, Key
from slide2expr.predict import predict_batches
from slide2expr.predict.plausible import META_KEY as PLAUSIBLE_KEY
from slide2expr.predict.plausible import bounds_record
from slide2expr.train.config import TrainConfig
from slide2expr.train.cv import (
    assign_folds,
    check_training_units,
    fold_ids,
    group_labels,
    inner_groups,
    inner_split,
)
from slide2expr.train.data import FoldDataModule
from slide2expr.train.features import BagFeatures, SpotFeatures
from slide2expr.train.gene_selection import column_stats, select_training_genes
from slide2expr.train.heads import HEADS, MONITOR, build_head
from slide2expr.train.plausible import RangeCheck, plausible_bounds
from slide2expr.train.save import save_head
from slide2expr.train.scaling import block_widths, near_constant
from slide2expr.train.selection import (
    BLEND,
    RIDGE,
    Selection,
    blend_compared,
    blend_scores,
    inner_score,
    ridge_candidate,
    shared_splits,
    shipped_summary,
)
from slide2expr.train.views import ViewRows, view_rows

log = logging.getLogger(__name__)

BASELINE_LAYERS = {"ridge": "baseline_ridge", "hest": "baseline_hest", "mean": "baseline_mean"}


def dataset_mode(adata: Any) -> str:
    """``"spot"`` or ``"bulk"`` from ``uns['slide2expr']['mode']`` (or ``features_path``)."""
    prov = dict(adata.uns.get("slide2expr", {}))
    mode = prov.get("mode")
    if mode is None:
        mode = "bulk" if "features_path" in adata.obs else "spot"
    return str(mode)


def feature_source(adata: Any, *, config: TrainConfig, dataset_path: Path | None,
                   inputs: list[str] | None = None) -> SpotFeatures | BagFeatures:
    """The features of every unit, checked: an ``obsm`` matrix or the bags' files.

    In spot mode ``inputs`` (default ``config.inputs``) names the blocks concatenated into
    the one matrix every head and baseline of the run receives (:func:`spot_blocks`)."""
    mode = dataset_mode(adata)
    if mode == "bulk":
        if "features_path" not in adata.obs:
            raise InputError(dataset_path, "a bulk-mode dataset has no obs['features_path']",
                             "re-run the join stage")
        # ";"-joined when the join averaged a patient's slides into one unit
        paths = [tuple(_resolve(p, dataset_path) for p in value.split(";"))
                 for value in adata.obs[Key.FEATURES_PATH].astype(str)]
        return BagFeatures(paths, supertiles=config.supertiles, seed=config.seed).scan()
    key = spot_key(adata, config=config, dataset_path=dataset_path)
    return spot_blocks(adata, key, inputs or config.inputs, dataset_path=dataset_path)


def spot_key(adata: Any, *, config: TrainConfig, dataset_path: Path | None) -> str:
    """The ``obsm`` key of the spot embeddings: ``train.features_key``, else ``X_{encoder}``
    of the join's provenance, else the only ``X_*`` matrix."""
    key = config.features_key
    if key is None:
        encoder = dict(adata.uns.get("slide2expr", {})).get("encoder")
        candidates = [k for k in adata.obsm if k.startswith("X_") and k != "X_spatial"
                      and "__" not in k]  # not an augmentation view (keys.Key.view)
        key = f"X_{encoder}" if encoder and f"X_{encoder}" in adata.obsm else (
            candidates[0] if len(candidates) == 1 else None)
    if key is None or key not in adata.obsm:
        raise InputError(dataset_path, f"no feature matrix in obsm (found {list(adata.obsm)})",
                         "set train.features_key, or re-run the join stage with features")
    return key


_BLOCK_FIX = {"ctx": "add the window to tiling.context_um", "nbr": "add the radius to "
              "join.neighbour_um", "slide": "set join.slide_mean: true"}


def spot_blocks(adata: Any, spot_key: str, inputs: list[str], *,
                dataset_path: Path | None) -> SpotFeatures:
    """The blocks ``inputs`` (``spot``, ``ctx{um}``, ``nbr{r}``, ``slide``) concatenated.

    ``spot`` is ``obsm[spot_key]``; another block ``b`` is ``obsm[f"{spot_key}_{b}"]``
    (:meth:`slide2expr.keys.Key.context`).

    Raises
    ------
    InputError
        A block missing from the dataset, or NaN/infinite values.
    """
    matrices, blocks = [], []
    for name in inputs:
        key = spot_key if name == "spot" else f"{spot_key}_{name}"
        if key not in adata.obsm:
            fix = next((v for k, v in _BLOCK_FIX.items() if name.startswith(k)), "re-run join")
            raise InputError(dataset_path, f"train input {name!r} needs obsm[{key!r}], which "
                             f"the dataset lacks (it has {sorted(adata.obsm)})",
                             f"{fix} and re-run the join, or drop {name} from train.inputs")
        matrix = np.asarray(adata.obsm[key], dtype=np.float32)
        if not np.isfinite(matrix).all():
            raise InputError(dataset_path, f"obsm[{key!r}] has NaN or infinite values",
                             "re-run the extract stage")
        matrices.append(matrix)
        blocks.append((name, int(matrix.shape[1])))
    return SpotFeatures(np.concatenate(matrices, axis=1) if len(matrices) > 1 else matrices[0],
                        blocks=blocks)


def _resolve(path: str, dataset_path: Path | None) -> Path:
    p = Path(path)
    if p.is_absolute() or p.exists() or dataset_path is None:
        return p
    beside = dataset_path.parent / p
    return beside if beside.exists() else p


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banner lines and hints; real warnings from our code stay."""
    names = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
             "lightning_fabric.utilities.rank_zero")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning.*")
        warnings.filterwarnings("ignore", message=r".*(srun|LeafSpec|num_workers|does not have "
                                r"many workers|variance of predictions or target).*")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


@dataclass
class FoldResult:
    """What one fold produced."""

    fold: int
    genes: np.ndarray
    test_idx: np.ndarray
    predicted: np.ndarray
    baselines: dict[str, np.ndarray]
    info: dict[str, Any]
    train_mean: np.ndarray
    #: Standard deviation (``ddof=0``) of the ensemble members' predictions; None with one
    #: (or when ridge won the fold's selection).
    predicted_sd: np.ndarray | None = None
    #: Per-gene plausible range of a prediction (:mod:`slide2expr.train.plausible`).
    plausible: tuple[np.ndarray, np.ndarray] | None = None
    #: The head's own held-out predictions (``predicted`` is ridge's when ridge won).
    head_predicted: np.ndarray | None = None
    #: What the fold shipped: the head's name or ``ridge`` (:mod:`slide2expr.train.selection`).
    winner: str = ""


def configure_determinism(seed: int) -> None:
    """Seed everything (workers too) and require deterministic algorithms."""
    import pytorch_lightning as pl
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True)


def fit_member(head: str, hparams: dict, data: Any, *, config: TrainConfig, seed: int,
               out_dir: Path, refit_idx: np.ndarray | None = None) -> dict[str, Any]:
    """Train one head on ``data`` (early stopping on validation r) and predict its test units.

    With ``refit_idx`` (all units of the training fold), a fresh head is then trained on them
    for the best inner model's number of epochs, and that one is kept.
    Writes ``best.ckpt`` and ``metrics.csv`` into ``out_dir``; returns the module (eval
    mode), its predictions in expression units, epochs, best validation r and seconds.
    """
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    configure_determinism(seed)
    module = build_head(head, **hparams)
    module.pearson_weight = config.pearson_weight
    module.set_standardisation(**data.standardisation())
    _fit_bases(module, data)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = ModelCheckpoint(dirpath=out_dir, filename="best", monitor=MONITOR, mode="max",
                                 save_top_k=1, auto_insert_metric_name=False)
    stopper = EarlyStopping(monitor=MONITOR, mode="max", patience=config.patience)
    with quiet_lightning():
        trainer = pl.Trainer(
            max_epochs=config.max_epochs, min_epochs=min(config.min_epochs, config.max_epochs),
            accelerator=config.accelerator, devices=1, deterministic=True,
            callbacks=[checkpoint, stopper], logger=CSVLogger(out_dir, name="", version=""),
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        start = time.perf_counter()
        trainer.fit(module, datamodule=data)
        seconds = time.perf_counter() - start
        best_epoch = int(trainer.current_epoch)
        if checkpoint.best_model_path:
            ckpt = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
            module.load_state_dict(ckpt["state_dict"])
            best_epoch = int(ckpt.get("epoch", best_epoch))
        epochs = int(trainer.current_epoch)
        val_predicted = _predict_validation(trainer, module, data)
        if refit_idx is not None:
            # Same settings, all training-fold units, as many epochs as the best inner model.
            configure_determinism(seed)
            data = data.refit_on(refit_idx)
            module = build_head(head, **hparams)
            module.pearson_weight = config.pearson_weight
            module.set_standardisation(**data.standardisation())
            _fit_bases(module, data)
            trainer = pl.Trainer(
                max_epochs=best_epoch + 1, min_epochs=best_epoch + 1,
                accelerator=config.accelerator, devices=1, deterministic=True,
                logger=CSVLogger(out_dir, name="", version="refit"), limit_val_batches=0,
                enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
            )
            trainer.fit(module, datamodule=data)
            trainer.save_checkpoint(out_dir / "best.ckpt", weights_only=True)
            seconds = time.perf_counter() - start
        # out-of-fold: the held-out units through the network, as prediction runs it
        predicted = predict_batches(module.network, data.predict_dataloader())
        module.eval()
    best = checkpoint.best_model_score
    return {"module": module.cpu(), "predicted": predicted, "val_predicted": val_predicted,
            "epochs": epochs,
            "best_epoch": best_epoch, "best_val_pearson": None if best is None else float(best),
            "seconds": round(seconds, 2),
            "hparams": {k: v for k, v in hparams.items() if k in module.hparams}}


def _predict_validation(trainer: Any, module: Any, data: Any) -> np.ndarray | None:
    """The best inner checkpoint's predictions (expression units) on the inner validation
    units, for model selection; None when there are none."""

    if len(data.val_idx) == 0:
        return None
    module.eval()
    out = predict_batches(module.network, data.val_dataloader())
    module.train()
    return out


def _fit_bases(module: Any, data: Any) -> None:
    """Heads with fixed bases (the context head's input PCA / output basis) fit them on the
    inner training units only."""
    if hasattr(module, "fit_bases") and getattr(data.source, "kind", "") == "spot":
        module.fit_bases(data.source.matrix[data.train_idx], data.targets[data.train_idx])


def train_fold(*, head: str, config: TrainConfig, source: SpotFeatures | BagFeatures,
               x: Any, counts: Any, var_names: np.ndarray, groups: np.ndarray, fold: np.ndarray,
               k: int, fold_dir: Path, provenance: dict, source_path: str | None,
               sections: np.ndarray | None = None, views: ViewRows | None = None) -> FoldResult:
    """Gene selection, head training (``config.ensemble`` seeds, averaged) and baselines for
    fold ``k``; writes ``fold_dir`` (member 0 in it, further members in ``member{m}/``).

    With ``views`` (:mod:`slide2expr.train.views`), the training units' view rows are extra
    training rows (never the held-out units'), and held-out predictions are averaged over
    the test-time views."""
    test_mask = fold == k
    train_mask = ~test_mask
    check_training_units(train_mask, k, source=source_path)
    train_idx = np.flatnonzero(train_mask)
    test_idx = np.flatnonzero(test_mask)

    genes = select_training_genes(x[train_idx], var_names, settings=config.genes,
                                  counts_train=None if counts is None else counts[train_idx],
                                  source=source_path)
    y = x[:, genes]
    y = np.asarray(y.toarray() if sp.issparse(y) else y, dtype=np.float32)
    fit_source, y_fit = (source, y) if views is None else (views.source, views.tile(y))
    rows = (lambda idx: idx) if views is None else views.train_rows
    test_rows = test_idx if views is None else views.test_rows(test_idx)

    sections = groups if sections is None else sections
    inner, grouping = inner_groups(groups[train_idx], sections[train_idx],
                                   group_by=config.group_by)
    val_masks = [inner_split(inner, fraction=config.val_fraction, seed=config.seed + k, member=m)
                 for m in range(config.ensemble)]
    inner_train, inner_val = train_idx[~val_masks[0]], train_idx[val_masks[0]]

    batch_size = config.batch_size if source.kind == "spot" else config.bag_batch_size
    hparams = {"in_dim": source.dim, "n_genes": len(genes), "hidden": config.hidden,
               "dropout": config.dropout, "input_dropout": config.input_dropout, "lr": config.lr,
               "weight_decay": config.weight_decay, "ks": list(config.he2rna_ks),
               "attention_dim": config.attention_dim, "aux_weight": config.aux_weight,
               "input_pca": config.input_pca, "output_rank": config.output_rank,
               "blocks": [dim for _, dim in getattr(source, "blocks", [])] or None}
    gene_names = [str(g) for g in var_names[genes]]
    plausible = plausible_bounds(y[train_idx])
    input_names = [name for name, _ in getattr(source, "blocks", [])] or None
    members = []
    for m in range(config.ensemble):
        seed = config.seed + k + 1000 * m
        inner_train, inner_val = train_idx[~val_masks[m]], train_idx[val_masks[m]]
        data = FoldDataModule(fit_source, y_fit, train_idx=rows(inner_train), val_idx=inner_val,
                              test_idx=test_rows, batch_size=batch_size,
                              max_tiles=config.max_tiles, seed=seed,
                              num_workers=config.num_workers)
        member_dir = fold_dir if m == 0 else fold_dir / f"member{m}"
        members.append(fit_member(head, hparams, data, config=config, seed=seed,
                                  out_dir=member_dir,
                                  refit_idx=rows(train_idx) if config.refit else None))
        members[-1]["dir"] = member_dir
        members[-1]["meta"] = {
            "head": head, "hparams": members[-1]["hparams"], "genes": gene_names, "fold": k,
            "member": m, "mode": source.kind, "encoder": provenance.get("encoder"),
            "supertiles": config.supertiles, "seed": seed, "inputs": input_names,
            "best_val_pearson": members[-1]["best_val_pearson"],
            "epochs": members[-1]["epochs"], "best_epoch": members[-1]["best_epoch"],
            "refit": config.refit,
            "train_units": len(train_idx) if config.refit else len(inner_train),
            "val_units": len(inner_val),
            PLAUSIBLE_KEY: bounds_record(*plausible),
        }
    inner_all = np.empty(len(groups), dtype=object)
    inner_all[train_idx] = inner
    selection = select_model(head, config, members, fit_source, y_fit, y,
                             splits=[(train_idx[~v], train_idx[v]) for v in val_masks],
                             inner_all=inner_all, rows=rows,
                             blend=blend_compared(config.select_blend, grouping,
                                                  config.group_by))
    for mem in members:
        save_head(mem["module"], mem["dir"], meta={**mem["meta"],
                                                   "selection": selection.record()})
    stacked = np.stack([mem["predicted"] for mem in members])
    if views is not None:  # each member's mean over the clean and TTA rows of a held-out unit
        stacked = np.stack([views.average(p, len(test_idx)) for p in stacked])
    predicted = stacked.mean(axis=0)
    predicted_sd = stacked.std(axis=0) if len(members) > 1 else None
    info: dict[str, Any] = {
        "fold": k, "n_train": len(inner_train), "n_val": len(inner_val), "n_test": len(test_idx),
        "genes": gene_names, "epochs": [mem["epochs"] for mem in members],
        "best_epoch": [mem["best_epoch"] for mem in members],
        "best_val_pearson": [mem["best_val_pearson"] for mem in members],
        "seconds": round(sum(mem["seconds"] for mem in members), 2),
        "inner_grouping": grouping,
        "inputs": input_names,
        "augment_views": list(views.train_views) if views is not None else [],
        "tta_views": list(views.tta_views) if views is not None else [],
        "near_constant_features": int(near_constant(
            fit_source.moments(rows(train_idx))[1], block_widths(fit_source)).sum()),
        "selection": selection.record(),
    }

    # ridge's alpha is chosen with the same inner grouping as early stopping
    out_baselines = fit_baselines(config, fit_source, y_fit, train_idx=rows(train_idx),
                                  test_idx=test_rows,
                                  groups=inner_all if views is None else views.tile(inner_all),
                                  k=k, info=info)
    if views is not None:
        out_baselines = {n: views.average(p, len(test_idx)).astype(np.float32)
                         for n, p in out_baselines.items()}
    head_predicted = predicted
    if selection.winner in (RIDGE, BLEND):
        ridge_pred, ridge_fit = ship_ridge(config, fit_source, y_fit, train_idx=rows(train_idx),
                                           test_idx=test_rows, alpha=info.get("ridge_alpha"),
                                           groups=inner_all if views is None
                                           else views.tile(inner_all),
                                           fold_dir=fold_dir, meta=members[0]["meta"],
                                           selection=selection)
        ridge_pred = ridge_pred if views is None else views.average(ridge_pred, len(test_idx))
        if selection.winner == RIDGE:
            predicted, predicted_sd = ridge_pred, None  # one model: no members' spread
        else:
            predicted, predicted_sd = blended(stacked, ridge_pred, selection.blend_weight)
        predicted = predicted.astype(np.float32)
        info["ridge_model"] = ridge_fit
    return FoldResult(fold=k, genes=genes, test_idx=test_idx, predicted=predicted,
                      baselines=out_baselines, info=info,
                      train_mean=y[train_idx].astype(np.float64).mean(axis=0),
                      predicted_sd=predicted_sd, head_predicted=head_predicted,
                      winner=selection.winner, plausible=plausible)


def select_model(head: str, config: TrainConfig, members: list[dict[str, Any]],
                 source: SpotFeatures | BagFeatures, y_fit: np.ndarray, y: np.ndarray, *,
                 splits: list[tuple[np.ndarray, np.ndarray]], inner_all: np.ndarray,
                 rows: Any, blend: bool = True) -> Selection:
    """Score the head (the best inner checkpoints of the members that share a validation
    split, averaged) and ridge on the same inputs on every distinct inner validation split
    (:mod:`slide2expr.train.selection`).

    Only training-fold units are read: ``splits`` are the members' (inner training,
    inner validation) unit indices, all inside the fold's training units. With ``blend``
    the blend of the two is scored too (:func:`~slide2expr.train.selection.blend_compared`).
    """
    selection = Selection(head=head, mode=config.select)
    if config.select == "off":
        return selection
    usable = [m for m, mem in enumerate(members)
              if mem.get("val_predicted") is not None and len(splits[m][1])]
    for group in shared_splits([splits[m][1] for m in usable]):
        inner_train, inner_val = splits[usable[group[0]]]
        head_val = np.mean([members[usable[i]]["val_predicted"] for i in group], axis=0)
        groups_val = inner_all[inner_val]
        selection.head_scores.append(inner_score(head_val, y[inner_val], groups_val))
        tr = rows(inner_train)
        score, alpha, ridge_val = ridge_candidate(
            source.pooled(tr), y_fit[tr], source.pooled(inner_val), y[inner_val], groups_val,
            alphas=config.ridge_alphas, blocks=block_widths(source))
        selection.ridge_scores.append(score)
        selection.ridge_alphas.append(alpha)
        if blend:
            selection.blend_member_scores.append(
                blend_scores(head_val, ridge_val, y[inner_val], groups_val))
    log.info("selection (%s): inner score %s %.4f, blend %.4f (ridge weight %s), ridge %.4f "
             "-> %s", config.select, head, selection.head_score, selection.blend_score,
             selection.blend_weight, selection.ridge_score, selection.winner)
    return selection


def blended(stacked: np.ndarray, ridge: np.ndarray, weight: float
            ) -> tuple[np.ndarray, np.ndarray]:
    """The blend's prediction and spread from the head members' predictions ``stacked``
    ``(M, n, G)`` and ridge's ``(n, G)``: each member weighs ``(1 - weight) / M``, ridge
    ``weight``; the spread is the weighted SD of the models around that mean (what
    :meth:`slide2expr.predict.TrainedHead.predict_tiles_spread` computes for a blend fold)."""
    models = np.concatenate([stacked, ridge[None]]).astype(np.float64)
    weights = np.append(np.full(len(stacked), (1.0 - weight) / len(stacked)), weight)
    mean = np.tensordot(weights, models, axes=1)
    spread = np.sqrt(np.maximum(np.tensordot(weights, models ** 2, axes=1) - mean ** 2, 0.0))
    return mean.astype(np.float32), spread.astype(np.float32)


def ship_ridge(config: TrainConfig, source: SpotFeatures | BagFeatures, y: np.ndarray, *,
               train_idx: np.ndarray, test_idx: np.ndarray, alpha: float | None,
               groups: np.ndarray, fold_dir: Path, meta: dict[str, Any], selection: Selection
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """Ridge or the blend won the fold's selection: fit ridge on the whole training fold
    (the ridge baseline's alpha), save it as a linear network in ``fold_dir/ridge/`` (what
    :func:`~slide2expr.predict.load_trained_head` loads for this fold: alone, or with the
    head's members when its ``head.json`` says ``model: blend`` and gives ``blend_weight``),
    and return its held-out predictions and a record of it."""
    x_train = source.pooled(train_idx)
    if alpha is None:  # ridge not among the baselines: choose alpha as the baseline would
        alpha, _ = baselines.choose_alpha(x_train, y[train_idx], groups[train_idx],
                                          config.ridge_alphas, seed=config.seed,
                                          blocks=block_widths(source))
    net = baselines.ridge_network(x_train, y[train_idx], alpha=float(alpha),
                                  blocks=block_widths(source))
    ridge_meta = {**meta, "head": "mlp", "hparams": net.hparams, "member": 0,
                  "selection": selection.record(), "model": selection.winner,
                  "blend_weight": selection.blend_weight if selection.winner == BLEND else None,
                  "ridge_alpha": float(alpha),
                  "epochs": 0, "best_epoch": 0, "best_val_pearson": None}
    save_head(net, fold_dir / RIDGE_DIR, meta=ridge_meta)
    predicted = baselines.ridge_predict(net, source.pooled(test_idx))
    return predicted, {"alpha": float(alpha), "dir": RIDGE_DIR}


def fit_baselines(config: TrainConfig, source: SpotFeatures | BagFeatures, y: np.ndarray, *,
                  train_idx: np.ndarray, test_idx: np.ndarray, groups: np.ndarray, k: int,
                  info: dict[str, Any]) -> dict[str, np.ndarray]:
    """The configured baselines (ridge, HEST, mean) of fold ``k`` on pooled features; the
    ridge alpha chosen by grouped inner CV is recorded in ``info``."""

    pooled_train = source.pooled(train_idx)
    pooled_test = source.pooled(test_idx)
    blocks = block_widths(source)
    info["near_constant_baseline_features"] = int(
        near_constant(pooled_train.std(axis=0), blocks).sum())
    out: dict[str, np.ndarray] = {}
    for name in config.baselines:
        if name == "ridge":
            pred, alpha = baselines.ridge_baseline(
                pooled_train, y[train_idx], pooled_test, groups[train_idx],
                alphas=config.ridge_alphas, seed=config.seed + k, blocks=blocks)
            info["ridge_alpha"] = alpha
        elif name == "hest":
            pred = baselines.hest_baseline(pooled_train, y[train_idx], pooled_test,
                                           n_components=config.hest_pca, seed=config.seed,
                                           blocks=blocks)
        else:
            pred = baselines.mean_baseline(y[train_idx], len(test_idx))
        out[name] = pred.astype(np.float32)
    return out


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
    _check_dataset(adata, head, src)
    config = config.for_head(head)
    provenance = dict(adata.uns.get("slide2expr", {}))
    groups = group_labels(adata.obs, config.group_by, source=src)
    split = adata.obs[Key.SPLIT] if "split" in adata.obs else None
    fold = assign_folds(groups, config.folds, seed=config.seed, split=split, source=src)
    x = adata.X
    counts = adata.layers[Key.COUNTS] if "counts" in adata.layers else None
    var_names = np.asarray(adata.var_names.astype(str))
    _check_targets(x, src)
    source = feature_source(adata, config=config, dataset_path=dataset_path,
                            inputs=config.inputs_for(head))
    views = None
    if source.kind == "spot" and (config.augment_views or config.tta):
        views = view_rows(adata, source, spot_key(adata, config=config, dataset_path=dataset_path),
                          config.inputs_for(head), augment=config.augment_views, tta=config.tta,
                          dataset_path=dataset_path)
    sections = adata.obs[Key.SAMPLE_ID].astype(str).to_numpy()

    results: list[FoldResult] = []
    # Both outputs appear together or not at all; the models folder replaces an earlier one
    # only if slide2expr made it (checked before training), and one run at a time writes them.
    with atomic_outputs(models_dir, predictions_path) as (tmp_dir, predictions_tmp):
        for k in tqdm(fold_ids(fold), desc=f"training {head}", unit="fold", disable=None):
            result = train_fold(head=head, config=config, source=source, x=x, counts=counts,
                                var_names=var_names, groups=groups, fold=fold, k=k,
                                fold_dir=tmp_dir / f"fold{k}", provenance=provenance,
                                source_path=src, sections=sections, views=views)
            results.append(result)
            log.info("fold %d: %d genes, epochs %s, best val r %s, ridge alpha %s",
                     k, len(result.genes), result.info["epochs"],
                     result.info["best_val_pearson"], result.info.get("ridge_alpha"))
        write_splits(tmp_dir, units=adata.obs_names.astype(str),
                     sample_ids=adata.obs[Key.SAMPLE_ID].astype(str).to_numpy(),
                     groups=groups, fold=fold)
        predictions = assemble_predictions(adata, results, fold=fold, config=config,
                                           head=head, provenance=provenance)
        warn_implausible(predictions, head)
        write_h5ad(predictions, predictions_tmp)  # uns['spatial'] images compressed
    return predictions


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


def _check_dataset(adata: Any, head: str, src: str | None) -> None:
    """Refuse an unknown head, a head of the other mode, or a dataset too small to split."""
    if head not in HEADS:
        raise InputError(None, f"unknown head {head!r}", f"use one of {sorted(HEADS)}")
    mode = dataset_mode(adata)
    if HEADS[head].kind != mode:
        raise InputError(src, f"head {head!r} is for {HEADS[head].kind} mode but the dataset "
                         f"is {mode} mode", "use mlp for spot mode, he2rna or abmil for bulk")
    if "sample_id" not in adata.obs:
        raise InputError(src, "obs has no 'sample_id' column", "re-run the join stage")
    if adata.n_obs < 2 or adata.n_vars < 1:
        raise InputError(src, f"has {adata.n_obs} units and {adata.n_vars} genes",
                         "join more samples")


def _check_targets(x: Any, src: str | None) -> None:
    _, var, _ = column_stats(x)
    if not (var > 0).any():
        raise InputError(src, "all target genes are constant across units",
                         "check the counts: a model cannot learn constant expression")


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
