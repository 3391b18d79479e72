"""her2st, two patients: C leave-one-section-out, A -> C and C -> A, on one dataset.

Runs on the ``dataset.h5ad`` of ``config/benchmarks/her2st_2patients.yaml`` (sections C2-C6
of patient C and A1, A2 of patient A), so every row reads the same features:

    python benchmarks/two_patients.py train results/dataset.h5ad OUT loso_C context mlp
    python benchmarks/two_patients.py train results/dataset.h5ad OUT cross context mlp
    python benchmarks/two_patients.py table OUT
    python benchmarks/two_patients.py uncertainty OUT_BEFORE OUT   # the spread, ranked
    python benchmarks/two_patients.py view-mean results/dataset.h5ad MEAN.h5ad  # 8-view mean
    python benchmarks/two_patients.py paired OUT_BASE OUT ...   # a run's head minus the base's
    python benchmarks/two_patients.py combine LITE0.h5ad LITE2.h5ad BOTH.h5ad  # two encoders

The dataset's spot features are ``obsm['X_{encoder}']`` of whichever encoder its join used
(``efficientnet_lite0``, ``_lite1``, ``_lite2``...); ``combine`` puts a second encoder's
blocks beside the first's under other block names.

``loso_C``: patient C's five sections, one fold per section (inner validation grouped by
section). ``cross``: one fold per patient: trained on C, tested on A1 and A2 (C -> A), and
trained on A, tested on C2-C6 (A -> C); inner validation grouped by section. The train
settings are the config's ``train:`` section (``--set key=yaml`` overrides one, e.g.
``--set select=off``).

The table: per held-out section, the mean per-gene Pearson r over a gene set (top 50 by the
fold's training mean; every modelled gene; 50 HVGs of the held-out observed values), then the
mean over sections with a 95% percentile bootstrap over sections (1000 draws, seed 0); and the
difference to ridge on the same inputs with a 95% bootstrap over the top-50 genes (sections
fixed), since two held-out sections (C -> A) give no interval over sections worth the name.
Rows: the shipped model (``predicted``: the head, or ridge in folds where ridge won
``train.select``), the head's own predictions (``predicted_head``) and ridge on the same
inputs (``baseline_ridge``). Uncertainty: the report's spread calibration on the shipped
predictions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from slide2expr.report.evaluate import _top_mask, select_hvg
from slide2expr.report.uncertainty import spread_calibration
from slide2expr.train.baselines import pearson_columns

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "benchmarks" / "her2st_2patients.yaml"
SCENARIOS = {"loso_C": "C leave-one-section-out", "cross": "one patient -> the other"}


def train_settings(data_root: str, overrides: list[str]) -> dict[str, Any]:
    """The config's train section, gene list resolved, ``key=yaml`` overrides applied."""
    train = dict(yaml.safe_load(CONFIG.read_text())["train"])
    genes = dict(train.get("genes") or {})
    if genes.get("list"):
        genes["list"] = genes["list"].replace("{data_root}", data_root)
    train["genes"] = genes
    for item in overrides:
        key, _, value = item.partition("=")
        train[key] = yaml.safe_load(value)
    return train


def scenario_data(adata: Any, scenario: str) -> tuple[Any, dict[str, Any]]:
    """The units and fold settings of a scenario."""
    if scenario == "loso_C":
        sub = adata[(adata.obs["patient"].astype(str) == "C").to_numpy()].copy()
        return sub, {"folds": "loo", "group_by": "sample_id"}
    return adata, {"folds": "loo", "group_by": "patient"}


def train(args: argparse.Namespace) -> None:
    import anndata as ad

    from slide2expr.train.config import TrainConfig
    from slide2expr.train.run import run_training

    adata = ad.read_h5ad(args.dataset)
    data, folds = scenario_data(adata, args.scenario)
    settings = {**train_settings(args.data_root, args.set), **folds}
    config = TrainConfig.from_dict(settings)
    out = Path(args.out) / args.scenario
    for head in args.heads:
        start = time.perf_counter()
        cpu = time.process_time()
        run_training(data, head=head, config=config, models_dir=out / "models" / head,
                     predictions_path=out / f"{head}.h5ad", dataset_path=args.dataset)
        cost = {"wall_s": round(time.perf_counter() - start, 1),
                "cpu_s": round(time.process_time() - cpu, 1)}
        (out / f"{head}.cost.json").write_text(json.dumps(cost))
        print(f"{args.scenario} {head}: {cost}", flush=True)


