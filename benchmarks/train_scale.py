"""The context model's training cost: the Lightning path against the plain loop, and at 10x
and 100x the her2st spots (issue 26, docs/benchmarks.md).

Two measurements, each path in its own child process (CPU s = user + system of the child,
peak RSS of the child from ``wait4``):

``full``
    The whole train stage (``run_training``: every fold, the ensemble members, ridge, the
    inner selection, the predictions file) on a dataset, once with ``train.loop: lightning``
    and once with ``plain``; prints CPU s, wall, peak RSS, the epochs run and the quality of
    each (mean per-gene r of what ships, of the head alone and of ridge, as the report
    computes it, without bootstrap)::

        python benchmarks/train_scale.py full /work/wt/model-runs/mac_dataset.h5ad \\
            --patient C --group-by sample_id --out /tmp/train-scale

``scale``
    Synthetic cohorts of 1x, 10x and 100x the rows of one training fold, built from the real
    features: each section's spots resampled with replacement (the first copy is the real
    rows), features jittered by ``--noise`` x each column's SD, targets copied from the
    resampled spot; section and patient labels are kept, so the inner validation groups are
    the same sections. For each scale and path: one ensemble member of the context head
    trained for ``--epochs`` epochs (no early stopping) with its inner validation each
    epoch, and, where the rows fit (``--ridge-max-rows``), ridge's inner selection fit
    (``ridge_on_split``, every alpha)::

        python benchmarks/train_scale.py scale /work/wt/model-runs/mac_dataset.h5ad \\
            --patient C --scales 1 10 100 --out /tmp/train-scale

With ``--before-src DIR`` (e.g. ``git archive 9684622 src | tar -x -C DIR``, then
``DIR/src``) that tree's code runs as a third path, ``before``: the code before the plain
loop, the Gram-matrix ridge and the eigendecomposition bases. The Lightning and before paths
are skipped at a scale above ``--lightning-max-scale``. Threads:
``--threads`` (default 1) for torch, numpy and BLAS in every child.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PATHS = ("lightning", "plain")
#: The third path, with ``--before-src``: that source tree's code (no ``train.loop`` key).
BEFORE = "before"


# -- children -------------------------------------------------------------------------------
def run_child(args: list[str], *, threads: int, src: Path | None = None) -> dict[str, Any]:
    """Run this script's ``args`` in a child (``src``: the ``slide2expr`` source tree on its
    ``PYTHONPATH``); its JSON result plus CPU s, wall, peak RSS."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "OPENBLAS_NUM_THREADS": str(threads)}
    if src is not None:
        env["PYTHONPATH"] = str(src)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, *args, "--threads", str(threads)],
                            stdout=subprocess.PIPE, env=env, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"child {args[:2]} failed with status {status}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(cpu_s=round(usage.ru_utime + usage.ru_stime, 1), wall_s=round(wall, 1),
                  peak_rss_mb=round(usage.ru_maxrss / 1024))
    return result


def load(dataset: Path, patient: str | None, test_section: str | None = None) -> Any:
    """The dataset, restricted to one patient's sections when asked; with ``test_section``
    one fold (``obs['split']``: that section held out, the others train)."""
    import anndata as ad

    adata = ad.read_h5ad(dataset)
    if patient is not None:
        adata = adata[adata.obs["patient"].astype(str) == patient].copy()
    if test_section is not None:
        held = adata.obs["sample_id"].astype(str) == test_section
        adata.obs["split"] = np.where(held, "test", "train")
    return adata


def settings(args: argparse.Namespace, loop: str) -> Any:
    """The train settings: the defaults (context head, its default settings), the loop."""
    from slide2expr.train.config import TrainConfig

    values = {"heads": ["context"], "baselines": ["ridge", "mean"],
              "group_by": args.group_by, "folds": args.folds}
    if loop != BEFORE:
        values["loop"] = loop
    if args.genes:
        values["genes"] = {"method": "all", "list": str(args.genes)}
    return TrainConfig.from_dict(values).for_head("context")


