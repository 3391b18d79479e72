"""``slide2expr train`` and ``slide2expr predict``."""

from __future__ import annotations

from pathlib import Path

import typer

from slide2expr.commands._config import CONFIG_JSON_HELP


def _load_settings(config: Path | None, config_json: str | None, overrides: dict) -> object:
    """The train section: a YAML file (whole config or the section), then ``--config-json``,
    then the given flags; validated against the workflow's schema, then by TrainConfig."""
    import yaml

    from slide2expr.errors import InputError
    from slide2expr.settings import parse_config_json, validate_section
    from slide2expr.train.config import TrainConfig

    values: dict = {}
    source = None
    if config is not None:
        if not config.is_file():
            raise InputError(config, "does not exist", "pass a YAML config file")
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputError(config, f"is not valid YAML ({exc})".replace("\n", " "),
                             "fix the file") from exc
        if not isinstance(data, dict):
            raise InputError(config, "is not a mapping", "give a config with a train: section")
        section = data.get("train", data)
        if not isinstance(section, dict | None):
            raise InputError(config, f"config section 'train' is {section!r}, not a mapping "
                             "of settings", "write its settings as 'key: value' lines "
                             "indented under 'train:' (config/README.md)")
        values = dict(section or {})
        source = str(config)
    values.update(parse_config_json(config_json).get("train") or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(validate_section("train", values, source=source, as_flags=False),
                                 source=source)


def _refuse_linked_models_dir(models_dir: Path) -> None:
    """Refuse a ``--models-dir`` that is a symbolic link, before any training.

    The folder is replaced as a whole at the end of the run, which would replace the link
    (or fail on it) rather than fill the folder it points to: hours of training lost.
    """
    from slide2expr.errors import InputError

    if models_dir.is_symlink():
        raise InputError(models_dir, f"is a symbolic link (to {models_dir.readlink()}); "
                         "train replaces this folder as a whole, so it would replace the "
                         "link, not the folder it points to",
                         f"pass the folder itself ({models_dir.resolve()}) as --models-dir, "
                         "or remove the link")


def train(
    dataset: Path = typer.Argument(..., help="dataset.h5ad written by the join stage."),
    head: str | None = typer.Option(
        None, "--head", help="Head: context or mlp (spot), he2rna or abmil (bulk); default: "
        "the first of train.heads (the schema's default: context)."),
    models_dir: Path = typer.Option(..., "--models-dir", help="Output: results/models/{head}."),
    predictions: Path = typer.Option(..., "--predictions",
                                     help="Output: results/predictions/{head}.h5ad."),
    config: Path | None = typer.Option(None, "--config",
                                       help="YAML file with a train: section (or the section)."),
    config_json: str | None = typer.Option(None, "--config-json",
                                           help=CONFIG_JSON_HELP),
    folds: str | None = typer.Option(None, "--folds", help="Override train.folds (int or loo)."),
    seed: int | None = typer.Option(None, "--seed", help="Override train.seed."),
    max_epochs: int | None = typer.Option(None, "--max-epochs", help="Override train.max_epochs."),
    accelerator: str | None = typer.Option(None, "--accelerator", help="auto, cpu or gpu."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch."),
) -> None:
    """Cross-validate a head and the baselines; write fold models and out-of-fold predictions."""
    import torch

    from slide2expr.contracts.dataset import read_dataset
    from slide2expr.train.run import run_training

    torch.set_num_threads(max(1, threads))
    fold_value = None if folds is None else (folds if folds == "loo" else int(folds))
    settings = _load_settings(config, config_json, {"folds": fold_value, "seed": seed,
                                                    "max_epochs": max_epochs,
                                                    "accelerator": accelerator})
    _refuse_linked_models_dir(models_dir)
    adata = read_dataset(dataset)
    run_training(adata, head=head or settings.heads[0], config=settings, models_dir=models_dir,
                 predictions_path=predictions, dataset_path=dataset)
    typer.echo(f"wrote {predictions} and {models_dir}")


def predict(
    features: list[Path] = typer.Argument(..., help="Feature files (one per slide) from extract."),
    model: Path = typer.Option(..., "--model", help="results/models/{head} or one fold directory."),
    output: Path = typer.Option(..., "-o", "--output", help="Output .h5ad of predicted expression."),
    level: str = typer.Option("auto", "--level",
                              help="slide (one row a file), tile (one row a tile/spot), or auto: "
                                   "slide for bulk heads, tile for spot heads."),
    fold: int | None = typer.Option(None, "--fold", help="Use one fold's model (default: average)."),
    threads: int = typer.Option(1, "--threads", help="CPU threads for torch."),
) -> None:
    """Predict expression for slides without RNA-seq from their feature files."""
    import torch

    from slide2expr.predict import predict_files

    torch.set_num_threads(max(1, threads))
    predict_files(features, model_dir=model, output=output, level=level, fold=fold)
    typer.echo(f"wrote {output}")


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``predict`` to the CLI."""
    app.command("train")(train)
    app.command("predict")(predict)
