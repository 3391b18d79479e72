"""``slide2expr report``: per-gene statistics, summary and HTML page of out-of-fold predictions."""

from __future__ import annotations

from pathlib import Path

import typer

from slide2expr.commands._config import config_json_option, section

#: Flag -> key of the ``report`` section.
REPORT_FLAGS = {name: name for name in ("top_n", "n_hvg", "bootstrap", "alpha", "seed",
                                        "baseline", "n_scatter")}


def report(
    ctx: typer.Context,
    predictions: Path = typer.Argument(..., help="Out-of-fold predictions: results/predictions/{head}.h5ad."),
    out: Path = typer.Option(..., "--out", "-o",
                             help="Output directory: genes.tsv, summary.json, index.html."),
    top_n: int = typer.Option(50, "--top-n", min=1, help="Size of the top-genes-by-training-mean set."),
    n_hvg: int = typer.Option(50, "--n-hvg", min=1, help="Number of highly variable genes."),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0,
                                  help="Bootstrap replicates for the 95% CIs (0: none)."),
    alpha: float = typer.Option(0.05, "--alpha", min=0.0, max=1.0, help="FDR level for q-values."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    baseline: str = typer.Option("ridge", "--baseline",
                                 help="Baseline layer the model is tested against (baseline_{name})."),
    n_scatter: int = typer.Option(8, "--n-scatter", min=0,
                                  help="Best and worst genes drawn as scatter plots."),
    models: Path | None = typer.Option(None, "--models", help="The head's fold models for the "
                                       "map-versus-spots score (default: models/{head} beside "
                                       "predictions/); used only when regions carry spot truth."),
    ceiling: Path | None = typer.Option(None, "--ceiling", help="A spot run's predictions of "
                                        "the same sections, one held out a fold: the "
                                        "map-versus-spots ceiling (regions with spot truth)."),
    config_json: str | None = config_json_option(),
) -> None:
    """Evaluate out-of-fold predictions: genes.tsv, summary.json and a self-contained index.html."""
    from slide2expr.report import write_report

    cfg = section(ctx, "report", config_json, REPORT_FLAGS)
    data = write_report(predictions, out, top_n=cfg["top_n"], n_hvg=cfg["n_hvg"],
                        n_boot=cfg["bootstrap"], alpha=cfg["alpha"], seed=cfg["seed"],
                        baseline=cfg["baseline"], n_scatter=cfg["n_scatter"], model_dir=models,
                        ceiling=ceiling)
    m = data.summary["model"]["all"]
    mean = "n/a" if m["mean_r"] is None else f"{m['mean_r']:.3f}"
    typer.echo(f"wrote {out}/index.html: mean r {mean} over {m['n_defined']} genes, "
               f"{data.summary['counts']['n_significant']} significantly well predicted")
    spots = data.summary.get("map_vs_spots")
    if spots:
        typer.echo("map vs spots, mean r top {n}: ".format(n=spots["top_n"]) + ", ".join(
            f"{k} {v['mean_r_top']}" for k, v in spots["methods"].items()))


def register(app: typer.Typer) -> None:
    """Add ``report`` to the CLI."""
    app.command("report")(report)
