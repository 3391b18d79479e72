"""Run a head's network over batches of inputs: the forward pass every prediction shares.

Training's out-of-fold predictions (:mod:`slide2expr.train.run`) run the held-out units'
batches through it; :class:`slide2expr.predict.model.TrainedHead` runs tiles and bags of new
slides through the same network methods (``forward`` / ``tile_outputs`` then
``unstandardise``).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from slide2expr.predict.nets import HeadNet


@torch.inference_mode()
def predict_batches(network: HeadNet, batches: Iterable[dict[str, torch.Tensor]]) -> np.ndarray:
    """Predictions in expression units (log1p CP10k) of each batch, concatenated.

    Parameters
    ----------
    network
        The trained network (eval mode is set here), on any device.
    batches
        Dicts of tensors as a head's data loader gives them (``x``; bags add ``mask``);
        moved to the network's device.

    Returns
    -------
    numpy.ndarray
        ``(N, G)`` float32 on the CPU, rows in batch order.
    """
    network.eval()
    device = next(network.parameters()).device
    outputs = []
    for batch in batches:
        on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v
                     for k, v in batch.items()}
        outputs.append(network.unstandardise(network(on_device)))
    return torch.cat(outputs).float().cpu().numpy()
