"""One cross-validation fold: genes chosen on its training units, the head's ensemble
members, the inner selection between the head and ridge, and the baselines."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

import slide2expr.train.baselines as baselines
from slide2expr.contracts.models import RIDGE_DIR, SPREAD_KEY
from slide2expr.predict.plausible import META_KEY as PLAUSIBLE_KEY
from slide2expr.predict.plausible import bounds_record
from slide2expr.train.config import TrainConfig
from slide2expr.train.cv import check_training_units, inner_groups, inner_split
from slide2expr.train.data import FoldDataModule
from slide2expr.train.features import BagFeatures, SpotFeatures
from slide2expr.train.gene_selection import select_training_genes
from slide2expr.train.members import fit_member
from slide2expr.train.plausible import plausible_bounds
from slide2expr.train.save import save_head
from slide2expr.train.scaling import block_widths, near_constant
from slide2expr.train.selection import (
    BLEND,
    RIDGE,
    Selection,
    blend_compared,
    ridge_candidate,
    shared_splits,
)
from slide2expr.train.spread import (
    InnerValidation,
    SpreadModel,
    calibrate,
    member_sd,
    spread_terms,
)
from slide2expr.train.views import ViewRows

log = logging.getLogger(__name__)


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


@dataclass
class FoldUnits:
    """The units of fold ``k``, its genes and targets, and the rows heads and baselines fit on.

    With augmentation views (:mod:`slide2expr.train.views`) the fitted matrix holds a unit's
    view rows beside its own: :meth:`rows` maps training units to their rows,
    :attr:`test_rows` the held-out units to theirs, :meth:`held_out` averages predictions of
    those rows back to one per held-out unit.
    """

    k: int
    source: SpotFeatures | BagFeatures
    train_idx: np.ndarray
    test_idx: np.ndarray
    genes: np.ndarray
    gene_names: list[str]
    #: Targets of every unit, the fold's genes only (float32).
    y: np.ndarray
    #: The inner group (patient or section) of each training unit; None elsewhere.
    inner_all: np.ndarray
    inner_grouping: str
    #: One inner-validation mask over the training units per ensemble member.
    val_masks: list[np.ndarray]
    views: ViewRows | None = None

    @cached_property
    def fit_source(self) -> SpotFeatures | BagFeatures:
        return self.source if self.views is None else self.views.source

    @cached_property
    def y_fit(self) -> np.ndarray:
        return self.y if self.views is None else self.views.tile(self.y)

    @cached_property
    def fit_groups(self) -> np.ndarray:
        return self.inner_all if self.views is None else self.views.tile(self.inner_all)

    @cached_property
    def test_rows(self) -> np.ndarray:
        return self.test_idx if self.views is None else self.views.test_rows(self.test_idx)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The fitted rows of the training units ``idx``."""
        return idx if self.views is None else self.views.train_rows(idx)

    def held_out(self, predicted: np.ndarray) -> np.ndarray:
        """Predictions of :attr:`test_rows` as one row per held-out unit."""
        return predicted if self.views is None else self.views.average(predicted,
                                                                        len(self.test_idx))

    def inner_split(self, member: int) -> tuple[np.ndarray, np.ndarray]:
        """Member ``member``'s (inner training, inner validation) units."""
        mask = self.val_masks[member]
        return self.train_idx[~mask], self.train_idx[mask]


def fold_units(*, config: TrainConfig, source: SpotFeatures | BagFeatures, x: Any, counts: Any,
               var_names: np.ndarray, groups: np.ndarray, sections: np.ndarray,
               fold: np.ndarray, k: int, source_path: str | None,
               views: ViewRows | None) -> FoldUnits:
    """Fold ``k``'s units, genes chosen on its training units, and its inner splits."""
    test_mask = fold == k
    check_training_units(~test_mask, k, source=source_path)
    train_idx, test_idx = np.flatnonzero(~test_mask), np.flatnonzero(test_mask)
    genes = select_training_genes(x[train_idx], var_names, settings=config.genes,
                                  counts_train=None if counts is None else counts[train_idx],
                                  source=source_path)
    y = x[:, genes]
    y = np.asarray(y.toarray() if sp.issparse(y) else y, dtype=np.float32)
    inner, grouping = inner_groups(groups[train_idx], sections[train_idx],
                                   group_by=config.group_by)
    val_masks = [inner_split(inner, fraction=config.val_fraction, seed=config.seed + k, member=m)
                 for m in range(config.ensemble)]
    inner_all = np.empty(len(groups), dtype=object)
    inner_all[train_idx] = inner
    return FoldUnits(k=k, source=source, train_idx=train_idx, test_idx=test_idx, genes=genes,
                     gene_names=[str(g) for g in var_names[genes]], y=y, inner_all=inner_all, inner_grouping=grouping, val_masks=val_masks,
                     views=views)