def child_full(args: argparse.Namespace) -> dict[str, Any]:
    """The whole train stage with ``args.loop``; quality of the shipped, head and ridge."""
    from slide2expr.train.run import run_training

    adata = load(args.dataset, args.patient, args.test_section)
    out = Path(args.out) / f"full-{args.loop}"
    config = settings(args, args.loop)
    start = time.process_time()
    preds = run_training(adata, head="context", config=config, models_dir=out / "models",
                         predictions_path=out / "context.h5ad", dataset_path=args.dataset)
    seconds = time.process_time() - start
    folds = preds.uns["slide2expr"]["train"]["folds"]
    epochs = [e for f in folds.values() for e in f["epochs"]]
    winners = {k: f["selection"]["winner"] for k, f in folds.items()}
    return {"path": args.loop, "units": int(adata.n_obs), "folds": len(folds),
            "train_cpu_s": round(seconds, 1), "mean_epochs": round(float(np.mean(epochs)), 1),
            "winners": winners, **quality(preds)}


def quality(preds: Any) -> dict[str, float]:
    """The report's mean per-gene r (all genes, no bootstrap) of the shipped predictions,
    of the head's own and of ridge."""
    from slide2expr.report.evaluate import build_report

    out = {"shipped_r": mean_r(build_report(preds, n_boot=0))}
    if "predicted_head" in preds.layers:
        head = preds.copy()
        head.layers["predicted"] = head.layers["predicted_head"]
        out["head_r"] = mean_r(build_report(head, n_boot=0))
    summary = build_report(preds, n_boot=0).summary
    out["ridge_r"] = round(float(summary["baselines"]["ridge"]["all"]["mean_r"]), 4)
    return out


def mean_r(report: Any) -> float:
    """The headline mean r over all genes."""
    return round(float(report.summary["model"]["all"]["mean_r"]), 4)