def section_table(pred: Any, layer: str) -> pd.DataFrame:
    """Per held-out section: mean r over top 50 (the fold's training mean), all, HVG."""
    held = (pred.obs["fold"].to_numpy() >= 0)
    truth = np.asarray(pred.X, float)
    values = np.asarray(pred.layers[layer], float)
    hvg = select_hvg(truth[held], 50)[0]
    sections = pred.obs["sample_id"].astype(str).to_numpy()
    folds = pred.obs["fold"].to_numpy()
    rows, top_r = {}, {}
    for s in pd.unique(sections[held]):
        m = sections == s
        train_mean = truth[folds != folds[m][0]].mean(axis=0)
        modelled = np.isfinite(values[m]).all(axis=0)
        top = _top_mask(np.where(modelled, train_mean, -np.inf), 50)
        r = pearson_columns(values[m], truth[m])
        rows[s] = {"top50": float(np.nanmean(r[top])), "all": float(np.nanmean(r[modelled])),
                   "hvg": float(np.nanmean(r[hvg & modelled]))}
        top_r[s] = r[top]
    table = pd.DataFrame(rows).T
    table.attrs["top_r"] = top_r
    return table


def bootstrap(values: np.ndarray, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    draws = rng.choice(values, size=(n, len(values)), replace=True).mean(axis=1)
    return float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def gene_bootstrap_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray],
                              n: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean over sections of the top-50 mean r difference a - b, with a 95% bootstrap over
    the genes (the same draw of gene positions in every section; sections fixed)."""
    rng = np.random.default_rng(seed)
    diffs = np.stack([a[s] - b[s] for s in a])  # sections x 50
    point = float(np.nanmean(diffs, axis=1).mean())
    idx = rng.integers(0, diffs.shape[1], size=(n, diffs.shape[1]))
    draws = np.array([np.nanmean(diffs[:, i], axis=1).mean() for i in idx])
    return point, float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def split_label(pred: Any, sections: list[str]) -> str:
    patients = sorted(set(pred.obs.loc[pred.obs["sample_id"].astype(str).isin(sections),
                                       "patient"].astype(str)))
    train_patient = sorted(set(pred.obs["patient"].astype(str)) - set(patients))
    return f"{'+'.join(train_patient)} -> {'+'.join(patients)}"


def table(args: argparse.Namespace) -> None:
    import anndata as ad

    out = Path(args.out)
    print("| split | model | top 50 (95% CI, sections) | all | 50 HVG | minus ridge, top 50 "
          "(95% CI, genes) | per section, top 50 | shipped |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    notes = []
    for scenario in SCENARIOS:
        for path in sorted((out / scenario).glob("*.h5ad")):
            pred = ad.read_h5ad(path)
            head = path.stem
            sel = pred.uns["slide2expr"]["train"].get("selection", {})
            winners = sel.get("winners", {})
            fold_of = {str(s): f"fold{int(f)}" for s, f in
                       pred.obs.groupby("sample_id", observed=True)["fold"].first().items()}
            groups = ([list(fold_of)] if scenario == "loso_C" else
                      [[s for s, f in fold_of.items() if f == k] for k in sorted(set(fold_of.values()))])
            add_head_or_ridge(pred)
            tables = {layer: section_table(pred, layer) for layer in
                      ("predicted", HEAD_OR_RIDGE, "predicted_head", "baseline_ridge")
                      if layer in pred.layers}
            for sections in groups:
                label = ("C LOSO" if scenario == "loso_C" else split_label(pred, sections))
                shipped = ", ".join(f"{s}: {winners.get(fold_of[s], '?')}" for s in sections)
                for layer, name in (("predicted", f"shipped ({head} + select, as run)"),
                                    (HEAD_OR_RIDGE, f"{head} or ridge by inner score "
                                     "(select_blend: patients here)"),
                                    ("predicted_head", f"{head} head"),
                                    ("baseline_ridge", f"ridge ({head}'s inputs)")):
                    if layer not in tables:
                        continue
                    t = tables[layer].loc[sections]
                    lo, hi = bootstrap(t["top50"].to_numpy())
                    diff = ""
                    if layer != "baseline_ridge":
                        ridge_r = {s: tables["baseline_ridge"].attrs["top_r"][s] for s in sections}
                        mine = {s: tables[layer].attrs["top_r"][s] for s in sections}
                        d, dlo, dhi = gene_bootstrap_difference(mine, ridge_r)
                        diff = f"{d:+.3f} ({dlo:+.3f} to {dhi:+.3f})"
                    print(f"| {label} | {name} | {t['top50'].mean():.3f} ({lo:.3f}-{hi:.3f}) | "
                          f"{t['all'].mean():.3f} | {t['hvg'].mean():.3f} | {diff} | "
                          f"{' / '.join(f'{v:.3f}' for v in t['top50'])} | "
                          f"{shipped if layer == 'predicted' else ''} |")
            cal = spread_calibration(pred)
            if cal:
                notes.append(f"{scenario} {head}: spread vs |error| Spearman "
                             f"{cal['spearman_mean']} (per section {cal['spearman_sections']}), "
                             f"genes positive {cal['share_genes_positive']}, coverage +-2 SD "
                             f"{cal['coverage_2sd']} (per section {cal['coverage_sections']})")
            scores = {f: (info["selection"]["inner_scores"]) for f, info in
                      pred.uns["slide2expr"]["train"]["folds"].items()}
            notes.append(f"{scenario} {head}: inner scores {json.dumps(_plain(scores))}")
            cost = path.with_suffix(".cost.json")
            if cost.is_file():
                notes.append(f"{scenario} {head}: cost {cost.read_text()}")
    print()
    for note in notes:
        print(f"- {note}")


HEAD_OR_RIDGE = "head_or_ridge"


def add_head_or_ridge(pred: Any) -> None:
    """``layers[HEAD_OR_RIDGE]``: per fold the head's predictions or ridge's, whichever
    scored higher on the run's inner validation (a tie keeps the head): what
    ``train.select: auto`` ships when the blend is not compared (``select_blend: patients``
    with section-grouped inner validation, as in every split here). Exact for a run that
    compared the blend too: the head's training and ridge's fit do not depend on it, and a
    fold that ships ridge ships the ridge baseline's model (same alpha, same units)."""
    if "predicted_head" not in pred.layers or "baseline_ridge" not in pred.layers:
        return
    out = np.array(pred.layers["predicted_head"], dtype=np.float32, copy=True)
    folds = pred.obs["fold"].to_numpy()
    for name, info in pred.uns["slide2expr"]["train"]["folds"].items():
        scores = info["selection"]["inner_scores"]
        head = pred.uns["slide2expr"]["train"]["head"]
        ridge, mine = scores.get("ridge"), scores.get(head)
        if ridge is not None and (mine is None or ridge > mine):
            rows = folds == int(str(name).removeprefix("fold"))
            out[rows] = pred.layers["baseline_ridge"][rows]
    pred.layers[HEAD_OR_RIDGE] = out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def neighbour_mean(values: np.ndarray, xy: np.ndarray, sections: np.ndarray,
                   reach: float = 1.5) -> np.ndarray:
    """Each spot's mean over its section's neighbours within ``reach`` x the section's median
    nearest-neighbour distance (itself excluded; itself when it has none)."""
    from scipy.spatial import cKDTree

    out = np.array(values, dtype=np.float64, copy=True)
    for s in np.unique(sections):
        idx = np.flatnonzero(sections == s)
        tree = cKDTree(xy[idx])
        radius = np.median(tree.query(xy[idx], k=2)[0][:, 1]) * reach
        for i, near in enumerate(tree.query_ball_point(xy[idx], radius)):
            others = [idx[j] for j in near if j != i]
            if others:
                out[idx[i]] = values[others].mean(axis=0)
    return out


