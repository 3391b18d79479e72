"""Join expression with features into ``results/dataset.h5ad`` (docs/architecture.md).

Spot mode: one row per spot that has counts (and a position, and a patch embedding);
``obsm['X_{encoder}']`` holds the embeddings aligned by spot ID, ``obsm['spatial']`` the spot
centre in level-0 pixels (x, y) from the spot table; ``obs``: ``sample_id``, ``patient``,
``spot_id`` (and ``split`` when the sheet has one); ``obs_names`` ``f"{sample}_{spot}"``.

Bulk mode: one row per slide, or per patient with ``patient_slides='average'``; ``obs``
references the features file(s) (``features_path``, ``n_tiles``); no features are read, only
their shapes and attrs.

Both: ``X`` = log1p(counts per 10k) float32 for counts, log1p(values) for TPM/FPKM, the values
as given for ``log``; ``layers['counts']`` = the values as read; ``var_names`` = the union of
the genes of all inputs (a gene absent from one section is 0 there: files such as her2st's
drop undetected genes per section); genes zero everywhere are dropped and counted;
``var['gene_ids']`` = the inputs' gene IDs when they had IDs beside symbols (10x
``features/id``, a gene map; ``""`` for a gene without); ``uns['slide2expr']`` =
provenance; ``uns['log1p'] = {'base': None}`` when ``X`` is log1p (scanpy's record).

Spot mode adds scverse's spatial metadata (:mod:`slide2expr.join.scverse`):
``uns['spatial'][sample_id]`` (H&E ``images`` hires/lowres read from the slide,
``scalefactors``, ``metadata``) and ``obs['library_id']`` (categorical), so that
``sc.pl.spatial(adata[adata.obs.library_id == s], library_id=s, color=gene)`` draws the
spots on the H&E.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse
from tqdm.auto import tqdm

from slide2expr import __version__
from slide2expr.contracts._h5 import format_stamp
from slide2expr.contracts.dataset import CONTRACT as DATASET_CONTRACT
from slide2expr.contracts.dataset import VERSION as DATASET_VERSION
from slide2expr.contracts.dataset import uns_storable
from slide2expr.contracts.features import (
    FeatureAttrs,
    read_feature_meta,
    read_features,
    section_record,
    with_scalefactors,
)
from slide2expr.errors import InputError
from slide2expr.inputs.expression import (
    ORIENTATIONS,
    VALUE_TYPES,
    ExpressionTable,
    read_bulk_matrix,
    read_spot_counts,
)
from slide2expr.inputs.spaceranger import hd_scalefactors
from slide2expr.inputs.spots import match_spots_to_counts, read_scalefactors, read_spot_positions
from slide2expr.join.context import add_context, read_context_windows
from slide2expr.join.scverse import add_log1p, add_spatial_metadata
from slide2expr.join.views import read_section_views, stack_views
from slide2expr.keys import DEFAULT_ENCODER, Key, join_unit

log = logging.getLogger(__name__)

MODES = ("spot", "bulk")
ON_MISSING = ("error", "drop")
PATIENT_SLIDES = ("separate", "average")
MATCH_ON = ("sample_id", "patient")
_ENCODER_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class JoinParams:
    """Options of the join (the ``join:`` section of the config).

    Attributes
    ----------
    mode
        ``spot`` or ``bulk``.
    encoder
        Encoder name: features go to ``obsm[f"X_{encoder}"]`` (spot mode) and must carry
        this ``encoder`` attr.
    values
        What the expression values are: ``counts``, ``tpm``, ``fpkm`` or ``log``.
    orientation
        Bulk matrix layout: ``auto``, ``samples_x_genes``, ``genes_x_samples``.
    gene_map
        Gene ID -> symbol mapping file, or (bulk text/h5ad) the name of a symbol column.
    on_missing
        ``error``: stop when a sample (or spot) lacks expression or features, or the
        expression holds samples the sheet lacks; ``drop``: leave them out with a warning.
    patient_slides
        Bulk mode, several slides of a patient: ``separate`` rows, or ``average`` them into
        one row per patient (expression averaged; all their features files referenced).
    match_on
        Bulk mode: match matrix rows to the sheet's ``sample_id`` or its ``patient``.
    target_sum
        Counts are scaled to this total per unit before log1p (10,000: CP10k).
    sparse
        Store ``X`` and ``layers['counts']`` as CSR matrices (large spatial cohorts).
    context_um
        Spot mode: context windows to join (``tiling.context_um``), read from
        ``features/{encoder}/ctx{um}/`` beside the spot features (:mod:`.context`).
    neighbour_um
        Spot mode: radii of the per-section neighbour means (``join.neighbour_um``).
    slide_mean
        Spot mode: add the section's mean embedding (``join.slide_mean``).
    """

    mode: str = "spot"
    encoder: str = DEFAULT_ENCODER
    values: str = "counts"
    orientation: str = "auto"
    gene_map: str | None = None
    on_missing: str = "error"
    patient_slides: str = "separate"
    match_on: str = "sample_id"
    target_sum: float = 1e4
    sparse: bool = False
    context_um: tuple[float, ...] = ()
    neighbour_um: tuple[float, ...] = ()
    slide_mean: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("mode", MODES), ("values", VALUE_TYPES),
                              ("orientation", ORIENTATIONS), ("on_missing", ON_MISSING),
                              ("patient_slides", PATIENT_SLIDES), ("match_on", MATCH_ON)):
            if getattr(self, name) not in allowed:
                raise InputError(None, f"join.{name} is {getattr(self, name)!r}, not one of "
                                 f"{', '.join(allowed)}", f"fix join.{name} in the config")
        if not _ENCODER_NAME.match(self.encoder):
            raise InputError(None, f"encoder name {self.encoder!r} cannot name an obsm key",
                             "use letters, digits, '.', '_' and '-'")
        if self.target_sum <= 0:
            raise InputError(None, "join.target_sum must be positive", "fix the config")

    @property
    def obsm_key(self) -> str:
        """``X_{encoder}``."""
        return f"X_{self.encoder}"


@dataclass
class _Report:
    """What was dropped or filled, for the log and ``uns``."""

    dropped: dict[str, Any] = field(default_factory=dict)
    genes_filled_zero: dict[str, int] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)


# -- entry points ---------------------------------------------------------------------------

def build_dataset(
    sheet: pd.DataFrame,
    features_dir: str | Path,
    params: JoinParams,
    *,
    expression: str | Path | None = None,
    run_config: dict[str, Any] | None = None,
    sheet_path: str | Path | None = None,
):
    """Build the dataset AnnData.

    Parameters
    ----------
    sheet
        The sample sheet (:func:`slide2expr.inputs.samples.read_sample_sheet`), indexed by
        ``sample_id``.
    features_dir
        Folder holding ``{sample_id}.h5`` features files (``features/{encoder}/{tiling}``).
    params
        Join options.
    expression
        Bulk mode: the expression matrix (TSV/CSV/h5ad).
    run_config
        The run's configuration, recorded in ``uns['slide2expr']['config']``.
    sheet_path
        The sample sheet's path, for errors and provenance.

    Returns
    -------
    anndata.AnnData
        As described in the module docstring.

    Raises
    ------
    InputError
        Naming the file and the count for every bad input.
    """
    features_dir = Path(features_dir)
    report = _Report()
    if params.mode == "spot":
        parts = _spot_parts(sheet, features_dir, params, report, sheet_path)
    else:
        if expression is None:
            raise InputError(None, "bulk mode needs an expression matrix",
                             "set join.expression in the config (or --expression)")
        parts = _bulk_parts(sheet, features_dir, params, report, Path(expression), sheet_path)
    obs, counts, genes, gene_ids, obsm, feature_attrs = parts
    adata = _assemble(obs, counts, genes, obsm, params, report, gene_ids=gene_ids)
    adata.uns[Key.PROVENANCE] = _provenance(params, report, feature_attrs, adata,
                                          expression=expression, run_config=run_config,
                                          sheet_path=sheet_path, features_dir=features_dir)
    add_log1p(adata, params.values)
    if params.mode == "spot":
        slides = {str(sid): (str(sheet.loc[sid, "slide"]) or None) for sid in sheet.index}
        add_spatial_metadata(adata, slides, feature_attrs)
    return adata


# -- spot mode ------------------------------------------------------------------------------

def _spot_parts(sheet, features_dir, params, report, sheet_path):
    for column in ("counts", "spots"):
        if column not in sheet.columns:
            raise InputError(sheet_path, f"spot mode needs a {column!r} column in the sample sheet",
                             "add the counts and spots files of every sample")
    sections: dict[str, _SpotSection] = {}
    for sample_id, row in tqdm(sheet.iterrows(), total=len(sheet), desc="join spots",
                               unit="section", disable=None):
        sections[sample_id] = _spot_section(sample_id, row, features_dir, params,
                                            with_split="split" in sheet.columns)
    dropped_no_features = {sid: sec.dropped for sid, sec in sections.items() if sec.dropped}
    if dropped_no_features:
        report.dropped["spots_without_features"] = dropped_no_features
    feature_attrs = {sid: sec.attrs for sid, sec in sections.items()}
    _check_embed_dims(feature_attrs, [sec.embedding for sec in sections.values()], sheet.index)
    obs = pd.concat([sec.obs for sec in sections.values()], ignore_index=True)
    obs.index = pd.Index(obs[Key.SAMPLE_ID] + "_" + obs[Key.SPOT_ID], name="unit")
    dup = obs.index[obs.index.duplicated()].unique()
    if len(dup):
        raise InputError(sheet_path, f"{len(dup)} spot name(s) f'{{sample}}_{{spot}}' collide "
                         f"(e.g. {dup[0]})", "rename the samples so names stay unique")
    matrix, genes, gene_ids = _union_genes([sec.table for sec in sections.values()],
                                           list(sheet.index), report)
    obsm = _spot_obsm(sections, obs, params, report)
    return obs, matrix, genes, gene_ids, obsm, feature_attrs


@dataclass
class _SpotSection:
    """One section's spots, joined: their obs rows, counts, positions and feature blocks."""

    attrs: FeatureAttrs
    obs: pd.DataFrame
    table: Any
    #: Spot centres, level-0 px and micrometres (NaN without a slide mpp).
    spatial: np.ndarray
    spatial_um: np.ndarray
    embedding: np.ndarray
    windows: dict[str, np.ndarray]
    window_record: Any
    views: dict[str, np.ndarray]
    #: Spots with counts but no features, dropped (``join.on_missing: drop``).
    dropped: int = 0


