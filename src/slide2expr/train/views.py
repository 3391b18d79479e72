"""Augmentation views in training: extra training rows, and test-time averaging.

The join carries each augmentation view ``v`` of the spot patch and of the context windows
into ``obsm`` (:mod:`slide2expr.join.views`). For a head's input blocks, view ``v``'s matrix
is the same concatenation as the clean one with each block's view where it has one; derived
blocks (neighbour means, section mean) have none and keep their clean values.

- ``train.augment_views``: each listed view adds one row per **training** unit of the fold
  (the unit's targets repeated), for the head and the ridge baseline alike. Held-out units
  never get extra rows, and inner validation (early stopping, ridge's alpha) scores only
  clean rows of the inner held-out units; a view row stays in its unit's inner group.
- ``train.tta``: predictions of the held-out units (head and baselines) are the mean over
  the clean row and every dihedral view in the dataset (rotations/flips: the tissue is the
  same; HED views are not averaged).

The rows live in one matrix: the clean units first (rows ``0..N-1``), then each view's ``N``
rows in :attr:`ViewRows.names` order, so unit ``i``'s view ``j`` is row ``i + N * (j + 1)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.errors import InputError
from slide2expr.keys import SPOT_BLOCK, Key
from slide2expr.train.features import SpotFeatures

#: Views that only permute pixels (the same tissue): the ones test-time averaging uses.
DIHEDRAL = ("rot90", "rot180", "rot270", "flip", "flip_rot90", "flip_rot180", "flip_rot270")


def dataset_views(adata: Any, spot_key: str) -> list[str]:
    """The views of the spot block present in ``obsm`` (``{spot_key}__{view}``)."""
    prefix = Key.view(spot_key, "")
    return sorted(k[len(prefix):] for k in adata.obsm if k.startswith(prefix))


def view_matrix(adata: Any, spot_key: str, inputs: Sequence[str], view: str, *,
                dataset_path: Path | None = None) -> np.ndarray:
    """The input blocks ``inputs`` concatenated, each block's view ``view`` where it has one.

    Raises
    ------
    InputError
        No block of ``inputs`` has the view (it was not extracted).
    """
    parts, found = [], False
    for name in inputs:
        key = spot_key if name == SPOT_BLOCK else f"{spot_key}_{name}"
        vkey = Key.view(key, view)
        found |= vkey in adata.obsm
        parts.append(np.asarray(adata.obsm[vkey if vkey in adata.obsm else key], dtype=np.float32))
    if not found:
        raise InputError(dataset_path, f"train uses augmentation view {view!r}, which no input "
                         f"block has in obsm (views present: {dataset_views(adata, spot_key)})",
                         f"add {view} to extract.views and re-run extract and join, or drop it "
                         "from train.augment_views")
    return np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]


@dataclass
class ViewRows:
    """The clean rows and the view rows of every unit, and which rows each use takes.

    Attributes
    ----------
    source
        Clean rows then each view's rows (module docstring).
    n_units
        ``N``.
    names
        The views, in row-block order.
    train_views, tta_views
        The views added as training rows, and those averaged at test time.
    """

    source: SpotFeatures
    n_units: int
    names: tuple[str, ...]
    train_views: tuple[str, ...]
    tta_views: tuple[str, ...]

    def rows(self, idx: np.ndarray, views: Sequence[str]) -> np.ndarray:
        """Row numbers of units ``idx``: clean first, then each view of ``views``."""
        blocks = [np.asarray(idx)] + [np.asarray(idx) + self.n_units * (1 + self.names.index(v))
                                      for v in views]
        return np.concatenate(blocks)

    def train_rows(self, idx: np.ndarray) -> np.ndarray:
        """Training rows of units ``idx``: each unit clean and in every training view."""
        return self.rows(idx, self.train_views)

    def test_rows(self, idx: np.ndarray) -> np.ndarray:
        """Rows predicted for held-out units ``idx``: clean, then each TTA view."""
        return self.rows(idx, self.tta_views)

    def tile(self, values: np.ndarray) -> np.ndarray:
        """Per-unit ``values`` (targets, groups) repeated for every row block."""
        return np.concatenate([values] * (1 + len(self.names)))

    def average(self, predicted: np.ndarray, n_test: int) -> np.ndarray:
        """Mean over the clean and TTA rows of each held-out unit (``test_rows`` order)."""
        return np.asarray(predicted).reshape(1 + len(self.tta_views), n_test, -1).mean(axis=0)


def view_rows(adata: Any, source: SpotFeatures, spot_key: str, inputs: Sequence[str], *,
              augment: Sequence[str], tta: bool,
              dataset_path: Path | None = None) -> ViewRows | None:
    """The :class:`ViewRows` of a spot-mode run, or None without views to use.

    Raises
    ------
    InputError
        ``tta`` without any dihedral view in the dataset, or an ``augment`` view missing.
    """
    tta_views = tuple(v for v in DIHEDRAL if v in dataset_views(adata, spot_key)) if tta else ()
    if tta and not tta_views:
        raise InputError(dataset_path, "train.tta averages over dihedral views, but the dataset "
                         "has none", "add e.g. rot90, rot180, rot270, flip to extract.views and "
                         "re-run extract and join, or set train.tta: false")
    names = tuple(dict.fromkeys([*augment, *tta_views]))
    if not names:
        return None
    matrices = [source.matrix] + [view_matrix(adata, spot_key, inputs, v,
                                              dataset_path=dataset_path) for v in names]
    stacked = SpotFeatures(np.concatenate(matrices, axis=0), blocks=list(source.blocks))
    return ViewRows(stacked, len(source), names, tuple(augment), tta_views)
