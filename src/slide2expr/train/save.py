"""Save a trained head: ``head.safetensors`` (the network's tensors) and ``head.json``.

The fold folders are owned by :mod:`slide2expr.contracts.models`; they are loaded back for
prediction by :mod:`slide2expr.predict.model`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from slide2expr.atomic import atomic_output
from slide2expr.contracts.models import WEIGHTS, write_head_meta


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
        save_file(state, str(tmp))
    write_head_meta(fold_dir, meta)