def input_names(source: SpotFeatures | BagFeatures) -> list[str] | None:
    """The input blocks of a spot source, in order; None for bags."""
    return [name for name, _ in getattr(source, "blocks", [])] or None


def head_hparams(config: TrainConfig, source: SpotFeatures | BagFeatures,
                 n_genes: int) -> dict[str, Any]:
    """The hyperparameters every head is built with (each keeps those it takes)."""
    return {"in_dim": source.dim, "n_genes": n_genes, "hidden": config.hidden,
            "dropout": config.dropout, "input_dropout": config.input_dropout, "lr": config.lr,
            "weight_decay": config.weight_decay, "ks": list(config.he2rna_ks),
            "attention_dim": config.attention_dim, "aux_weight": config.aux_weight,
            "input_pca": config.input_pca, "output_rank": config.output_rank,
            "blocks": [dim for _, dim in getattr(source, "blocks", [])] or None}


def train_members(head: str, config: TrainConfig, units: FoldUnits, *, fold_dir: Path,
                  provenance: dict, plausible: tuple[np.ndarray, np.ndarray]
                  ) -> list[dict[str, Any]]:
    """``config.ensemble`` heads of fold ``units.k``, one seed and inner split each (member 0
    in ``fold_dir``, further members in ``member{m}/``), with the meta each will save."""
    source = units.source
    batch_size = config.batch_size if source.kind == "spot" else config.bag_batch_size
    hparams = head_hparams(config, source, len(units.genes))
    members = []
    for m in range(config.ensemble):
        seed = config.seed + units.k + 1000 * m
        inner_train, inner_val = units.inner_split(m)
        data = FoldDataModule(units.fit_source, units.y_fit, train_idx=units.rows(inner_train),
                              val_idx=inner_val, test_idx=units.test_rows,
                              batch_size=batch_size, max_tiles=config.max_tiles, seed=seed,
                              num_workers=config.num_workers)
        member_dir = fold_dir if m == 0 else fold_dir / f"member{m}"
        member = fit_member(head, hparams, data, config=config, seed=seed, out_dir=member_dir,
                            refit_idx=units.rows(units.train_idx) if config.refit else None)
        member["dir"] = member_dir
        member["meta"] = {
            "head": head, "hparams": member["hparams"],
            "genes": units.gene_names, "fold": units.k,
            "member": m, "mode": source.kind, "encoder": provenance.get("encoder"),
            "supertiles": config.supertiles, "seed": seed, "inputs": input_names(source),
            "best_val_pearson": member["best_val_pearson"],
            "epochs": member["epochs"], "best_epoch": member["best_epoch"],
            "refit": config.refit,
            "train_units": len(units.train_idx) if config.refit else len(inner_train),
            "val_units": len(inner_val),
            PLAUSIBLE_KEY: bounds_record(*plausible),
        }
        members.append(member)
    return members


def held_out_predictions(members: list[dict[str, Any]], units: FoldUnits) -> np.ndarray:
    """The members' held-out predictions ``(M, n, G)``; with test-time views, each member's
    mean over a unit's rows."""
    stacked = np.stack([mem["predicted"] for mem in members])
    if units.views is not None:
        stacked = np.stack([units.held_out(p) for p in stacked])
    return stacked


def _ship_ridge_or_blend(units: FoldUnits, stacked: np.ndarray, *, fold_dir: Path,
                         alpha: float, meta: dict[str, Any], selection: Selection
                         ) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any], np.ndarray]:
    """Ridge or the blend won the fold's selection: ridge fitted on the whole training fold
    and saved (:func:`ship_ridge`); returns the shipped held-out predictions, their spread
    (None for ridge alone: one model), the record of ridge and ridge's held-out
    predictions."""
    ridge_pred, ridge_fit = ship_ridge(
        units.fit_source, units.y_fit, train_idx=units.rows(units.train_idx),
        test_idx=units.test_rows, alpha=alpha, fold_dir=fold_dir, meta=meta,
        selection=selection)
    ridge_pred = units.held_out(ridge_pred)
    if selection.winner == RIDGE:
        predicted, predicted_sd = ridge_pred, None
    else:
        predicted, predicted_sd = blended(stacked, ridge_pred, selection.blend_weight)
    return predicted.astype(np.float32), predicted_sd, ridge_fit, ridge_pred