def _spot_section(sample_id: str, row: pd.Series, features_dir: Path, params: JoinParams, *,
                  with_split: bool) -> _SpotSection:
    """Counts, positions and features of one section's spots, matched spot by spot."""
    fpath = features_dir / f"{sample_id}.h5"
    feats, fspots, attrs = _read_spot_features(fpath, params)
    patch_um = attrs.spot_diameter_um  # Visium HD bins are grouped to the patches
    counts = read_spot_counts(row["counts"], values=params.values, gene_map=params.gene_map,
                              patch_um=patch_um)
    positions = read_spot_positions(row["spots"], patch_um=patch_um)
    positions = match_spots_to_counts(positions, counts.ids, spots_source=row["spots"],
                                      counts_source=row["counts"])
    scalefactors = hd_scalefactors(read_scalefactors(row["spots"]), row["spots"], patch_um)
    if scalefactors:
        attrs = with_scalefactors(attrs, scalefactors)
    _check_inside(positions, attrs, spots_path=row["spots"], features_path=fpath)
    positions, dropped = _spots_with_features(positions, fspots, fpath, params)
    order = pd.Index(fspots).get_indexer(positions["spot_id"])
    embedding = np.asarray(feats[order], dtype=np.float32)
    spot_ids = positions["spot_id"].to_list()
    ctx, window_record = read_context_windows(
        features_dir, sample_id, spot_ids, params.context_um,
        encoder=params.encoder, embed_dim=embedding.shape[1])
    views = read_section_views(features_dir, sample_id, spot_ids, params.context_um,
                               encoder=params.encoder)
    # micrometres for the neighbour radii; NaN when the features record no slide mpp
    mpp = float(attrs.slide_mpp) if attrs.slide_mpp else float("nan")
    obs = pd.DataFrame({
        "sample_id": sample_id,
        "patient": row["patient"],
        "spot_id": positions["spot_id"].to_numpy(),
        **({"split": row["split"]} if with_split else {}),
    })
    return _SpotSection(attrs=attrs, obs=obs, table=counts.select(spot_ids),
                        spatial=positions[["x", "y"]].to_numpy(np.float64),
                        spatial_um=positions[["x", "y"]].to_numpy(np.float64) * mpp,
                        embedding=embedding, windows=ctx, window_record=window_record,
                        views=views, dropped=dropped)


