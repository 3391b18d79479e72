"""The plain training loop of spot-mode heads (``train.loop: plain``, the default).

The same model, loss, optimiser, early stopping and checkpoint choice as the Lightning path
(``train.loop: lightning``, :func:`slide2expr.train.run.fit_member`), without its per-step
machinery. Profiled on the demo (docs/benchmarks.md, "Training cost at 10x and 100x the
spots"), the Lightning path spent its time in:

- per-row ``DataLoader`` indexing and collation of each batch;
- Lightning's hooks, ``self.log`` and a torchmetrics update every step, and a checkpoint
  written to disk at every improving epoch;
- ``torch.dropout`` on the standardised input (``input_dropout`` on ``(64, 6400)`` floats:
  ``bernoulli_`` draws are 3x slower than comparing ``torch.rand`` to ``p``);
- the context head's auxiliary losses, which ran the block projections a second time.

Here the feature matrix is one tensor shared with the source (no copy of the fold's rows,
which at 100x the her2st spots are 1.9 GB), a batch is gathered by one index into it,
validation is a forward pass over the inner validation units (in chunks), the best epoch's weights are kept in
memory and written once, dropout draws its mask with ``torch.rand``
(:class:`MaskDropout`), and the context head computes its fused and auxiliary outputs from
one set of block tokens (:meth:`~slide2expr.train.heads.base.RegressionHead.training_loss`).

Early stopping and the checkpoint follow Lightning's rules (``EarlyStopping`` and
``ModelCheckpoint`` on ``val_pearson``, mode max): the best epoch is the first with the
highest validation r; training stops after ``patience`` epochs without a strictly higher r,
never before ``min_epochs``. ``train.refit`` retrains on the whole training fold for the
best epoch's count. Runs are deterministic: one seed drives initialisation, batch order
and dropout.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

#: Columns of ``metrics.csv`` written by the plain loop.
METRICS_COLUMNS = ("epoch", "train_loss", "val_loss", "val_pearson")


class MaskDropout(nn.Module):
    """Inverted dropout whose mask is ``torch.rand(...) >= p`` (same distribution as
    :class:`torch.nn.Dropout`; faster on the CPU, where ``bernoulli_`` dominates a step).

    Parameters
    ----------
    p
        Probability of zeroing an element.
    """

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p <= 0:
            return x
        keep = torch.rand(x.shape, dtype=x.dtype, device=x.device) >= self.p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))


def use_mask_dropout(network: nn.Module) -> nn.Module:
    """Replace every :class:`torch.nn.Dropout` of ``network`` by a :class:`MaskDropout` of
    the same ``p`` (in place; dropout holds no weights, so the ``state_dict`` is unchanged)."""
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, MaskDropout(child.p))
    return network


def seed_everything(seed: int) -> None:
    """Seed torch (initialisation and dropout draw from it) and require deterministic
    algorithms."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def pearson_mean(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean over genes of the Pearson r over rows; a constant column counts as r = 0 (as the
    Lightning path's ``nan_to_num`` of torchmetrics' r)."""
    p = pred.double() - pred.double().mean(dim=0)
    t = target.double() - target.double().mean(dim=0)
    denom = (p.pow(2).sum(0) * t.pow(2).sum(0)).sqrt()
    r = torch.where(denom > 0, (p * t).sum(0) / torch.where(denom > 0, denom, 1.0), 0.0)
    return float(r.mean())


@dataclass
class History:
    """Per-epoch figures of one training run and the best epoch's weights."""

    rows: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float | None = None
    best_state: dict[str, torch.Tensor] | None = None

    @property
    def epochs(self) -> int:
        """Epochs run."""
        return len(self.rows)

    def write_csv(self, path: Path) -> None:
        """``metrics.csv``: one row an epoch (:data:`METRICS_COLUMNS`)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRICS_COLUMNS)
            writer.writeheader()
            for row in self.rows:
                writer.writerow({k: row.get(k, "") for k in METRICS_COLUMNS})


def optimiser(module: Any) -> torch.optim.Optimizer:
    """AdamW with the head's two parameter groups (no decay on biases and norms)."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        (no_decay if param.ndim <= 1 or name.endswith(".bias") else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": module.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=module.lr,
                             foreach=True)


