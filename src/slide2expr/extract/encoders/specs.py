"""What an encoder is: its preprocessing, its registry entry, and a built encoder.

Plain data, no registry and no builders, so that :mod:`.builders` and :mod:`.registry` both
import from here without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Recorded as ``weights`` when a module was built without pretrained weights.
RANDOM_INIT = "random-init"


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for an encoder.

    Attributes
    ----------
    input_px
        Edge of the square input in pixels; tiles are read from the slide at this size.
    mean, std
        Per-channel normalisation of ``[0, 1]`` RGB values.
    """

    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Turn uint8 ``(B, 3, H, W)`` RGB into normalised float32 on the same device.

        The memory format of ``images`` (e.g. channels-last) is kept.
        """
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1) * 255.0
        inv_std = 1.0 / (torch.tensor(self.std, device=images.device).view(1, 3, 1, 1) * 255.0)
        return (images.float() - mean) * inv_std


@dataclass
class Encoder:
    """A ready encoder.

    Attributes
    ----------
    name
        Registry name (used in output paths).
    module
        ``(B, 3, S, S)`` normalised float -> ``(B, embed_dim)``, in eval mode.
    preprocessing
        Input size and normalisation.
    embed_dim
        Embedding length ``D``.
    weights
        sha256 of the weights file, or ``"random-init"``.
    weights_source
        Where the weights came from (a path or a hub id), for provenance.
    layout
        ``(part, width)`` of each consecutive column range of the embedding when it
        concatenates several layers' features (:data:`EncoderSpec.layout`); empty: one part.
    """

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    embed_dim: int
    weights: str
    weights_source: str
    layout: tuple[tuple[str, int], ...] = ()


#: ``build(state)`` returns the architecture, filled with ``state`` when it is not None.
Builder = Callable[[dict[str, torch.Tensor] | None], nn.Module]
#: ``locate(download)`` returns the default weights file, or None when it is not available.
Locator = Callable[[bool], Path | None]


@dataclass(frozen=True)
class EncoderSpec:
    """A registry entry.

    ``layout`` names the column ranges of an embedding that concatenates several layers'
    pooled outputs (``(part, width)``, widths summing to ``embed_dim``); the extract stage
    records it in the features file (attr ``feature_layout``). Empty for one output.
    """

    name: str
    embed_dim: int
    preprocessing: Preprocessing
    build: Builder
    locate_weights: Locator
    weights_name: str
    description: str
    layout: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class EncoderInfo:
    """One row of ``slide2expr encoders``."""

    name: str
    embed_dim: int
    input_px: int
    offline: bool
    weights: str
    description: str
