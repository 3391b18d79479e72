"""``slide2expr join``: expression + features -> ``dataset.h5ad``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

from slide2expr.errors import InputError

log = logging.getLogger(__name__)


def join(
    samples: Path = typer.Argument(..., help="Sample sheet (TSV)."),
    features_dir: Path = typer.Option(..., "--features-dir", "-f",
                                      help="Folder of {sample_id}.h5 features files "
                                           "(results/features/{encoder}/{tiling})."),
    out: Path = typer.Option(..., "--out", "-o", help="dataset.h5ad to write."),
    mode: str = typer.Option("spot", help="spot or bulk."),
    encoder: str = typer.Option(..., help="Encoder name: obsm key X_{encoder}; checked against "
                                          "the features' attrs."),
    expression: Path | None = typer.Option(None, help="Bulk mode: expression matrix "
                                                      "(TSV/CSV/h5ad)."),
    values: str = typer.Option("counts", help="counts, tpm, fpkm or log."),
    orientation: str = typer.Option("auto", help="auto, samples_x_genes or genes_x_samples."),
    gene_map: str | None = typer.Option(None, help="ID -> symbol mapping file, or (bulk) the "
                                                   "name of a symbol column."),
    on_missing: str = typer.Option("error", help="error or drop: samples/spots without "
                                                 "expression or features."),
    patient_slides: str = typer.Option("separate", help="Bulk: separate or average the slides "
                                                        "of a patient."),
    match_on: str = typer.Option("sample_id", help="Bulk: match matrix IDs to sample_id or "
                                                   "patient."),
    target_sum: float = typer.Option(1e4, help="Counts are scaled to this total before log1p."),
    sparse: bool = typer.Option(False, "--sparse/--dense", help="Store X and counts as CSR."),
    run_config: str | None = typer.Option(None, help="The run's config, recorded as provenance: "
                                                     "a JSON string or a YAML/JSON file."),
    data_root: Path | None = typer.Option(None, help="Folder that relative counts/spots paths "
                                                     "in the sheet are relative to (the config's "
                                                     "data_root)."),
) -> None:
    """Join expression with features into one AnnData (spot or bulk mode)."""
    from slide2expr.inputs.samples import read_sample_sheet
    from slide2expr.join.run import JoinParams, build_dataset, write_dataset

    params = JoinParams(mode=mode, encoder=encoder, values=values, orientation=orientation,
                        gene_map=gene_map or None, on_missing=on_missing,
                        patient_slides=patient_slides, match_on=match_on,
                        target_sum=target_sum, sparse=sparse)
    sheet = read_sample_sheet(samples, mode=mode, check_files=False, root=data_root)
    adata = build_dataset(sheet, features_dir, params, expression=expression,
                          run_config=_load_config(run_config), sheet_path=samples)
    write_dataset(adata, out)
    typer.echo(f"{out}: {adata.n_obs} {'spots' if mode == 'spot' else 'units'} x "
               f"{adata.n_vars} genes")


def _load_config(value: str | None) -> dict | None:
    if value is None or value == "":
        return None
    text = value.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(None, f"--run-config is not valid JSON ({exc})", "") from exc
    path = Path(value)
    if not path.is_file():
        raise InputError(path, "run config file not found", "give a JSON string or a YAML file")
    import yaml

    with open(path) as fh:
        return yaml.safe_load(fh)


def register(app: typer.Typer) -> None:
    """Add ``join`` to the CLI."""
    app.command("join")(join)