def smoothing(args: argparse.Namespace) -> None:
    """Test-time spatial smoothing, measured only: ``(1 - a) * prediction + a * the mean of
    the spot's neighbours' predictions`` (image side only), top-50 mean r per split."""
    import anndata as ad

    print("| run | layer | a | " + " | ".join(args.splits) + " |")
    print("| --- | --- | --- | " + " | ".join("---" for _ in args.splits) + " |")
    for path in args.predictions:
        pred = ad.read_h5ad(path)
        add_head_or_ridge(pred)
        xy = np.asarray(pred.obsm["spatial"], dtype=np.float64)
        sections = pred.obs["sample_id"].astype(str).to_numpy()
        for layer in args.layers:
            if layer not in pred.layers:
                continue
            values = np.asarray(pred.layers[layer], dtype=np.float64)
            near = neighbour_mean(values, xy, sections)
            for a in args.weights:
                pred.layers["_smoothed"] = ((1 - a) * values + a * near).astype(np.float32)
                t = section_table(pred, "_smoothed")["top50"]
                patient = pred.obs.groupby("sample_id", observed=True)["patient"].first()
                cells = []
                for split in args.splits:  # "C" (every C section) or "A"
                    keep = [s for s in t.index if str(patient[s]) == split]
                    cells.append(f"{t.loc[keep].mean():.3f}" if keep else "")
                print(f"| {Path(path).parent.name}/{Path(path).stem} | {layer} | {a} | "
                      + " | ".join(cells) + " |", flush=True)


