"""The reference the bench measures our trainer against: the seed script's training loop.

A torchvision-style dataset (PIL image, per-sample RandomCrop, RandomHorizontalFlip, ToTensor,
Normalize), DataLoader(shuffle, 2 workers), fp32 NCHW, SGD, `loss.item()` every step; run in a fresh
process, as the seed's script runs.
"""

from __future__ import annotations

import multiprocessing
import time

import torch
import torch.nn.functional as F

from sweeper.model import PreActResNet

LR = 0.05


class SeedStyleCIFAR10(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR10 does per item: HWC uint8 -> PIL image -> transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform):
        self.data = x.permute(0, 2, 3, 1).numpy()  # torchvision keeps (N, 32, 32, 3) uint8
        self.targets = y.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def reference_rates(x: torch.Tensor, y: torch.Tensor, blocks: list[int], width: int,
                    batch_size: int, device: torch.device | str, epochs: int = 2,
                    workers: int = 2) -> list[float]:
    """Training images/s of each epoch of the seed-style loop (at least 2 steps per epoch)."""
    import torchvision.transforms as T

    device = torch.device(device)
    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
    loader = torch.utils.data.DataLoader(SeedStyleCIFAR10(x, y, transform), batch_size=batch_size,
                                         shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    net = PreActResNet(blocks, width).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    rates = []
    for _ in range(epochs):
        # Timed from the end of the epoch's first step to the end of its last, so the DataLoader's
        # worker start-up and shutdown (paid once per epoch: seconds, a larger share of these
        # short epochs than of a real one) are not counted. `loss.item()` waits for the device.
        start = end = None
        timed = 0
        running_loss = 0.0
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(net(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            end = time.perf_counter()
            if start is None:
                start = end
            else:
                timed += len(labels)
        rates.append(timed / (end - start))
    return rates


def _reference_child(conn, *args) -> None:
    try:
        conn.send(("ok", reference_rates(*args)))
    except BaseException as e:  # reported by the parent, which raises it
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


def reference_in_child(x: torch.Tensor, y: torch.Tensor, blocks: list[int], width: int,
                       batch_size: int, device: torch.device) -> list[float]:
    """`reference_rates` in a fresh Python process, as the seed's script runs: with the C library's
    default allocator (our trainer changes it for its own process: `device.keep_freed_memory`) and
    none of this process's warm caches."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_reference_child,
                       args=(child, x, y, blocks, width, batch_size, str(device)))
    proc.start()
    child.close()
    try:
        status, value = parent.recv()
    except EOFError:
        status, value = "error", "the process died"
    proc.join()
    if status != "ok":
        raise RuntimeError(f"the reference loop failed in its process: {value}")
    return value
