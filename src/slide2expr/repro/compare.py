"""Encoder x head sweeps: one comparison table and page (``slide2expr compare``).

Each (encoder, head) combination of a run has a report (``summary.json``); this module puts
their headline numbers side by side with the wall time each stage took for that combination,
read from the rules' ``benchmark:`` files:

``results/report/compare.tsv``: one row per (encoder, model), where model is the head or one
of its baselines (``ridge``, ``hest``, ``mean``; from the first report of each encoder and
input set, since the baselines see exactly the head's inputs, ``train.inputs`` /
``train.head_inputs``: a context head brings its own ridge); columns ``encoder, head, model, n_genes,
mean_r_all, mean_r_top, mean_r_hvg, n_significant`` and ``wall_s_{stage}`` for every stage.

Wall times are attributed by the wildcards in the benchmark file's path: a job whose path
names an encoder (or head) of the sweep counts for that encoder's (head's) rows only; a job
that names none (``tile``) is shared and counts for every row.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from slide2expr.atomic import atomic_outputs
from slide2expr.contracts.report import read_summary
from slide2expr.errors import InputError
from slide2expr.repro.manifest import read_benchmarks

log = logging.getLogger(__name__)

#: Stages whose wall time is reported, in pipeline order.
STAGES = ("tile", "extract", "join", "train", "report")
COLUMNS = ("encoder", "head", "model", "n_genes", "mean_r_all", "mean_r_top", "mean_r_hvg",
           "n_significant")


@dataclass(frozen=True)
class RunSummary:
    """One (encoder, head) report."""

    encoder: str
    head: str
    summary: Path


def parse_run(text: str) -> RunSummary:
    """Parse ``ENCODER:HEAD:PATH`` (the ``--run`` option)."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(parts):
        raise InputError(None, f"--run {text!r} is not ENCODER:HEAD:SUMMARY_JSON",
                         "e.g. --run efficientnet_lite0:mlp:results/report/mlp/summary.json")
    return RunSummary(parts[0], parts[1], Path(parts[2]))


def _mean(block: dict[str, Any], gene_set: str) -> float | None:
    return (block.get(gene_set) or {}).get("mean_r")


def stage_wall_times(records: list[dict[str, Any]], *, encoders: list[str], heads: list[str],
                     encoder: str, head: str, stages: tuple[str, ...] = STAGES
                     ) -> dict[str, float]:
    """Summed wall seconds per stage of the jobs that serve (``encoder``, ``head``)."""
    out = {f"wall_s_{stage}": 0.0 for stage in stages}
    for rec in records:
        if rec["rule"] not in stages:
            continue
        parts = set(rec["job"].split("/"))
        names_enc = parts & set(encoders)
        names_head = parts & set(heads)
        if names_enc and encoder not in names_enc:
            continue
        if names_head and head not in names_head:
            continue
        out[f"wall_s_{rec['rule']}"] += rec["wall_s"]
    return {k: round(v, 1) for k, v in out.items()}


def build_compare(runs: list[RunSummary], *, benchmarks: str | Path | None = None,
                  stages: tuple[str, ...] = STAGES) -> pd.DataFrame:
    """The comparison table (see the module docstring).

    Parameters
    ----------
    runs
        One entry per (encoder, head), each with its ``summary.json``.
    benchmarks
        ``results/benchmarks``; ``None`` leaves the wall-time columns out.
    stages
        Stages whose wall time is given.

    Returns
    -------
    pandas.DataFrame
        Rows in the order of ``runs``, each head's row followed (for the first head of each
        encoder and input set) by its baselines.
    """
    if not runs:
        raise InputError(None, "no runs to compare", "pass --run ENCODER:HEAD:SUMMARY at least once")
    encoders = sorted({r.encoder for r in runs})
    heads = sorted({r.head for r in runs})
    records = read_benchmarks(benchmarks) if benchmarks is not None else []
    rows = []
    baselines_done: set[str] = set()
    for run in runs:
        s = read_summary(run.summary)
        n_sig = (s.get("counts") or {}).get("n_significant")
        blocks = [(run.head, s.get("model") or {}, n_sig)]
        inputs = ((s.get("provenance") or {}).get("train") or {}).get("inputs")
        key = f"{run.encoder}:{','.join(map(str, inputs)) if inputs else 'spot'}"
        if key not in baselines_done:
            baselines_done.add(key)
            blocks += [(name, block, None) for name, block in (s.get("baselines") or {}).items()]
        walls = stage_wall_times(records, encoders=encoders, heads=heads, encoder=run.encoder,
                                 head=run.head, stages=stages) if benchmarks is not None else {}
        maps = (s.get("map_vs_spots") or {}).get("methods") or {}
        if maps and len(blocks) > 1:  # the floor and ceiling once, beside the baselines
            blocks += [(f"map_{name}", {}, None) for name in ("floor", "region_truth",
                                                               "spot_ridge", "ceiling")
                       if name in maps]
        for model, block, sig in blocks:
            rows.append({
                "encoder": run.encoder, "head": run.head, "model": model,
                "n_genes": s.get("n_genes"),
                "mean_r_all": _mean(block, "all"), "mean_r_top": _mean(block, "top_mean"),
                "mean_r_hvg": _mean(block, "hvg"), "n_significant": sig,
                **_map_scores(maps, "head" if model == run.head else model), **walls,
            })
    table = pd.DataFrame(rows)
    table["n_significant"] = table["n_significant"].astype("Int64")
    return table


