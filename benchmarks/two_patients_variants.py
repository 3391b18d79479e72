"""Model variants measured on her2st's two patients and not shipped (docs/benchmarks.md, issue
22): training targets smoothed over neighbouring spots, a per-gene choice of head or ridge on
inner validation, and feature blocks centred per section.

Same splits, settings and outputs as ``two_patients.py train`` (read them with
``two_patients.py table OUT``); the variant is applied around the package's training code,
which is not changed:

    python benchmarks/two_patients_variants.py DATASET OUT loso_C --smooth-targets 0.5
    python benchmarks/two_patients_variants.py DATASET OUT cross --per-gene 0
    python benchmarks/two_patients_variants.py DATASET OUT loso_C --centre-blocks

``--smooth-targets A``: each training spot's targets become ``(1 - A) * own + A * the mean of
its section's training spots within 1.5x the section's median nearest-spot distance`` (for the
head and ridge alike; held-out targets and inner validation scores stay raw). ``--per-gene M``:
after the fold's selection, genes whose ridge score on inner validation (mean over the
distinct validation splits) beats the head's by more than ``M`` take ridge's held-out
predictions. ``--centre-blocks``: the spot, context and neighbour blocks minus their
section's mean (the slide block is kept).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import two_patients

#: Blocks that ``--centre-blocks`` centres (the slide block is each section's mean already).
CENTRED = ("", "_ctx300", "_ctx1000", "_nbr300")


def smoothed_targets(y: np.ndarray, train_idx: np.ndarray, weight: float, xy: np.ndarray,
                     sections: np.ndarray, reach: float = 1.5) -> np.ndarray:
    """``y`` with each training unit's row blended with the mean of its section's training
    neighbours (held-out rows unchanged)."""
    from scipy.spatial import cKDTree

    out = np.array(y, dtype=np.float32, copy=True)
    train = np.zeros(len(y), dtype=bool)
    train[train_idx] = True
    for section in np.unique(sections[train_idx]):
        idx = np.flatnonzero((sections == section) & train)
        tree = cKDTree(xy[idx])
        radius = np.median(tree.query(xy[idx], k=2)[0][:, 1]) * reach
        for i, near in enumerate(tree.query_ball_point(xy[idx], radius)):
            others = [idx[j] for j in near if j != i]
            if others:
                out[idx[i]] = (1 - weight) * y[idx[i]] + weight * y[others].mean(axis=0)
    return out


def patch_smoothing(weight: float, xy: np.ndarray, sections: np.ndarray) -> None:
    """Make every fold's fitted targets the smoothed ones."""
    import slide2expr.train.folds as folds

    def y_fit(self: Any) -> np.ndarray:
        y = smoothed_targets(self.y, self.train_idx, weight, xy, sections)
        return y if self.views is None else self.views.tile(y)

    prop = cached_property(y_fit)
    prop.__set_name__(folds.FoldUnits, "y_fit")
    folds.FoldUnits.y_fit = prop


def patch_per_gene(margin: float) -> None:
    """After each fold's selection, genes where ridge beat the head on inner validation by
    more than ``margin`` ship ridge's held-out predictions."""
    import slide2expr.train.folds as folds
    import slide2expr.train.run as run

    captured: dict[str, Any] = {}
    select_model, train_fold = folds.select_model, run.train_fold

    def capturing_select(*args: Any, **kwargs: Any) -> Any:
        captured["selection"] = select_model(*args, **kwargs)
        return captured["selection"]

    def per_gene_fold(**kwargs: Any) -> Any:
        result = train_fold(**kwargs)
        sel = captured.pop("selection")
        head = np.nanmean([g[sel.head] for g in sel.gene_scores], axis=0)
        ridge = np.nanmean([g["ridge"] for g in sel.gene_scores], axis=0)
        use_ridge = np.nan_to_num(ridge - head, nan=-1.0) > margin
        result.predicted = result.predicted.copy()
        result.predicted[:, use_ridge] = result.baselines["ridge"][:, use_ridge]
        result.info["per_gene_ridge"] = int(use_ridge.sum())
        print(f"fold {result.fold}: ridge for {use_ridge.sum()} of {len(use_ridge)} genes",
              flush=True)
        return result

    folds.select_model = capturing_select
    run.train_fold = per_gene_fold


def centre_blocks(data: Any, spot_key: str) -> None:
    """Subtract each section's mean from the spot, context and neighbour blocks."""
    sections = data.obs["sample_id"].astype(str).to_numpy()
    for suffix in CENTRED:
        key = spot_key + suffix
        matrix = np.asarray(data.obsm[key], dtype=np.float32).copy()
        for section in np.unique(sections):
            rows = sections == section
            matrix[rows] -= matrix[rows].mean(axis=0)
        data.obsm[key] = matrix


def main() -> None:
    import anndata as ad

    from slide2expr.train.config import TrainConfig
    from slide2expr.train.run import run_training
    from slide2expr.train.sources import spot_key

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset")
    parser.add_argument("out")
    parser.add_argument("scenario", choices=sorted(two_patients.SCENARIOS))
    parser.add_argument("--head", default="context")
    parser.add_argument("--data-root", default=str(two_patients.REPO.parent / "shared" / "data"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=YAML")
    parser.add_argument("--smooth-targets", type=float, default=None, metavar="A")
    parser.add_argument("--per-gene", type=float, default=None, metavar="MARGIN")
    parser.add_argument("--centre-blocks", action="store_true")
    args = parser.parse_args()

    data, folds = two_patients.scenario_data(ad.read_h5ad(args.dataset), args.scenario)
    config = TrainConfig.from_dict({**two_patients.train_settings(args.data_root, args.set),
                                    **folds})
    if args.centre_blocks:  # the dataset's own spot key: X_efficientnet_lite0, _lite2...
        centre_blocks(data, spot_key(data, config=config, dataset_path=Path(args.dataset)))
    if args.smooth_targets is not None:
        patch_smoothing(args.smooth_targets, np.asarray(data.obsm["spatial"], dtype=float),
                        data.obs["sample_id"].astype(str).to_numpy())
    if args.per_gene is not None:
        patch_per_gene(args.per_gene)
    out = Path(args.out) / args.scenario
    start, cpu = time.perf_counter(), time.process_time()
    run_training(data, head=args.head, config=config, models_dir=out / "models" / args.head,
                 predictions_path=out / f"{args.head}.h5ad", dataset_path=args.dataset)
    cost = {"wall_s": round(time.perf_counter() - start, 1),
            "cpu_s": round(time.process_time() - cpu, 1)}
    (out / f"{args.head}.cost.json").write_text(json.dumps(cost))
    print(f"{args.scenario} {args.head}: {cost}", flush=True)


if __name__ == "__main__":
    main()