def fold_info(units: FoldUnits, members: list[dict[str, Any]],
              selection: Selection) -> dict[str, Any]:
    """The fold's record in the predictions' provenance (``uns['slide2expr']['train']``)."""
    views = units.views
    inner_train, inner_val = units.inner_split(len(members) - 1)
    return {
        "fold": units.k, "n_train": len(inner_train), "n_val": len(inner_val),
        "n_test": len(units.test_idx),
        "genes": units.gene_names, "epochs": [mem["epochs"] for mem in members],
        "best_epoch": [mem["best_epoch"] for mem in members],
        "best_val_pearson": [mem["best_val_pearson"] for mem in members],
        "seconds": round(sum(mem["seconds"] for mem in members), 2),
        "inner_grouping": units.inner_grouping,
        "inputs": input_names(units.source),
        "augment_views": list(views.train_views) if views is not None else [],
        "tta_views": list(views.tta_views) if views is not None else [],
        "near_constant_features": int(near_constant(
            units.fit_source.moments(units.rows(units.train_idx))[1],
            block_widths(units.fit_source)).sum()),
        "selection": selection.record(),
    }


def fold_baselines(config: TrainConfig, units: FoldUnits, info: dict[str, Any], *,
                   alpha: float | None = None) -> dict[str, np.ndarray]:
    """:func:`fit_baselines` on the fold's fitted rows, one prediction per held-out unit;
    ridge at the fold's ``alpha`` (:func:`fold_ridge_alpha`)."""
    out = fit_baselines(config, units.fit_source, units.y_fit,
                        train_idx=units.rows(units.train_idx), test_idx=units.test_rows,
                        groups=units.fit_groups, k=units.k, info=info, alpha=alpha)
    if units.views is None:
        return out
    return {n: units.held_out(p).astype(np.float32) for n, p in out.items()}


def train_fold(*, head: str, config: TrainConfig, source: SpotFeatures | BagFeatures,
               x: Any, counts: Any, var_names: np.ndarray, groups: np.ndarray, fold: np.ndarray,
               k: int, fold_dir: Path, provenance: dict, source_path: str | None,
               sections: np.ndarray | None = None, views: ViewRows | None = None) -> FoldResult:
    """Gene selection, head training (``config.ensemble`` seeds, averaged) and baselines for
    fold ``k``; writes ``fold_dir`` (member 0 in it, further members in ``member{m}/``).

    With ``views`` (:mod:`slide2expr.train.views`), the training units' view rows are extra
    training rows (never the held-out units'), and held-out predictions are averaged over
    the test-time views."""
    units = fold_units(config=config, source=source, x=x, counts=counts, var_names=var_names,
                       groups=groups, sections=groups if sections is None else sections,
                       fold=fold, k=k, source_path=source_path, views=views)
    plausible = plausible_bounds(units.y[units.train_idx])
    members = train_members(head, config, units, fold_dir=fold_dir, provenance=provenance,
                            plausible=plausible)
    splits = [units.inner_split(m) for m in range(len(members))]
    alpha = fold_ridge_alpha(config, units)
    selection = select_model(head, config, members, units.fit_source, units.y_fit, units.y,
                             splits=splits, inner_all=units.inner_all, rows=units.rows,
                             blend=blend_compared(config.select_blend, units.inner_grouping,
                                                  config.group_by), alpha=alpha)
    spread_model = fold_spread_model(config, members, units, selection, splits, alpha=alpha)
    for mem in members:
        if spread_model is not None:
            mem["meta"][SPREAD_KEY] = spread_model.record()
        save_head(mem["module"], mem["dir"], meta={**mem["meta"],
                                                   "selection": selection.record()})
    stacked = held_out_predictions(members, units)
    predicted = stacked.mean(axis=0)
    predicted_sd = stacked.std(axis=0) if len(members) > 1 else None
    info = fold_info(units, members, selection)
    out_baselines = fold_baselines(config, units, info, alpha=alpha)
    head_predicted = predicted
    ridge_test = out_baselines.get("ridge")
    if selection.winner in (RIDGE, BLEND):
        predicted, predicted_sd, info["ridge_model"], ridge_test = _ship_ridge_or_blend(
            units, stacked, fold_dir=fold_dir, alpha=alpha,
            meta=members[0]["meta"], selection=selection)
    if spread_model is not None and predicted_sd is not None:
        ridge_term = ridge_test if spread_uses_ridge(config, selection) else None
        predicted_sd = spread_model.apply(spread_terms(predicted, head_predicted, ridge_term,
                                                       member_sd(stacked)))
        info[SPREAD_KEY] = spread_model.record()
    return FoldResult(fold=k, genes=units.genes, test_idx=units.test_idx, predicted=predicted,
                      baselines=out_baselines, info=info,
                      train_mean=units.y[units.train_idx].astype(np.float64).mean(axis=0),
                      predicted_sd=predicted_sd, head_predicted=head_predicted,
                      winner=selection.winner, plausible=plausible)