def _spots_with_features(positions: pd.DataFrame, fspots: Any, fpath: Path,
                         params: JoinParams) -> tuple[pd.DataFrame, int]:
    """The spots with counts that have features; those without are an error, or dropped
    with a warning under ``join.on_missing: drop`` (returns how many)."""
    have = positions["spot_id"].isin(set(fspots))
    dropped = 0
    if not have.all():
        n = int((~have).sum())
        example = ", ".join(positions.loc[~have, "spot_id"].head(3))
        if params.on_missing == "error":
            raise InputError(fpath, f"{n} of {len(positions)} spot(s) with counts have no "
                             f"features (e.g. {example})",
                             "re-run tile and extract for this sample, or set "
                             "join.on_missing: drop")
        log.warning("%s: %d spot(s) with counts have no features; dropped (e.g. %s)",
                    fpath, n, example)
        dropped = n
        positions = positions[have]
    extra = len(set(fspots) - set(positions["spot_id"]))
    if extra:
        log.info("%s: %d feature row(s) belong to spots without counts; ignored", fpath, extra)
    return positions, dropped


def _spot_obsm(by_sample: dict[str, _SpotSection], obs: pd.DataFrame, params: JoinParams,
               report: Any) -> dict[str, np.ndarray]:
    """``obsm``: positions, embeddings, context windows, augmentation views and the derived
    blocks (neighbour means, slide mean); what was joined is recorded in ``report``."""
    sections = list(by_sample.values())
    windows: dict[str, list[np.ndarray]] = {}
    for sec in sections:
        for name, block in sec.windows.items():
            windows.setdefault(name, []).append(block)
    obsm = {"spatial": np.vstack([sec.spatial for sec in sections]),
            params.obsm_key: np.vstack([sec.embedding for sec in sections])}
    for name, blocks in windows.items():
        obsm[Key.context(params.encoder, name)] = np.vstack(blocks)
    obsm.update(stack_views({sid: sec.views for sid, sec in by_sample.items()}))
    derived = add_context(obsm, encoder=params.encoder, sections=obs[Key.SAMPLE_ID].to_numpy(),
                          xy_um=np.vstack([sec.spatial_um for sec in sections]),
                          neighbour_um=params.neighbour_um, slide_mean=params.slide_mean)
    report.context = {"blocks": [*windows, *derived],
                      "windows": {sid: sec.window_record for sid, sec in by_sample.items()},
                      "neighbour_um": list(params.neighbour_um), "slide_mean": params.slide_mean,
                      "neighbours": "same section only; a spot with none in reach gets its own "
                                    "embedding"}
    return obsm


