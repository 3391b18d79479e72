"""The encoder registry: name -> builder of (module, preprocessing, embed dim).

Every encoder maps a batch of normalised RGB images ``(B, 3, S, S)`` to embeddings
``(B, D)``. Weights come from the encoder's published source (a file shipped in a package,
the torchvision or Hugging Face cache, downloaded on first use) or from a local file
(``weights=``), and are identified by the sha256 of the file they were read from.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from slide2expr.errors import InputError
from slide2expr.extract.encoders.builders import builtin_specs, timm_spec
from slide2expr.extract.encoders.specs import RANDOM_INIT, Encoder, EncoderInfo, EncoderSpec
from slide2expr.extract.encoders.weights import load_state_dict_file
from slide2expr.hashing import sha256_file

log = logging.getLogger(__name__)

#: The registry: name -> entry, the built-in encoders first (TRIDENT-style plain dict).
_REGISTRY: dict[str, EncoderSpec] = {spec.name: spec for spec in builtin_specs()}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def register(spec: EncoderSpec) -> EncoderSpec:
    """Add ``spec`` to the registry (names are used in file paths: letters, digits, ``._-``)."""
    if not _NAME_RE.match(spec.name):
        raise ValueError(f"encoder name {spec.name!r} is not usable in a file path")
    _REGISTRY[spec.name] = spec
    return spec


def encoder_names() -> list[str]:
    """The registered names, in registration order."""
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
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name.startswith("timm-"):
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
    state, weights_id, source = resolve_weights(spec, name, weights=weights,
                                                pretrained=pretrained, download=download)
    module = spec.build(state)
    module.eval().requires_grad_(False)
    log.info("encoder %s: %d-d, weights %s (%s)", name, spec.embed_dim, source,
             weights_id[:12])
    return Encoder(name=name, module=module, preprocessing=spec.preprocessing,
                   embed_dim=spec.embed_dim, weights=weights_id, weights_source=source,
                   layout=spec.layout)


def resolve_weights(spec: EncoderSpec, name: str, *, weights: str | Path | None,
                    pretrained: bool, download: bool,
                    ) -> tuple[dict[str, torch.Tensor] | None, str, str]:
    """The state dict to load into ``name``, its id (sha256 or ``random-init``) and source:
    a local file, else the published weights (an :class:`InputError` when they cannot be
    had), else none."""
    if weights is not None:
        path = Path(weights).expanduser()
        return load_state_dict_file(path), sha256_file(path), str(path)
    if not pretrained:
        return None, RANDOM_INIT, RANDOM_INIT
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
    return load_state_dict_file(path), sha256_file(path), spec.weights_name


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
