"""The encoder registry: name -> builder of (module, preprocessing, embed dim).

Every encoder maps a batch of normalised RGB images ``(B, 3, S, S)`` to embeddings
``(B, D)``. Weights come from the encoder's published source (a file shipped in a package,
the torchvision or Hugging Face cache, downloaded on first use) or from a local file
(``weights=``), and are identified by the sha256 of the file they were read from.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from slide2expr.encoders.weights import load_state_dict_file, sha256_file
from slide2expr.errors import InputError

log = logging.getLogger(__name__)

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
    """

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    embed_dim: int
    weights: str
    weights_source: str


#: ``build(state)`` returns the architecture, filled with ``state`` when it is not None.
Builder = Callable[[dict[str, torch.Tensor] | None], nn.Module]
#: ``locate(download)`` returns the default weights file, or None when it is not available.
Locator = Callable[[bool], Path | None]


@dataclass(frozen=True)
class EncoderSpec:
    """A registry entry."""

    name: str
    embed_dim: int
    preprocessing: Preprocessing
    build: Builder
    locate_weights: Locator
    weights_name: str
    description: str


_REGISTRY: dict[str, EncoderSpec] = {}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def register(spec: EncoderSpec) -> EncoderSpec:
    """Add ``spec`` to the registry (names are used in file paths: letters, digits, ``._-``)."""
    if not _NAME_RE.match(spec.name):
        raise ValueError(f"encoder name {spec.name!r} is not usable in a file path")
    _REGISTRY[spec.name] = spec
    return spec


def encoder_names() -> list[str]:
    """The registered names, in registration order."""
    _ensure_builtins()
    return list(_REGISTRY)


def get_spec(name: str) -> EncoderSpec:
    """Return the registry entry for ``name``.

    Besides the registered names, ``timm-ARCH`` gives any timm architecture (``ARCH`` as
    in ``timm.list_models()``) with its pretrained config's preprocessing.

    Raises
    ------
    InputError
        For an unknown name; the message lists the valid ones.
    """
    _ensure_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("timm-"):
        from slide2expr.encoders.builders import timm_spec

        return timm_spec(name)
    raise InputError(
        None,
        f"unknown encoder {name!r}; valid encoders: {', '.join(_REGISTRY)} "
        "(or timm-ARCH for any timm architecture)",
        "pick one of these names (`slide2expr encoders` lists them with their dimensions)",
    )


def get_encoder(
    name: str,
    *,
    weights: str | Path | None = None,
    pretrained: bool = True,
    download: bool = True,
) -> Encoder:
    """Build the encoder ``name`` with its weights.

    Parameters
    ----------
    name
        A registry name (see :func:`encoder_names`) or ``timm-ARCH``.
    weights
        A local ``.safetensors`` file or tensors-only torch checkpoint to load instead of
        the published weights. Pickled objects are never loaded.
    pretrained
        When false and ``weights`` is None, build the architecture with random weights
        (for tests; the output records ``weights="random-init"``).
    download
        Allow downloading the published weights when they are not in the local cache.

    Returns
    -------
    Encoder
        In eval mode with gradients off, on the CPU.

    Raises
    ------
    InputError
        Unknown name, unreadable or mismatching weights, or published weights that cannot be
        obtained.
    """
    spec = get_spec(name)
    state: dict[str, torch.Tensor] | None = None
    if weights is not None:
        path = Path(weights).expanduser()
        state = load_state_dict_file(path)
        weights_id, source = sha256_file(path), str(path)
    elif pretrained:
        path = spec.locate_weights(download)
        if path is None:
            raise InputError(
                None,
                f"the published weights of encoder {name!r} ({spec.weights_name}) are not "
                "available on this machine",
                "run once where the download works (gated Hugging Face models need access and "
                "`huggingface-cli login`), or pass a local file with --weights / the config's "
                "extract.weights",
            )
        state = load_state_dict_file(path)
        weights_id, source = sha256_file(path), spec.weights_name
    else:
        weights_id, source = RANDOM_INIT, RANDOM_INIT
    module = spec.build(state)
    module.eval().requires_grad_(False)
    log.info("encoder %s: %d-d, weights %s (%s)", name, spec.embed_dim, source,
             weights_id[:12])
    return Encoder(name=name, module=module, preprocessing=spec.preprocessing,
                   embed_dim=spec.embed_dim, weights=weights_id, weights_source=source)


@dataclass(frozen=True)
class EncoderInfo:
    """One row of ``slide2expr encoders``."""

    name: str
    embed_dim: int
    input_px: int
    offline: bool
    weights: str
    description: str


def list_encoders(*, local_weights: dict[str, str] | None = None) -> list[EncoderInfo]:
    """Describe every registered encoder and whether its weights are on this machine.

    Parameters
    ----------
    local_weights
        Encoder name -> local weights file (the config's ``extract.weights``); such an
        encoder counts as available offline when the file exists.
    """
    local_weights = local_weights or {}
    rows = []
    for name in encoder_names():
        spec = _REGISTRY[name]
        local = local_weights.get(name)
        if local and Path(local).expanduser().is_file():
            offline, where = True, str(local)
        else:
            try:
                found = spec.locate_weights(False)
            except Exception as exc:  # a broken cache must not break the listing
                log.debug("locating weights of %s failed: %s", name, exc)
                found = None
            offline, where = found is not None, str(found) if found else spec.weights_name
        rows.append(EncoderInfo(name, spec.embed_dim, spec.preprocessing.input_px, offline,
                                where, spec.description))
    return rows


def _ensure_builtins() -> None:
    if not _REGISTRY:
        from slide2expr.encoders import builders

        builders.register_builtins()
