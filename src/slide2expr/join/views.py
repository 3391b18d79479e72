"""Augmentation views of the spot embeddings and context windows, carried into ``obsm``.

The extract stage writes each view ``v`` (``extract.views``) beside a file's features
(``views/{v}``, :mod:`slide2expr.contracts.features`). The join aligns them with the spots
exactly as it aligns the features and stores them under :meth:`slide2expr.keys.Key.view`
of their block's key: ``obsm['X_{encoder}__{v}']`` (spot patch) and
``obsm['X_{encoder}_ctx{um}__{v}']`` (context windows). Derived blocks (neighbour means,
section mean) have no views. Every section must hold the same views; train uses them as extra
training rows (``train.augment_views``) and for test-time averaging (``train.tta``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.contracts.features import read_feature_meta, read_features
from slide2expr.errors import InputError
from slide2expr.keys import Key


def block_files(features_dir: Path, sample_id: str, context_um: Sequence[float]
                ) -> dict[str, Path]:
    """Block name (``spot``, ``ctx{um}``) -> the features file holding it."""
    from slide2expr.tile.context import context_tiling

    files = {"spot": Path(features_dir) / f"{sample_id}.h5"}
    for um in context_um:
        files[context_tiling(um)] = Path(features_dir).parent / context_tiling(um) / \
            f"{sample_id}.h5"
    return files


def read_section_views(features_dir: Path, sample_id: str, spot_ids: Sequence[str],
                       context_um: Sequence[float], *, encoder: str
                       ) -> dict[str, np.ndarray]:
    """``{obsm key: (n, D) float32}`` of every view of one section's blocks, in the order of
    ``spot_ids``.

    Raises
    ------
    InputError
        A spot missing from a view's file, or non-finite view values.
    """
    out: dict[str, np.ndarray] = {}
    for block, path in block_files(features_dir, sample_id, context_um).items():
        if not read_feature_meta(path).views:
            continue
        fs = read_features(path)
        order = pd.Index(fs.spot_ids).get_indexer(list(spot_ids))
        if (order < 0).any():
            raise InputError(path, "some spots have no row", "re-run tile and extract")
        for view, rows in fs.views.items():
            block_rows = np.asarray(rows[order], dtype=np.float32)
            if not np.isfinite(block_rows).all():
                raise InputError(path, f"view {view!r} has NaN or infinite values",
                                 "re-run the extract stage")
            out[Key.view(Key.context(encoder, block), view)] = block_rows
    return out


def stack_views(per_section: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The sections' views stacked in section order; every section must have the same ones.

    Raises
    ------
    InputError
        Sections holding different views (some extracted with other ``extract.views``).
    """
    names = {sid: sorted(v) for sid, v in per_section.items()}
    first = next(iter(names.values()), [])
    odd = [sid for sid, n in names.items() if n != first]
    if odd:
        raise InputError(None, f"sections hold different augmentation views ({odd[0]}: "
                         f"{names[odd[0]]}; {next(iter(names))}: {first})",
                         "re-run the extract stage of every sample with the same extract.views")
    return {key: np.vstack([per_section[sid][key] for sid in per_section]) for key in first}
