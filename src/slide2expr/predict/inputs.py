"""A head's input matrix on a slide's tiles: the spot block, or a context head's blocks.

:func:`model_inputs` is what prediction calls: the features themselves for a head trained on
one block, else the blocks below concatenated.

The input blocks of a context head on grid tiles, so that it paints dense maps:

A head trained on spots with context inputs (``train.inputs`` / ``train.head_inputs``, e.g.
``[spot, ctx300, ctx1000, nbr300, slide]``) records its block names in ``head.json``
(``inputs``, :mod:`slide2expr.contracts.models`). On a slide's grid tiles each block is
defined as for spots (:mod:`slide2expr.join.context`), with the grid tile in the spot's place:

- ``spot``: the grid tile's embedding (``features/{encoder}/grid/{sample}.h5``);
- ``ctx{um}``: the embedding of a window ``um`` micrometres across centred on the grid tile
  (tiling ``grid_ctx{um}``, :func:`slide2expr.tile.context.grid_context_windows`), read from
  ``features/{encoder}/grid_ctx{um}/{sample}.h5`` beside the grid features, in the grid's
  order (checked by tile centres);
- ``nbr{r}``: the mean grid-tile embedding within ``r`` micrometres of the tile, the tile
  itself included (:func:`slide2expr.join.context.neighbour_mean` on the tile centres);
- ``slide``: the slide vector **the spot model saw** when the slide has spots in the dataset
  (its section's ``obsm['X_{encoder}_slide']``, the mean of its spot embeddings), so a
  training slide's map and its spot predictions share one slide vector; otherwise (a new
  slide, or no dataset given) the mean embedding of the slide's grid tiles. Which one was
  used is recorded in the tile map's provenance (``slide_block``).

The blocks are concatenated in the order the head records, the matrix its training saw.
Grid tiles lie denser than spots (a 112 um tile pitch against 200 um between ST spots), so a
grid ``nbr{r}`` averages more embeddings than a spot's did: it estimates the same local mean
with less noise. Nothing is fitted here and nothing crosses slides.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.contracts.dataset import read_section_rows
from slide2expr.contracts.features import FeatureSet, read_features
from slide2expr.errors import InputError
from slide2expr.join.context import neighbour_mean
from slide2expr.keys import SLIDE_BLOCK, SPOT_BLOCK, Key

log = logging.getLogger(__name__)

_CTX = re.compile(r"^ctx(\d+)$")
_NBR = re.compile(r"^nbr([0-9p]+)$")
RETRAIN_FOR_INPUTS = "retrain the head with this version of slide2expr (head.json records its inputs)"


def head_input_blocks(meta: dict[str, Any], *, source: str | Path | None = None) -> list[str]:
    """The input block names a head was trained on, from its ``head.json``.

    Models written before ``inputs`` was recorded had one block (``spot``) unless their
    ``hparams['blocks']`` lists several widths; those cannot be rebuilt and are refused.
    """
    inputs = meta.get("inputs")
    if inputs:
        return [str(b) for b in inputs]
    widths = (meta.get("hparams") or {}).get("blocks") or []
    if len(widths) > 1:
        raise InputError(source, f"the head takes {len(widths)} input blocks but its head.json "
                         "does not name them", RETRAIN_FOR_INPUTS)
    return [SPOT_BLOCK]


def check_finite_rows(x: np.ndarray, *, source: str | Path | None) -> None:
    """Refuse features with NaN or infinite values (as the join does): a model fed them
    would write NaN predictions without a word.

    Raises
    ------
    InputError
        Naming how many rows are affected and the fix (re-extract).
    """
    bad = int((~np.isfinite(x)).any(axis=1).sum()) if x.ndim == 2 else 0
    if bad:
        raise InputError(source, f"{bad} feature row(s) of {len(x)} have NaN or infinite values",
                         "re-run the extract stage for this slide (delete the file first)")


def model_inputs(meta: dict[str, Any], features: FeatureSet, *, features_path: str | Path,
                 dataset: str | Path | None = None,
                 model_source: str | Path | None = None
                 ) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The input matrix of a head (``head.json`` as ``meta``) on one slide's tiles.

    Returns
    -------
    tuple of (numpy.ndarray or None, dict)
        None for a head trained on the tile's own embedding (the features are its input),
        else the blocks concatenated (:func:`grid_input_matrix`); and what to record.

    Raises
    ------
    InputError
        If the features have NaN or infinite rows, or a block cannot be built.
    """
    check_finite_rows(np.asarray(features.features), source=features_path)
    blocks = head_input_blocks(meta, source=model_source)
    if blocks == [SPOT_BLOCK]:
        return None, {}
    return grid_input_matrix(features, blocks, features_path=features_path,
                             encoder=meta.get("encoder"), dataset=dataset)


def grid_context_path(grid_features: str | Path, um: int, sample_id: str) -> Path:
    """``features/{encoder}/grid_ctx{um}/{sample}.h5`` beside ``features/{encoder}/grid/``."""
    return Path(grid_features).parent.parent / f"grid_ctx{um}" / f"{sample_id}.h5"


