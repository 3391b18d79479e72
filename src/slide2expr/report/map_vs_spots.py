"""Map versus spots: a bulk head's tile map read at measured spots.

When the regions of a bulk run carry their section's spot truth (the region sheet's
``counts`` and ``spots``, written by ``slide2expr pseudobulk`` and carried into ``obs`` by the
bulk join), each held-out section's tile map is read at its spot centres and correlated, gene
by gene, with the measured spot expression (log1p CP10k). Four maps, all on the same spots:

- ``head``: the bulk head of the fold that held the region out, applied tile by tile (what
  the heatmap stage paints);
- ``ridge``: ridge on mean tile embeddings fitted on the fold's training regions (the train
  stage's ridge baseline, alpha chosen the same way), applied tile by tile: the linear bulk
  baseline;
- ``floor``: every tile painted with the head's own out-of-fold prediction for its region
  (``layers['predicted']``): what the bulk model gets without localising anything inside a
  region;
- ``region_truth``: every tile painted with its region's *measured* pseudo-bulk: the best any
  map that is flat inside each region can do (an oracle, not a model);
- ``spot_ridge``: ridge trained on the training regions' *spots* (each spot's tile embedding
  against its measured expression): a linear spot-trained model on the same grid tiles;
- ``ceiling`` (when a spot run's predictions are given): the spot-trained default model's
  out-of-fold prediction at each spot (its own spot-centred patches and context), from a spot
  run of the same sections whose folds hold out the same sections (one section a fold).
  Only spots that run predicted are scored (every method on the same spots).

A spot is read at the grid tile that contains its centre (else the nearest tile of its region
within one tile edge; spots farther from any tile are left out). Per section and method: the
mean per-gene Pearson r over the top genes (by mean expression in the fold's training regions)
and over all genes, with percentile bootstrap CIs over spots (resampled within the section;
the same resamples for every method, so differences are paired); pooled: the mean over
sections, resampling spots within every section at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from slide2expr.errors import InputError
from slide2expr.keys import NOT_HELD_OUT, Key

log = logging.getLogger(__name__)

#: The maps scored on every run; ``ceiling`` joins them when a spot run's predictions are given.
METHODS = ("head", "ridge", "floor", "region_truth", "spot_ridge")
CEILING = "ceiling"
#: obs columns that hold a region's spot truth (``slide2expr pseudobulk``).
TRUTH_COLUMNS = ("counts", "spots", "features_path")
RIDGE_ALPHAS = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6)


def has_spot_truth(obs: pd.DataFrame) -> bool:
    """Whether a bulk run's ``obs`` names each region's spot truth."""
    return all(c in obs.columns for c in TRUTH_COLUMNS) and bool(
        (obs["counts"].astype(str) != "").all() and (obs["spots"].astype(str) != "").all())


@dataclass
class _Region:
    sample_id: str
    fold: int
    features: np.ndarray
    coords: np.ndarray
    size0: float
    bulk: np.ndarray  # measured log1p CP10k, model genes
    predicted: np.ndarray  # the head's out-of-fold prediction for the region


@dataclass
class _SectionSpots:
    """A section's spots that fall on a region's tile: which region and tile, and truth."""

    region: np.ndarray  # index into the section's regions
    tile: np.ndarray  # index into that region's tiles
    truth: np.ndarray  # (n_spots, G) log1p CP10k
    spot_id: np.ndarray  # the spots' ids (counts table rows)

    def subset(self, keep: np.ndarray) -> _SectionSpots:
        """These spots where ``keep`` (a boolean mask) holds."""
        return _SectionSpots(region=self.region[keep], tile=self.tile[keep],
                             truth=self.truth[keep], spot_id=self.spot_id[keep])


#: One spot set's training rows: (fold, section, tile embeddings, measured expression).
SpotRows = list[tuple[int, str, np.ndarray, np.ndarray]]


@dataclass
class SpotTruth:
    """A bulk run's regions read with their sections' spots (:func:`read_spot_truth`)."""

    regions: dict[str, _Region]  # by sample id
    by_section: dict[str, tuple[np.ndarray, list[_Region], _SectionSpots]]
    spot_rows: SpotRows  # every region's spots on its tiles, for spot-trained ridge
    genes: list[str]


def read_spot_truth(adata: Any, *, predicted: np.ndarray | None = None) -> SpotTruth:
    """Read every region's tiles and its section's spots that fall on them.

    Parameters
    ----------
    adata
        A bulk run's dataset or predictions (obs ``sample_id``, ``fold``, ``features_path``,
        ``counts``, ``spots``, ``section``; X measured log1p CP10k).
    predicted
        ``(n_regions, G)`` region predictions (the floor); default: the measured values.

    Returns
    -------
    SpotTruth
        Regions by sample id; per section (in order of appearance) its members' row numbers,
        its regions and its spots on their tiles; and each region's spots as training rows.
    """
    obs = adata.obs
    genes = [str(g) for g in adata.var_names]
    measured = np.asarray(adata.X, dtype=np.float64)
    folds = obs[Key.FOLD].astype(int).to_numpy()
    sections = _sections(obs)
    ids = obs[Key.SAMPLE_ID].astype(str).to_numpy()
    regions = {sid: _read_region(obs.iloc[i], measured[i], int(folds[i]),
                                 None if predicted is None else predicted[i])
               for i, sid in enumerate(ids)}
    by_section, spot_rows = {}, []
    for section in dict.fromkeys(sections):
        members = np.flatnonzero(sections == section)
        regs = [regions[ids[i]] for i in members]
        spots = _section_spots(obs.iloc[members[0]], regs, genes)
        by_section[section] = (members, regs, spots)
        for k, region in enumerate(regs):
            take = spots.region == k
            spot_rows.append((region.fold, section, region.features[spots.tile[take]],
                              spots.truth[take]))
    return SpotTruth(regions=regions, by_section=by_section, spot_rows=spot_rows, genes=genes)


def _sections(obs: pd.DataFrame) -> np.ndarray:
    return (obs["section"] if "section" in obs else obs["counts"]).astype(str).to_numpy()


def read_ceiling(path: str | Path, genes: list[str],
                 sections: list[str]) -> dict[str, pd.DataFrame]:
    """A spot run's out-of-fold predictions (the ceiling), per section: spots x ``genes``.

    The spot run's sample ids must be the bulk run's sections and each of its folds must hold
    out exactly one of them (``train.folds: loo``, ``group_by: sample_id``), so that a
    section's spots were predicted by a model that never saw that section, as the bulk heads'
    maps were. Genes the spot run lacks are NaN.
    """
    import anndata as ad

    spot = ad.read_h5ad(path)
    obs = spot.obs
    if Key.PREDICTED not in spot.layers or Key.SPOT_ID not in obs or Key.FOLD not in obs:
        raise InputError(path, "is not a spot run's predictions (needs obs spot_id and fold "
                         "and layers['predicted'])",
                         "give results/predictions/{head}.h5ad of a spot-mode run")
    samples = obs[Key.SAMPLE_ID].astype(str).to_numpy()
    folds = obs[Key.FOLD].astype(int).to_numpy()
    values = pd.DataFrame(np.asarray(spot.layers[Key.PREDICTED], dtype=np.float64),
                          columns=[str(g) for g in spot.var_names]).reindex(columns=genes)
    out = {}
    for section in sections:
        rows = samples == section
        held = set(folds[rows].tolist())
        if not rows.any() or len(held) != 1 or NOT_HELD_OUT in held:
            raise InputError(path, f"section {section} is not held out by exactly one fold of "
                             f"the spot run (folds {sorted(held)})",
                             "train the ceiling run with train.folds: loo and group_by: "
                             "sample_id on the same sections")
        fold = held.pop()
        others = sorted(set(samples[folds == fold]) - {section})
        if others:
            raise InputError(path, f"fold {fold} of the spot run holds out {section} and "
                             f"{', '.join(others)}, but the bulk run holds out one section a "
                             "fold", "train the ceiling run with train.folds: loo and "
                             "group_by: sample_id")
        part = values[rows]
        part.index = obs[Key.SPOT_ID].astype(str).to_numpy()[rows]
        out[section] = part
    return out


def score_maps(adata: Any, model_dir: str | Path | None, *, top_n: int = 50,
               n_boot: int = 1000, seed: int = 0, alphas: tuple[float, ...] = RIDGE_ALPHAS,
               heads: dict[int, Any] | None = None, ceiling: str | Path | None = None
               ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Map-versus-spots scores of a bulk run (see the module docstring).

    Parameters
    ----------
    adata
        The predictions AnnData (obs ``sample_id``, ``fold``, ``features_path``, ``counts``,
        ``spots``, and ``section``; X measured log1p CP10k).
    model_dir
        ``results/models/{head}``: the fold models.
    top_n
        Size of the top-genes set.
    n_boot
        Bootstrap resamples of the spots (0: no CIs).
    seed
        Seeds the bootstrap.
    alphas
        Ridge penalties the ridge map and the spot ridge choose from (inner CV grouped by
        section, as the train stage's ridge baseline).
    heads
        ``{fold: model}`` with ``genes`` and ``predict_tiles`` instead of loading the fold
        models from ``model_dir``.
    ceiling
        A spot run's predictions (``results/predictions/{head}.h5ad`` of the same sections,
        one section a fold): scored as ``ceiling``, on the spots it predicted
        (:func:`read_ceiling`). None: no ``ceiling`` row.

    Returns
    -------
    tuple of (pandas.DataFrame, dict)
        One row per section and method (``section, method, n_spots, n_regions, mean_r_top,
        ci_top_low, ci_top_high, mean_r_all, ci_all_low, ci_all_high``) plus the pooled rows
        (``section`` = ``"all"``), and the summary block (pooled values, paired differences of
        the head against floor and ridge, and the head as a share of the ceiling).
    """
    run = _scoring(adata, model_dir, heads=heads, ceiling=ceiling, alphas=alphas, seed=seed,
                   top_n=top_n, n_boot=n_boot)
    rows, boot_means = [], {}
    for section, (members, regs, spots) in run.truth.by_section.items():
        _score_section(run, section, members, regs, spots, rows=rows, boot_means=boot_means)
    if not rows:
        raise InputError(None, "no held-out section has spots on its regions' tiles",
                         "check the region sheet's counts and spots columns")
    table = pd.DataFrame(rows)
    table = pd.concat([table, _pooled(table, boot_means)], ignore_index=True)
    return table, _summary(table, boot_means, top_n=top_n, n_boot=n_boot)