def batches(n: int, batch_size: int, generator: torch.Generator,
            device: torch.device | None = None) -> list[torch.Tensor]:
    """One epoch's shuffled row indices in batches; a last batch of one row is dropped (as
    the Lightning path's loader does)."""
    order = torch.randperm(n, generator=generator).to(device)
    drop_last = n > batch_size and n % batch_size == 1
    n_batches = n // batch_size if drop_last else math.ceil(n / batch_size)
    return [order[b * batch_size:(b + 1) * batch_size] for b in range(n_batches)]


def train_epochs(module: Any, x: torch.Tensor, y: torch.Tensor, train_rows: torch.Tensor, *,
                 batch_size: int, max_epochs: int, seed: int,
                 val_rows: torch.Tensor | None = None, min_epochs: int = 0,
                 patience: int | None = None) -> History:
    """Train ``module`` on the rows ``train_rows`` of ``x``/``y`` (each batch gathered from
    them: the fold's rows are never copied); with ``val_rows``, keep the best epoch by
    validation r and stop early (Lightning's ``EarlyStopping``/``ModelCheckpoint`` rules).

    Returns
    -------
    History
        Per-epoch losses and r; ``best_state`` is a copy of the best epoch's ``state_dict``
        (the last epoch's without validation).
    """
    generator = torch.Generator().manual_seed(seed)
    opt = optimiser(module)
    history = History()
    wait = 0
    validate = val_rows is not None and len(val_rows) > 0
    for epoch in range(max_epochs):
        module.train()
        total, seen = 0.0, 0
        for idx in batches(len(train_rows), batch_size, generator, train_rows.device):
            rows = train_rows[idx]
            loss = module.training_loss({"x": x[rows], "y": y[rows]})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        row = {"epoch": epoch, "train_loss": total / max(seen, 1)}
        if validate:
            row.update(evaluate(module, x, y, val_rows))
        history.rows.append(row)
        if not validate:
            continue
        score = row["val_pearson"]
        if history.best_score is None or score > history.best_score:
            history.best_score, history.best_epoch, wait = score, epoch, 0
            history.best_state = copy.deepcopy(module.state_dict())
        else:
            wait += 1
        if patience is not None and wait >= patience and epoch + 1 >= min_epochs:
            break
    if not validate:
        history.best_epoch = len(history.rows) - 1
        history.best_state = copy.deepcopy(module.state_dict())
    return history


@torch.no_grad()
def evaluate(module: Any, x: torch.Tensor, y: torch.Tensor,
             rows: torch.Tensor) -> dict[str, float]:
    """Validation loss (MSE on standardised targets) and mean per-gene r of the rows
    ``rows``, in eval mode."""
    module.eval()
    pred = standardised_outputs(module.network, x, rows)
    target = module.network.standardise_targets(y[rows])
    out = {"val_loss": float(nn.functional.mse_loss(pred, target)),
           "val_pearson": pearson_mean(pred, target)}
    module.train()
    return out


def standardised_outputs(network: nn.Module, x: torch.Tensor, rows: torch.Tensor,
                         chunk: int = 4096) -> torch.Tensor:
    """The network's standardised outputs for the rows ``rows`` of ``x``, in chunks."""
    parts = [network({"x": x[rows[i:i + chunk]]}) for i in range(0, len(rows), chunk)]
    if not parts:
        return torch.zeros((0, network.n_genes), device=x.device)
    return torch.cat(parts)


@torch.no_grad()
def predict_rows(network: nn.Module, x: torch.Tensor, rows: torch.Tensor) -> np.ndarray:
    """Predictions in expression units of the rows ``rows`` of ``x``, in eval mode."""
    network.eval()
    out = network.unstandardise(standardised_outputs(network, x, rows))
    return out.float().cpu().numpy()


def basis_rows(train_idx: np.ndarray) -> np.ndarray:
    """The training rows the context net's bases are fitted on: all, or
    :data:`~slide2expr.predict.nets.context.BASIS_ROWS` evenly spaced ones (the rows
    ``fit_bases`` itself would keep), so no more than those are copied."""
    from slide2expr.predict.nets.context import BASIS_ROWS

    if len(train_idx) <= BASIS_ROWS:
        return train_idx
    return train_idx[np.round(np.linspace(0, len(train_idx) - 1, BASIS_ROWS)).astype(int)]


def build_member(head: str, hparams: dict, data: Any, *, pearson_weight: float,
                 train_idx: np.ndarray) -> Any:
    """A fresh head with the standardisation (and fixed bases) of ``train_idx``."""
    from slide2expr.train.heads import build_head

    module = build_head(head, **hparams)
    module.pearson_weight = pearson_weight
    module.set_standardisation(**data.refit_on(train_idx).standardisation())
    if hasattr(module, "fit_bases"):
        rows = basis_rows(np.asarray(train_idx))
        module.fit_bases(data.source.matrix[rows], data.targets[rows])
    use_mask_dropout(module.network)
    return module


