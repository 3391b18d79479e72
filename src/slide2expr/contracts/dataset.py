"""The join stage's file: ``dataset.h5ad``, read by train, report and heatmap.

Contract: ``obs`` = training units (spots, or slides in bulk mode) with ``sample_id`` and
``patient`` (and ``split`` when the sheet has one); ``X`` = log1p(CP10k) float32 (or the
values as given, see ``join.values``); ``layers['counts']``; ``var_names`` = gene symbols;
spot mode: ``obsm['spatial']`` (level-0 px x, y of spot centres) and
``obsm['X_{encoder}']`` (spot patch embeddings) and, when configured, the context blocks
(:mod:`slide2expr.join.context`, keys :meth:`slide2expr.keys.Key.context`):
``obsm['X_{encoder}_ctx{um}']`` (embedding of a window ``um`` micrometres across centred on
the spot, ``tiling.context_um``; padded white past the slide edge, the padding counted in
``uns['slide2expr']['context']['windows']``), ``obsm['X_{encoder}_nbr{r}']`` (mean spot
embedding over the same section's spots within ``r`` micrometres, the spot included; a spot
with no other spot in reach gets its own embedding, never NaN; ``join.neighbour_um``) and
``obsm['X_{encoder}_slide']`` (the section's mean spot embedding, ``join.slide_mean``);
context never uses another section's spots; with ``extract.views``, augmentation views of
the spot patch and the windows, ``obsm['X_{encoder}__{view}']`` and
``obsm['X_{encoder}_ctx{um}__{view}']`` (:meth:`slide2expr.keys.Key.view`,
:mod:`slide2expr.join.views`; optional, so the stamp stays ``dataset/1``); bulk mode: ``obs['features_path']``
(``;``-joined for a unit of several slides); ``uns['slide2expr']`` = provenance (package
version, mode, encoder, feature attrs, the run's config) and ``slide2expr_format`` =
``"dataset/1"``; ``uns['spatial']``, ``uns['log1p']``, ``obs['library_id']`` for scanpy and
squidpy. Key names: :class:`slide2expr.keys.Key`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.contracts._anndata import read_anndata, write_anndata
from slide2expr.contracts._h5 import FORMAT_ATTR, check_format, format_stamp
from slide2expr.errors import InputError
from slide2expr.keys import Key

log = logging.getLogger(__name__)

CONTRACT = "dataset"
VERSION = "1"


def write_dataset(adata: Any, out: str | Path) -> Path:
    """Write ``adata`` to ``out`` atomically (nothing is left behind on failure), its
    ``uns['slide2expr']`` stamped ``dataset/1`` (:func:`stamp`)."""
    stamp(adata)
    out = write_anndata(adata, out)
    log.info("wrote %s: %d units x %d genes", out, adata.n_obs, adata.n_vars)
    return out


def stamp(adata: Any) -> None:
    """Stamp ``uns['slide2expr']`` as this contract, first of its entries (where the join
    puts it, so a dataset the join stamped is written with the same bytes)."""
    prov = dict(adata.uns.get(Key.PROVENANCE, {}))
    prov.pop(FORMAT_ATTR, None)
    adata.uns[Key.PROVENANCE] = {**format_stamp(CONTRACT, VERSION), **prov}


def read_dataset(path: str | Path) -> Any:
    """Read ``dataset.h5ad`` (:class:`InputError` if it is not a readable AnnData file, or
    is stamped as another contract or version in ``uns['slide2expr']``)."""
    adata = read_anndata(path, what="dataset file", fix="run (or re-run) the join stage")
    check_format(path, dict(adata.uns.get(Key.PROVENANCE, {})), CONTRACT, (VERSION,))
    return adata


def uns_storable(value: Any) -> Any:
    """Provenance storable in ``uns``: ``None`` dropped, numpy scalars made plain and tuples
    made lists, recursively through dicts (h5ad cannot store ``None``)."""
    if isinstance(value, dict):
        return {str(k): uns_storable(v) for k, v in value.items() if v is not None}
    if isinstance(value, tuple):  # h5ad stores lists, not tuples
        return [uns_storable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_section_rows(path: str | Path, key: str, sample_id: str) -> np.ndarray | None:
    """The rows of ``obsm[key]`` that belong to ``sample_id``, without loading the dataset.

    The heatmap stage reads a section's slide vector (``obsm['X_{encoder}_slide']``) this way,
    so that a training slide's map uses the vector its spots were trained with.

    Returns
    -------
    numpy.ndarray or None
        ``(n, D)`` float32, or None when the section has no units in the dataset.

    Raises
    ------
    InputError
        If the file is not a dataset or lacks ``obsm[key]`` or ``obs['sample_id']``.
    """
    import anndata as ad
    import h5py

    from slide2expr.contracts._h5 import require_file

    fix = "run (or re-run) the join stage"
    path = require_file(path, what="dataset file", fix=fix)
    try:
        with h5py.File(path, "r") as f:
            if f"obsm/{key}" not in f or f"obs/{Key.SAMPLE_ID}" not in f:
                raise InputError(path, f"has no obsm[{key!r}] or obs['sample_id']",
                                 f"{fix} with the context blocks the head was trained on")
            sections = np.asarray(ad.io.read_elem(f[f"obs/{Key.SAMPLE_ID}"]), dtype=str)
            rows = np.flatnonzero(sections == str(sample_id))
            if not len(rows):
                return None
            return np.asarray(f[f"obsm/{key}"][rows[0]:rows[-1] + 1], dtype=np.float32)[
                rows - rows[0]]
    except OSError as exc:
        raise InputError(path, f"is not a readable dataset file ({exc})", fix) from exc