@dataclass
class _Scoring:
    """What every section of a map-versus-spots run is scored with."""

    folds: np.ndarray
    measured: np.ndarray
    genes: list[str]
    truth: Any
    heads: dict[int, Any]
    spot_run: dict[str, pd.DataFrame] | None
    alphas: tuple[float, ...]
    seed: int
    top_n: int
    n_boot: int
    section_of: dict[str, str]
    rng: np.random.Generator


def _scoring(adata: Any, model_dir: str | Path | None, *, heads: dict[int, Any] | None,
             ceiling: str | Path | None, alphas: tuple[float, ...], seed: int, top_n: int,
             n_boot: int) -> _Scoring:
    """What the sections are scored with: folds, measured values, the fold models, the spot
    truth and the ceiling's spot run (read first: a spot run with the wrong folds is refused
    before any slow work)."""
    from slide2expr.predict import load_trained_head

    obs = adata.obs
    folds = obs[Key.FOLD].astype(int).to_numpy()
    measured = np.asarray(adata.X, dtype=np.float64)
    genes = [str(g) for g in adata.var_names]
    # the ceiling first: a spot run with the wrong folds is refused before any slow work
    spot_run = (read_ceiling(ceiling, genes, list(dict.fromkeys(_sections(obs))))
                if ceiling is not None else None)
    if heads is None:
        heads = {int(f): load_trained_head(model_dir, fold=int(f)) for f in np.unique(folds)
                 if f != NOT_HELD_OUT}
    truth = read_spot_truth(adata, predicted=np.asarray(adata.layers[Key.PREDICTED],
                                                        dtype=np.float64))
    return _Scoring(folds=folds, measured=measured, genes=genes, truth=truth, heads=heads,
                    spot_run=spot_run, alphas=alphas, seed=seed, top_n=top_n, n_boot=n_boot,
                    section_of=dict(zip(obs[Key.SAMPLE_ID].astype(str), _sections(obs),
                                        strict=True)),
                    rng=np.random.default_rng(seed))