def fold_arrays(dataset: Path, patient: str | None,
                genes: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """The context head's input blocks (concatenated), the ``genes`` most variable targets
    and the sections of one patient's spots, read from the h5ad without the rest (images,
    all genes), so the peak RSS is the training's."""
    import h5py
    from anndata.io import read_elem

    from slide2expr.train.config import TrainConfig
    from slide2expr.train.features import SpotFeatures

    config = TrainConfig().for_head("context")
    with h5py.File(dataset, "r") as f:
        obs = read_elem(f["obs"])
        keep = np.ones(len(obs), dtype=bool) if patient is None else \
            (obs["patient"].astype(str) == patient).to_numpy()
        rows = np.flatnonzero(keep)
        encoder = str(read_elem(f["uns/slide2expr/encoder"]))
        blocks = []
        for name in config.inputs_for("context"):
            key = f"X_{encoder}" if name == "spot" else f"X_{encoder}_{name}"
            blocks.append((name, np.asarray(f["obsm"][key][rows], dtype=np.float32)))
        x = np.asarray(f["X"][rows], dtype=np.float32)
    top = np.argsort(-x.var(axis=0))[:genes]  # the most variable genes: targets that vary
    source = SpotFeatures(np.concatenate([m for _, m in blocks], axis=1),
                          blocks=[(n, m.shape[1]) for n, m in blocks])
    return source, np.ascontiguousarray(x[:, top]), \
        obs["sample_id"].astype(str).to_numpy()[rows]


def synthetic(source: Any, y: np.ndarray, sections: np.ndarray, scale: int, *, noise: float,
              seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """``scale`` x the rows: each section's spots resampled (first copy real), features
    jittered by ``noise`` x column SD, targets copied; returns the feature source, targets
    and sections."""
    from slide2expr.train.features import SpotFeatures

    rng = np.random.default_rng(seed)
    rows = [np.arange(len(sections))]
    for _ in range(scale - 1):
        rows.append(np.concatenate([rng.choice(np.flatnonzero(sections == s),
                                               size=int((sections == s).sum()))
                                    for s in np.unique(sections)]))
    rows = np.concatenate(rows)
    sd = source.matrix.std(axis=0).astype(np.float32)
    matrix = np.empty((len(rows), source.dim), dtype=np.float32)
    n_real = len(sections)
    for start in range(0, len(rows), 8192):  # in chunks: no float64 copy of the big matrix
        part = rows[start:start + 8192]
        block = source.matrix[part]
        jitter = rng.standard_normal(block.shape, dtype=np.float32) * (noise * sd)
        jitter[: max(0, n_real - start)] = 0.0  # the first copy is the real rows
        matrix[start:start + len(part)] = block + jitter
    return SpotFeatures(matrix, blocks=source.blocks), y[rows], sections[rows]


def child_scale(args: argparse.Namespace) -> dict[str, Any]:
    """One member of one fold at ``args.scale``, ``args.epochs`` epochs, with ``args.loop``;
    then ridge's inner selection fit when asked."""
    from slide2expr.train.cv import inner_split
    from slide2expr.train.data import FoldDataModule
    from slide2expr.train.run import fit_member

    real = fold_arrays(args.dataset, args.patient, args.n_genes)
    source, y, sections = synthetic(*real, args.scale, noise=args.noise, seed=args.seed)
    del real
    val = inner_split(sections, fraction=0.2, seed=0, member=0)
    train_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    config = settings(args, args.loop)
    config.max_epochs = config.min_epochs = args.epochs
    config.patience = args.epochs + 1
    hparams = {"in_dim": source.dim, "n_genes": y.shape[1], "hidden": config.hidden,
               "dropout": config.dropout, "input_dropout": config.input_dropout,
               "lr": config.lr, "weight_decay": config.weight_decay,
               "aux_weight": config.aux_weight, "input_pca": config.input_pca,
               "output_rank": config.output_rank, "blocks": [d for _, d in source.blocks]}
    data = FoldDataModule(source, y, train_idx=train_idx, val_idx=val_idx, test_idx=val_idx,
                          batch_size=config.batch_size, seed=0)
    from slide2expr.train.run import quiet_lightning

    cpu0, wall0 = time.process_time(), time.perf_counter()
    with quiet_lightning():
        member = fit_member("context", hparams, data, config=config, seed=0,
                            out_dir=Path(args.out) / f"scale{args.scale}-{args.loop}")
    out = {"path": args.loop, "scale": args.scale, "rows": len(y), "train_rows": len(train_idx),
           "epochs": member["epochs"], "member_cpu_s": round(time.process_time() - cpu0, 1),
           "member_wall_s": round(time.perf_counter() - wall0, 1)}
    if args.ridge and len(y) <= args.ridge_max_rows:
        from slide2expr.train.selection import ridge_on_split

        cpu0 = time.process_time()
        ridge_on_split(source.matrix[train_idx], y[train_idx], source.matrix[val_idx],
                       y[val_idx], sections[val_idx], alphas=config.ridge_alphas,
                       blocks=[d for _, d in source.blocks])
        out["ridge_cpu_s"] = round(time.process_time() - cpu0, 1)
    return out


# -- driver ---------------------------------------------------------------------------------
def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A markdown table of ``rows``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def ratio(rows: list[dict[str, Any]], key: str, old: str = "lightning", **where: Any) -> str:
    """Path ``old``'s ``key`` over the plain loop's for the rows matching ``where``."""
    pick = {r["path"]: r.get(key) for r in rows
            if all(r.get(k) == v for k, v in where.items())}
    if not pick.get(old) or not pick.get("plain"):
        return ""
    return f"{pick[old] / pick['plain']:.1f}x"


def paths(args: argparse.Namespace) -> list[tuple[str, Path | None]]:
    """The paths compared: ``before`` (with ``--before-src``), Lightning, plain."""
    every = ([(BEFORE, args.before_src)] if args.before_src else []) + \
        [(loop, None) for loop in PATHS]
    return [(loop, src) for loop, src in every if not args.paths or loop in args.paths]


def main_full(args: argparse.Namespace) -> None:
    rows = [run_child(["_full", *common(args), "--loop", loop], threads=args.threads, src=src)
            for loop, src in paths(args)]
    for r in rows:
        r["winners"] = "/".join(sorted(set(r["winners"].values())))
    print(table(rows, ["path", "units", "folds", "cpu_s", "wall_s", "peak_rss_mb",
                       "mean_epochs", "shipped_r", "head_r", "ridge_r", "winners"]))
    print(f"CPU ratio lightning/plain: {ratio(rows, 'cpu_s')}, wall "
          f"{ratio(rows, 'wall_s')}; before/plain: {ratio(rows, 'cpu_s', old=BEFORE)}")


def main_scale(args: argparse.Namespace) -> None:
    rows = []
    for scale in args.scales:
        for loop, src in paths(args):
            if loop != "plain" and scale > args.lightning_max_scale:
                continue
            extra = ["--scale", str(scale), "--loop", loop, "--epochs", str(args.epochs)]
            if loop == "plain" and args.ridge:
                extra.append("--ridge")
            r = run_child(["_scale", *common(args), *extra], threads=args.threads, src=src)
            r["s_per_epoch"] = round(r["member_cpu_s"] / max(r["epochs"], 1), 2)
            rows.append(r)
            print(json.dumps(r), flush=True)
    for r in rows:
        r["cpu_ratio"] = ratio(rows, "member_cpu_s", scale=r["scale"]) if r["path"] == "plain" \
            else ""
        r["before_ratio"] = ratio(rows, "member_cpu_s", old=BEFORE, scale=r["scale"]) \
            if r["path"] == "plain" else ""
    print(table(rows, ["scale", "rows", "train_rows", "path", "epochs", "member_cpu_s",
                       "member_wall_s", "s_per_epoch", "cpu_ratio", "before_ratio", "cpu_s", "wall_s",
                       "peak_rss_mb", "ridge_cpu_s"]))


def common(args: argparse.Namespace) -> list[str]:
    """The options every child gets."""
    out = [str(args.dataset), "--out", str(args.out), "--group-by", args.group_by,
           "--folds", str(args.folds), "--noise", str(args.noise), "--seed", str(args.seed),
           "--n-genes", str(args.n_genes)]
    if args.patient:
        out += ["--patient", args.patient]
    if args.genes:
        out += ["--genes", str(args.genes)]
    if args.test_section:
        out += ["--test-section", args.test_section]
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["full", "scale", "_full", "_scale"])
    p.add_argument("dataset", type=Path)
    p.add_argument("--out", type=Path, default=Path("/tmp/train-scale"))
    p.add_argument("--patient", default=None, help="Train on this patient's sections only.")
    p.add_argument("--group-by", default="patient", help="train.group_by (full).")
    p.add_argument("--test-section", default=None,
                   help="full: one fold, this section held out (obs['split']).")
    p.add_argument("--folds", default="loo", help="train.folds (full).")
    p.add_argument("--genes", type=Path, default=None, help="A gene list (full).")
    p.add_argument("--n-genes", type=int, default=785, help="Targets of the scale runs.")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--epochs", type=int, default=3, help="Epochs of each scale run.")
    p.add_argument("--noise", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lightning-max-scale", type=int, default=100)
    p.add_argument("--ridge", action="store_true", help="Time ridge's selection fit too.")
    p.add_argument("--ridge-max-rows", type=int, default=20000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--paths", nargs="+", choices=[*PATHS, BEFORE], default=None,
                   help="Run only these paths (default: all).")
    p.add_argument("--loop", choices=[*PATHS, BEFORE], default="plain")
    p.add_argument("--before-src", type=Path, default=None,
                   help="A slide2expr source tree (its src/) run as a third path, 'before'.")
    p.add_argument("--scale", type=int, default=1)
    return p


def main() -> None:
    args = parser().parse_args()
    if args.mode.startswith("_"):
        import torch

        torch.set_num_threads(args.threads)
        folds = args.folds
        args.folds = folds if folds == "loo" else int(folds)
        result = child_full(args) if args.mode == "_full" else child_scale(args)
        print(json.dumps(result))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (main_full if args.mode == "full" else main_scale)(args)


if __name__ == "__main__":
    main()
