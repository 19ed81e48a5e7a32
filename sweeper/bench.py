"""Benchmark: our trainer against a plain loop in the seed's style, measured side by side in one run.

    python -m sweeper.bench                      # CPU or CUDA, widths 64 and 16, batch 128
    python -m sweeper.bench --widths 64 --batch-size 512 --device cuda

For each width, the same model and batch size are trained, in rounds (`--reps`) that alternate
the order (A B, B A, ...), by
  reference   the seed's loop: a torchvision-style dataset (PIL image, per-sample RandomCrop,
              RandomHorizontalFlip, ToTensor, Normalize), DataLoader(shuffle, 2 workers), fp32 NCHW,
              SGD, `loss.item()` every step;
  sweeper     `sweeper.engine.train` with its defaults for the device (other variants: --variants).
Each measurement is the second of two epochs (the first warms up caches, allocator and compiler), in
training images per second (the reference's from the end of its first step, so its DataLoader's
per-epoch worker start-up is not counted against it; ours over the whole epoch). The ratio to the
reference is taken within each round, then summarised as median, min and max. Also measured: the
time to load CIFAR-10, and each trial's start-up cost (call of train() to the end of its first
step) in-process with cached data and in a fresh process.
Writes a JSON file (benchmarks/ by default) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from sweeper.data import load_cifar10, split
from sweeper.engine import describe, resolve_device, train
from sweeper.errors import SweeperError
from sweeper.model import PreActResNet

ROOT = Path(__file__).resolve().parent.parent
# Overrides of our trainer per variant; "reference" is the seed-style loop.
VARIANTS = {
    "sweeper": [],
    "sweeper-eager": ["trainer.channels_last=false", "trainer.compile=false"],
    "sweeper-compile": ["trainer.compile=true"],
}
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
                    batch_size: int, device: torch.device, epochs: int = 2,
                    workers: int = 2) -> list[float]:
    """Training images/s of each epoch of the seed-style loop (at least 2 steps per epoch)."""
    import torchvision.transforms as T

    transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                           T.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))])
    loader = torch.utils.data.DataLoader(SeedStyleCIFAR10(x, y, transform), batch_size=batch_size,
                                         shuffle=True, num_workers=workers)
    torch.manual_seed(0)
    net = PreActResNet(blocks, width).to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
    rates = []
    for _ in range(epochs):
        # Timed from the end of the epoch's first step, so the DataLoader's worker start-up (paid
        # once per epoch, a larger share of these short epochs than of a real one) is not counted.
        start, timed = None, 0
        running_loss = 0.0
        for inputs, labels in loader:
            inputs, labels = inputs.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(net(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            if start is None:
                start = time.perf_counter()
            else:
                timed += len(labels)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(timed / (time.perf_counter() - start))
    return rates


def trainer_overrides(args, width: int, images: int, extra: list[str]) -> list[str]:
    """Our trainer's overrides for a run like the reference loop's (plus small evaluation splits)."""
    blocks = ",".join(map(str, args.blocks))
    return [f"data.root={args.data_root}", "tracking=off", "augment=standard", "schedule=constant",
            f"optimizer.lr={LR}", f"model.blocks=[{blocks}]", f"model.width={width}",
            f"trainer.batch_size={args.batch_size}", f"data.train_size={images}",
            f"data.val_size={args.val_size}", f"data.test_size={args.val_size}", "trainer.epochs=2",
            "trainer.save_model=false", "trainer.log_every=0", f"trainer.device={args.device}",
            *extra]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sweeper.config import register

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf")):
        return hydra_compose(config_name="config", overrides=overrides)


def fresh_process_startup(overrides: list[str]) -> dict:
    """Launch `python -m sweeper.train` and time it from launch to the end of its first step."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "sweeper.train", *overrides, "trainer.epochs=1",
               f"hydra.run.dir={tmp}"]
        launched = time.time()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        ended = time.time()
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
        results = json.loads((Path(tmp) / "results.json").read_text())
    return {"launch_to_first_step_s": results["first_step_at"] - launched,
            "in_train_to_first_step_s": results["startup_s"], "whole_run_s": ended - launched}


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def run(args) -> dict:
    device = resolve_device(args.device)
    started = time.perf_counter()
    load_cifar10.cache_clear()
    data = load_cifar10(args.data_root)
    load_s = time.perf_counter() - started
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": describe(device), "torch": torch.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "commit": _git_commit(), "batch_size": args.batch_size,
        "blocks": args.blocks, "reps": args.reps, "variants": args.variants,
        "data_load_s": load_s, "widths": {},
    }
    args.val_size = min(512, len(data.train_y) // 4)  # evaluation is not timed: keep it small
    logging.getLogger("sweeper").setLevel(logging.WARNING)
    for width in args.widths:
        images = args.images or max(args.batch_size, 65536 // width)
        images = min(images, len(data.train_y) - args.val_size)
        images = max(2 * args.batch_size, images - images % args.batch_size)
        train_set = split(data, args.val_size, images, None, 0)[0]
        rates = {name: [] for name in ["reference", *args.variants]}
        startups = {name: [] for name in args.variants}
        for rep in range(args.reps):
            order = ["reference", *args.variants]
            for name in order if rep % 2 == 0 else order[::-1]:  # A B, then B A: no order bias
                if name == "reference":
                    rates[name].append(reference_rates(train_set.x, train_set.y, args.blocks,
                                                       width, args.batch_size, device)[-1])
                    continue
                result = train(compose(trainer_overrides(args, width, images, VARIANTS[name])))
                rates[name].append(result.history[-1]["images_per_s"])
                startups[name].append(result.startup_s)
            print(f"width {width}, round {rep + 1}/{args.reps}: " + ", ".join(
                f"{name} {r[-1]:.0f} img/s" for name, r in rates.items()), flush=True)
        ref = rates["reference"]
        report["widths"][str(width)] = {
            "images_per_epoch": images,
            "images_per_s": {name: summarise(r) for name, r in rates.items()},
            "ratio_to_reference": {name: summarise([a / b for a, b in zip(rates[name], ref)])
                                   for name in args.variants},
            # train() call to the end of the first step: the first run of a variant pays the cold
            # start (compilation), the rest reuse the process's caches; overhead = start-up minus
            # the time of one steady step
            "in_process_startup_s": {name: {"first": s[0], "cached": s[1:]}
                                     for name, s in startups.items()},
            "in_process_overhead_s": {
                name: statistics.median(s[1:] or s) - args.batch_size / statistics.median(rates[name])
                for name, s in startups.items()},
        }
    if args.fresh_process:
        width = args.widths[0]
        report["fresh_process"] = fresh_process_startup(
            trainer_overrides(args, width, args.batch_size * 2, []))
    return report


def table(report: dict) -> str:
    lines = [f"{report['device']}, torch {report['torch']}, batch {report['batch_size']}, blocks "
             f"{report['blocks']}, {report['reps']} rounds; CIFAR-10 loaded in "
             f"{report['data_load_s']:.1f} s",
             f"{'width':>5}  {'variant':<16}{'img/s (median)':>15}  {'x reference: median [min, max]':<31}"
             f"{'start-up s: first / cached':>27}{'overhead s':>12}"]
    for width, w in report["widths"].items():
        for name, rate in w["images_per_s"].items():
            ratio, startup, overhead = "", "", ""
            if name in w["ratio_to_reference"]:
                r = w["ratio_to_reference"][name]
                ratio = f"{r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}]"
                s = w["in_process_startup_s"][name]
                cached = f"{statistics.median(s['cached']):.2f}" if s["cached"] else "-"
                startup = f"{s['first']:.2f} / {cached}"
                overhead = f"{w['in_process_overhead_s'][name]:.2f}"
            lines.append(f"{width:>5}  {name:<16}{rate['median']:>15.0f}  {ratio:<31}{startup:>27}"
                         f"{overhead:>12}")
    if "fresh_process" in report:
        f = report["fresh_process"]
        lines.append(f"fresh process: launch to first step {f['launch_to_first_step_s']:.1f} s "
                     f"(of which in train() {f['in_train_to_first_step_s']:.1f} s)")
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=ROOT, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweeper.bench", description=__doc__.split("\n")[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 16], help="model.width values")
    p.add_argument("--blocks", type=int, nargs=4, default=[2, 2, 2, 2], help="blocks per stage")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--images", type=int, default=0,
                   help="training images per epoch (default: 65536 / width)")
    p.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    p.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS),
                   help="our trainer's variants (default: sweeper, plus sweeper-compile on CPU)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--data-root", default=os.environ.get("CIFAR10_ROOT", "../shared/datasets/cifar10"))
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file to write (default: benchmarks/<device>-<time>.json)")
    p.add_argument("--no-fresh-process", dest="fresh_process", action="store_false",
                   help="skip timing a fresh `python -m sweeper.train` process")
    args = p.parse_args(argv)
    args.data_root = str(Path(args.data_root).absolute())
    if args.variants is None:
        cpu = resolve_device(args.device).type == "cpu"
        args.variants = ["sweeper", "sweeper-compile"] if cpu else ["sweeper"]
    if min(args.widths) < 1 or args.batch_size < 1 or args.reps < 1 or min(args.blocks) < 1:
        p.error("--widths, --blocks, --batch-size and --reps must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        report = run(args)
    except SweeperError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    out = args.out or ROOT / "benchmarks" / (
        f"{report['device'].split()[0]}-{datetime.now():%Y%m%d-%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**report, "args": sys.argv[1:]}, indent=2) + "\n")
    print(table(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