def select_model(head: str, config: TrainConfig, members: list[dict[str, Any]],
                 source: SpotFeatures | BagFeatures, y_fit: np.ndarray, y: np.ndarray, *,
                 splits: list[tuple[np.ndarray, np.ndarray]], inner_all: np.ndarray,
                 rows: Any, blend: bool = True, alpha: float | None = None) -> Selection:
    """Score the head (the best inner checkpoints of the members that share a validation
    split, averaged) and ridge on the same inputs on every distinct inner validation split
    (:mod:`slide2expr.train.selection`).

    Only training-fold units are read: ``splits`` are the members' (inner training,
    inner validation) unit indices, all inside the fold's training units. Ridge is scored
    at ``alpha``, the one the fold ships (:func:`fold_ridge_alpha`; None: the best of
    ``train.ridge_alphas`` on each split). With ``blend`` the blend of the two is scored too
    (:func:`~slide2expr.train.selection.blend_compared`).
    """
    selection = Selection(head=head, mode=config.select)
    if config.select == "off":
        return selection
    alphas = config.ridge_alphas if alpha is None else [alpha]
    for inner, split_alpha in inner_split_predictions(members, splits, source, y_fit, y,
                                                      inner_all=inner_all, rows=rows,
                                                      alphas=alphas):
        selection.add_split(inner.head, inner.ridge, y[inner.units], inner_all[inner.units],
                            alpha=split_alpha, with_blend=blend)
        selection.validation.append(inner)
    margin, head_margin = selection.blend_margin(), selection.head_margin()
    log.info("selection (%s): inner score %s %.4f (gain over ridge %s), blend %.4f (ridge "
             "weight %s, gain over the better one %s), ridge %.4f (alpha %s) -> %s",
             config.select, head, selection.head_score, _rounded(head_margin),
             selection.blend_score, selection.blend_weight, _rounded(margin),
             selection.ridge_score, alpha, selection.winner)
    return selection


def _rounded(margin: tuple[float, float, float] | None) -> tuple[float, ...] | None:
    return None if margin is None else tuple(round(v, 4) for v in margin)


def fold_ridge_alpha(config: TrainConfig, units: FoldUnits) -> float | None:
    """The alpha of the fold's ridge: chosen by grouped inner CV on the fold's training units
    (:func:`~slide2expr.train.baselines.choose_alpha`), used by the ridge baseline, by the
    selection's ridge and blend candidates and by the ridge that ships, so what is scored is
    what ships. None when neither selection nor the ridge baseline needs one."""
    if config.select == "off" and "ridge" not in config.baselines:
        return None
    train_rows = units.rows(units.train_idx)
    return baselines.tuned_alpha(
        units.fit_source.pooled(train_rows), units.y_fit[train_rows],
        units.fit_groups[train_rows], config.ridge_alphas, seed=config.seed + units.k,
        blocks=block_widths(units.fit_source))


