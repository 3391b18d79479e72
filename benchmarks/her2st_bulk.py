"""The her2st bulk benchmark's tables and figure, from a finished run of
``config/benchmarks/her2st_bulk.yaml``.

    python benchmarks/her2st_bulk.py RESULTS_DIR [--figure docs/her2st-bulk-maps.png]
        [--section C3] [--genes ERBB2 CD74]

Prints (markdown) the region-level table (mean r over held-out regions, each head and ridge,
with the report's bootstrap CIs) and the map-versus-spots table (per section and pooled, each
head's map, ridge applied tile by tile, the region-mean floor, the spot ridge on grid tiles and
the ceiling: the spot-trained default model) from ``report/{head}/summary.json`` and
``map_vs_spots.tsv``. With ``--figure``, draws for two genes of one held-out section the
measured spots, the bulk-trained head's tile map and the spot-trained default model's
predictions at the spots (``--ceiling``) side by side.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from slide2expr.contracts.report import (
    MAP_VS_SPOTS_TSV,
    SUMMARY_JSON,
    read_map_vs_spots,
    read_summary,
)


def region_table(results: Path, heads: list[str]) -> str:
    """Held-out region r of each head and of ridge on mean tile embeddings."""
    lines = ["| model | regions | mean r top 50 [95% CI] | mean r all genes [95% CI] |",
             "| --- | --- | --- | --- |"]

    def cell(block: dict) -> str:
        lo, hi = block.get("mean_r_ci95") or [None, None]
        ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
        return f"{block['mean_r']:.3f}{ci}" if block.get("mean_r") is not None else "n/a"

    ridge_done = False
    for head in heads:
        summary = read_summary(results / "report" / head / SUMMARY_JSON)
        rows = [(head, summary["model"])]
        if not ridge_done and "ridge" in summary.get("baselines", {}):
            rows.append(("ridge on mean tile embeddings", summary["baselines"]["ridge"]))
            ridge_done = True
        for name, block in rows:
            lines.append(f"| {name} | {summary['n_units']} | {cell(block['top_mean'])} | "
                         f"{cell(block['all'])} |")
    return "\n".join(lines)


def map_table(results: Path, heads: list[str]) -> str:
    """Map versus spots per section: each head, ridge, each head's floor (its region
    prediction painted flat), the flat oracle and the ceiling (ridge, oracle and ceiling do not
    depend on the head: from the first head's report)."""
    tables = {h: read_map_vs_spots(results / "report" / h / MAP_VS_SPOTS_TSV) for h in heads}
    first = tables[heads[0]]
    sections = list(dict.fromkeys(first["section"]))
    columns = [*heads, "ridge", *(f"{h} floor" for h in heads), "region truth (flat oracle)",
               "spot ridge (grid tiles)", "ceiling (default spot model)"]
    lines = ["| section | spots | " + " | ".join(columns) + " |",
             "| --- | --- | " + " | ".join("---" for _ in columns) + " |"]

    def cell(frame: pd.DataFrame, section: str, method: str) -> str:
        match = frame[(frame["section"] == section) & (frame["method"] == method)]
        if match.empty:
            return "n/a"
        row = match.iloc[0]
        return (f"{row['mean_r_top']:.3f} [{row['ci_top_low']:.3f}, {row['ci_top_high']:.3f}]"
                f" / {row['mean_r_all']:.3f}")

    for section in sections:
        n = int(first[(first["section"] == section)]["n_spots"].iloc[0])
        cells = [cell(tables[h], section, "head") for h in heads]
        cells += [cell(first, section, "ridge")]
        cells += [cell(tables[h], section, "floor") for h in heads]
        cells += [cell(first, section, m) for m in ("region_truth", "spot_ridge", "ceiling")]
        lines.append(f"| {section} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(results: Path, heads: list[str]) -> str:
    lines = []
    for head in heads:
        block = read_summary(results / "report" / head / SUMMARY_JSON)
        m = block["map_vs_spots"]
        parts = [f"{head}: head - floor {m['head_minus_floor_top']['value']:.3f} "
                 f"{m['head_minus_floor_top']['ci']}",
                 f"head - ridge {m['head_minus_ridge_top']['value']:.3f} "
                 f"{m['head_minus_ridge_top']['ci']}",
                 f"head / {m.get('ceiling_method', 'ceiling')} "
                 f"{m['head_share_of_ceiling_top']}"]
        lines.append("; ".join(parts))
    return "\n".join(lines)


def figure(results: Path, head: str, section: str, genes: list[str], out: Path,
           ceiling: Path) -> None:
    """Measured spots | bulk-trained head's tile map | the spot-trained default model at the
    spots (the ceiling run's out-of-fold predictions), for two genes of one held-out section."""
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    from slide2expr.keys import NOT_HELD_OUT
    from slide2expr.predict import load_trained_head
    from slide2expr.report.map_vs_spots import read_ceiling, read_spot_truth

    adata = ad.read_h5ad(results / "predictions" / f"{head}.h5ad")
    truth = read_spot_truth(adata)
    _, regs, spots = truth.by_section[section]
    spot_run = read_ceiling(ceiling, truth.genes, [section])[section]
    spots = spots.subset(np.isin(spots.spot_id, spot_run.index))
    fold = regs[0].fold
    if fold == NOT_HELD_OUT:
        raise SystemExit(f"section {section} was never held out")
    model = load_trained_head(results / "models" / head, fold=fold)
    tiles = np.concatenate([r.features for r in regs])
    coords = np.concatenate([r.coords for r in regs])
    size0 = regs[0].size0
    columns = [truth.genes.index(g) for g in genes]
    head_map = np.asarray(model.predict_tiles(tiles))[:, [list(model.genes).index(g)
                                                         for g in genes]]
    spot_xy = np.stack([regs[k].coords[t] + size0 / 2
                        for k, t in zip(spots.region, spots.tile, strict=True)])
    measured = spots.truth[:, columns]
    spot_model = spot_run.loc[spots.spot_id, genes].to_numpy()
    fig, axes = plt.subplots(len(genes), 3, figsize=(12, 4 * len(genes)), squeeze=False)
    for row, gene in enumerate(genes):
        panels = [("measured spots", None, measured[:, row]),
                  (f"{head} (trained on pseudo-bulk), tile map", head_map[:, row], None),
                  ("default model trained on spots, at the spots", None, spot_model[:, row])]
        for ax, (title, tile_values, spot_values) in zip(axes[row], panels, strict=True):
            if tile_values is not None:
                patches = [Rectangle((x, y), size0, size0) for x, y in coords]
                col = PatchCollection(patches, cmap="inferno")
                col.set_array(tile_values)
                ax.add_collection(col)
                fig.colorbar(col, ax=ax, shrink=0.7)
            else:
                sc = ax.scatter(spot_xy[:, 0], spot_xy[:, 1], c=spot_values, cmap="inferno",
                                s=40)
                fig.colorbar(sc, ax=ax, shrink=0.7)
            for r in regs:
                x0, y0 = r.coords.min(axis=0)
                x1, y1 = r.coords.max(axis=0) + size0
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, lw=0.5,
                                       ec="0.6"))
            ax.set_xlim(coords[:, 0].min(), coords[:, 0].max() + size0)
            ax.set_ylim(coords[:, 1].max() + size0, coords[:, 1].min())
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{section} {gene}: {title}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--heads", nargs="+", default=["he2rna", "abmil"])
    parser.add_argument("--figure", type=Path)
    parser.add_argument("--section", default="C3")
    parser.add_argument("--genes", nargs=2, default=["ERBB2", "CD74"])
    parser.add_argument("--ceiling", type=Path,
                        help="the ceiling run's spot predictions (the figure's right column; "
                        "default RESULTS_DIR/ceiling/results/predictions/context.h5ad)")
    args = parser.parse_args()
    print(region_table(args.results, args.heads))
    print()
    print(map_table(args.results, args.heads))
    print()
    print(paired(args.results, args.heads))
    if args.figure:
        out = args.figure.resolve()
        ceiling = (args.ceiling or args.results / "ceiling" / "results" / "predictions"
                   / "context.h5ad").resolve()
        os.chdir(args.results.resolve().parent)  # obs['features_path'] is relative to the run
        figure(Path(args.results.resolve().name), args.heads[0], args.section, args.genes, out,
               ceiling=ceiling)


if __name__ == "__main__":
    main()
