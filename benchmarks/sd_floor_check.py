"""Whether the feature SD floor (:mod:`slide2expr.train.scaling`) can move a run's numbers.

The floor changes a feature's scale (to 1) only where its SD over the units a model is fitted
on is positive but below ``SD_FLOOR_FRACTION`` x its block's median SD; an SD of exactly 0 was
already replaced by 1. Every fit of a spot-mode run (outer training fold, inner training
units, the ridge's inner CV folds, the refit) uses the units of some set of groups (patients
or sections), so this script computes, for every head of the config and for every set of at
least two groups, each feature's SD / block median on those units, and counts the
(set, feature) pairs with a positive ratio below the fraction. None: no scale changes, so
the run's numbers cannot move.

Usage::

    python benchmarks/sd_floor_check.py results/dataset.h5ad config.yaml [more.yaml ...]
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import yaml


def main(dataset: str, *configs: str) -> None:
    import anndata as ad

    from slide2expr.train.config import TrainConfig
    from slide2expr.train.cv import group_labels
    from slide2expr.train.run import feature_source
    from slide2expr.train.scaling import SD_FLOOR_FRACTION, block_widths, typical_sd

    settings: dict = {}
    for path in configs:
        settings.update((yaml.safe_load(Path(path).read_text()) or {}).get("train", {}))
    settings.pop("genes", None)  # only the inputs matter here; "{data_root}" is not expanded
    config = TrainConfig.from_dict(settings)
    adata = ad.read_h5ad(dataset)
    groups = group_labels(adata.obs, config.group_by, source=dataset)
    names = sorted(set(groups))
    subsets = [s for k in range(2, len(names) + 1) for s in itertools.combinations(names, k)]
    print(f"{dataset}: {adata.n_obs} units, {len(names)} groups ({config.group_by}), "
          f"{len(subsets)} sets of >= 2 groups; near constant below {SD_FLOOR_FRACTION} x "
          "the block median SD")
    for head in config.heads:
        source = feature_source(adata, config=config.for_head(head),
                                dataset_path=Path(dataset), inputs=config.inputs_for(head))
        blocks = block_widths(source)
        x = source.matrix.astype(np.float64)
        worst, where, below, zero = np.inf, None, 0, 0
        for subset in subsets:
            rows = np.isin(groups, subset)
            sd = x[rows].std(axis=0)
            ratio = sd / typical_sd(sd, blocks)
            below += int(((ratio < SD_FLOOR_FRACTION) & (sd > 0)).sum())
            zero += int((sd == 0).sum())
            ratio = np.where(sd > 0, ratio, np.inf)
            if ratio.min() < worst:
                worst, where = float(ratio.min()), (subset, int(ratio.argmin()))
        print(f"  {head} ({', '.join(n for n, _ in source.blocks)}; {source.dim} features): "
              f"smallest positive SD / block median {worst:.4g} (groups {','.join(where[0])}, "
              f"feature {where[1]}); (set, feature) pairs moved by the floor (0 < ratio < "
              f"{SD_FLOOR_FRACTION}): {below}; with SD exactly 0 (divided by 1 before and "
              f"after): {zero}")


if __name__ == "__main__":
    main(*sys.argv[1:])
