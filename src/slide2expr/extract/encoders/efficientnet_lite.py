"""EfficientNet-Lite0, -Lite1 and -Lite2 in plain torch: timm's ``tf_efficientnet_lite{0,1,2}``,
without importing timm.

The larger variants scale Lite0's stages as the EfficientNet-Lite release does
(``efficientnet_lite_builder.py``; timm's ``_gen_efficientnet_lite``): stage widths times the
width multiplier rounded to a multiple of 8 (never more than 10% down), stage repeats times the
depth multiplier rounded up, except the first and last stage's; the stem (32 channels) and the
head (1280 features) stay fixed. Lite1: width 1.0, depth 1.1, 240 px input; Lite2: width 1.1,
depth 1.2, 260 px.

The layers, their order, their parameter names and TensorFlow's 'same' padding are those of
timm's model, so its state dicts load here unchanged and the outputs are the same: stride-1
convolutions pad ``k // 2`` on every side, stride-2 ones pad the input first, asymmetrically
(``(total // 2, total - total // 2)``), as timm's ``Conv2dSame`` does; batch norms have
``eps=1e-3``; the activation is ReLU6; no squeeze-excitation. Building it costs no timm
import (about 1-2 s of CPU at every extract job's start; docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

#: ``(block type, repeats, kernel, stride, expansion, out channels)`` of the seven stages.
LITE0_STAGES: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("ds", 1, 3, 1, 1, 16),
    ("ir", 2, 3, 2, 6, 24),
    ("ir", 2, 5, 2, 6, 40),
    ("ir", 3, 3, 2, 6, 80),
    ("ir", 3, 5, 1, 6, 112),
    ("ir", 4, 5, 2, 6, 192),
    ("ir", 1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
NUM_FEATURES = 1280
BN_EPS = 1e-3
CHANNEL_DIVISOR = 8


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite model: its multipliers of Lite0's stages and its input size.

    Attributes
    ----------
    width
        Multiplier of every stage's output channels.
    depth
        Multiplier of every stage's repeats but the first and the last.
    input_px
        The edge of the square input the ImageNet weights were trained at.
    """

    width: float
    depth: float
    input_px: int

    def stages(self) -> tuple[tuple[str, int, int, int, int, int], ...]:
        """Lite0's stages, scaled: ``(type, repeats, kernel, stride, expansion, channels)``."""
        last = len(LITE0_STAGES) - 1
        return tuple(
            (kind, repeats if i in (0, last) else math.ceil(repeats * self.depth), kernel,
             stride, expansion, round_channels(channels, self.width))
            for i, (kind, repeats, kernel, stride, expansion, channels)
            in enumerate(LITE0_STAGES))


#: The variants with published ImageNet weights here (width, depth, input px).
LITE_VARIANTS = {
    "lite0": LiteVariant(1.0, 1.0, 224),
    "lite1": LiteVariant(1.0, 1.1, 240),
    "lite2": LiteVariant(1.1, 1.2, 260),
}


