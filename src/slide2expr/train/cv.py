"""Patient-grouped, seeded cross-validation folds and inner validation splits.

Units (spots or slides) of one group (patient, or whatever ``group_by`` names) always fall
in the same fold. When ``obs['split']`` is present it overrides cross-validation: one fold,
trained on ``train`` units and evaluated on ``test`` units.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from slide2expr.errors import InputError
from slide2expr.keys import NOT_HELD_OUT, Key

log = logging.getLogger(__name__)

#: Fold label of units that are never held out (training units of a ``split`` column).


def group_labels(obs: pd.DataFrame, group_by: str, *, source: str | None = None) -> np.ndarray:
    """The grouping column as strings; ``patient`` falls back to ``sample_id``."""
    if group_by in obs:
        values = obs[group_by]
    elif group_by == "patient" and "sample_id" in obs:
        log.warning("obs has no 'patient' column: grouping folds by sample_id")
        values = obs[Key.SAMPLE_ID]
    else:
        raise InputError(source, f"obs has no {group_by!r} column to group folds by",
                         "add it in the sample sheet or set train.group_by")
    if values.isna().any():
        raise InputError(source, f"obs[{group_by!r}] has missing values",
                         "give every sample a patient in the sample sheet")
    return values.astype(str).to_numpy()


def assign_folds(groups: np.ndarray, folds: int | str, *, seed: int,
                 split: pd.Series | None = None, source: str | None = None) -> np.ndarray:
    """Fold of each unit; held-out units of fold ``k`` get ``k``.

    Parameters
    ----------
    groups
        Group label of each unit (patients).
    folds
        Number of folds, or ``"loo"`` for one fold per group.
    seed
        Shuffles the groups before they are dealt to folds; each goes to the fold with the
        fewest units so far, so fold sizes differ by at most about one group.
    split
        Optional ``train``/``test`` labels; when given, one fold whose test units are the
        ``test`` ones (training units get :data:`NOT_HELD_OUT`).

    Raises
    ------
    InputError
        Fewer groups than folds; a fold without training (or test) units; a bad ``split``.
    """
    if split is not None:
        return _split_column_folds(split, groups, source)
    unique, counts = np.unique(groups, return_counts=True)
    n_folds = len(unique) if folds == "loo" else int(folds)
    if len(unique) < 2:
        raise InputError(source, f"all units belong to one group ({unique[0]!r}), so no fold "
                         "has training data", "add samples from more patients, set "
                         "train.group_by to a finer column (e.g. sample_id), or add a split column")
    if len(unique) < n_folds:
        raise InputError(source, f"{len(unique)} patient groups are fewer than the "
                         f"{n_folds} folds asked for", f"set train.folds to at most "
                         f"{len(unique)} (or 'loo'), or group by a finer column")
    rng = np.random.default_rng(seed)
    # Groups in a seeded random order, each to the fold with the fewest units so far.
    order = rng.permutation(len(unique))
    load = np.zeros(n_folds, dtype=np.int64)
    group_fold = {}
    for i in order:
        k = int(np.argmin(load))
        group_fold[unique[i]] = k
        load[k] += counts[i]
    fold = np.array([group_fold[g] for g in groups], dtype=np.int64)
    return fold


def _split_column_folds(split: pd.Series, groups: np.ndarray, source: str | None) -> np.ndarray:
    labels = split.astype(str).str.lower().to_numpy()
    bad = sorted(set(labels) - {"train", "test"})
    if bad:
        raise InputError(source, f"obs['split'] has values {bad}", "use only train and test")
    if not (labels == "train").any():
        raise InputError(source, "the split column marks no unit 'train', so the fold has no "
                         "training data", "mark the training samples 'train' in the sample sheet")
    if not (labels == "test").any():
        raise InputError(source, "the split column marks no unit 'test'",
                         "mark held-out samples 'test' or drop the column to cross-validate")
    shared = set(groups[labels == "train"]) & set(groups[labels == "test"])
    if shared:
        log.warning("patients in both train and test of the split column: %s",
                    sorted(shared)[:5])
    return np.where(labels == "test", 0, NOT_HELD_OUT).astype(np.int64)


def fold_ids(fold: np.ndarray) -> list[int]:
    """The held-out fold numbers present."""
    return sorted(int(k) for k in np.unique(fold) if k != NOT_HELD_OUT)


def check_training_units(train_mask: np.ndarray, k: int, *, source: str | None = None) -> None:
    """Raise if fold ``k`` has no training units."""
    if not train_mask.any():
        raise InputError(source, f"fold {k} has no training data",
                         "use more patients or fewer folds")


def inner_groups(groups: np.ndarray, sections: np.ndarray, *,
                 group_by: str) -> tuple[np.ndarray, str]:
    """The grouping of a training fold's inner validation (early stopping, ridge alpha).

    With two or more ``group_by`` groups (patients) in the fold, those; with one, its
    sections (``sample_id``), since spots of one section are spatially autocorrelated and a
    random split of them leaks and picks too little regularisation; with one section too,
    the units themselves.

    Returns
    -------
    tuple
        The labels (one per unit) and the grouping's name: ``group_by``, ``"sample_id"``
        or ``"units"`` (recorded in the predictions' provenance).
    """
    if len(np.unique(groups)) >= 2:
        return np.asarray(groups), group_by
    if len(np.unique(sections)) >= 2:
        return np.asarray(sections), Key.SAMPLE_ID
    return np.asarray(groups), "units"


def inner_split(groups: np.ndarray, *, fraction: float, seed: int,
                member: int = 0) -> np.ndarray:
    """Boolean mask of the validation units inside a training fold (grouped when possible).

    With two or more groups, about ``fraction`` of the groups (at least one, never all) are
    validation; with one group, a random ``fraction`` of the units (early stopping only; it
    is logged as a warning since spots of one section are correlated). Ensemble member
    ``member`` takes the next groups of the same seeded order (cross-fitting: members
    validate on different groups, so together they learn from every training group).
    """
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    if len(unique) >= 2:
        n_val = min(len(unique) - 1, max(1, round(fraction * len(unique))))
        order = rng.permutation(unique)
        start = (member * n_val) % len(unique)
        val_groups = set(np.roll(order, -start)[:n_val].tolist())
        return np.array([g in val_groups for g in groups])
    rng = np.random.default_rng(seed + 1000 * member)
    log.warning("one training group: validation units for early stopping are a random "
                "%.0f%% of its units", 100 * fraction)
    n = len(groups)
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[:max(1, round(fraction * n))]] = True
    return mask
