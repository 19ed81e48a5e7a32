"""Ceilings for the bench: the most any training loop of a model could reach on a device.

The model's arithmetic per training image at the device's measured peak, and the time a step spends
in the model's convolutions alone, computed as the trainer computes them.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from sweeper.convs import forward_weight_grad_pixels
from sweeper.model import PreActResNet, use_forward_weight_grads
from sweeper.reference import LR


def train_flops_per_image(blocks: list[int], width: int) -> float:
    """Floating-point operations of one training step (forward and backward) per image."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    net = PreActResNet(blocks, width)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    return counter.get_total_flops() / len(y)


CONV_OPS = {"aten::mkldnn_convolution", "aten::cudnn_convolution", "aten::convolution_backward"}


def convolution_time(blocks: list[int], width: int, batch_size: int, device: torch.device,
                     channels_last: bool, amp: torch.dtype | None, steps: int = 3) -> dict:
    """Seconds per training step spent in the model's convolutions, and in the whole step."""
    from torch.profiler import ProfilerActivity, profile

    # Kineto, the profiler's backend, otherwise prints "USDT: profiler_start" lines and, on a CPU
    # with a CUDA build of torch, "ERROR: gpuGetDeviceCount failed" into the table; its real
    # failures still raise. Read when the profiler first starts; a user's own setting is kept.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = PreActResNet(blocks, width).to(device, memory_format=fmt)
    use_forward_weight_grads(net, forward_weight_grad_pixels(device, amp))  # as the trainer does
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch_size,), device=device)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(net(x), y)
        loss.backward()
        optimizer.step()

    step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    _sync(device)
    with profile(activities=activities) as prof:
        started = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        whole = (time.perf_counter() - started) / steps
    events = [e for e in prof.key_averages() if e.key in CONV_OPS]
    if device.type == "cuda":
        conv_us = sum(e.device_time_total for e in events)
    else:  # inclusive CPU time: the kernels and their own allocations
        conv_us = sum(e.cpu_time_total for e in events)
    return {"convolutions_s": conv_us / 1e6 / steps, "step_s": whole}


def peak_flops(device: torch.device, amp: torch.dtype | None, seconds: float = 0.5) -> dict:
    """The device's measured peak, FLOP/s: the fastest single call of a large matrix product and of
    large 3x3 convolutions (channels_last, the trainer's layout), each repeated for about `seconds`.

    The fastest call, not a typical one: an optimistic peak makes the ceiling an upper bound.
    """
    dtype = amp or torch.float32
    gen = torch.Generator(device).manual_seed(0)

    def rate(fn, flops: float) -> float:
        fn()  # warm-up: kernel selection, allocation
        best, spent = 0.0, 0.0
        while spent < seconds:
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            dt = time.perf_counter() - t
            best, spent = max(best, flops / dt), spent + dt
        return best

    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, generator=gen, device=device).to(dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(dtype)
    rates = {"matmul": rate(lambda: a @ b, 2 * n ** 3)}
    batch = 512 if device.type == "cuda" else 64
    for ch, hw in ((64, 32), (256, 8)):
        x = torch.randn(batch, ch, hw, hw, generator=gen, device=device).to(dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(ch, ch, 3, 3, generator=gen, device=device).to(dtype)
        w = w.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            rates[f"conv{ch}x{hw}"] = rate(lambda x=x, w=w: F.conv2d(x, w, padding=1),
                                           2 * batch * ch * ch * 9 * hw * hw)
    return {"flops": max(rates.values()), "dtype": str(dtype).removeprefix("torch."),
            "by_kernel": rates}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