def inner_split_predictions(members: list[dict[str, Any]],
                            splits: list[tuple[np.ndarray, np.ndarray]],
                            source: SpotFeatures | BagFeatures, y_fit: np.ndarray, y: np.ndarray,
                            *, inner_all: np.ndarray, rows: Any, alphas: list[float]
                            ) -> Iterator[tuple[InnerValidation, float]]:
    """Per distinct inner validation split (members sharing one averaged,
    :func:`~slide2expr.train.selection.shared_splits`): the head's mean, the members' SD and
    ridge fitted on the split's inner training units (the best of ``alphas``), and that alpha.
    Only training-fold units are read."""
    usable = [m for m, mem in enumerate(members)
              if mem.get("val_predicted") is not None and len(splits[m][1])]
    for group in shared_splits([splits[m][1] for m in usable]):
        inner_train, inner_val = splits[usable[group[0]]]
        validating = np.stack([members[usable[i]]["val_predicted"] for i in group])
        tr = rows(inner_train)
        _, split_alpha, ridge_val = ridge_candidate(
            source.pooled(tr), y_fit[tr], source.pooled(inner_val), y[inner_val],
            inner_all[inner_val], alphas=alphas, blocks=block_widths(source))
        yield InnerValidation(
            units=np.asarray(inner_val), head=validating.mean(axis=0).astype(np.float64),
            member_sd=member_sd(validating),
            ridge=np.asarray(ridge_val, dtype=np.float64)), split_alpha


def fold_spread_model(config: TrainConfig, members: list[dict[str, Any]], units: FoldUnits,
                      selection: Selection, splits: list[tuple[np.ndarray, np.ndarray]], *,
                      alpha: float | None = None) -> SpreadModel | None:
    """The fold's calibrated spread (:mod:`slide2expr.train.spread`), fitted on its inner
    validation units only; None with ``train.spread: members``, one member, fewer than
    :data:`~slide2expr.train.spread.MIN_UNITS` inner validation units, or where ridge alone ships (one model, no spread)."""
    if config.spread == "members" or len(members) < 2 or selection.winner == RIDGE:
        return None
    inner = selection.validation or unselected_validation(config, members, units, splits,
                                                          alpha=alpha)
    return calibrate(inner, units.y, selection.winner, blend_weight=selection.blend_weight,
                     use_ridge=spread_uses_ridge(config, selection))


def spread_uses_ridge(config: TrainConfig, selection: Selection) -> bool:
    """Whether the fold's spread has the head-ridge disagreement term: ``calibrated_ridge``
    and ridge's held-out predictions at hand (it ships, or is a baseline)."""
    return config.spread == "calibrated_ridge" and (
        selection.winner in (RIDGE, BLEND) or "ridge" in config.baselines)


def unselected_validation(config: TrainConfig, members: list[dict[str, Any]], units: FoldUnits,
                          splits: list[tuple[np.ndarray, np.ndarray]], *,
                          alpha: float | None = None) -> list[InnerValidation]:
    """The inner splits' predictions when ``train.select`` is off (no selection computed
    them): ridge fitted on each split's inner training units as the selection would (at the
    fold's ``alpha``; None: the best of ``train.ridge_alphas`` on each split)."""
    alphas = config.ridge_alphas if alpha is None else [alpha]
    return [inner for inner, _ in inner_split_predictions(
        members, splits, units.fit_source, units.y_fit, units.y, inner_all=units.inner_all,
        rows=units.rows, alphas=alphas)]


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


def ship_ridge(source: SpotFeatures | BagFeatures, y: np.ndarray, *, train_idx: np.ndarray,
               test_idx: np.ndarray, alpha: float, fold_dir: Path, meta: dict[str, Any],
               selection: Selection) -> tuple[np.ndarray, dict[str, Any]]:
    """Ridge or the blend won the fold's selection: fit ridge on the whole training fold
    (at the fold's alpha, :func:`fold_ridge_alpha`: what the selection scored), save it as a linear network in ``fold_dir/ridge/`` (what
    :func:`~slide2expr.predict.load_trained_head` loads for this fold: alone, or with the
    head's members when its ``head.json`` says ``model: blend`` and gives ``blend_weight``),
    and return its held-out predictions and a record of it."""
    x_train = source.pooled(train_idx)
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
                  info: dict[str, Any], alpha: float | None = None) -> dict[str, np.ndarray]:
    """The configured baselines (ridge, HEST, mean) of fold ``k`` on pooled features; the
    ridge alpha (``alpha``, else chosen by grouped inner CV) is recorded in ``info``."""

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
                alphas=config.ridge_alphas, seed=config.seed + k, blocks=blocks, alpha=alpha)
            info["ridge_alpha"] = alpha
        elif name == "hest":
            pred = baselines.hest_baseline(pooled_train, y[train_idx], pooled_test,
                                           n_components=config.hest_pca, seed=config.seed,
                                           blocks=blocks)
        else:
            pred = baselines.mean_baseline(y[train_idx], len(test_idx))
        out[name] = pred.astype(np.float32)
    return out