BLOCK_SETS = (("spot",), ("ctx1000",), ("ctx1000", "slide"), ("ctx300", "ctx1000"),
              ("spot", "ctx300", "ctx1000", "nbr300", "slide"))


def ridge_blocks(args: argparse.Namespace) -> None:
    """Ridge (alpha by section-grouped inner CV) on each block set, every split: which
    blocks carry across patients, and what each costs on C's leave-one-section-out."""
    import anndata as ad

    from slide2expr.train.baselines import ridge_baseline
    from slide2expr.train.config import TrainConfig
    from slide2expr.train.gene_selection import select_training_genes
    from slide2expr.train.sources import spot_key

    adata = ad.read_h5ad(args.dataset)
    settings = train_settings(args.data_root, [])
    config = TrainConfig.from_dict(settings)
    key = spot_key(adata, config=config, dataset_path=Path(args.dataset))  # X_{encoder}
    wanted = ([tuple(b.split("+")) for b in args.sets.split(",")] if args.sets else BLOCK_SETS)
    sets = [b for b in wanted if all(
        (key if n == "spot" else f"{key}_{n}") in adata.obsm for n in b)]
    print("| blocks | " + " | ".join(["C LOSO", "A -> C", "C -> A"]) + " |")
    print("| --- | --- | --- | --- |")
    obs = adata.obs
    sections = obs["sample_id"].astype(str).to_numpy()
    patients = obs["patient"].astype(str).to_numpy()
    var_names = np.asarray(adata.var_names.astype(str))
    x_all = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, float)
    splits = [("C LOSO", [(sections != s) & (patients == "C"), sections == s])
              for s in sorted(set(sections[patients == "C"]))]
    splits += [("A -> C", [patients == "A", patients == "C"]),
               ("C -> A", [patients == "C", patients == "A"])]
    for blocks in sets:
        feats = np.concatenate([np.asarray(adata.obsm[key if n == "spot" else f"{key}_{n}"],
                                           np.float64) for n in blocks], axis=1)
        scores: dict[str, list[float]] = {}
        for label, (train_mask, test_mask) in splits:
            tr, te = np.flatnonzero(train_mask), np.flatnonzero(test_mask)
            genes = select_training_genes(x_all[tr], var_names, settings=config.genes)
            y = x_all[:, genes]
            pred, _ = ridge_baseline(feats[tr], y[tr], feats[te], sections[tr],
                                     alphas=config.ridge_alphas, seed=0)
            top = _top_mask(y[tr].mean(axis=0), 50)
            for s in pd.unique(sections[te]):
                m = sections[te] == s
                r = pearson_columns(pred[m], y[te][m])
                scores.setdefault(label, []).append(float(np.nanmean(r[top])))
        print(f"| {' + '.join(blocks)} | " + " | ".join(
            f"{np.mean(scores[k]):.3f}" for k in ("C LOSO", "A -> C", "C -> A")) + " |",
            flush=True)


