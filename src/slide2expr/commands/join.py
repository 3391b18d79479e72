"""``slide2expr join``: expression + features -> ``dataset.h5ad``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from slide2expr.commands._config import CONFIG_JSON_HELP, section
from slide2expr.errors import InputError

if TYPE_CHECKING:
    from slide2expr.join.run import JoinParams

log = logging.getLogger(__name__)


#: Flag -> key of the ``join`` section.
JOIN_FLAGS = {name: name for name in ("expression", "values", "orientation", "gene_map",
                                      "on_missing", "patient_slides", "match_on",
                                      "target_sum", "sparse", "encoder", "slide_mean")}
JOIN_FLAGS["neighbour_um"] = "neighbour_um"


def join(
    ctx: typer.Context,
    samples: Path = typer.Argument(..., help="Sample sheet (TSV)."),
    features_dir: Path = typer.Option(..., "--features-dir", "-f",
                                      help="Folder of {sample_id}.h5 features files "
                                           "(results/features/{encoder}/{tiling})."),
    out: Path = typer.Option(..., "--out", "-o", help="dataset.h5ad to write."),
    mode: str | None = typer.Option(None, help="spot or bulk (default: the config's mode, "
                                               "else spot)."),
    encoder: str | None = typer.Option(None, help="Encoder name: obsm key X_{encoder}; checked "
                                                  "against the features' attrs."),
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
    neighbour_um: list[float] = typer.Option([300.0], "--neighbour-um",
                                             help="Spot mode: neighbour-mean radius, um "
                                                  "(repeatable); obsm X_{encoder}_nbr{r}."),
    slide_mean: bool = typer.Option(True, "--slide-mean/--no-slide-mean",
                                    help="Spot mode: add obsm X_{encoder}_slide."),
    context_um: list[int] = typer.Option([], "--context-um",
                                         help="Spot mode: context windows to join, um "
                                              "(repeatable; default tiling.context_um)."),
    data_root: Path | None = typer.Option(None, help="Folder that relative counts/spots paths "
                                                     "in the sheet are relative to (default: "
                                                     "the config's data_root)."),
    config_json: str | None = typer.Option(
        None, "--config-json", "--config",
        help=CONFIG_JSON_HELP + " What is given is recorded in the dataset as provenance."),
) -> None:
    """Join expression with features into one AnnData (spot or bulk mode)."""
    from slide2expr.settings import parse_config_json

    run_config = parse_config_json(config_json)
    cfg = section(ctx, "join", config_json, JOIN_FLAGS)
    mode = mode or run_config.get("mode") or "spot"
    params = _join_params(cfg, mode=mode, context_um=context_um, run_config=run_config)
    _write_dataset(samples, features_dir, out, params, expression=cfg.get("expression"),
                   root=data_root or run_config.get("data_root"), run_config=run_config)


def _write_dataset(samples: Path, features_dir: Path, out: Path, params: JoinParams, *,
                   expression: str | None, root: str | Path | None, run_config: dict) -> None:
    """Read the sheet, build the dataset and write it to ``out``."""
    from slide2expr.contracts.dataset import write_dataset
    from slide2expr.inputs.samples import read_sample_sheet
    from slide2expr.join.run import build_dataset

    sheet = read_sample_sheet(samples, mode=params.mode, check_files=False, root=root)
    adata = build_dataset(sheet, features_dir, params,
                          expression=Path(expression) if expression else None,
                          run_config=run_config or None, sheet_path=samples)
    write_dataset(adata, out)
    typer.echo(f"{out}: {adata.n_obs} {'spots' if params.mode == 'spot' else 'units'} x "
               f"{adata.n_vars} genes")


def _join_params(cfg: dict, *, mode: str, context_um: list[int] | None,
                 run_config: dict) -> JoinParams:
    """The join's settings from the ``join`` section; the encoder given, else the config's
    first; context windows (spot mode only) from ``--context-um``, else
    ``tiling.context_um``."""
    from slide2expr.join.run import JoinParams

    encoder = cfg.get("encoder") or _first_encoder(run_config)
    if not encoder:
        raise InputError(None, "no encoder given", "pass --encoder (the features' encoder)")
    context = (tuple(context_um or (run_config.get("tiling") or {}).get("context_um") or ())
               if mode == "spot" else ())
    return JoinParams(mode=mode, encoder=encoder, values=cfg["values"],
                      orientation=cfg["orientation"], gene_map=cfg.get("gene_map") or None,
                      on_missing=cfg["on_missing"], patient_slides=cfg["patient_slides"],
                      match_on=cfg["match_on"], target_sum=cfg["target_sum"],
                      sparse=cfg["sparse"], neighbour_um=tuple(cfg["neighbour_um"]),
                      slide_mean=cfg["slide_mean"], context_um=context)


def _first_encoder(run_config: dict) -> str | None:
    encoders = (run_config.get("extract") or {}).get("encoders") or []
    return str(encoders[0]) if encoders else None


def register(app: typer.Typer) -> None:
    """Add ``join`` to the CLI."""
    app.command("join")(join)