def _read_spot_features(path: Path, params: JoinParams):
    fs = read_features(path)
    _check_feature_attrs(path, fs.attrs, params)
    if fs.spot_ids is None:
        raise InputError(path, "has no spot_ids: it is not a spot-mode features file",
                         "use features/{encoder}/spots/ (spot patches), not the grid")
    feats, spot_ids, attrs = fs.features, fs.spot_ids, fs.attrs
    if feats.ndim != 2 or feats.shape[0] != len(spot_ids) or len(fs.coords) != len(spot_ids):
        raise InputError(path, f"features {feats.shape}, spot_ids ({len(spot_ids)},) and coords "
                         f"({len(fs.coords)}, 2) do not match", "re-run the extract stage")
    dup = pd.Index(spot_ids)[pd.Index(spot_ids).duplicated()].unique()
    if len(dup):
        raise InputError(path, f"{len(dup)} duplicate spot ID(s) in spot_ids (e.g. "
                         f"{', '.join(dup[:3])})", "re-run the tile and extract stages")
    bad = int((~np.isfinite(feats)).any(axis=1).sum())
    if bad:
        raise InputError(path, f"{bad} feature row(s) have NaN or infinite values",
                         "re-run the extract stage")
    return feats, spot_ids, attrs


def _check_inside(positions: pd.DataFrame, attrs: FeatureAttrs, *, spots_path,
                  features_path) -> None:
    if attrs.level0_width is None or attrs.level0_height is None:
        log.warning("%s: no level0_width/height attrs; spot centres not checked against the slide",
                    features_path)
        return
    w, h = float(attrs.level0_width), float(attrs.level0_height)
    x, y = positions["x"].to_numpy(), positions["y"].to_numpy()
    outside = (x < 0) | (y < 0) | (x >= w) | (y >= h)
    if outside.any():
        example = positions.loc[outside, "spot_id"].iloc[0]
        raise InputError(spots_path, f"{int(outside.sum())} of {len(positions)} spot centre(s) lie "
                         f"outside the slide ({w:.0f} x {h:.0f} px level 0), e.g. spot {example!r}",
                         "check that the spot table belongs to this slide and is in full-resolution "
                         "pixels")