def _score_section(run: _Scoring, section: str, members: np.ndarray, regs: Any, spots: Any, *,
                   rows: list[dict[str, Any]],
                   boot_means: dict[tuple[str, str], np.ndarray]) -> None:
    """One held-out section's maps scored at its spots: a table row a method in ``rows``,
    the bootstrap means in ``boot_means``; a section not held out, or with fewer than 3
    spots on its regions' tiles, is skipped with a warning."""
    held = run.folds[members] != NOT_HELD_OUT
    if run.spot_run is not None:
        spots = spots.subset(np.isin(spots.spot_id, run.spot_run[section].index))
    if not held.all() or len(spots.region) < 3:
        log.warning("map vs spots: section %s skipped (%d spots on tiles, %d regions never "
                    "held out)", section, len(spots.region), int((~held).sum()))
        return
    maps = _section_maps(regs, spots, run.truth.regions, run.heads, run.genes,
                         run.truth.spot_rows, alphas=run.alphas, sections=run.section_of,
                         seed=run.seed)
    if run.spot_run is not None:
        maps[CEILING] = run.spot_run[section].loc[spots.spot_id].to_numpy()
    folds = run.folds
    train_mask = ~np.isin(folds, list(set(folds[members]))) & (folds != NOT_HELD_OUT)
    top = np.argsort(-run.measured[train_mask].mean(axis=0))[:run.top_n]
    resamples = _resamples(len(spots.region), run.n_boot, run.rng)
    for method, values in maps.items():
        r_all = _gene_r(values, spots.truth)
        boots = _boot_r(values, spots.truth, resamples, top)
        boot_means[(section, method)] = boots
        rows.append(_row(section, method, len(spots.region), len(members), r_all, top, boots))


