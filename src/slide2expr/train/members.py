"""One member of a fold: a head trained with early stopping on its inner split (and refit
on the whole training fold when asked), its held-out and inner-validation predictions."""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from slide2expr.predict import predict_batches
from slide2expr.train.config import TrainConfig
from slide2expr.train.heads import MONITOR, build_head


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banner lines and hints; real warnings from our code stay."""
    names = ("pytorch_lightning.utilities.rank_zero", "lightning.pytorch.utilities.rank_zero",
             "lightning_fabric.utilities.rank_zero")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"(pytorch_)?lightning.*")
        warnings.filterwarnings("ignore", message=r".*(srun|LeafSpec|num_workers|does not have "
                                r"many workers|variance of predictions or target).*")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def configure_determinism(seed: int) -> None:
    """Seed everything (workers too) and require deterministic algorithms."""
    import pytorch_lightning as pl
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    pl.seed_everything(seed, workers=True, verbose=False)
    torch.use_deterministic_algorithms(True)


def fit_member(head: str, hparams: dict, data: Any, *, config: TrainConfig, seed: int,
               out_dir: Path, refit_idx: np.ndarray | None = None) -> dict[str, Any]:
    """Train one head on ``data`` (early stopping on validation r) and predict its test units.

    Spot-mode heads with ``train.loop: plain`` (the default) train in
    :func:`slide2expr.train.loop.fit_member_plain`; the rest with the Lightning Trainer.

    With ``refit_idx`` (all units of the training fold), a fresh head is then trained on them
    for the best inner model's number of epochs, and that one is kept.
    Writes ``best.ckpt`` and ``metrics.csv`` into ``out_dir``; returns the module (eval
    mode), its predictions in expression units, epochs, best validation r and seconds.
    """
    if config.loop == "plain" and getattr(data.source, "kind", "") == "spot":
        from slide2expr.train.loop import fit_member_plain

        return fit_member_plain(head, hparams, data, config=config, seed=seed,
                                out_dir=out_dir, refit_idx=refit_idx)
    with quiet_lightning():
        start = time.perf_counter()
        module, fit = _fit_early_stopped(head, hparams, data, config=config, seed=seed,
                                         out_dir=out_dir)
        if refit_idx is not None:
            module, data = _refit(head, hparams, data, refit_idx, config=config, seed=seed,
                                  out_dir=out_dir, epochs=fit["best_epoch"] + 1)
        seconds = time.perf_counter() - start
        # out-of-fold: the held-out units through the network, as prediction runs it
        predicted = predict_batches(module.network, data.predict_dataloader())
        module.eval()
    return {"module": module.cpu(), "predicted": predicted, **fit,
            "seconds": round(seconds, 2),
            "hparams": {k: v for k, v in hparams.items() if k in module.hparams}}


def _new_head(head: str, hparams: dict, data: Any, config: TrainConfig) -> Any:
    """A freshly initialised head, standardised on ``data``'s training units."""
    module = build_head(head, **hparams)
    module.pearson_weight = config.pearson_weight
    module.set_standardisation(**data.standardisation())
    _fit_bases(module, data)
    return module


def _fit_early_stopped(head: str, hparams: dict, data: Any, *, config: TrainConfig, seed: int,
                       out_dir: Path) -> tuple[Any, dict[str, Any]]:
    """A head trained with early stopping on validation r, its best checkpoint loaded; and
    its epochs, best epoch, best validation r and inner-validation predictions."""
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    configure_determinism(seed)
    module = _new_head(head, hparams, data, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = ModelCheckpoint(dirpath=out_dir, filename="best", monitor=MONITOR, mode="max",
                                 save_top_k=1, auto_insert_metric_name=False)
    stopper = EarlyStopping(monitor=MONITOR, mode="max", patience=config.patience)
    trainer = pl.Trainer(
        max_epochs=config.max_epochs, min_epochs=min(config.min_epochs, config.max_epochs),
        accelerator=config.accelerator, devices=1, deterministic=True,
        callbacks=[checkpoint, stopper], logger=CSVLogger(out_dir, name="", version=""),
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data)
    best_epoch = int(trainer.current_epoch)
    if checkpoint.best_model_path:
        ckpt = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(ckpt["state_dict"])
        best_epoch = int(ckpt.get("epoch", best_epoch))
    best = checkpoint.best_model_score
    return module, {"val_predicted": _predict_validation(trainer, module, data),
                    "epochs": int(trainer.current_epoch), "best_epoch": best_epoch,
                    "best_val_pearson": None if best is None else float(best)}


def _refit(head: str, hparams: dict, data: Any, refit_idx: np.ndarray, *, config: TrainConfig,
           seed: int, out_dir: Path, epochs: int) -> tuple[Any, Any]:
    """A fresh head trained on all training-fold units ``refit_idx`` for ``epochs`` epochs
    (the best inner model's), same settings, saved over ``best.ckpt``; and its data."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger

    configure_determinism(seed)
    data = data.refit_on(refit_idx)
    module = _new_head(head, hparams, data, config)
    trainer = pl.Trainer(
        max_epochs=epochs, min_epochs=epochs,
        accelerator=config.accelerator, devices=1, deterministic=True,
        logger=CSVLogger(out_dir, name="", version="refit"), limit_val_batches=0,
        enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data)
    trainer.save_checkpoint(out_dir / "best.ckpt", weights_only=True)
    return module, data


def _predict_validation(trainer: Any, module: Any, data: Any) -> np.ndarray | None:
    """The best inner checkpoint's predictions (expression units) on the inner validation
    units, for model selection; None when there are none."""

    if len(data.val_idx) == 0:
        return None
    module.eval()
    out = predict_batches(module.network, data.val_dataloader())
    module.train()
    return out


def _fit_bases(module: Any, data: Any) -> None:
    """Heads with fixed bases (the context head's input PCA / output basis) fit them on the
    inner training units only."""
    if hasattr(module, "fit_bases") and getattr(data.source, "kind", "") == "spot":
        module.fit_bases(data.source.matrix[data.train_idx], data.targets[data.train_idx])
