"""Per-section table of a spot run: heads and their ridge baselines, side by side.

Run: ``python benchmarks/context_table.py results [HEAD ...]`` (default: every
``results/predictions/*.h5ad``). For each head, two rows: the head (``layers['predicted']``)
and the ridge baseline trained on the same inputs (``layers['baseline_ridge']``). Columns:
the mean over held-out sections of the per-section mean Pearson r over the top 50 genes by
training mean, all genes, and 50 HVGs (the report's gene sets), with a 95% bootstrap
interval over sections for top 50; then the extraction cost (wall seconds summed over the
extract jobs' benchmark files, one job per slide) and feature-file MB per tiling.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.report.evaluate import _top_mask, select_hvg
from slide2expr.train.baselines import pearson_columns


def section_means(pred, layer: str, masks: dict[str, np.ndarray]) -> pd.DataFrame:
    """Rows = sections, columns = gene sets: the mean per-gene r within the section."""
    sections = pred.obs["sample_id"].astype(str).to_numpy()
    truth, predicted = np.asarray(pred.X, float), np.asarray(pred.layers[layer], float)
    rows = {}
    for s in pd.unique(sections):
        m = sections == s
        r = pearson_columns(predicted[m], truth[m])
        rows[s] = {name: float(np.nanmean(r[mask])) for name, mask in masks.items()}
    return pd.DataFrame(rows).T


def bootstrap(values: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(n, len(values)), replace=True).mean(axis=1)
    return float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def main() -> None:
    import anndata as ad

    results = Path(sys.argv[1] if len(sys.argv) > 1 else "results")
    heads = sys.argv[2:] or sorted(p.stem for p in (results / "predictions").glob("*.h5ad"))
    # a head's predictions file may also be given by path (a run outside the workflow)
    print("| model | inputs | inner grouping | top 50 (95% CI) | all | 50 HVG | per-section top 50 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for head in heads:
        path = Path(head) if head.endswith(".h5ad") else results / "predictions" / f"{head}.h5ad"
        pred = ad.read_h5ad(path)
        held = (pred.obs["fold"] >= 0).to_numpy()
        pred = pred[held].copy()
        train = pred.uns["slide2expr"]["train"]
        inputs = "+".join(str(b) for b in np.atleast_1d(train.get("inputs", "spot")))
        grouping = ",".join(str(g) for g in np.atleast_1d(train.get("inner_grouping", "?")))
        masks = {"top50": _top_mask(pred.var["train_mean"].to_numpy(float), 50),
                 "all": np.ones(pred.n_vars, bool),
                 "hvg": select_hvg(np.asarray(pred.X, float), 50)[0]}
        for label, layer in ((head, "predicted"), (f"ridge ({head}'s inputs)", "baseline_ridge")):
            if layer not in pred.layers:
                continue
            t = section_means(pred, layer, masks)
            lo, hi = bootstrap(t["top50"].to_numpy())
            print(f"| {label} | {inputs} | {grouping} | {t['top50'].mean():.3f} ({lo:.3f}-{hi:.3f}) "
                  f"| {t['all'].mean():.3f} | {t['hvg'].mean():.3f} | "
                  f"{' / '.join(f'{v:.3f}' for v in t['top50'])} |")
    print()
    import h5py

    jobs = sorted((results / "benchmarks" / "extract").rglob("*.tsv"))
    seconds = sum(pd.read_csv(f, sep="\t")["s"].iloc[0] for f in jobs)
    print(f"extract: {len(jobs)} jobs, {seconds:.0f} s wall in all (one job per slide embeds "
          "every tiling)")
    print("| tiling | feature files MB | units |")
    print("| --- | --- | --- |")
    for feats in sorted((results / "features").glob("*/*")):
        mb = sum(f.stat().st_size for f in feats.glob("*.h5")) / 1e6
        units = sum(h5py.File(f, "r")["features"].shape[0] for f in feats.glob("*.h5"))
        print(f"| {feats.name} | {mb:.1f} | {units} |")

if __name__ == "__main__":
    main()
