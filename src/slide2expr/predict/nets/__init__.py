"""The heads' plain PyTorch networks (no Lightning, no torchmetrics).

What a saved head (``head.safetensors``) holds and what prediction runs: :func:`build_net`
gives the network of a head name, :mod:`slide2expr.train.heads` wraps each network in a
LightningModule for training only.
"""

from __future__ import annotations

import inspect

from slide2expr.predict.nets.abmil import ABMILNet
from slide2expr.predict.nets.base import HeadNet
from slide2expr.predict.nets.context import ContextNet
from slide2expr.predict.nets.he2rna import HE2RNANet
from slide2expr.predict.nets.mlp import MLPNet

#: Head name -> network class (the same names as :data:`slide2expr.train.heads.HEADS`).
NETS: dict[str, type[HeadNet]] = {
    "mlp": MLPNet,
    "context": ContextNet,
    "he2rna": HE2RNANet,
    "abmil": ABMILNet,
}

__all__ = ["NETS", "ABMILNet", "ContextNet", "HE2RNANet", "HeadNet", "MLPNet", "build_net",
           "net_kwargs"]


def net_kwargs(cls: type, hparams: dict[str, object]) -> dict[str, object]:
    """The entries of ``hparams`` that ``cls.__init__`` accepts (the others are ignored)."""
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    return {k: v for k, v in hparams.items() if k in accepted}


def build_net(name: str, **hparams: object) -> HeadNet:
    """Instantiate the network of head ``name`` with ``hparams`` (unknown keys are ignored,
    e.g. the optimiser's ``lr``).

    Raises
    ------
    KeyError
        If ``name`` is not in :data:`NETS`.
    """
    cls = NETS[name]
    return cls(**net_kwargs(cls, hparams))
