"""Bulk-mode training memory and speed: peak RSS and epoch time on a synthetic cohort.

Writes a cohort of feature files (``features`` (N, D) float32, ``coords``), a bulk dataset
pointing at them, and runs the train stage (``he2rna`` by default) for a few epochs. Bags are
streamed from disk one batch at a time, so the peak RSS should be far below the cohort's size.

Usage::

    python benchmarks/train_bulk.py --slides 200 --tiles 2000 --dim 1024 --genes 1000

Prints one JSON line: cohort size on disk, peak RSS (and RSS before training), peak RSS /
cohort bytes, scan time, seconds per epoch (training + validation), total time.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def write_cohort(root: Path, *, slides: int, tiles: int, dim: int, genes: int, seed: int):
    """Feature files and a bulk-mode AnnData; gene 0..9 follow the share of 'hot' tiles."""
    import anndata as ad
    import h5py
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows, paths = [], []
    for i in range(slides):
        share = rng.uniform(0, 0.5)
        feats = rng.standard_normal((tiles, dim), dtype=np.float32)
        hot = rng.random(tiles) < share
        feats[hot, :8] += 2.0
        path = root / f"slide{i:04d}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("features", data=feats)
            f.create_dataset("coords", data=rng.integers(0, 100_000, (tiles, 2)))
            f.attrs["sample_id"] = f"slide{i:04d}"
        paths.append(str(path))
        expr = 2 + rng.normal(0, 1, genes)
        expr[:10] += 3 * share
        rows.append(expr)
    x = np.asarray(rows, dtype=np.float32)
    obs = pd.DataFrame({"sample_id": [f"slide{i:04d}" for i in range(slides)],
                        "patient": [f"P{i:04d}" for i in range(slides)], "features_path": paths},
                       index=[f"slide{i:04d}" for i in range(slides)])
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=[f"G{i}" for i in range(genes)]))
    adata.uns["slide2expr"] = {"mode": "bulk", "encoder": "synthetic"}
    return adata


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=200)
    parser.add_argument("--tiles", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--head", default="he2rna", choices=["he2rna", "abmil"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bag-batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None,
                        help="Where the cohort is written (default: a temporary directory).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from slide2expr.train.config import TrainConfig
    from slide2expr.train.run import run_training

    torch.set_num_threads(args.threads)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="slide2expr-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        adata = write_cohort(root, slides=args.slides, tiles=args.tiles, dim=args.dim,
                             genes=args.genes, seed=args.seed)
        write_s = time.perf_counter() - start
        cohort_bytes = sum(p.stat().st_size for p in root.glob("*.h5"))
        rss_before = _rss_mb()
        config = TrainConfig.from_dict({
            "folds": 2, "max_epochs": args.epochs, "min_epochs": args.epochs,
            "bag_batch_size": args.bag_batch_size, "hidden": 256, "baselines": ["ridge", "mean"],
            "genes": {"min_fraction": 0.0},
        })
        start = time.perf_counter()
        out = run_training(adata, head=args.head, config=config, models_dir=root / "models",
                           predictions_path=root / "predictions.h5ad")
        total_s = time.perf_counter() - start
        folds = out.uns["slide2expr"]["train"]["folds"]
        fold_s = [float(f["seconds"]) for f in folds.values()]
        epochs = [float(np.sum(f["epochs"])) for f in folds.values()]
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps({
            "head": args.head, "slides": args.slides, "tiles": args.tiles, "dim": args.dim,
            "genes": args.genes, "bag_batch_size": args.bag_batch_size, "threads": args.threads,
            "cohort_mb_on_disk": round(cohort_bytes / 2**20, 1),
            "write_cohort_s": round(write_s, 1),
            "rss_before_training_mb": round(rss_before, 1), "peak_rss_mb": round(peak_mb, 1),
            "peak_rss_over_cohort": round(peak_mb * 2**20 / cohort_bytes, 3),
            "seconds_per_epoch": round(sum(fold_s) / max(sum(epochs), 1), 1),
            "train_units_per_fold": args.slides // 2,
            "total_train_stage_s": round(total_s, 1),
        }))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
