"""Save a trained head: ``head.safetensors`` (the network's tensors) and ``head.json``.

The fold folders are owned by :mod:`slide2expr.contracts.models`; they are loaded back for
prediction by :mod:`slide2expr.predict.model`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from slide2expr.atomic import atomic_output
from slide2expr.contracts.models import WEIGHTS, write_head_meta

_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def _save_weights(save_file: Callable[..., None], state: dict, path: Path) -> None:
    """``save_file(state, path)``, its I/O errors raised as :class:`OSError` naming ``path``.

    safetensors reports a failed write (a full disk, a lost permission) as its own
    ``SafetensorError`` with the OS error only in the message ("... (os error 28)"); as an
    ``OSError`` it becomes the usual one-line disk fault naming the output.
    """
    try:
        save_file(state, str(path))
    except Exception as exc:
        match = _OS_ERROR.search(str(exc))
        if match is None or isinstance(exc, OSError):
            raise
        code = int(match.group(1))
        raise OSError(code, os.strerror(code), str(path)) from exc


def save_head(module: torch.nn.Module, fold_dir: str | Path, *, meta: dict) -> None:
    """Write ``head.safetensors`` and ``head.json`` into ``fold_dir``.

    Parameters
    ----------
    module
        A trained :class:`~slide2expr.train.heads.base.RegressionHead` (its network is
        saved) or a :class:`~slide2expr.predict.nets.base.HeadNet`.
    fold_dir
        Destination directory.
    meta
        JSON-serialisable metadata; must include ``head``, ``hparams`` and ``genes``.
    """
    from safetensors.torch import save_file

    fold_dir = Path(fold_dir)
    network = getattr(module, "network", module)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_output(fold_dir / WEIGHTS) as tmp:
        _save_weights(save_file, state, tmp)
    write_head_meta(fold_dir, meta)