# -- bulk mode ------------------------------------------------------------------------------

def _bulk_parts(sheet, features_dir, params, report, expression: Path, sheet_path):
    key_col = params.match_on
    keys = sheet[key_col].astype(str)
    table = read_bulk_matrix(expression, values=params.values, orientation=params.orientation,
                             gene_map=params.gene_map, sample_ids=list(dict.fromkeys(keys)))
    sheet = _sheet_with_expression(sheet, keys, table, expression=expression, params=params,
                                   report=report)
    meta = {sid: _bulk_feature_meta(features_dir / f"{sid}.h5", params) for sid in sheet.index}
    _check_embed_dims(meta, None, sheet.index)
    feature_attrs = meta
    rows = []
    profiles = []
    if params.patient_slides == "average":
        groups = sheet.groupby("patient", sort=False)
    else:
        groups = ((sid, sheet.loc[[sid]]) for sid in sheet.index)
    for name, members in groups:
        values = table.select(list(members[key_col].astype(str))).dense().mean(axis=0)
        profiles.append(values)
        rows.append((str(name), _bulk_unit(name, members, features_dir, meta,
                                           sheet_path=sheet_path)))
    obs = pd.DataFrame([r for _, r in rows], index=pd.Index([n for n, _ in rows], name="unit"))
    matrix = np.vstack(profiles)
    gene_ids = None if table.gene_ids is None else pd.Series(table.gene_ids, index=table.genes)
    return obs, matrix, table.genes, gene_ids, {}, feature_attrs


def _sheet_with_expression(sheet: pd.DataFrame, keys: pd.Series, table: Any, *,
                           expression: Path, params: JoinParams,
                           report: Any) -> pd.DataFrame:
    """The sheet's rows whose key has expression; a sheet row without expression, or an
    expression sample not in the sheet, is an error, or dropped under ``join.on_missing:
    drop`` (counted in ``report``)."""
    key_col = params.match_on
    present = keys.isin(set(table.ids))
    unused = table.ids[~table.ids.isin(set(keys))]
    if not (~present).any() and not len(unused):
        return sheet
    missing = sorted(keys[~present].unique())
    parts = []
    if missing:
        parts.append(f"{len(missing)} {key_col}(s) of the sample sheet have no expression "
                     f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''})")
    if len(unused):
        parts.append(f"{len(unused)} expression sample(s) are not in the sample sheet "
                     f"({', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''})")
    if params.on_missing == "error":
        raise InputError(expression, "; ".join(parts),
                         f"make the matrix IDs match the sheet's {key_col} column, or set "
                         "join.on_missing: drop")
    log.warning("%s: %s; dropped", expression, "; ".join(parts))
    report.dropped["sheet_without_expression"] = len(missing)
    report.dropped["expression_not_in_sheet"] = len(unused)
    sheet = sheet[present.to_numpy()]
    if sheet.empty:
        raise InputError(expression, "no sample of the sheet has expression",
                         f"make the matrix IDs match the sheet's {key_col} column")
    return sheet


def _bulk_unit(name: Any, members: pd.DataFrame, features_dir: Path,
               meta: dict[str, FeatureAttrs], *,
               sheet_path: Path | None) -> dict[str, Any]:
    """The obs row of one unit: a slide, or a patient's slides averaged."""
    sids = list(members.index)
    row = {
        "sample_id": join_unit(sids),
        "patient": str(members["patient"].iloc[0]),
        "features_path": join_unit(features_dir / f"{s}.h5" for s in sids),
        "n_tiles": int(sum(meta[s].n_tiles for s in sids)),  # type: ignore[misc]
        "n_slides": len(sids),
        "slide": join_unit(members.loc[s, "slide"] for s in sids),
    }
    # region samples: folds may group by section; a section's spot truth (counts,
    # spots) lets the report score tile maps against the spots (report.map_vs_spots)
    for column in ("section", "roi", "counts", "spots"):
        if column in members.columns:
            row[column] = join_unit(dict.fromkeys(str(v) for v in members[column]))
    if "split" in members.columns:
        splits = set(members["split"])
        if len(splits) > 1:
            raise InputError(sheet_path, f"patient {name!r} has slides in different splits "
                             f"({', '.join(sorted(splits))})", "give all slides of a patient one split")
        row["split"] = splits.pop()
    return row


