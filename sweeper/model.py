"""Pre-activation ResNet ("Identity Mappings in Deep Residual Networks", He et al. 2016).

A 3x3 conv stem, four stages of pre-activation blocks at widths w, 2w, 4w, 8w, a final BN-ReLU,
global average pooling and a linear head. Every block owns its weights (the seed script reused one
module per stage, so adding blocks added no parameters).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sweeper import convs


class Conv3x3(nn.Conv2d):
    """A 3x3 convolution, padding 1, no bias.

    With `forward_weight_grad_pixels` set, a stride-1 one on a map of at most that many pixels
    computes its weight gradient as a forward convolution (`sweeper.convs`), faster there on some
    CPUs; the trainer sets it where that helps (`use_forward_weight_grads`).
    """

    forward_weight_grad_pixels = 0

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.forward_weight_grad_pixels and self.stride == (1, 1)
                and x.shape[-2] * x.shape[-1] <= self.forward_weight_grad_pixels
                and torch.is_grad_enabled() and self.weight.requires_grad):
            return convs.conv3x3(x, self.weight)
        return super().forward(x)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> Conv3x3:
    return Conv3x3(in_ch, out_ch, stride)


def use_forward_weight_grads(model: nn.Module, max_pixels: int) -> int:
    """Have every 3x3 convolution of `model` on a map of at most `max_pixels` pixels (0: none)
    compute its weight gradient as a forward convolution; returns how many 3x3 convolutions."""
    found = [m for m in model.modules() if isinstance(m, Conv3x3)]
    for m in found:
        m.forward_weight_grad_pixels = max_pixels
    return len(found)


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut.

    When the block changes shape (stride 2 or more channels) the shortcut is a 1x1 conv taken from
    the pre-activated input, as in the paper; otherwise it is the identity.

    With fewer than 16 input channels the strided 1x1 conv is computed as a stride-1 1x1 conv of
    every `stride`-th pixel (the same arithmetic): oneDNN's strided 1x1 weight gradient on
    channels_last inputs with fewer input channels than its SIMD block (8 with AVX2, 16 with
    AVX-512) writes out of bounds, giving wrong gradients, hangs or segfaults
    (uxlfoundation/oneDNN#6035; width 4 on an AVX2 CPU hit it). Wider inputs keep the strided
    conv, which is faster there.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.subsample = stride if in_ch < 16 else 1  # taken by slicing, before the projection
        self.projection = None
        if stride != 1 or in_ch != out_ch:
            self.projection = nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride // self.subsample,
                                        bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x), inplace=True)  # in place: BN's output is not needed again
        if self.projection is None:
            shortcut = x
        elif self.subsample > 1:
            shortcut = self.projection(out[:, :, ::self.subsample, ::self.subsample])
        else:
            shortcut = self.projection(out)
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out), inplace=True))
        return out.add_(shortcut)  # in place: one large allocation fewer per block


class PreActResNet(nn.Module):
    def __init__(self, blocks: list[int], width: int = 64, num_classes: int = 10):
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width]
        self.stem = conv3x3(3, width)
        stages = []
        in_ch = width
        for i, (n_blocks, out_ch) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            stage = [PreActBlock(in_ch, out_ch, stride)]
            stage += [PreActBlock(out_ch, out_ch) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*stage))
            in_ch = out_ch
        self.stages = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(in_ch)
        self.head = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stages(self.stem(x))
        out = F.relu(self.bn(out), inplace=True)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # any input size: 28x28 crops work
        return self.head(out)


def build_model(cfg) -> PreActResNet:
    """The network described by `cfg.model` (blocks per stage, width, classes)."""
    return PreActResNet(list(cfg.blocks), width=cfg.width, num_classes=cfg.num_classes)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
