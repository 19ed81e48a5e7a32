"""CIFAR-10: the canonical python batches, read once into uint8 tensors; splits; batch-wise augmentation.

Images stay uint8 (N, 3, 32, 32) on the training device; each batch is cropped, flipped, normalized
and cut out there, with per-image randomness drawn from one seeded generator. No per-image Python.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sweeper.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
IMAGE_BYTES = 3 * 32 * 32

# The only globals a batch file needs (_codecs.encode: bytes pickled by Python 3 at protocol 2);
# a pickle naming any other global is refused rather than executed.
_ALLOWED_GLOBALS = {
    ("numpy", "dtype"), ("numpy", "ndarray"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


@dataclass(frozen=True)
class Cifar10:
    train_x: torch.Tensor  # uint8 (N, 3, 32, 32), the 50,000 training images in file order
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor  # uint8 (M, 3, 32, 32)
    test_y: torch.Tensor  # int64 (M,)


def read_batch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One canonical batch file -> (uint8 images (n, 3, 32, 32), int64 labels (n,))."""
    fix = f"replace it with the original file from cifar-10-python.tar.gz (data.root={path.parent.parent})"
    try:
        with open(path, "rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
        data, labels = batch[b"data"], batch[b"labels"]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError,
            AttributeError, IndexError) as e:
        raise DataError(f"{path} is truncated or malformed ({type(e).__name__}: {e}); {fix}") from None
    labels = np.asarray(labels)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == IMAGE_BYTES and labels.shape == (data.shape[0],)
            and labels.size and labels.min() >= 0 and labels.max() < len(CLASSES)):
        raise DataError(f"{path} is malformed (expected uint8 data of shape (n, {IMAGE_BYTES}) and n "
                        f"labels in 0..9, got data {getattr(data, 'shape', '?')}); {fix}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(labels.astype(np.int64))


def _download(root: Path) -> None:
    import torchvision  # only needed here: keeps start-up fast

    log.info("Downloading CIFAR-10 to %s", root)
    try:
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    except (OSError, RuntimeError) as e:
        raise DataError(f"could not download CIFAR-10 into data.root={root} ({e}); copy the "
                        f"{FOLDER}/ folder of cifar-10-python.tar.gz there by hand") from None


def batch_files(root: str | Path) -> list[Path]:
    """The six canonical batch files under `root`/cifar-10-batches-py, the test batch last."""
    return [Path(root) / FOLDER / name for name in (*TRAIN_FILES, TEST_FILE)]


def missing_file(root: str | Path) -> Path | None:
    """The first batch file not under `root`, or None when all six are there."""
    return next((f for f in batch_files(root) if not f.is_file()), None)


def load_cifar10(root: str, download: bool = False) -> Cifar10:
    """Read all six batches under `root`/cifar-10-batches-py once per process (cached by the
    folder, however `root` names it, and whether or not `download` is asked for)."""
    if (missing := missing_file(root)) is not None:
        if not download:
            raise DataError(f"CIFAR-10 not found: {missing} does not exist; point data.root at the "
                            f"folder holding {FOLDER}/, or set data.download=true to fetch it")
        _download(Path(root))
    return _read_cifar10(os.path.realpath(root))


@functools.lru_cache(maxsize=2)
def _read_cifar10(root: str) -> Cifar10:
    files = batch_files(root)
    train = [read_batch(f) for f in files[:-1]]
    test_x, test_y = read_batch(files[-1])
    return Cifar10(torch.cat([x for x, _ in train]), torch.cat([y for _, y in train]), test_x, test_y)


load_cifar10.cache_clear = _read_cifar10.cache_clear  # a fresh read (the bench times one)


@dataclass(frozen=True)
class Split:
    x: torch.Tensor  # uint8 (n, 3, 32, 32)
    y: torch.Tensor  # int64 (n,)

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device))


def check_val_size(val_size: int, n: int) -> None:
    """The validation split must leave at least one of the `n` training images to train on."""
    if val_size >= n:
        raise ConfigError(f"data.val_size={val_size} leaves no training images: it must be less than "
                          f"the {n} training images")


def split(data: Cifar10, val_size: int, train_size: int | None, test_size: int | None,
          seed: int) -> tuple[Split, Split, Split]:
    """(train, val, test): val is a seeded random subset of the training images, disjoint from train."""
    n = len(data.train_y)
    check_val_size(val_size, n)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size], order[val_size:]
    if train_size is not None:
        if train_size > len(train_idx):
            log.warning("data.train_size=%d is more than the %d training images left after "
                        "data.val_size=%d: training on all %d", train_size, len(train_idx), val_size,
                        len(train_idx))
        train_idx = train_idx[:train_size]
    test = Split(data.test_x, data.test_y)
    if test_size is not None:
        if test_size > len(test):
            log.warning("data.test_size=%d is more than the %d test images: testing on all %d",
                        test_size, len(test), len(test))
        test = Split(test.x[:test_size], test.y[:test_size])
    return (Split(data.train_x[train_idx], data.train_y[train_idx]),
            Split(data.train_x[val_idx], data.train_y[val_idx]), test)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 (x/255 - mean) / std; mean and std are (3,) tensors in 0..1."""
    scale = (1.0 / (255.0 * std)).view(1, 3, 1, 1)
    return x.float() * scale - (mean / std).view(1, 3, 1, 1)


def random_crop(x: torch.Tensor, size: int, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad`, then crop a `size` square at an independent random offset per image."""
    if pad:
        x = F.pad(x, (pad, pad, pad, pad))
    n, c, h, w = x.shape
    dy = torch.randint(0, h - size + 1, (n, 1), generator=gen, device=x.device)
    dx = torch.randint(0, w - size + 1, (n, 1), generator=gen, device=x.device)
    span = torch.arange(size, device=x.device)
    rows = (dy + span).view(n, 1, size, 1)
    cols = (dx + span).view(n, 1, 1, size)
    images = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channels = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return x[images, channels, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(x), generator=gen, device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one `size` square per image, centred anywhere (it may hang over the border)."""
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=gen, device=x.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=gen, device=x.device)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    top, left = cy - size // 2, cx - size // 2
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside.unsqueeze(1), 0.0)


class Augment:
    """The training transform of `cfg.augment`, applied to a uint8 batch on its device."""

    def __init__(self, cfg, mean: torch.Tensor, std: torch.Tensor, gen: torch.Generator):
        self.cfg, self.mean, self.std, self.gen = cfg, mean, std, gen

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.cfg.crop:
            x = random_crop(x, self.cfg.crop, self.cfg.pad, self.gen)
        if self.cfg.flip:
            x = random_flip(x, self.gen)
        x = normalize(x, self.mean, self.std)
        if self.cfg.cutout:
            x = cutout(x, self.cfg.cutout, self.gen)
        return x