def _bulk_feature_meta(path: Path, params: JoinParams) -> FeatureAttrs:
    """The attrs of a features file, ``n_tiles`` and ``embed_dim`` from its shape; the
    feature rows are never read."""
    meta = read_feature_meta(path)
    shape, attrs = meta.shape, meta.attrs.copy()
    _check_feature_attrs(path, attrs, params)
    if len(shape) != 2 or shape[0] == 0:
        raise InputError(path, f"features have shape {shape}, expected (n_tiles > 0, D)",
                         "re-run the tile and extract stages for this sample")
    if attrs.n_done is not None and int(attrs.n_done) != shape[0]:
        raise InputError(path, "is an incomplete features file", "re-run the extract stage")
    attrs.n_tiles = int(shape[0])
    attrs.embed_dim = int(shape[1])
    return attrs


# -- shared ---------------------------------------------------------------------------------

def _check_feature_attrs(path: Path, attrs: FeatureAttrs, params: JoinParams) -> None:
    sid = attrs.sample_id
    if sid not in (None, "") and str(sid) != path.stem:
        raise InputError(path, f"holds the features of sample {sid!r}, not {path.stem!r}",
                         "re-run the extract stage for this sample")
    enc = attrs.encoder
    if enc not in (None, "") and str(enc) != params.encoder:
        raise InputError(path, f"was made with encoder {enc!r}, but the join uses "
                         f"{params.encoder!r}", "use the features folder of that encoder")


def _check_embed_dims(attrs: dict[str, FeatureAttrs], embeddings: list[np.ndarray] | None,
                      ids) -> None:
    dims = {}
    for i, sid in enumerate(ids):
        if embeddings is not None:
            dims[sid] = int(embeddings[i].shape[1])
        else:
            dims[sid] = int(attrs[sid].embed_dim or 0)
    if len(set(dims.values())) > 1:
        first = next(iter(dims))
        odd = next(s for s, d in dims.items() if d != dims[first])
        raise InputError(None, f"features differ in dimension: {first} has {dims[first]}, "
                         f"{odd} has {dims[odd]}", "extract every sample with the same encoder")


def _union_genes(tables: list[ExpressionTable], names: list[str], report: _Report):
    """Stack tables over the union of their genes (first-seen order); absent genes are 0.

    Returns the CSR matrix, the genes and their IDs (first input that has one; ``None``
    when no input had gene IDs).
    """
    genes = pd.Index(pd.unique(np.concatenate([np.asarray(t.genes) for t in tables])))
    with_ids = [pd.Series(t.gene_ids, index=t.genes) for t in tables if t.gene_ids is not None]
    gene_ids = None
    if with_ids:
        first = pd.concat(with_ids)
        gene_ids = first[~first.index.duplicated()].reindex(genes)
    blocks = []
    for name, t in zip(names, tables, strict=True):
        cols = genes.get_indexer(t.genes)
        m = sparse.csr_matrix(t.matrix).tocoo()
        blocks.append(sparse.csr_matrix((m.data, (m.row, cols[m.col])), shape=(t.shape[0], len(genes))))
        filled = len(genes) - len(t.genes)
        if filled:
            report.genes_filled_zero[str(name)] = int(filled)
    if report.genes_filled_zero:
        log.info("genes: union of %d; filled with 0 where a section lacks them: %s", len(genes),
                 ", ".join(f"{k} {v}" for k, v in report.genes_filled_zero.items()))
    return sparse.vstack(blocks, format="csr"), genes, gene_ids


def transform(counts, *, values: str, target_sum: float = 1e4):
    """``X`` from the values as read.

    Parameters
    ----------
    counts
        Units x genes, dense or CSR, non-negative (except ``values='log'``).
    values
        ``counts``: log1p(counts / row total * target_sum); ``tpm``/``fpkm``: log1p(values);
        ``log``: unchanged.
    target_sum
        The total each unit is scaled to (10,000: CP10k).

    Returns
    -------
    The transformed matrix, float32, same sparsity as ``counts``.
    """
    is_sparse = sparse.issparse(counts)
    m = sparse.csr_matrix(counts, dtype=np.float64) if is_sparse else np.asarray(counts, np.float64)
    if values == "counts":
        totals = np.asarray(m.sum(axis=1)).ravel()
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
        m = sparse.diags(scale) @ m if is_sparse else m * scale[:, None]
    if values in ("counts", "tpm", "fpkm"):
        if is_sparse:
            m = m.tocsr()
            m.data = np.log1p(m.data)
        else:
            m = np.log1p(m)
    return m.astype(np.float32)


