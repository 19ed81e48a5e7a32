"""The weight gradient of a stride-1 3x3 convolution computed as a forward convolution.

The weight gradient of a 3x3 convolution (padding 1) is a correlation of its input with its output
gradient over the batch and the image: dW[o, c, i, j] = sum over n, y, x of gy[n, o, y, x] *
xpad[n, c, y + i, x + j]. That is itself a forward convolution, with the channels as the batch, the
batch as the channels and the output gradient as an HxW kernel (3x3 output). On CPUs without
AVX-512, oneDNN's own weight-gradient kernel (`jit:avx2`) is slowest on the last stages' small
maps, where that forward convolution is faster: at batch 128 and width 64, on the Zen 1 EPYC with
AVX2 only, 130 against 279 ms for the 512-channel 4x4 maps and 142 against 174 ms for the
256-channel 8x8 ones; on a Zen 4 held to AVX2, 50 against 66 and 51 against 53 ms (benchmarks/
wgrad.py). With AVX-512 in fp32 oneDNN's kernel wins at every shape, and in bf16 the gain per step
was 2 % or less, so it is used only in fp32 on CPUs whose kernels stop at AVX2 (benchmarks/README.md,
"Weight gradients as forward convolutions"). The result equals the library's to float32 rounding
(1e-6 relative); the rule depends only on the machine, so a seed still gives the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMALL_MAP = 8 * 8  # pixels: the 8x8 and 4x4 maps of a 32x32 input's last two stages

# ONEDNN_MAX_CPU_ISA's names of the instruction sets that stop at AVX2 and were measured
_AVX2 = {"AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}


def forward_weight_grads_help(device: torch.device, amp: torch.dtype | None) -> bool:
    """Whether to compute small maps' weight gradients as forward convolutions on `device`."""
    from sweeper.device import onednn_cap

    if device.type != "cpu" or amp is not None:
        return False
    return torch.backends.cpu.get_cpu_capability() == "AVX2" or onednn_cap() in _AVX2


def weight_grad(x: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """dL/dW of a stride-1, padding-1 3x3 convolution of `x` whose output gradient is `gy`."""
    return F.conv2d(x.transpose(0, 1), gy.transpose(0, 1), padding=1).transpose(0, 1)


class _Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    def backward(ctx, gy: torch.Tensor):
        x, weight = ctx.saved_tensors
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(
                gy, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            gw = weight_grad(x, gy)
        return gx, gw


def conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """F.conv2d(x, weight, padding=1), whose backward computes the weight gradient as a forward
    convolution."""
    return _Conv3x3.apply(x, weight)
