"""Bare training steps with the library's weight gradients against forward-conv ones, interleaved.

Usage: python benchmarks/wgrad_step.py [WIDTH] [ROUNDS] [fp32|bf16]   (defaults: 64 6 fp32;
[2,2,2,2], batch 128, channels_last, SGD with momentum; bf16: under autocast, as the trainer)

Three copies of one model: the library's weight gradients everywhere (`library`), computed as
forward convolutions on 4x4 maps only (`4x4`, what the trainer does in bf16 on CPUs with AMX), and
on 8x8 and 4x4 maps (`8x8`, what it does in fp32 on CPUs up to AVX2: sweeper/convs.py). Each round
times two steps of each, in reversed order every other round, and prints milliseconds per step;
the end prints the medians and each round's ratio to `library`.
"""

import copy
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from sweeper import convs
from sweeper.device import keep_freed_memory
from sweeper.model import PreActResNet, use_forward_weight_grads


def main():
    width = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 6
    amp = torch.bfloat16 if len(sys.argv) > 3 and sys.argv[3] == "bf16" else None
    keep_freed_memory()  # as train() does on a CPU
    torch.manual_seed(0)
    base = PreActResNet([2, 2, 2, 2], width).to(memory_format=torch.channels_last)
    nets = {"library": base, "4x4": copy.deepcopy(base), "8x8": copy.deepcopy(base)}
    use_forward_weight_grads(nets["4x4"], convs.TINY_MAP)
    use_forward_weight_grads(nets["8x8"], convs.SMALL_MAP)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    optimizers = {name: torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
                  for name, net in nets.items()}

    def step(name):
        optimizers[name].zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp, enabled=amp is not None):
            loss = F.cross_entropy(nets[name](x), y)
        loss.backward()
        optimizers[name].step()

    for name in nets:
        step(name)
    times = {name: [] for name in nets}
    for r in range(rounds):
        for name in list(nets)[::1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            step(name)
            step(name)
            times[name].append((time.perf_counter() - start) / 2)
        print(f"round {r + 1}: " + "  ".join(f"{n} {t[-1] * 1e3:.0f} ms" for n, t in times.items()),
              flush=True)
    lib = times["library"]
    for name in ("4x4", "8x8"):
        ratios = [a / b for a, b in zip(lib, times[name])]
        ours, theirs = statistics.median(times[name]), statistics.median(lib)
        print(f"{name}: median {ours * 1e3:.0f} ms against {theirs * 1e3:.0f}, "
              f"{theirs / ours:.3f}x (rounds {min(ratios):.3f}-{max(ratios):.3f}x)")


if __name__ == "__main__":
    main()