def _assemble(obs, counts, genes, obsm, params: JoinParams, report: _Report, *,
              gene_ids: pd.Series | None = None):
    import anndata as ad

    counts = sparse.csr_matrix(counts, dtype=np.float64)
    if params.values == "counts":
        totals = np.asarray(counts.sum(axis=1)).ravel()
        empty = totals <= 0
        if empty.any():
            examples = ", ".join(obs.index[empty][:3])
            log.warning("%d unit(s) have no counts at all and are dropped (e.g. %s)",
                        int(empty.sum()), examples)
            report.dropped["units_without_counts"] = int(empty.sum())
            keep = np.flatnonzero(~empty)
            counts, obs = counts[keep], obs.iloc[keep]
            obsm = {k: v[keep] for k, v in obsm.items()}
    if counts.shape[0] == 0:
        raise InputError(None, "no unit is left to join", "check the inputs and join.on_missing")
    nonzero = np.asarray((counts != 0).sum(axis=0)).ravel() > 0
    n_zero = int((~nonzero).sum())
    if n_zero:
        log.info("dropping %d gene(s) that are zero in every unit", n_zero)
        counts = counts[:, np.flatnonzero(nonzero)]
        genes = genes[nonzero]
    report.dropped["genes_all_zero"] = n_zero
    x = transform(counts, values=params.values, target_sum=params.target_sum)
    layer = counts.astype(np.float32)
    if not params.sparse:
        x, layer = x.toarray(), layer.toarray()
    obs = obs.copy()
    for col in obs.columns:
        if obs[col].dtype == object:
            obs[col] = obs[col].astype(str)
    var = pd.DataFrame(index=pd.Index(genes.astype(str), name="gene"))
    if gene_ids is not None:
        ids = gene_ids.reindex(pd.Index(genes)).fillna("").astype(str).to_numpy()
        var[Key.GENE_IDS] = ids
    adata = ad.AnnData(X=x, obs=obs, var=var, layers={"counts": layer})
    for key, value in obsm.items():
        adata.obsm[key] = value
    return adata


_TRANSFORMS = {"counts": "log1p(CP10k)", "tpm": "log1p", "fpkm": "log1p", "log": "none"}


def _provenance(params, report, feature_attrs, adata, *, expression, run_config, sheet_path,
                features_dir) -> dict[str, Any]:
    first = next(iter(feature_attrs.values()), FeatureAttrs())
    per_sample = {sid: section_record(a) for sid, a in feature_attrs.items()}
    transform_name = _TRANSFORMS[params.values]
    if params.values == "counts" and params.target_sum != 1e4:
        transform_name = f"log1p(counts per {params.target_sum:g})"
    prov = {
        **format_stamp(DATASET_CONTRACT, DATASET_VERSION),
        "version": __version__,
        "stage": "join",
        "mode": params.mode,
        "encoder": params.encoder,
        "weights": first.weights,
        "embed_dim": int(first.embed_dim if first.embed_dim is not None
                         else adata.obsm[params.obsm_key].shape[1]
                         if params.obsm_key in adata.obsm else 0),
        "obsm_key": params.obsm_key if params.mode == "spot" else None,
        "target_mpp": first.target_mpp,
        "tile_px": first.tile_px,
        "spot_diameter_um": first.spot_diameter_um,
        "tiling": "spots" if params.mode == "spot" else "grid",
        "values": params.values,
        "transform": transform_name,
        "target_sum": float(params.target_sum),
        "genes": "union over inputs; a gene absent from an input is 0 there; genes zero in "
                 "every unit dropped",
        "n_genes_dropped_all_zero": int(report.dropped.get("genes_all_zero", 0)),
        "genes_filled_zero": report.genes_filled_zero,
        "dropped": {k: v for k, v in report.dropped.items() if k != "genes_all_zero"},
        "samples": per_sample,
        "params": asdict(params),
        "config": json.dumps(run_config if run_config is not None else asdict(params), default=str),
        "sample_sheet": str(sheet_path) if sheet_path else None,
        "expression": str(expression) if expression else None,
        "features_dir": str(features_dir),
        "context": report.context or None,
    }
    return uns_storable(prov)