def render_compare_html(table: pd.DataFrame, *, top_n: int | None = None,
                        n_hvg: int | None = None) -> str:
    """A self-contained page section: the table and a bar chart of mean r."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{e} / {m}" for e, m in zip(table["encoder"], table["model"], strict=True)]
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(table) + 2), 3.2), dpi=100)
    width = 0.27
    xs = range(len(table))
    for i, (col, name) in enumerate((("mean_r_all", "all genes"),
                                     ("mean_r_top", f"top {top_n or ''}".strip()),
                                     ("mean_r_hvg", f"HVG {n_hvg or ''}".strip()))):
        vals = pd.to_numeric(table[col], errors="coerce").fillna(0.0)
        ax.bar([x + (i - 1) * width for x in xs], vals, width, label=name)
    ax.set_xticks(list(xs), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean Pearson r")
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    img = base64.b64encode(buf.getvalue()).decode()
    shown = table.copy()
    for col in ("mean_r_all", "mean_r_top", "mean_r_hvg"):
        shown[col] = pd.to_numeric(shown[col], errors="coerce").map(
            lambda v: "" if pd.isna(v) else f"{v:.3f}")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if pd.isna(v) else str(v))}</td>" for v in row)
        + "</tr>" for row in shown.itertuples(index=False))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>slide2expr: encoder x head "
        "comparison</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:"
        "collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
        "th{background:#eee}</style></head><body>"
        "<section id='compare'><h2>Encoder and head comparison</h2>"
        "<p>Out-of-fold mean Pearson r per encoder and model (heads and their baselines), over "
        "all genes, the top genes by training mean and the highly variable genes; genes "
        "significantly well predicted (q &lt; alpha, r &gt; 0, beating the reference baseline); "
        "wall seconds per stage (shared stages, such as tiling, count for every row).</p>"
        f"<img alt='mean r per encoder and model' src='data:image/png;base64,{img}'>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        "</section></body></html>\n"
    )


def write_compare(table: pd.DataFrame, tsv: str | Path, html_path: str | Path | None = None,
                  **page: Any) -> None:
    """Write ``compare.tsv`` (and the page) atomically."""
    paths = [Path(tsv)] + ([Path(html_path)] if html_path is not None else [])
    with atomic_outputs(*paths) as tmps:
        table.to_csv(tmps[0], sep="\t", index=False, na_rep="NaN", float_format="%.6g")
        if html_path is not None:
            tmps[1].write_text(render_compare_html(table, **page), encoding="utf-8")
    log.info("wrote %s (%d rows)", tsv, len(table))


def _map_scores(maps: dict[str, Any], model: str) -> dict[str, Any]:
    """Map-versus-spots mean r (top genes, all genes) of a model's tile map, when the run
    scored maps against spots (``summary['map_vs_spots']``, bulk runs on pseudo-bulk
    regions): ``head`` (the bulk head), ``ridge``, ``map_floor``, ``map_region_truth``,
    ``map_ceiling``."""
    if not maps:
        return {}
    block = maps.get(model.removeprefix("map_")) or {}
    return {"map_r_top": block.get("mean_r_top"), "map_r_all": block.get("mean_r_all")}