def _radius(block: str) -> float:
    return float(_NBR.match(block).group(1).replace("p", "."))


def grid_input_matrix(features: FeatureSet, blocks: Sequence[str], *,
                      features_path: str | Path, encoder: str | None,
                      dataset: str | Path | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The head's input matrix on one slide's grid tiles: ``blocks`` concatenated.

    Parameters
    ----------
    features
        The slide's grid features.
    blocks
        Block names in the head's order (:func:`head_input_blocks`).
    features_path
        Where ``features`` came from; the ``grid_ctx{um}`` features sit beside it.
    encoder
        The head's encoder (checked against the context features; names the dataset key).
    dataset
        ``dataset.h5ad`` of the run: the slide vector of a slide with spots comes from it.

    Returns
    -------
    tuple of (numpy.ndarray, dict)
        ``(N, sum of widths)`` float32, and what to record (blocks, slide vector source,
        padded windows).

    Raises
    ------
    InputError
        An unknown block, a missing or misaligned context features file, a neighbour block
        without the slide's mpp, or non-finite values.
    """
    x = np.asarray(features.features, dtype=np.float32)
    sample = str(features.attrs.sample_id or "")
    record: dict[str, Any] = {"inputs": list(blocks)}
    parts = []
    for block in blocks:
        if block == SPOT_BLOCK:
            part = x
        elif _CTX.match(block):
            part, record[block] = _context_block(features, int(_CTX.match(block).group(1)),
                                                 features_path=features_path, encoder=encoder)
        elif _NBR.match(block):
            part = _neighbour_block(features, _radius(block), source=features_path)
        elif block == SLIDE_BLOCK:
            part, record["slide_block"] = _slide_block(x, sample, encoder=encoder,
                                                       dataset=dataset)
        else:
            raise InputError(features_path, f"the head takes an input block {block!r} that "
                             "grid tiles cannot provide", RETRAIN_FOR_INPUTS)
        if not np.isfinite(part).all():
            raise InputError(features_path, f"the {block} block has NaN or infinite values",
                             "re-run the extract stage")
        parts.append(np.asarray(part, dtype=np.float32))
    log.info("%s: head inputs %s on %d grid tiles", sample, "+".join(blocks), len(x))
    return (np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]), record


def _context_block(features: FeatureSet, um: int, *, features_path: str | Path,
                   encoder: str | None) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``grid_ctx{um}`` embeddings, checked to be centred on the grid tiles in order."""
    sample = str(features.attrs.sample_id or "")
    path = grid_context_path(features_path, um, sample)
    fix = (f"run `slide2expr context-tiles tiles/grid/{sample}.h5 --um {um}` and extract "
           "it (the workflow does when a context head paints heatmaps)")
    if not path.is_file():
        raise InputError(path, f"grid context features ({um} um windows) not found", fix)
    ctx = read_features(path)
    if encoder and ctx.attrs.encoder not in (None, encoder):
        raise InputError(path, f"holds {ctx.attrs.encoder!r} features, not {encoder!r}",
                         "extract it with the head's encoder")
    dim = features.features.shape[1]
    if ctx.features.ndim != 2 or ctx.features.shape != (len(features), dim):
        raise InputError(path, f"has features of shape {ctx.features.shape}, the grid "
                         f"{(len(features), dim)}", fix)
    if np.abs(features.centres - ctx.centres).max(initial=0.0) > 1.0:
        raise InputError(path, "its windows are not centred on the grid tiles (another "
                         "tiling of the slide)", fix)
    return ctx.features, {"context_um": float(um),
                          "n_padded": int(ctx.attrs.n_padded or 0),
                          "padding": str(ctx.attrs.padding or "white")}


def _neighbour_block(features: FeatureSet, radius_um: float, *,
                     source: str | Path) -> np.ndarray:
    """Mean grid-tile embedding within ``radius_um`` of each tile (the tile included)."""
    mpp = features.attrs.slide_mpp
    if not mpp:
        raise InputError(source, "records no slide_mpp, which a neighbour block needs",
                         "re-run the tile and extract stages (they record the slide's mpp)")
    return neighbour_mean(features.centres * float(mpp), features.features, np.zeros(len(features), dtype=int),
                          radius_um=radius_um)


def _slide_block(x: np.ndarray, sample: str, *, encoder: str | None,
                 dataset: str | Path | None) -> tuple[np.ndarray, str]:
    """The slide vector: the dataset's for a slide with spots, else the grid tiles' mean."""
    if dataset is not None and encoder:
        rows = read_section_rows(dataset, Key.context(encoder, SLIDE_BLOCK), sample)
        if rows is not None:
            vector = rows[0]
            if vector.shape != (x.shape[1],):
                raise InputError(dataset, f"the slide vector of {sample} has shape "
                                 f"{vector.shape}, the grid features {x.shape[1]} columns",
                                 "use the dataset and features of one encoder")
            return np.broadcast_to(vector, x.shape), "dataset spots (the vector the model saw)"
    vector = x.astype(np.float64).mean(axis=0).astype(np.float32)
    return np.broadcast_to(vector, x.shape), "grid tiles (mean of the slide's grid tiles)"
