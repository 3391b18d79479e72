"""Where training reads its inputs: the dataset's mode, the feature blocks of every unit
(an ``obsm`` matrix in spot mode, the bags' feature files in bulk mode), and the checks that
the dataset can be trained on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.errors import InputError
from slide2expr.keys import Key, split_unit
from slide2expr.train.config import TrainConfig
from slide2expr.train.cv import assign_folds, group_labels
from slide2expr.train.features import BagFeatures, SpotFeatures
from slide2expr.train.gene_selection import column_stats
from slide2expr.train.heads import HEADS
from slide2expr.train.views import ViewRows, view_rows


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
        # several when the join averaged a patient's slides into one unit
        paths = [tuple(resolve_path(p, dataset_path) for p in split_unit(value))
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


def resolve_path(path: str, dataset_path: Path | None) -> Path:
    p = Path(path)
    if p.is_absolute() or p.exists() or dataset_path is None:
        return p
    beside = dataset_path.parent / p
    return beside if beside.exists() else p


def check_dataset(adata: Any, head: str, src: str | None) -> None:
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


def check_targets(x: Any, src: str | None) -> None:
    _, var, _ = column_stats(x)
    if not (var > 0).any():
        raise InputError(src, "all target genes are constant across units",
                         "check the counts: a model cannot learn constant expression")


@dataclass
class TrainingInputs:
    """What a training run reads from its dataset, checked."""

    provenance: dict
    #: Patient (or ``group_by``) label of each unit.
    groups: np.ndarray
    #: The fold that holds each unit out (``NOT_HELD_OUT`` for a ``split: train`` unit).
    fold: np.ndarray
    #: Targets (log1p CP10k) and raw counts (None without ``layers['counts']``).
    x: Any
    counts: Any
    var_names: np.ndarray
    source: SpotFeatures | BagFeatures
    #: The section (``sample_id``) of each unit.
    sections: np.ndarray
    views: ViewRows | None = None


def training_inputs(adata: Any, *, head: str, config: TrainConfig,
                    dataset_path: Path | None) -> TrainingInputs:
    """The folds, targets, feature blocks and augmentation views ``head`` trains on
    (``config`` already resolved for the head: :meth:`TrainConfig.for_head`)."""
    src = None if dataset_path is None else str(dataset_path)
    groups = group_labels(adata.obs, config.group_by, source=src)
    split = adata.obs[Key.SPLIT] if "split" in adata.obs else None
    fold = assign_folds(groups, config.folds, seed=config.seed, split=split, source=src)
    check_targets(adata.X, src)
    source = feature_source(adata, config=config, dataset_path=dataset_path,
                            inputs=config.inputs_for(head))
    views = None
    if source.kind == "spot" and (config.augment_views or config.tta):
        views = view_rows(adata, source, spot_key(adata, config=config, dataset_path=dataset_path),
                          config.inputs_for(head), augment=config.augment_views, tta=config.tta,
                          dataset_path=dataset_path)
    return TrainingInputs(
        provenance=dict(adata.uns.get("slide2expr", {})), groups=groups, fold=fold, x=adata.X,
        counts=adata.layers[Key.COUNTS] if "counts" in adata.layers else None,
        var_names=np.asarray(adata.var_names.astype(str)), source=source,
        sections=adata.obs[Key.SAMPLE_ID].astype(str).to_numpy(), views=views)
