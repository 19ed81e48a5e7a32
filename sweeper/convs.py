"""The weight gradient of a stride-1 3x3 convolution computed as a forward convolution.

The weight gradient of a 3x3 convolution (padding 1) is a correlation of its input with its output
gradient over the batch and the image: dW[o, c, i, j] = sum over n, y, x of gy[n, o, y, x] *
xpad[n, c, y + i, x + j]. That is itself a forward convolution, with the channels as the batch, the
batch as the channels and the output gradient as an HxW kernel (3x3 output). oneDNN's own
weight-gradient kernels are slowest on the last stages' small maps, where that forward convolution
is faster in two cases (benchmarks/wgrad.py, batch 128):
- fp32 on CPUs whose kernels stop at AVX2 (`jit:avx2`), on 8x8 and 4x4 maps: at width 64 on the
  Zen 1 EPYC, 130 against 279 ms for the 512-channel 4x4 maps and 142 against 174 ms for the
  256-channel 8x8 ones; on a Zen 4 held to AVX2, 50 against 66 and 51 against 53 ms. With AVX-512
  in fp32 oneDNN's kernel wins at every shape.
- bf16 on CPUs with AMX, on 4x4 maps only: on a Xeon with AMX, 26.5 against 55.4 ms at width 64
  (512 channels), 3.3 against 20.0 at width 32, 1.8 against 5.7 at width 16; on the 8x8 maps
  oneDNN's is faster (19 against 58 ms at width 64). On the AMD CPU with avx512_bf16 and no AMX
  the gain per bf16 step was 2 % or less, so it is left to oneDNN there.
The result equals the library's to the rounding of its dtype (1e-6 relative in fp32, 2e-3 in
bf16); the rule depends only on the machine and the precision, so a seed still gives the same run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SMALL_MAP = 8 * 8  # pixels: the 8x8 and 4x4 maps of a 32x32 input's last two stages
TINY_MAP = 4 * 4  # the last stage's 4x4 maps only

# ONEDNN_MAX_CPU_ISA's names of the instruction sets that stop at AVX2 and were measured
_AVX2 = {"AVX2", "AVX2_VNNI", "AVX2_VNNI_2"}


def forward_weight_grad_pixels(device: torch.device, amp: torch.dtype | None) -> int:
    """The largest map (height x width) whose stride-1 3x3 convolutions compute their weight
    gradients as forward convolutions when training on `device` under autocast to `amp` (None:
    fp32); 0 where oneDNN's own are as fast everywhere."""
    from sweeper.device import amx_kernels, onednn_cap

    if device.type != "cpu":
        return 0
    if amp is None:
        avx2 = torch.backends.cpu.get_cpu_capability() == "AVX2" or onednn_cap() in _AVX2
        return SMALL_MAP if avx2 else 0
    return TINY_MAP if amp is torch.bfloat16 and amx_kernels() else 0


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
    convolution; under autocast its inputs are cast as autocast casts a convolution's."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        x, weight = x.to(dtype), weight.to(dtype)
    return _Conv3x3.apply(x, weight)