def _read_region(row: pd.Series, bulk: np.ndarray, fold: int,
                 predicted: np.ndarray | None = None) -> _Region:
    from slide2expr.contracts.features import read_features

    fs = read_features(row["features_path"])
    return _Region(sample_id=str(row[Key.SAMPLE_ID]), fold=fold,
                   features=np.asarray(fs.features, dtype=np.float32),
                   coords=np.asarray(fs.coords, dtype=np.float64),
                   size0=float(fs.attrs.tile_px_level0), bulk=bulk,  # type: ignore[arg-type]
                   predicted=bulk if predicted is None else predicted)


def _section_spots(row: pd.Series, regions: list[_Region], genes: list[str]) -> _SectionSpots:
    """The section's spots on its regions' tiles, with log1p CP10k of the model's genes."""
    from slide2expr.inputs.expression.spatial import read_spot_counts
    from slide2expr.inputs.spots import read_spot_positions

    positions = read_spot_positions(row["spots"], counts_path=row["counts"])
    counts = read_spot_counts(row["counts"])
    xy = positions[["x", "y"]].to_numpy(np.float64)
    region_of, tile_of = np.full(len(xy), -1), np.full(len(xy), -1)
    for k, region in enumerate(regions):
        tile = _tile_of(xy, region.coords, region.size0)
        take = (tile >= 0) & (region_of < 0)
        region_of[take], tile_of[take] = k, tile[take]
    keep = region_of >= 0
    rows = counts.ids.get_indexer(positions["spot_id"].astype(str)[keep])
    matrix = counts.matrix[rows]
    totals = np.asarray(matrix.sum(axis=1)).ravel()
    cols = counts.genes.get_indexer(genes)
    dense = np.zeros((len(rows), len(genes)))
    present = cols >= 0
    dense[:, present] = np.asarray(matrix[:, cols[present]].todense()
                                   if hasattr(matrix, "todense") else matrix[:, cols[present]])
    truth = np.log1p(dense / np.maximum(totals, 1)[:, None] * 1e4)
    return _SectionSpots(region=region_of[keep], tile=tile_of[keep], truth=truth,
                         spot_id=positions["spot_id"].astype(str).to_numpy()[keep])