def round_channels(channels: int, multiplier: float) -> int:
    """``channels * multiplier`` to the nearest multiple of 8, raised by 8 when that loses
    more than 10% (TensorFlow's ``round_filters``, timm's ``make_divisible``)."""
    scaled = channels * multiplier
    out = max(CHANNEL_DIVISOR,
              int(scaled + CHANNEL_DIVISOR / 2) // CHANNEL_DIVISOR * CHANNEL_DIVISOR)
    return out + CHANNEL_DIVISOR if out < 0.9 * scaled else out


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's 'same' padding (timm's ``create_conv2d(padding='same')``).

    Stride 1: symmetric padding ``k // 2``. Larger strides: the input is padded at run time by
    ``max((ceil(n / s) - 1) * s + k - n, 0)`` pixels, the smaller half first.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1,
                 groups: int = 1) -> None:
        static = stride == 1
        super().__init__(in_ch, out_ch, kernel, stride=stride,
                         padding=kernel // 2 if static else 0, groups=groups, bias=False)
        self.dynamic = not static

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad (stride > 1) and convolve."""
        if self.dynamic:
            x = F.pad(x, self.same_pads(x.shape[-2], x.shape[-1]))
        return super().forward(x)

    def same_pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` padding of a ``height x width`` input (stride > 1)."""
        k, s = self.kernel_size[0], self.stride[0]
        pad_h, pad_w = _same_pad(height, k, s), _same_pad(width, k, s)
        return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2

    def convolve_padded(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve an input already padded by :meth:`same_pads`."""
        return super().forward(x)


def _same_pad(size: int, kernel: int, stride: int) -> int:
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


class BatchNormAct(nn.BatchNorm2d):
    """Batch norm then (optionally) ReLU6, as timm's ``BatchNormAct2d`` (same state names)."""

    def __init__(self, channels: int, act: bool = True) -> None:
        super().__init__(channels, eps=BN_EPS)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise, then activate.

        Inference on the CPU normalises in place (the input is always the fresh output of the
        convolution before it): the same kernel and the same bits as the out-of-place call,
        without a second tensor of the layer's size (the 112 px layers of a 16-image chunk
        are 77 MB each), which lowers an extract job's peak memory.
        """
        if self.training or torch.is_grad_enabled() or not _in_place_ok(x):
            return self.act(super().forward(x))
        torch.ops.aten.native_batch_norm.out(
            x, self.weight, self.bias, self.running_mean, self.running_var, False, 0.0,
            self.eps, out=x, save_mean=x.new_empty(0), save_invstd=x.new_empty(0))
        return self.act(x)


def _in_place_ok(x: torch.Tensor) -> bool:
    """A dense float32 CPU tensor (contiguous or channels-last) that no other tensor views."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
            and x._base is None
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)))


