"""Render a report as one self-contained HTML page (no external resources).

Every piece of text that comes from data (gene names, sample ids, provenance) passes
through :func:`html.escape`; figures are inline ``data:image/png;base64`` images; a small
inline script makes the tables sortable (click a header) and the gene table searchable (a
search box; ``index.html#q=ERBB2`` fills it). Opening ``index.html#sort=COL:asc`` sorts the
gene table by column ``COL`` on load. Each gene links to its heatmap PNGs and to the
viewer (:mod:`slide2expr.report.links`); the provenance is shown as YAML.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import yaml

import slide2expr.report.plots as plots
from slide2expr.draw.names import gene_filename
from slide2expr.report.evaluate import ReportData, by_r
from slide2expr.report.links import ReportLinks, viewer_href

#: Gene table columns shown on the page: (genes.tsv column, header, format).
GENE_TABLE = (
    ("gene", "gene", "text"),
    ("pearson_r", "r", "r"),
    ("pearson_p", "p", "p"),
    ("pearson_q", "q (BH)", "p"),
    ("pearson_q_holm", "Holm", "p"),
    ("spearman_r", "Spearman", "r"),
    ("rmse", "RMSE", "f"),
    ("rmse_iqr", "RMSE/IQR", "f"),
    ("baseline_r", "baseline r", "r"),
    ("beats_baseline_q", "beats baseline q", "p"),
    ("significant", "significant", "bool"),
    ("r_fold_mean", "r fold mean", "r"),
    ("r_fold_sd", "r fold sd", "r"),
    ("n", "n", "int"),
    ("train_mean", "training mean", "f"),
    ("reason", "reason", "text"),
)

CSS = """
body{font-family:'DejaVu Sans','Liberation Sans',Arial,sans-serif;margin:24px 32px;
 color:#222;max-width:1400px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:19px;margin:28px 0 8px;
 border-bottom:2px solid #1f3a5f;padding-bottom:3px}
.sub{color:#555;margin:0 0 16px}
table{border-collapse:collapse;font-size:13px;margin:6px 0}
th,td{border:1px solid #c8ccd2;padding:3px 8px;text-align:right;white-space:nowrap}
th{white-space:normal}
td.t,th.t,#headline td:first-child,#counts td:first-child,#headline th:first-child,
#counts th:first-child{text-align:left}
thead th{background:#1f3a5f;color:#fff;position:sticky;top:0}
table.sortable thead th{cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:' \\25B2'}th[aria-sort=descending]::after{content:' \\25BC'}
#headline td.big{font-size:16px;font-weight:bold}
tr:nth-child(even) td{background:#f4f6f9}
td.sig{color:#0a6b2f;font-weight:bold}
.note{background:#fff6da;border:1px solid #e6cf7a;padding:6px 10px;margin:8px 0}
img.fig{max-width:100%;display:block;margin:8px 0}
dl.defs dt{font-weight:bold;margin-top:6px}dl.defs dd{margin-left:18px}
.scroll{max-height:720px;max-width:100%;overflow:auto;border:1px solid #c8ccd2;
 display:inline-block}
pre{background:#f4f6f9;padding:8px;font-size:12px;overflow:auto;max-height:480px}
td.maps a{margin-right:6px}
#gene-search{font-size:14px;padding:4px 8px;width:320px;margin:4px 8px 4px 0}
"""

JS = r"""
(function(){
  function val(cell, numeric){
    var v = cell.getAttribute('data-v');
    if (v === null) v = cell.textContent;
    if (!numeric) return v.toLowerCase();
    var x = parseFloat(v);
    return isNaN(x) ? null : x;
  }
  function sortBy(table, col, dir){
    var th = table.tHead.rows[0].cells[col];
    var numeric = th.getAttribute('data-type') === 'num';
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var sign = dir === 'asc' ? 1 : -1;
    rows.sort(function(a, b){
      var x = val(a.cells[col], numeric), y = val(b.cells[col], numeric);
      if (x === y) return 0;
      if (x === null || x === '') return 1;
      if (y === null || y === '') return -1;
      return x < y ? -sign : sign;
    });
    rows.forEach(function(r){ body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(c){
      c.removeAttribute('aria-sort');
    });
    th.setAttribute('aria-sort', dir === 'asc' ? 'ascending' : 'descending');
    table.setAttribute('data-sorted-by', th.getAttribute('data-col'));
    table.setAttribute('data-sort-dir', dir);
  }
  var tables = document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables, function(table){
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function(th, i){
      th.addEventListener('click', function(){
        var dir = th.getAttribute('aria-sort') === 'descending' ? 'asc' : 'desc';
        sortBy(table, i, dir);
      });
    });
  });
  var genes = document.getElementById('genes');
  var m = /[#&]sort=([A-Za-z0-9_]+):(asc|desc)/.exec(window.location.hash);
  if (genes && m){
    var cells = genes.tHead.rows[0].cells;
    for (var i = 0; i < cells.length; i++){
      if (cells[i].getAttribute('data-col') === m[1]) sortBy(genes, i, m[2]);
    }
  }
  var search = document.getElementById('gene-search');
  var count = document.getElementById('gene-count');
  function filter(){
    if (!genes || !search) return;
    var q = search.value.trim().toLowerCase();
    var n = 0;
    Array.prototype.forEach.call(genes.tBodies[0].rows, function(row){
      var hit = !q || row.cells[0].textContent.toLowerCase().indexOf(q) >= 0;
      row.style.display = hit ? '' : 'none';
      if (hit) n++;
    });
    if (count) count.textContent = n + ' of ' + genes.tBodies[0].rows.length + ' genes';
  }
  if (search){
    search.addEventListener('input', filter);
    var q = /[#&]q=([^&]*)/.exec(window.location.hash);
    if (q) search.value = decodeURIComponent(q[1]);
  }
  filter();
  document.body.setAttribute('data-ready', '1');
})();
"""


def esc(x: Any) -> str:
    """HTML-escape any value's text (quotes included)."""
    return html.escape(str(x), quote=True)


def _finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt(x: Any, kind: str) -> str:
    """Format a value for display (empty for missing/NaN)."""
    if kind == "text":
        return "" if x is None or (isinstance(x, float) and math.isnan(x)) else str(x)
    if kind == "bool":
        return "yes" if bool(x) else ""
    if not _finite(x):
        return ""
    x = float(x)
    if kind == "int":
        return f"{int(x)}"
    if kind == "r":
        return f"{x:.3f}"
    if kind == "p":
        return f"{x:.2e}" if x < 1e-3 else f"{x:.4f}"
    return f"{x:.3g}"


def _ci(block: dict[str, Any]) -> str:
    mean = fmt(block.get("mean_r"), "r") or "n/a"
    lo, hi = block.get("mean_r_ci95") or [None, None]
    if _finite(lo) and _finite(hi):
        return f"{mean} <span class='ci'>[{fmt(lo, 'r')}, {fmt(hi, 'r')}]</span>"
    return mean


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], *, attrs: str = "") -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table {attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def headline_table(summary: dict[str, Any]) -> str:
    """Mean r [95% CI] and median r per gene set, for the model and each baseline."""
    baselines = list(summary["baselines"])
    header = ["gene set", "genes (defined)", "model mean r [95% CI]", "model median r"]
    header += [f"baseline {b}: mean r [95% CI]" for b in baselines]
    rows = []
    for key, meta in summary["gene_sets"].items():
        m = summary["model"][key]
        row = [esc(meta["label"]),
               f"{m['n_genes']} ({m['n_defined']})",
               f"<span class='big'>{_ci(m)}</span>", fmt(m["median_r"], "r") or "n/a"]
        row += [_ci(summary["baselines"][b][key]) for b in baselines]
        rows.append(row)
    return _table([esc(h) for h in header], rows, attrs="id='headline'")


def selection_line(summary: dict[str, Any]) -> str:
    """The one sentence saying which model ships (``train.select``), above the headline."""
    sel = summary.get("selection")
    return f"<p class='note'><b>Shipped model.</b> {esc(sel['sentence'])}</p>" if sel else ""


def selection_section(summary: dict[str, Any]) -> str:
    """Per fold: the inner validation scores of the head and ridge, and the winner."""
    sel = summary.get("selection")
    if not sel or not sel["folds"]:
        return ""
    rows = []
    blend = any("blend" in (info.get("inner_scores") or {}) for info in sel["folds"].values())
    for fold, info in sel["folds"].items():
        scores = info.get("inner_scores") or {}
        rows.append([esc(fold), fmt(scores.get(sel["head"]), "r") or "n/a",
                     *([fmt(scores.get("blend"), "r") or "n/a",
                        _margin_cell(info.get("blend_margin"))] if blend else []),
                     fmt(scores.get("ridge"), "r") or "n/a", esc(info.get("winner"))])
    head = esc(sel["head"])
    also = (", and their blend (a weighted mean of the two predictions, weight chosen on the "
            "same units)" if blend else "")
    return ("<h2>Model selection (inner validation)</h2><p class='sub'>Inside each fold the "
            f"{head} head and ridge on the same inputs{also} were scored on the training "
            "fold's inner validation units only (mean per-gene r within each validation "
            "group, every modelled gene); the highest one ships"
            + ("; the blend only when its gain over the better of the two has a 95% "
               "bootstrap interval over genes above 0" if blend else "") + ".</p>"
            + _table(["fold", f"{head} inner r",
                      *(["blend inner r", "blend gain (95% CI)"] if blend else []),
                      "ridge inner r", "shipped"], rows))


def _margin_cell(margin: dict[str, Any] | None) -> str:
    """The blend's gain over the better of head and ridge and its interval, or n/a."""
    if not margin or margin.get("gain") is None:
        return "n/a"
    low, high = margin["ci95"]
    return esc(f"{margin['gain']:+.4f} ({low:+.4f} to {high:+.4f})")


def uncertainty_section(summary: dict[str, Any]) -> str:
    """What the spread is, how well it ranks the held-out errors and how much +-2 SD covers."""
    u = summary.get("uncertainty")
    if not u:
        return ""
    rows = [[esc(section), fmt(u["spearman_sections"].get(section), "r") or "n/a",
             fmt(cover, "r") or "n/a"] for section, cover in u["coverage_sections"].items()]
    return ("<h2>Uncertainty: the spread vs the error</h2><p class='sub'>"
            + spread_sentence(u.get("spread") or {}) + " Per held-out "
            "section and gene, Spearman rho between the spread (predicted_sd) and "
            "the absolute error, averaged over genes: "
            f"<b>{fmt(u['spearman_mean'], 'r') or 'n/a'}</b> over sections "
            f"({fmt(u['share_genes_positive'], 'r') or 'n/a'} of genes positive)"
            + constant_spread_clause(u) + ". Share of "
            f"observed values within predicted +-2 SD: <b>{fmt(u['coverage_2sd'], 'r')}</b> "
            "(about 0.95 if the spread were a calibrated Gaussian error).</p>"
            + _table(["section", "rho(spread, |error|)", "coverage +-2 SD"], rows))


def constant_spread_clause(u: dict[str, Any]) -> str:
    """Where some genes' spread is constant within a section (no rho): how many vary, and the
    mean rho counting the constant ones as 0."""
    ranked = u.get("share_genes_ranked")
    if ranked is None or ranked >= 1.0:
        return ""
    return (f"; the spread varies within a section for {fmt(ranked, 'r')} of the genes, and "
            "counting the genes whose spread is constant as 0 the mean rho is "
            f"{fmt(u.get('spearman_mean_all_genes'), 'r') or 'n/a'}")


def spread_sentence(spread: dict[str, Any]) -> str:
    """What ``predicted_sd`` is, in one or two sentences (the report's uncertainty section)."""
    if spread.get("method") != "calibrated":
        return "The spread is the standard deviation of each fold's ensemble members."
    cover = spread.get("inner_coverage") or {}
    low, high = (min(cover.values()), max(cover.values())) if cover else (None, None)
    inner = (f" (inner coverage {fmt(low, 'r')}-{fmt(high, 'r')})" if cover else "")
    return ("The spread is calibrated on each fold's inner validation units (never its "
            "held-out units): " + esc(spread.get("description", "")) + inner + ".")


def counts_table(summary: dict[str, Any]) -> str:
    """The counts of genes passing each criterion."""
    c = summary["counts"]
    alpha = summary["settings"]["alpha"]
    ref = summary.get("reference_baseline")
    rows = [
        ("genes with a defined r", c["n_defined"]),
        ("genes with r undefined (constant or too few units)", c["n_undefined"]),
        (f"q (BH) < {alpha:g} and r > 0", c["n_q_below_alpha_positive"]),
        (f"Holm < {alpha:g} and r > 0", c["n_holm_below_alpha_positive"]),
        (f"beats the {ref} baseline (q < {alpha:g})" if ref else "beats a baseline",
         c["n_beats_baseline"] if c["n_beats_baseline"] is not None else "n/a"),
        ("significantly well predicted", c["n_significant"]),
    ]
    return _table(["criterion", "genes"], ((esc(a), esc(b)) for a, b in rows),
                  attrs="id='counts'")


def fold_table(summary: dict[str, Any]) -> str:
    """One row a fold: units, patients, mean r of the model and baselines."""
    baselines = list(summary["baselines"])
    header = ["fold", "units", "patients", "samples", "model mean r", "model median r",
              "genes defined"] + [f"baseline {b}: mean r" for b in baselines]
    rows = []
    for f in summary["per_fold"]:
        row = [esc(f["fold"]), esc(f["n_units"]), esc(f["n_patients"]), esc(f["n_samples"]),
               fmt(f["model_mean_r"], "r"), fmt(f["model_median_r"], "r"),
               esc(f["model_n_defined"])]
        row += [fmt(f.get(f"{b}_mean_r"), "r") for b in baselines]
        rows.append(row)
    return _table([esc(h) for h in header], rows, attrs="id='folds' class='sortable'")


MAP_METHOD_LABELS = {
    "head": "bulk head's tile map",
    "ridge": "ridge on mean tile embeddings, applied tile by tile (linear bulk baseline)",
    "floor": "the head's region prediction painted on every tile (floor)",
    "region_truth": "the region's measured pseudo-bulk on every tile (flat oracle)",
    "spot_ridge": "ridge trained on the spots, applied to the grid tiles",
    "ceiling": "the spot-trained default model at the spots (ceiling)",
}


def map_vs_spots_section(table: pd.DataFrame | None, block: dict[str, Any] | None) -> str:
    """The map-versus-spots section: per held-out section and method, mean per-gene r at the
    spots with bootstrap CIs; empty when the run has no spot truth."""
    if table is None or block is None:
        return ""

    def cell(row: pd.Series, key: str) -> str:
        lo, hi = row[f"ci_{key}_low"], row[f"ci_{key}_high"]
        ci = (f" <span class='ci'>[{fmt(lo, 'r')}, {fmt(hi, 'r')}]</span>"
              if _finite(lo) and _finite(hi) else "")
        return f"{fmt(row[f'mean_r_{key}'], 'r') or 'n/a'}{ci}"

    rows = [[esc(r["section"]), esc(MAP_METHOD_LABELS.get(r["method"], r["method"])),
             esc(r["n_regions"]), esc(r["n_spots"]), cell(r, "top"), cell(r, "all")]
            for _, r in table.iterrows()]
    header = ["section", "map", "regions", "spots", f"mean r, top {block['top_n']} [95% CI]",
              "mean r, all genes [95% CI]"]
    diffs = "; ".join(
        f"head minus {k}: {fmt(block[f'head_minus_{k}_top']['value'], 'r')} "
        f"[{fmt(block[f'head_minus_{k}_top']['ci'][0], 'r')}, "
        f"{fmt(block[f'head_minus_{k}_top']['ci'][1], 'r')}]" for k in ("floor", "ridge"))
    share = block.get("head_share_of_ceiling_top")
    return (f"<h2>Map versus spots</h2><p class='sub'>Each held-out section's tile maps read at "
            f"its measured spots (the tile holding each spot centre); per gene Pearson r over "
            f"the section's spots, averaged over genes; CIs: {block['n_boot']} bootstrap "
            f"resamples of the spots; 'all' = mean over sections. Top {block['top_n']}, paired: "
            f"{esc(diffs)}; head / ceiling {fmt(share, 'r') or 'n/a'}. Also in "
            f"map_vs_spots.tsv.</p>"
            + _table([esc(h) for h in header], rows, attrs="id='map-vs-spots'"))


def maps_cell(gene: str, links: ReportLinks) -> str:
    """The gene's heatmap PNGs found (one link a slide); the gene's name itself opens the
    viewer (:func:`gene_table`)."""
    have = links.present.get(str(gene), [])
    parts = [f"<a class='heatmap' href='{esc(links.heatmap_href(s, gene))}'>{esc(s)}</a>"
             for s in have]
    return (f"<td class='t maps' data-file='{esc(gene_filename(gene))}' "
            f"data-have='{esc(' '.join(have))}'>{''.join(parts)}</td>")


def gene_table(genes: pd.DataFrame, links: ReportLinks | None = None) -> str:
    """The sortable, searchable table of every gene (all genes.tsv rows).

    Each gene's name opens the slide viewer at it; with ``links``, a ``maps`` column after
    the gene links its heatmaps.
    """
    cols = [c for c in GENE_TABLE if c[0] in genes.columns]
    heads = [f"<th data-col='{c}' data-type='{'text' if k in ('text', 'bool') else 'num'}'"
             f"{' class=t' if k == 'text' else ''}>{esc(h)}</th>" for c, h, k in cols]
    if links is not None:
        heads.insert(1, "<th data-col='maps' data-type='text' class=t>maps</th>")
    parts = []
    values = {c: genes[c].to_numpy() for c, _, _ in cols}
    for i in range(len(genes)):
        cells = []
        for c, _, k in cols:
            v = values[c][i]
            text = esc(fmt(v, k))
            if c == "gene":  # opens the slide viewer at this gene
                cells.append(f"<td class='t'><a href='{esc(viewer_href(str(v)))}' "
                             f"title='show {text} in the slide viewer'>{text}</a></td>")
            elif k in ("text", "bool"):
                cls = " class='t'" if k == "text" else (" class='sig'" if v else "")
                cells.append(f"<td{cls}>{text}</td>")
            else:
                dv = repr(float(v)) if _finite(v) else ""
                cells.append(f"<td data-v='{dv}'>{text}</td>")
        if links is not None:
            cells.insert(1, maps_cell(str(values["gene"][i]), links))
        parts.append("<tr>" + "".join(cells) + "</tr>")
    search = ("<p><input type='search' id='gene-search' placeholder='search genes' "
              "aria-label='search genes'><span id='gene-count' class='sub'></span></p>")
    return (f"{search}<div class='scroll'><table id='genes' class='sortable'><thead><tr>"
            f"{''.join(heads)}</tr></thead><tbody>{''.join(parts)}</tbody></table></div>")


def samples_list(links: ReportLinks) -> str:
    """One line per sample: its QC image and heatmap folder (those that exist)."""
    if not links.samples:
        return ""
    items = []
    for s in links.samples:
        parts = []
        if s in links.qc:
            parts.append(f"<a href='{esc(links.qc[s])}'>QC</a>")
        if s in links.folders:
            parts.append(f"<a href='{esc(links.heatmaps)}/{esc(s)}/'>heatmaps</a>")
        items.append(f"<li>{esc(s)}{': ' if parts else ''}{' · '.join(parts)}</li>")
    return f"<h2>Samples</h2><ul id='samples'>{''.join(items)}</ul>"


def provenance_yaml(provenance: dict[str, Any]) -> str:
    """The provenance as YAML; a config stored as a JSON string is shown as a mapping."""
    def unpack(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): unpack(v) for k, v in value.items()}
        if isinstance(value, list):
            return [unpack(v) for v in value]
        if isinstance(value, str) and value[:1] in "{[":
            try:
                return unpack(json.loads(value))
            except ValueError:
                return value
        return value

    return yaml.safe_dump(unpack(provenance), sort_keys=False, default_flow_style=False,
                          allow_unicode=True, width=100)


def _img(b64: str, alt: str) -> str:
    return f"<img class='fig' alt='{esc(alt)}' src='data:image/png;base64,{b64}'>"


def _top_bottom(genes: pd.DataFrame, n: int) -> tuple[list[int], list[int]]:
    r = genes["pearson_r"].to_numpy(dtype=np.float64)
    ok = np.flatnonzero(np.isfinite(r))
    order = ok[np.argsort(-r[ok], kind="stable")]
    top = order[:n].tolist()
    bottom = [i for i in order[::-1][:n].tolist() if i not in top]
    return top, bottom


def _maps_note(links: ReportLinks | None) -> str:
    if links is None:
        return ""
    return (" <i>maps</i>: the gene's heatmap on each slide that has one (heatmaps are drawn "
            "for the best genes after this page is written; the page finds them when opened) "
            "and the gene in the viewer.")


def _facts(s: dict[str, Any]) -> list[str]:
    """The page's subtitle: mode, encoder, counts of units, genes, patients, samples and
    folds, and the mean spread when there is one."""
    facts = [f"{s['n_units']} units", f"{s['n_genes']} genes", f"{s['n_patients']} patients",
             f"{s['n_samples']} samples", f"{s['n_folds']} folds"]
    if s.get("mean_predicted_sd") is not None:
        facts.append(f"mean spread (SD) {s['mean_predicted_sd']:.3g} log1p CP10k")
    if s.get("encoder"):
        facts.insert(0, f"encoder {s['encoder']}")
    if s.get("mode"):
        facts.insert(0, f"{s['mode']} mode")
    return facts


def _scatter_figures(data: ReportData, *, n_scatter: int, seed: int) -> list[str]:
    """Scatter plots of the best and of the worst predicted genes (HTML)."""
    genes = data.genes
    names = genes["gene"].astype(str).tolist()
    r_model = genes["pearson_r"].to_numpy(dtype=np.float64)
    top, bottom = _top_bottom(genes, n_scatter)
    figs = []
    for idx, label in ((top, "Best predicted genes"), (bottom, "Worst predicted genes")):
        if idx:
            png = plots.scatter_grid(data.truth, data.preds["model"], idx, names=names,
                                     r=r_model, folds=data.folds, seed=seed)
            figs.append(f"<h3>{esc(label)}</h3>" + _img(png, label))
    if not figs:
        figs.append("<p class='note'>No gene has a defined r: nothing to plot.</p>")
    return figs


def _notes(s: dict[str, Any]) -> str:
    """Notes under the headline: the bootstrap's unit, implausible predictions, no
    reference baseline."""
    note = s["bootstrap"].get("note")
    notes = f"<p class='note'>{esc(note)}</p>" if note else ""
    if s.get("implausible_predictions"):
        notes += f"<p class='note warning'>{esc(s['implausible_predictions']['note'])}</p>"
    if not s.get("reference_baseline"):
        notes += ("<p class='note'>No reference baseline in the predictions: genes are not "
                  "tested against a baseline.</p>")
    return notes


def render_html(data: ReportData, *, title: str | None = None, n_scatter: int = 8,
                seed: int = 0, links: ReportLinks | None = None,
                map_scores: pd.DataFrame | None = None) -> str:
    """Build the report page.

    Parameters
    ----------
    data
        The evaluated predictions (:func:`~slide2expr.report.evaluate.build_report`).
    title
        Page title; defaults to the head and encoder from the provenance.
    n_scatter
        Genes shown as scatter plots among the best and among the worst.
    seed
        Seed for subsampling points of large scatter plots.
    links
        Heatmap, QC and viewer links (:func:`~slide2expr.report.links.find_links`); None
        for none.
    map_scores
        The map-versus-spots table (:mod:`slide2expr.report.map_vs_spots`), shown in its own
        section with ``summary['map_vs_spots']``; None: no such section.

    Returns
    -------
    The page, as a string.
    """
    s = data.summary
    head = s.get("head")
    title = title or "slide2expr report" + (f": {head}" if head else "")
    return _document(title, _results_sections(data, title, n_scatter=n_scatter, seed=seed,
                                              map_scores=map_scores)
                     + _reference_sections(s, data.genes, links))


def _results_sections(data: ReportData, title: str, *, n_scatter: int, seed: int,
                      map_scores: pd.DataFrame | None) -> str:
    """The page from its title to the map-versus-spots section: headline, counts, notes,
    the r distribution, scatter plots, per fold, selection, uncertainty."""
    s = data.summary
    genes = data.genes
    facts = _facts(s)
    r_all = {"model": genes["pearson_r"].to_numpy(dtype=np.float64)}
    for b in s["baselines"]:
        r_all[b] = genes[f"baseline_{b}_r"].to_numpy(dtype=np.float64)
    dist = plots.r_distribution(r_all, reference=s.get("reference_baseline"),
                                significant=genes["significant"].to_numpy(dtype=bool))
    figs = _scatter_figures(data, n_scatter=n_scatter, seed=seed)
    notes = _notes(s)
    return f"""<h1>{esc(title)}</h1>
<p class="sub">{esc(' · '.join(facts))}</p>
<h2>Headline</h2>
{selection_line(s)}
{headline_table(s)}
{counts_table(s)}
{notes}
<h2>Per-gene correlation, model vs baselines</h2>
{_img(dist, 'distribution of per-gene r')}
<h2>Predicted vs observed</h2>
{''.join(figs)}
<h2>Per fold</h2>
{fold_table(s)}
{selection_section(s)}
{uncertainty_section(s)}
{map_vs_spots_section(map_scores, s.get('map_vs_spots'))}
"""


def _reference_sections(s: dict[str, Any], genes: pd.DataFrame,
                        links: ReportLinks | None) -> str:
    """The sortable gene table, the samples' links, the definitions and the provenance."""
    defs = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in s["definitions"].items())
    prov = provenance_yaml(json.loads(json.dumps(s.get("provenance", {}), default=str)))
    return f"""<h2>Genes</h2>
<p class="sub">Click a column header to sort; type in the box to find genes; a gene's viewer
link opens the slide viewer at that gene. Also in genes.tsv beside this page.{_maps_note(links)}</p>
{gene_table(by_r(genes), links)}
{samples_list(links) if links is not None else ''}
<h2>Definitions</h2>
<dl class="defs">{defs}</dl>
<h2>Provenance</h2>
<pre>{esc(prov)}</pre>
"""


def _document(title: str, body: str) -> str:
    """The HTML document around ``body``: head, style, script."""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head>
<body>
{body}<script>{JS}</script>
</body></html>
"""