def _tile_of(xy: np.ndarray, coords: np.ndarray, size0: float) -> np.ndarray:
    """Index of the tile holding each point, else the nearest within one edge, else -1."""
    if len(coords) == 0:
        return np.full(len(xy), -1)
    centres = coords + size0 / 2
    d = np.abs(xy[:, None, :] - centres[None, :, :])
    inside = (d <= size0 / 2).all(axis=2)
    dist = np.sqrt((d ** 2).sum(axis=2))
    nearest = dist.argmin(axis=1)
    holder = np.where(inside.any(axis=1), inside.argmax(axis=1), nearest)
    ok = inside.any(axis=1) | (dist[np.arange(len(xy)), nearest] <= size0)
    return np.where(ok, holder, -1)


def _section_maps(section_regions: list[_Region], spots: _SectionSpots,
                  regions: dict[str, _Region], heads: dict[int, Any], genes: list[str],
                  spot_rows: SpotRows, *,
                  alphas: tuple[float, ...], sections: dict[str, str], seed: int
                  ) -> dict[str, np.ndarray]:
    """Each method's map read at the section's spots: ``{method: (n_spots, G)}``."""
    from slide2expr.train.baselines import ridge_baseline

    out = {m: np.zeros((len(spots.region), len(genes))) for m in METHODS}
    by_fold: dict[int, list[int]] = {}
    for k, region in enumerate(section_regions):
        by_fold.setdefault(region.fold, []).append(k)
    for fold, members in by_fold.items():
        train = [r for r in regions.values() if r.fold not in (fold, NOT_HELD_OUT)]
        tiles = [section_regions[k].features[spots.tile[(spots.region == k)]] for k in members]
        x_spots = np.concatenate(tiles)
        order = np.concatenate([np.flatnonzero(spots.region == k) for k in members])
        head = heads[fold]
        out["head"][order] = _head_columns(head, x_spots, genes)
        x_bulk = np.stack([r.features.mean(axis=0) for r in train])
        y_bulk = np.stack([r.bulk for r in train])
        groups = np.array([sections.get(r.sample_id, r.sample_id) for r in train])
        out["ridge"][order], _ = ridge_baseline(x_bulk, y_bulk, x_spots, groups,
                                                alphas=alphas, seed=seed)
        out["floor"][order] = np.stack([section_regions[spots.region[i]].predicted
                                        for i in order])
        out["region_truth"][order] = np.stack([section_regions[spots.region[i]].bulk
                                               for i in order])
        x_tr, y_tr, g_tr = training_spots(spot_rows, fold)
        out["spot_ridge"][order], _ = ridge_baseline(x_tr, y_tr, x_spots, g_tr, alphas=alphas,
                                                  seed=seed)
    return out


def _head_columns(head: Any, x: np.ndarray, genes: list[str]) -> np.ndarray:
    """The head's tile predictions in the order of ``genes`` (NaN where it lacks one)."""
    values = np.asarray(head.predict_tiles(x), dtype=np.float64)
    index = {str(g): i for i, g in enumerate(head.genes)}
    out = np.full((len(x), len(genes)), np.nan)
    for j, gene in enumerate(genes):
        if gene in index:
            out[:, j] = values[:, index[gene]]
    return out