def fold_tensors(data: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Every row of the fold's features and targets as float32 tensors on ``device`` (on
    the CPU the feature matrix is shared with the source, not copied)."""
    x = torch.from_numpy(np.ascontiguousarray(data.source.matrix, dtype=np.float32))
    y = torch.from_numpy(np.ascontiguousarray(data.targets, dtype=np.float32))
    return x.to(device), y.to(device)


def index(idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Row indices as a tensor on ``device``."""
    return torch.as_tensor(np.asarray(idx, dtype=np.int64), device=device)


def device_for(accelerator: str) -> torch.device:
    """The device of ``train.accelerator``: ``auto`` is CUDA when available, else the CPU."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    return torch.device("cpu")


def save_checkpoint(module: Any, path: Path, *, epoch: int) -> None:
    """``best.ckpt``: the kept weights (``state_dict``), epoch and hyperparameters."""
    torch.save({"epoch": int(epoch), "state_dict": module.state_dict(),
                "hyper_parameters": dict(module.hparams)}, path)


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch on one intra-op thread on the CPU, restoring the count afterwards.

    A spot head's step is a few small matrix products (a batch of 64 through layers of
    tens to hundreds of units): a second thread cannot speed it up, and when the node has
    other runnable processes every step waits at a thread barrier for a time slice. Measured
    on the 2-core VM with one other busy process: 740-812 steps/s on one thread, 9-14 on
    two (docs/benchmarks.md, "Training threads"). The job's other threads still serve
    ridge, PCA and scoring (NumPy's BLAS)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_member_plain(head: str, hparams: dict, data: Any, *, config: Any, seed: int,
                     out_dir: Path, refit_idx: np.ndarray | None = None) -> dict[str, Any]:
    """Train one spot-mode member with the plain loop on one CPU thread
    (:func:`one_cpu_thread`); the same contract as
    :func:`slide2expr.train.members.fit_member` (its returned dict, ``best.ckpt`` and
    ``metrics.csv`` in ``out_dir``)."""
    device = device_for(config.accelerator)
    with one_cpu_thread(device):
        return _fit_member_plain(head, hparams, data, config=config, seed=seed,
                                 out_dir=out_dir, refit_idx=refit_idx, device=device)


def _fit_member_plain(head: str, hparams: dict, data: Any, *, config: Any, seed: int,
                      out_dir: Path, refit_idx: np.ndarray | None,
                      device: torch.device) -> dict[str, Any]:
    seed_everything(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    x, y = fold_tensors(data, device)
    module = build_member(head, hparams, data, pearson_weight=config.pearson_weight,
                          train_idx=data.train_idx).to(device)
    val_rows = index(data.val_idx, device)
    history = train_epochs(module, x, y, index(data.train_idx, device),
                           batch_size=data.batch_size, max_epochs=config.max_epochs,
                           seed=seed, val_rows=val_rows,
                           min_epochs=min(config.min_epochs, config.max_epochs),
                           patience=config.patience)
    history.write_csv(out_dir / "metrics.csv")
    module.load_state_dict(history.best_state)
    val_predicted = predict_rows(module.network, x, val_rows) if len(val_rows) else None
    best_epoch, epochs, best = history.best_epoch, history.epochs, history.best_score
    if refit_idx is not None:
        # Same settings, all training-fold units, as many epochs as the best inner model.
        seed_everything(seed)
        module = build_member(head, hparams, data, pearson_weight=config.pearson_weight,
                              train_idx=refit_idx).to(device)
        refit = train_epochs(module, x, y, index(refit_idx, device),
                             batch_size=data.batch_size, max_epochs=best_epoch + 1, seed=seed)
        refit.write_csv(out_dir / "refit" / "metrics.csv")
    predicted = predict_rows(module.network, x, index(data.test_idx, device))
    module = module.cpu().eval()
    save_checkpoint(module, out_dir / "best.ckpt", epoch=best_epoch)
    return {"module": module, "predicted": predicted, "val_predicted": val_predicted,
            "epochs": epochs, "best_epoch": best_epoch, "best_val_pearson": best,
            "seconds": round(time.perf_counter() - start, 2),
            "hparams": {k: v for k, v in hparams.items() if k in module.hparams}}