def combine(args: argparse.Namespace) -> None:
    """One dataset with the blocks of two encoders: ``first``'s as they are, ``second``'s
    beside them as blocks ``{prefix}spot``, ``{prefix}ctx300``... (obsm
    ``X_{first encoder}_{prefix}{block}``), so a head reads both encoders' blocks as separate
    tokens, e.g. ``--set 'head_inputs={context: [spot, ..., l2spot, l2ctx300, ...]}'``.
    The two datasets must hold the same spots in the same order (one workflow's tiles).
    ``--key`` picks the first dataset's spot key (e.g. a variant block set written beside the
    encoder's); the output then keeps only that key's blocks, and training needs
    ``--set features_key=KEY``."""
    import anndata as ad

    from slide2expr.train.config import TrainConfig
    from slide2expr.train.sources import spot_key

    config = TrainConfig.from_dict(train_settings(args.data_root, []))
    first, second = ad.read_h5ad(args.first), ad.read_h5ad(args.second)
    if not first.obs_names.equals(second.obs_names) or not np.array_equal(
            np.asarray(first.X), np.asarray(second.X)):
        raise SystemExit(f"{args.first} and {args.second} differ in spots or counts")
    key1 = args.key or spot_key(first, config=config, dataset_path=Path(args.first))
    if args.key:
        for key in list(first.obsm):
            if key != "spatial" and key != key1 and not key.startswith(f"{key1}_"):
                del first.obsm[key]
    key2 = spot_key(second, config=config, dataset_path=Path(args.second))
    added = []
    for key in list(second.obsm):
        if key == key2 or key.startswith(f"{key2}_"):
            block = "spot" if key == key2 else key.removeprefix(f"{key2}_")
            first.obsm[f"{key1}_{args.prefix}{block}"] = second.obsm[key]
            added.append(f"{args.prefix}{block}")
    first.uns["slide2expr"]["combined_with"] = {"dataset": str(args.second), "obsm": key2,
                                                "blocks": added}
    first.write_h5ad(args.out)
    print(f"{args.out}: {key1} blocks plus {key2}'s as {', '.join(added)}")