def training_spots(spot_rows: SpotRows, fold: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile embeddings, measured expression and section of every spot on a region that the
    fold trained on."""
    chosen = [(s, x, y) for f, s, x, y in spot_rows if f not in (fold, NOT_HELD_OUT) and len(x)]
    if not chosen:
        raise InputError(None, f"no training region of fold {fold} has spots",
                         "check the region sheet's counts and spots columns")
    return (np.concatenate([x for _, x, _ in chosen]), np.concatenate([y for _, _, y in chosen]),
            np.concatenate([np.full(len(x), s) for s, x, _ in chosen]))


def _gene_r(values: np.ndarray, truth: np.ndarray) -> np.ndarray:
    from slide2expr.train.baselines import pearson_columns

    return pearson_columns(values, truth)


def _resamples(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, n, size=(n_boot, n)) if n_boot > 0 else np.zeros((0, n), int)


def _boot_r(values: np.ndarray, truth: np.ndarray, resamples: np.ndarray,
            top: np.ndarray) -> np.ndarray:
    """``(n_boot, 2)``: mean r over the top genes and over all genes, per resample."""
    out = np.full((len(resamples), 2), np.nan)
    for b, idx in enumerate(resamples):
        r = _gene_r(values[idx], truth[idx])
        out[b] = (np.nanmean(r[top]), np.nanmean(r))
    return out


def _ci(samples: np.ndarray) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(finite, [2.5, 97.5])
    return float(low), float(high)


def _row(section: str, method: str, n_spots: int, n_regions: int, r_all: np.ndarray,
         top: np.ndarray, boots: np.ndarray) -> dict[str, Any]:
    top_low, top_high = _ci(boots[:, 0])
    all_low, all_high = _ci(boots[:, 1])
    return {"section": section, "method": method, "n_spots": n_spots, "n_regions": n_regions,
            "mean_r_top": float(np.nanmean(r_all[top])), "ci_top_low": top_low,
            "ci_top_high": top_high, "mean_r_all": float(np.nanmean(r_all)),
            "ci_all_low": all_low, "ci_all_high": all_high}


def _pooled(table: pd.DataFrame, boots: dict[tuple[str, str], np.ndarray]) -> pd.DataFrame:
    """Mean over sections per method; CIs from resampling every section at once."""
    rows = []
    for method in dict.fromkeys(table["method"]):
        part = table[table["method"] == method]
        stacked = np.stack([boots[(s, method)] for s in part["section"]])  # (S, B, 2)
        pooled = np.nanmean(stacked, axis=0) if stacked.shape[1] else np.zeros((0, 2))
        top_low, top_high = _ci(pooled[:, 0]) if len(pooled) else (np.nan, np.nan)
        all_low, all_high = _ci(pooled[:, 1]) if len(pooled) else (np.nan, np.nan)
        rows.append({"section": "all", "method": method, "n_spots": int(part["n_spots"].sum()),
                     "n_regions": int(part["n_regions"].sum()),
                     "mean_r_top": float(part["mean_r_top"].mean()), "ci_top_low": top_low,
                     "ci_top_high": top_high, "mean_r_all": float(part["mean_r_all"].mean()),
                     "ci_all_low": all_low, "ci_all_high": all_high})
    return pd.DataFrame(rows)


def _summary(table: pd.DataFrame, boots: dict[tuple[str, str], np.ndarray], *, top_n: int,
             n_boot: int) -> dict[str, Any]:
    pooled = table[table["section"] == "all"].set_index("method")
    sections = [s for s in dict.fromkeys(table["section"]) if s != "all"]
    out: dict[str, Any] = {
        "top_n": top_n, "n_boot": n_boot, "sections": sections,
        "methods": {m: {"mean_r_top": _round(pooled.loc[m, "mean_r_top"]),
                        "ci_top": [_round(pooled.loc[m, "ci_top_low"]),
                                   _round(pooled.loc[m, "ci_top_high"])],
                        "mean_r_all": _round(pooled.loc[m, "mean_r_all"]),
                        "ci_all": [_round(pooled.loc[m, "ci_all_low"]),
                                   _round(pooled.loc[m, "ci_all_high"])]}
                    for m in pooled.index},
    }
    for other in ("floor", "ridge"):
        diff = np.nanmean(np.stack([boots[(s, "head")] - boots[(s, other)] for s in sections]),
                          axis=0)
        point = pooled.loc["head", "mean_r_top"] - pooled.loc[other, "mean_r_top"]
        low, high = _ci(diff[:, 0]) if len(diff) else (np.nan, np.nan)
        out[f"head_minus_{other}_top"] = {"value": _round(point), "ci": [_round(low),
                                                                         _round(high)]}
    # the spot-trained default model where given, else the spot ridge on the grid tiles
    reference = CEILING if CEILING in pooled.index else "spot_ridge"
    ceiling = pooled.loc[reference, "mean_r_top"]
    out["ceiling_method"] = reference
    out["head_share_of_ceiling_top"] = _round(pooled.loc["head", "mean_r_top"] / ceiling
                                              if ceiling > 0 else float("nan"))
    return out


def _round(value: float) -> float | None:
    value = float(value)
    return round(value, 4) if np.isfinite(value) else None