class DepthwiseSeparable(nn.Module):
    """Depthwise conv, BN+ReLU6, pointwise conv, BN (timm's ``DepthwiseSeparableConv``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv_dw = SameConv2d(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.bn1 = BatchNormAct(in_ch)
        self.conv_pw = SameConv2d(in_ch, out_ch, 1)
        self.bn2 = BatchNormAct(out_ch, act=False)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block, with the identity added where shapes allow."""
        out = self.bn2(self.conv_pw(self.bn1(self.conv_dw(x))))
        return out + x if self.skip else out


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise, project (1x1), BN after each (timm's ``InvertedResidual``)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int,
                 expansion: int) -> None:
        super().__init__()
        mid = in_ch * expansion
        self.conv_pw = SameConv2d(in_ch, mid, 1)
        self.bn1 = BatchNormAct(mid)
        self.conv_dw = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.bn2 = BatchNormAct(mid)
        self.conv_pwl = SameConv2d(mid, out_ch, 1)
        self.bn3 = BatchNormAct(out_ch, act=False)
        self.skip = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block, with the identity added where shapes allow."""
        if self.conv_dw.dynamic and _in_place_ok(x) and not (
                self.training or torch.is_grad_enabled()):
            out = self.conv_dw.convolve_padded(self._expand_padded(x))
        else:
            out = self.conv_dw(self.bn1(self.conv_pw(x)))
        out = self.bn3(self.conv_pwl(self.bn2(out)))
        return out + x if self.skip else out

    def _expand_padded(self, x: torch.Tensor) -> torch.Tensor:
        """The expansion (1x1 conv, BN, ReLU6) of ``x`` padded for the strided depthwise conv.

        The small input is padded instead of the expanded tensor (6x its channels), and the
        padding of the result is set back to zero: the same values as padding the expansion
        (a 1x1 convolution treats every pixel alone), without holding the expansion twice
        (77 MB each for a 16-image chunk at 112 px, the forward's peak).
        """
        left, right, top, bottom = self.conv_dw.same_pads(x.shape[-2], x.shape[-1])
        height, width = x.shape[-2:]
        out = self.bn1(self.conv_pw(F.pad(x, (left, right, top, bottom))))
        out[:, :, :top] = 0
        out[:, :, top + height:] = 0
        out[:, :, :, :left] = 0
        out[:, :, :, left + width:] = 0
        return out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0/1/2, globally average-pooled: ``(B, 3, H, W)`` -> ``(B, 1280)``.

    Parameters
    ----------
    num_classes
        Rows of a linear ``classifier`` after the pooling (to load a checkpoint that has
        one); 0: none, the pooled features are the output.
    variant
        A key of :data:`LITE_VARIANTS`.
    """

    def __init__(self, num_classes: int = 0, variant: str = "lite0") -> None:
        super().__init__()
        self.conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self.bn1 = BatchNormAct(STEM_CHANNELS)
        stages, in_ch = [], STEM_CHANNELS
        for kind, repeats, kernel, stride, expansion, out_ch in LITE_VARIANTS[variant].stages():
            blocks = []
            for i in range(repeats):
                s = stride if i == 0 else 1
                blocks.append(DepthwiseSeparable(in_ch, out_ch, kernel, s) if kind == "ds"
                              else InvertedResidual(in_ch, out_ch, kernel, s, expansion))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.conv_head = SameConv2d(in_ch, NUM_FEATURES, 1)
        self.bn2 = BatchNormAct(NUM_FEATURES)
        self.num_features = NUM_FEATURES
        self.classifier: nn.Module = (nn.Linear(NUM_FEATURES, num_classes) if num_classes
                                      else nn.Identity())

    def reset_classifier(self, num_classes: int = 0) -> None:
        """Drop the classifier (0) or replace it by a new one of ``num_classes`` rows."""
        self.classifier = (nn.Linear(NUM_FEATURES, num_classes) if num_classes
                           else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, blocks, head, global average pool, classifier."""
        return self.pooled_head(self.blocks(self.bn1(self.conv_stem(x))))

    def pooled_head(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's output through the 1x1 head, global average pool, classifier."""
        x = self.bn2(self.conv_head(x))
        return self.classifier(F.adaptive_avg_pool2d(x, 1).flatten(1))


#: Output channels of each stage (``LITE0_STAGES``' last column), by stage index.
STAGE_CHANNELS: tuple[int, ...] = tuple(stage[-1] for stage in LITE0_STAGES)


def layers_layout(taps: tuple[int, ...], std: bool,
                  head: bool = True) -> tuple[tuple[str, int], ...]:
    """``(part, width)`` of :class:`EfficientNetLiteLayers`' output columns, in order:
    ``stage{i}_mean`` for each tap, then ``stage{i}_sd`` (``std``), then ``head`` (``head``)."""
    kinds = ("mean", "sd") if std else ("mean",)
    return (*((f"stage{t}_{kind}", STAGE_CHANNELS[t]) for kind in kinds for t in taps),
            *((("head", NUM_FEATURES),) if head else ()))


class EfficientNetLiteLayers(EfficientNetLite):
    """EfficientNet-Lite0 with globally pooled intermediate stages before the 1280-d head.

    The output concatenates, in this order: the spatial mean of each tapped stage's output
    (the last block of the stage), then (``std``) their spatial standard deviations, then
    (``head``) :class:`EfficientNetLite`'s output. The stem, blocks and head are the parent's
    modules and run the same operations on the same inputs, so the last 1280 columns are the
    plain encoder's features bit for bit (tests/test_encoders.py); without the head, the
    stages after the last tap and the head are not run.

    Parameters
    ----------
    taps
        Indices into :data:`LITE0_STAGES` (0-6) whose outputs are pooled, ascending.
    std
        Also pool each tapped stage's per-channel spatial standard deviation.
    head
        End with the 1280-d pooled head (``efficientnet_lite0``'s features).
    """

    def __init__(self, taps: tuple[int, ...], std: bool = False, head: bool = True,
                 num_classes: int = 0) -> None:
        super().__init__(num_classes=num_classes)
        if list(taps) != sorted(set(taps)) or not all(0 <= t < len(LITE0_STAGES) for t in taps):
            raise ValueError(f"taps {taps} are not ascending stage indices 0-6")
        self.taps = tuple(int(t) for t in taps)
        self.std = bool(std)
        self.head = bool(head)
        if not (self.taps or self.head):
            raise ValueError("taps () without the head: no features")
        self.num_features = sum(width for _, width in layers_layout(self.taps, self.std,
                                                                     self.head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, the stages (pooling the tapped ones), head, global average pool."""
        x = self.bn1(self.conv_stem(x))
        means: list[torch.Tensor] = []
        sds: list[torch.Tensor] = []
        last = len(self.blocks) - 1 if self.head else self.taps[-1]
        for index, stage in enumerate(self.blocks[:last + 1]):
            x = stage(x)
            if index in self.taps:
                means.append(x.mean(dim=(2, 3)))
                if self.std:
                    sds.append(x.std(dim=(2, 3)))
        if not self.head:
            return torch.cat([*means, *sds], dim=1)
        return torch.cat([*means, *sds, self.pooled_head(x)], dim=1)
