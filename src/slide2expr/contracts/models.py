"""The train stage's model folder: ``models/{head}/fold{k}/`` and ``splits.tsv``.

Contract: each fold directory (and each ensemble member, ``fold{k}/member{m}/``) holds
``head.safetensors`` (the module's tensors only) and ``head.json`` (head name,
hyperparameters, gene order, encoder, mode, fold, member, ``inputs``: the names of the input
blocks in the order they were concatenated, e.g. ``["spot", "ctx300", "nbr300", "slide"]``,
null in bulk mode; ``slide2expr_format`` = ``"model/1"``; ``spread``: :data:`SPREAD_KEY`). Prediction rebuilds those blocks
(on grid tiles: :mod:`slide2expr.predict.inputs`); a head without ``inputs`` (written
before they were recorded) is taken as ``["spot"]`` when it has one block. ``splits.tsv``
beside the folds has one row per training unit: ``unit``, ``sample_id`` (a unit of several
slides, a patient's averaged by the join, lists them ``;``-joined), ``group`` and ``fold``
(the fold that held the unit out; :data:`~slide2expr.keys.NOT_HELD_OUT` for a unit that only
trained).

This module owns the file names, ``head.json`` (:func:`write_head_meta`,
:func:`read_head_meta`), the fold and member folders (:func:`fold_dirs`,
:func:`member_dirs`) and the one question every consumer asks of ``splits.tsv``: which fold's
model did not see a slide (:func:`held_out_fold`). The tensors of ``head.safetensors`` are
written by :mod:`slide2expr.train.save` and loaded by :mod:`slide2expr.predict.model`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.atomic import atomic_output
from slide2expr.contracts._h5 import check_format, format_stamp
from slide2expr.errors import InputError
from slide2expr.keys import Key, split_unit

log = logging.getLogger(__name__)

WEIGHTS = "head.safetensors"
META = "head.json"
SPLITS = "splits.tsv"
#: The folder of a fold's ridge model, shipped instead of the head when ridge won the fold's
#: inner selection (``train.select``), or beside the head's members when their blend won.
RIDGE_DIR = "ridge"
#: ``head.json`` key of the fold's calibrated spread (:mod:`slide2expr.train.spread`): what
#: ``layers['predicted_sd']`` of the training predictions is (``method``, ``description``,
#: ``terms``) and what was fitted on inner validation (per-gene ``coef`` over ``terms`` and
#: ``scale``, in the order of ``genes``; ``inner_coverage``), absent with
#: ``train.spread: members`` or one member.
SPREAD_KEY = "spread"
CONTRACT = "model"
VERSION = "1"

#: What to do about a damaged model folder.
RETRAIN = "retrain the head (`slide2expr train`, or delete results/models and rerun the workflow)"


#: The terms a calibrated spread may use, in the order of its coefficients
#: (:mod:`slide2expr.predict.spread`).
SPREAD_TERMS = ("constant", "level", "head_ridge_disagreement", "member_sd")
#: The spread terms prediction can apply (every term of ``calibrated``; not the head-ridge
#: disagreement of ``calibrated_ridge``: a fold keeps no ridge unless ridge or the blend ships).
APPLIED_SPREAD_TERMS = ("constant", "level", "member_sd")


def read_spread(meta: dict, genes: Sequence[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """A fold's calibrated spread (:data:`SPREAD_KEY` of its ``head.json``) in the column
    order ``genes``: coefficients ``(len(genes), 4)`` over :data:`SPREAD_TERMS` (zero for a
    term the fold does not use) and scales ``(len(genes),)``; None when the fold has none, uses a term outside
    :data:`APPLIED_SPREAD_TERMS` or the record is incomplete (then the members' SD is shown).
    """
    record = meta.get(SPREAD_KEY)
    if not isinstance(record, dict) or record.get("method") != "calibrated":
        return None
    terms, coef = record.get("terms") or [], record.get("coef") or {}
    if not set(terms) <= set(APPLIED_SPREAD_TERMS) or set(coef) != set(terms):
        return None
    fold_genes = list(meta.get("genes") or [])
    scale = record.get("scale")
    if not isinstance(scale, list) or len(scale) != len(fold_genes) or any(
            len(values) != len(fold_genes) for values in coef.values()):
        return None
    index = {g: i for i, g in enumerate(fold_genes)}
    if not all(g in index for g in genes):
        return None
    cols = np.array([index[g] for g in genes], dtype=np.int64)
    table = np.zeros((len(genes), len(SPREAD_TERMS)))
    for j, term in enumerate(SPREAD_TERMS):
        if term in coef:
            table[:, j] = np.asarray(coef[term], dtype=np.float64)[cols]
    return table, np.asarray(scale, dtype=np.float64)[cols]


def write_head_meta(fold_dir: str | Path, meta: dict) -> Path:
    """Write ``head.json`` into ``fold_dir`` atomically, stamped ``model/1``.

    ``meta`` must include ``head``, ``hparams`` and ``genes``; numpy scalars, arrays and
    tuples are written as JSON numbers and lists.
    """
    path = Path(fold_dir) / META
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps({**format_stamp(CONTRACT, VERSION), **meta}, indent=2,
                                  default=_json_default))
    return path


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def read_head_meta(path: str | Path) -> dict:
    """``head.json``: a JSON object with ``head``, ``hparams`` (object) and ``genes`` (list).

    Raises
    ------
    InputError
        If it is not JSON, lacks a key, or is of another contract or version.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})", RETRAIN) from exc
    missing = [k for k in ("head", "hparams", "genes")
               if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise InputError(path, f"lacks {', '.join(missing)}", RETRAIN)
    if not isinstance(meta["hparams"], dict) or not isinstance(meta["genes"], list):
        raise InputError(path, "has hparams that are not an object or genes that are not a list",
                         RETRAIN)
    check_format(path, meta, CONTRACT, (VERSION,))
    return meta


def fold_number(path: Path) -> int:
    """``k`` of a ``fold{k}`` folder (a name that is not one sorts last)."""
    try:
        return int(path.name.removeprefix("fold"))
    except ValueError:
        return 1 << 30


def fold_dirs(model_dir: str | Path, fold: int | None = None) -> list[Path]:
    """The model folders to load: ``model_dir`` itself when it is one fold's folder, else its
    ``fold{k}/`` folders in fold order (only ``fold{fold}`` when ``fold`` is given).

    Raises
    ------
    InputError
        If there is no fold folder, or not the one asked for.
    """
    model_dir = Path(model_dir)
    if (model_dir / META).is_file():
        return [model_dir]
    found = sorted(model_dir.glob("fold*"), key=fold_number)
    if not found:
        raise InputError(model_dir, "contains no fold*/ model directories",
                         "pass results/models/{head} written by `slide2expr train`")
    if fold is not None:
        found = [p for p in found if fold_number(p) == fold]
        if not found:
            raise InputError(model_dir, f"has no fold{fold}", "pick an existing fold")
    return found


def shipped_dirs(fold_dir: Path) -> list[Path]:
    """The model directories a fold ships (:func:`shipped_models`, without the weights)."""
    return [path for path, _ in shipped_models(fold_dir)]


def shipped_models(fold_dir: Path) -> list[tuple[Path, float]]:
    """The model directories a fold ships and each one's weight in the fold's prediction
    (the weights sum to 1).

    ``ridge/`` (:data:`RIDGE_DIR`) alone when ridge won the fold's inner selection
    (``train.select``); the head's members (``fold_dir`` and ``member*/``,
    ``train.ensemble > 1``) equally weighted when the head won; both when the blend won
    (``ridge/head.json`` says ``model: blend``): ridge weighs ``blend_weight``, each member
    ``(1 - blend_weight) / M``.
    """
    fold_dir = Path(fold_dir)
    members = [fold_dir, *sorted(fold_dir.glob("member*"))]
    ridge_meta = fold_dir / RIDGE_DIR / META
    if not ridge_meta.is_file():
        return [(m, 1.0 / len(members)) for m in members]
    meta = read_head_meta(ridge_meta)
    if meta.get("model") != "blend":
        return [(fold_dir / RIDGE_DIR, 1.0)]
    weight = meta.get("blend_weight")
    if not isinstance(weight, (int, float)) or not 0.0 <= float(weight) <= 1.0:
        raise InputError(ridge_meta, f"gives blend_weight {weight!r}, not a number in [0, 1]",
                         RETRAIN)
    share = (1.0 - float(weight)) / len(members)
    return [*((m, share) for m in members), (fold_dir / RIDGE_DIR, float(weight))]


def member_dirs(folds: Sequence[Path]) -> list[Path]:
    """Every model ``folds`` ship (:func:`shipped_dirs`) that holds a ``head.json``."""
    return [path for path, _ in weighted_members(folds)]


def weighted_members(folds: Sequence[Path]) -> list[tuple[Path, float]]:
    """Every model ``folds`` ship that holds a ``head.json``, with its weight in the
    prediction averaged over ``folds``: each fold weighs ``1 / len(folds)``, shared among
    its models as :func:`shipped_models` says."""
    members = [(m, w / len(folds)) for p in folds for m, w in shipped_models(p)
               if (m / META).is_file()]
    if not members:
        raise InputError(folds[0], f"has no {META}", RETRAIN)
    return members


def write_splits(model_dir: Path, *, units: Sequence[str], sample_ids: Sequence[str],
                 groups: Sequence[str], fold: np.ndarray) -> Path:
    """Write ``splits.tsv`` into ``model_dir`` (which the caller renames into place)."""
    table = pd.DataFrame({"unit": list(units), Key.SAMPLE_ID: list(sample_ids),
                          "group": list(groups), Key.FOLD: fold})
    path = Path(model_dir) / SPLITS
    table.to_csv(path, sep="\t", index=False)
    return path


def read_splits(model_dir: str | Path) -> pd.DataFrame | None:
    """``splits.tsv`` of a model folder, or None when it is missing or unreadable."""
    path = Path(model_dir) / SPLITS
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, sep="\t", dtype={Key.SAMPLE_ID: str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        log.warning("%s: unreadable (%s); using every fold model", path, exc)
        return None
    if not {Key.SAMPLE_ID, Key.FOLD} <= set(table.columns):
        log.warning("%s: no sample_id and fold columns; using every fold model", path)
        return None
    return table


def held_out_fold(model_dir: str | Path, sample_id: str) -> tuple[int | None, str]:
    """The fold whose model did not see ``sample_id``, and how the model is used, in words.

    A slide held out in fold k gets fold k's model, so its predictions are out-of-fold; this
    holds for a slide that is one of several in a unit (``s1;s2``). A slide that only trained
    (fold :data:`~slide2expr.keys.NOT_HELD_OUT`), a slide not in the table (a new slide) or a
    model folder without ``splits.tsv`` gets None: the average of every fold model.

    Returns
    -------
    tuple of (int or None, str)
        The fold, and a phrase for provenance and figure subtitles.
    """
    table = read_splits(model_dir)
    if table is None:
        return None, "all folds"
    members = table[Key.SAMPLE_ID].astype(str).map(split_unit)
    holds = members.apply(lambda ids: sample_id in ids)
    folds = sorted(set(table.loc[holds, Key.FOLD].astype(int)))
    if not folds:
        return None, f"a slide new to the model ({sample_id} not in {SPLITS})"
    held = [k for k in folds if k >= 0]
    if len(held) == 1:
        return held[0], f"fold {held[0]}, which held {sample_id} out"
    if held:
        log.warning("%s: units of %s are held out in several folds (%s); using all folds",
                    Path(model_dir) / SPLITS, sample_id, held)
        return None, f"{sample_id} held out in folds {held}"
    return None, f"{sample_id} was a training slide of every fold: NOT out-of-fold"