def uncertainty(args: argparse.Namespace) -> None:
    """Per split and run: how the spread ranks the held-out errors (Spearman of
    ``predicted_sd`` vs |error| per gene, mean over genes, per held-out section, and the mean
    over sections), the share of genes with a positive rho, and +-2 SD coverage."""
    import anndata as ad

    print("| split | run | Spearman(spread, abs error), mean over sections | per held-out "
          "section | the same, constant-spread genes as 0 | genes with a defined rho | "
          "of those, rho > 0 | coverage +-2 SD | per held-out section (%) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for scenario in SCENARIOS:
        for run in args.runs:
            path = Path(run) / scenario / f"{args.head}.h5ad"
            if not path.is_file():
                continue
            pred = ad.read_h5ad(path)
            patient = pred.obs["patient"].astype(str)
            splits = ({"C LOSO": np.ones(pred.n_obs, dtype=bool)} if scenario == "loso_C" else
                      {split_label(pred, sorted(set(pred.obs["sample_id"][patient == p]))):
                       (patient == p).to_numpy() for p in sorted(set(patient))})
            for label, rows in splits.items():
                cal = spread_calibration(pred[rows].copy())
                if cal is None:
                    continue
                print(f"| {label} | {Path(run).name} ({cal['spread']['method']}) | "
                      f"{cal['spearman_mean']:+.3f} | "
                      f"{' / '.join(f'{v:+.3f}' for v in cal['spearman_sections'].values())} | "
                      f"{cal['spearman_mean_all_genes']:+.3f} | "
                      f"{100 * cal['share_genes_ranked']:.0f}% | "
                      f"{100 * cal['share_genes_positive']:.0f}% | "
                      f"{100 * cal['coverage_2sd']:.1f}% | "
                      f"{' / '.join(f'{100 * v:.0f}' for v in cal['coverage_sections'].values())}"
                      " |")


def paired(args: argparse.Namespace) -> None:
    """Each run's head minus the base run's, top 50, per split: the mean over sections with a
    95% bootstrap over the top-50 genes (sections fixed; both runs train on the same units, so
    their top-50 genes are the same)."""
    import anndata as ad

    splits = {"loso_C": {"C LOSO": "C"}, "cross": {"A -> C": "C", "C -> A": "A"}}
    for scenario, labels in splits.items():
        base = ad.read_h5ad(Path(args.base) / scenario / f"{args.head}.h5ad")
        before = section_table(base, "predicted_head").attrs["top_r"]
        patient = base.obs.groupby("sample_id", observed=True)["patient"].first().astype(str)
        for run in args.runs:
            path = Path(run) / scenario / f"{args.head}.h5ad"
            if not path.is_file():
                print(f"{Path(run).name} {scenario}: not run ({path} missing)")
                continue
            pred = ad.read_h5ad(path)
            after = section_table(pred, "predicted_head").attrs["top_r"]
            for label, held in labels.items():
                sections = [s for s in after if patient[s] == held]
                d, lo, hi = gene_bootstrap_difference({s: after[s] for s in sections},
                                                      {s: before[s] for s in sections})
                print(f"{Path(run).name} {label}: {d:+.3f} ({lo:+.3f} to {hi:+.3f})")


def view_mean(args: argparse.Namespace) -> None:
    """A dataset whose spot and context-window embeddings are each tile's mean over its 8
    dihedral views (the clean row and the 7 rotation/flip views the join carried), its
    neighbour and section means recomputed from the averaged spot embedding with the join's
    own functions; the view blocks are dropped. Checks first that those functions reproduce
    the dataset's own derived blocks from its clean embedding."""
    import anndata as ad

    from slide2expr.join.context import neighbour_block, neighbour_mean, section_mean
    from slide2expr.keys import SLIDE_BLOCK, Key
    from slide2expr.tile.context import context_tiling
    from slide2expr.train.views import DIHEDRAL

    adata = ad.read_h5ad(args.dataset)
    uns = adata.uns["slide2expr"]
    encoder, radii = str(uns["encoder"]), list(uns["context"]["neighbour_um"])
    sections = adata.obs["sample_id"].astype(str).to_numpy()
    mpp = np.array([float(uns["samples"][s]["slide_mpp"]) for s in sections])
    xy_um = np.asarray(adata.obsm["spatial"], float) * mpp[:, None]

    def derived(spot: np.ndarray) -> dict[str, np.ndarray]:
        out = {Key.context(encoder, neighbour_block(r)):
               neighbour_mean(xy_um, spot, sections, radius_um=r) for r in radii}
        if uns["context"]["slide_mean"]:
            out[Key.context(encoder, SLIDE_BLOCK)] = section_mean(spot, sections)
        return out

    for key, block in derived(adata.obsm[Key.embedding(encoder)]).items():
        assert np.allclose(block, adata.obsm[key], atol=1e-6), f"{key} not reproduced"
    windows = [Key.context(encoder, context_tiling(um)) for um in uns["params"]["context_um"]]
    for key in [Key.embedding(encoder), *windows]:
        views = [np.asarray(adata.obsm[Key.view(key, v)], np.float64) for v in DIHEDRAL]
        adata.obsm[key] = np.mean([np.asarray(adata.obsm[key], np.float64), *views],
                                  axis=0).astype(np.float32)
    adata.obsm.update(derived(adata.obsm[Key.embedding(encoder)]))
    for key in [k for k in adata.obsm if "__" in k]:
        del adata.obsm[key]
    adata.write_h5ad(args.out)
    print(f"{args.out}: {sorted(adata.obsm)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("dataset")
    t.add_argument("out")
    t.add_argument("scenario", choices=sorted(SCENARIOS))
    t.add_argument("heads", nargs="+")
    t.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    t.add_argument("--set", action="append", default=[], metavar="KEY=YAML")
    s = sub.add_parser("table")
    s.add_argument("out")
    r = sub.add_parser("ridge-blocks")
    r.add_argument("dataset")
    r.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    r.add_argument("--sets", default="", help="block sets, e.g. spot,ctx1000+slide")
    m = sub.add_parser("smoothing")
    m.add_argument("predictions", nargs="+")
    m.add_argument("--layers", nargs="+", default=[HEAD_OR_RIDGE, "predicted_head",
                                                  "baseline_ridge"])
    m.add_argument("--weights", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75])
    m.add_argument("--splits", nargs="+", default=["C", "A"],
                   help="held-out patients, one column each")
    p = sub.add_parser("paired", help="runs' head minus a base run's, top 50 per split")
    p.add_argument("base")
    p.add_argument("runs", nargs="+")
    p.add_argument("--head", default="context")
    v = sub.add_parser("view-mean", help="the dataset with each tile's 8-view mean embedding")
    v.add_argument("dataset")
    v.add_argument("out")
    c = sub.add_parser("combine")
    c.add_argument("first")
    c.add_argument("second")
    c.add_argument("out")
    c.add_argument("--prefix", default="l2")
    c.add_argument("--key", default=None, help="the first dataset's spot key (default: its "
                   "encoder's X_{encoder})")
    c.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    u = sub.add_parser("uncertainty")
    u.add_argument("runs", nargs="+", help="OUT folders of `train` runs")
    u.add_argument("--head", default="context")
    args = parser.parse_args()
    {"train": train, "table": table, "ridge-blocks": ridge_blocks, "combine": combine,
     "smoothing": smoothing, "uncertainty": uncertainty, "view-mean": view_mean,
     "paired": paired,
     }[args.command](args)


if __name__ == "__main__":
    main()
