"""Reproducibility commands: ``slide2expr verify``, ``slide2expr manifest``, ``slide2expr compare``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from slide2expr.commands._config import config_json_option, section


def verify(
    run_a: Path = typer.Argument(..., help="First run: its results/ (or the folder holding it)."),
    run_b: Path = typer.Argument(..., help="Second run: its results/ (or the folder holding it)."),
    rtol: float = typer.Option(0.0, "--rtol", min=0.0,
                               help="Relative tolerance for numbers (0 = exactly equal)."),
    atol: float = typer.Option(0.0, "--atol", min=0.0, help="Absolute tolerance for numbers."),
    max_shown: int = typer.Option(10, "--max-shown", min=1,
                                  help="Differences named per file before a count."),
    as_json: Path | None = typer.Option(None, "--json", help="Also write the result as JSON."),
    show_ignored: bool = typer.Option(False, "--show-ignored",
                                      help="List the fields ignored as times, hosts or paths."),
) -> None:
    """Compare two runs' results; name every difference; exit 1 if any."""
    from slide2expr.repro.verify import verify_runs

    result = verify_runs(run_a, run_b, rtol=rtol, atol=atol, max_shown=max_shown)
    if as_json is not None:
        as_json.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    for diff in result.differences:
        typer.echo(f"DIFF {diff}")
    if show_ignored:
        for item in result.ignored:
            typer.echo(f"ignored {item}")
    tol = f" (rtol {rtol:g}, atol {atol:g})" if rtol or atol else ""
    summary = (f"{len(result.compared)} files compared{tol}, {len(result.skipped)} skipped, "
               f"{len(result.ignored)} time/host/path fields ignored")
    if result.identical:
        typer.echo(f"identical: {summary}")
        return
    n_files = len({d.path for d in result.differences})
    typer.echo(f"DIFFERENT: {len(result.differences)} difference(s) in {n_files} file(s); "
               f"{summary}", err=True)
    # SystemExit, not typer.Exit: the CLI runs click with standalone_mode=False, where
    # typer.Exit's code is returned and lost.
    raise SystemExit(1)


def manifest(
    out: Path = typer.Option(Path("results/manifest.json"), "--out", "-o",
                             help="Manifest to write."),
    config_json: str | None = typer.Option(None, "--config-json",
                                           help="The run's full resolved config as JSON."),
    config: Path | None = typer.Option(None, "--config", help="... or a YAML/JSON config file."),
    results: Path = typer.Option(Path("results"), "--results",
                                 help="Results directory (benchmarks/ and features/ are read)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Write the run manifest: versions, commit, device, config, input sha256s, seeds, times."""
    from slide2expr.console import progress_wanted
    from slide2expr.errors import InputError
    from slide2expr.repro.manifest import build_manifest, write_manifest

    if config_json:
        try:
            values = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise InputError(None, f"--config-json is not valid JSON ({exc})",
                             "pass the config as a JSON object") from exc
    elif config is not None:
        import yaml

        if not config.is_file():
            raise InputError(config, "does not exist", "pass the run's config file")
        values = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    else:
        raise InputError(None, "no config given", "pass --config-json or --config")
    data = build_manifest(values, results=results, progress=progress_wanted(progress))
    write_manifest(out, data)
    missing = [i for i in data["inputs"] if i["sha256"] is None]
    typer.echo(f"wrote {out}: {len(data['inputs'])} inputs hashed"
               + (f", {len(missing)} not found" if missing else ""))


def compare(
    ctx: typer.Context,
    runs: list[str] = typer.Option(..., "--run",
                                   help="ENCODER:HEAD:SUMMARY_JSON, once per combination."),
    out: Path = typer.Option(..., "--out", "-o", help="compare.tsv to write."),
    html: Path | None = typer.Option(None, "--html", help="Also write the page section."),
    benchmarks: Path | None = typer.Option(None, "--benchmarks",
                                           help="results/benchmarks: wall time per stage."),
    top_n: int | None = typer.Option(None, "--top-n", help="Label of the top-genes column."),
    n_hvg: int | None = typer.Option(None, "--n-hvg", help="Label of the HVG column."),
    config_json: str | None = config_json_option(),
) -> None:
    """Compare encoder x head combinations: mean r, genes significant, wall time per stage."""
    from slide2expr.repro.compare import build_compare, parse_run, write_compare

    labels = section(ctx, "report", config_json, {"top_n": "top_n", "n_hvg": "n_hvg"}) \
        if config_json or top_n is not None or n_hvg is not None else {}
    table = build_compare([parse_run(r) for r in runs], benchmarks=benchmarks)
    write_compare(table, out, html, top_n=labels.get("top_n"), n_hvg=labels.get("n_hvg"))
    typer.echo(f"wrote {out}: {len(table)} rows")


def register(app: typer.Typer) -> None:
    """Add ``verify``, ``manifest`` and ``compare`` to the CLI."""
    app.command("verify")(verify)
    app.command("manifest")(manifest)
    app.command("compare")(compare)
