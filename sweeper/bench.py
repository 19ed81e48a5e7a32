"""Benchmark: our trainer against a plain loop in the seed's style, measured side by side in one run.

    python -m sweeper.bench                      # CPU or CUDA, widths 64 and 16, batch 128
    python -m sweeper.bench --widths 64 --batch-size 512 --device cuda

For each width, the same model and batch size are trained, in rounds (`--reps`) that alternate
the order (A B, B A, ...), by
  reference   the seed's loop: a torchvision-style dataset (PIL image, per-sample RandomCrop,
              RandomHorizontalFlip, ToTensor, Normalize), DataLoader(shuffle, 2 workers), fp32 NCHW,
              SGD, `loss.item()` every step; each round in a fresh process, as the seed's script
              runs (the C library's default allocator, no caches warmed by the other loops);
  sweeper     `sweeper.engine.train` with its defaults for the device (bf16 autocast on CUDA, on
              CPUs with AMX and on AMD CPUs with avx512_bf16; other variants: --variants, e.g.
              sweeper-fp32).
Each measurement is the second of two epochs (the first warms up caches, allocator and compiler), in
training images per second (the reference's from the end of its first step to the end of its last,
so its DataLoader's per-epoch worker start-up and shutdown are not counted against it; ours over
the whole epoch). The ratio to the
reference is taken within each round, then summarised as median, min and max. Also measured: the
time to load CIFAR-10, and each trial's start-up cost (call of train() to the end of its first
step) in-process with cached data and in a fresh process.

And two ceilings, the most any loop of the same model and batch could reach against the reference:
  peak          the model's arithmetic per training image (forward and backward, counted by
                torch.utils.flop_counter) run at the device's measured peak (the fastest call of a
                large matrix product and of large 3x3 convolutions, in the trainer's precision);
                each loop's share of that peak is reported too;
  convolutions  the model's convolutions alone, forward and backward, as the trainer runs them
                (torch.profiler over a few steps): a loop whose every other operation (data,
                normalisation, activation, optimizer) took no time. Only faster convolution
                kernels than the library's, or less arithmetic, get past it.
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

from sweeper.ceilings import convolution_time, peak_flops, train_flops_per_image
from sweeper.data import FOLDER, load_cifar10, missing_file, split
from sweeper.device import autocast_dtype, cpu_info, describe, resolve_device
from sweeper.engine import train
from sweeper.errors import ConfigError, DataError, SweeperError
from sweeper.outputs import nearest_existing, probe_write, write_atomic
from sweeper.reference import LR, reference_in_child

ROOT = Path(__file__).resolve().parent.parent
# Overrides of our trainer per variant; "reference" is the seed-style loop.
VARIANTS = {
    "sweeper": [],
    "sweeper-eager": ["trainer.channels_last=false", "trainer.compile=false"],
    "sweeper-compile": ["trainer.compile=true"],
    "sweeper-fp32": ["trainer.precision=fp32"],  # where the defaults use bf16: its share of the gain
    "sweeper-graphs": ["trainer.compile=true", "trainer.compile_mode=reduce-overhead"],  # CUDA graphs
}
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


def _cpu_text(cpu: dict) -> str:
    native = " with AMX" if cpu["amx"] else " with avx512_bf16" if cpu.get("avx512_bf16") else ""
    cap = f", oneDNN capped at {cpu['onednn_max_cpu_isa']}" if cpu.get("onednn_max_cpu_isa") else ""
    return f"{cpu['model']}, {cpu['capability']}{native}{cap}"


def summarise(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}


def run(args) -> dict:
    device = resolve_device(args.device)
    started = time.perf_counter()
    load_cifar10.cache_clear()
    data = load_cifar10(args.data_root)
    load_s = time.perf_counter() - started
    args.val_size = min(512, len(data.train_y) // 4)  # evaluation is not timed: keep it small
    available = len(data.train_y) - args.val_size
    if 2 * args.batch_size > available:  # an epoch of two steps at least: one to start, one to time
        raise ConfigError(f"--batch-size {args.batch_size} is too large: two batches need "
                          f"{2 * args.batch_size} training images and {available} are here "
                          f"(at most --batch-size {available // 2})")
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": describe(device), "cpu": cpu_info(), "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "commit": _git_commit(), "batch_size": args.batch_size,
        "blocks": args.blocks, "reps": args.reps, "variants": args.variants,
        "data_load_s": load_s, "widths": {},
    }
    print(f"bench on {report['device']}, {_cpu_text(report['cpu'])}: {args.blocks} at widths "
          f"{', '.join(map(str, args.widths))}, batch {args.batch_size}, {args.reps} rounds of "
          f"{', '.join(['reference', *args.variants])}; measuring the peak first", flush=True)
    # Measured before any training, so no DataLoader worker or compiler thread competes with it.
    report["peak"] = peak_flops(device, autocast_dtype("auto", device))
    logging.getLogger("sweeper").setLevel(logging.WARNING)
    for width in args.widths:
        images = args.images or max(args.batch_size, 65536 // width)
        images = min(images, available)
        images = max(2 * args.batch_size, images - images % args.batch_size)
        if args.images and images != args.images:
            print(f"note: --images {args.images} is {images} at width {width}: whole batches of "
                  f"{args.batch_size}, at least two, at most the {available} training images")
        if images // args.batch_size < MIN_TIMED_STEPS:
            print(f"note: {images // args.batch_size} steps per epoch at width {width}: too few to "
                  f"time well (--images {MIN_TIMED_STEPS * args.batch_size} or more for "
                  f"{MIN_TIMED_STEPS})")
        train_set = split(data, args.val_size, images, None, 0)[0]
        rates = {name: [] for name in ["reference", *args.variants]}
        startups = {name: [] for name in args.variants}
        precisions = {"reference": "fp32"}
        for rep in range(args.reps):
            order = ["reference", *args.variants]
            # each result as it comes: a round of width 64 takes minutes on 2 CPU cores
            print(f"width {width}, round {rep + 1}/{args.reps}:", end="", flush=True)
            for i, name in enumerate(order if rep % 2 == 0 else order[::-1]):  # A B, then B A
                if name == "reference":
                    rates[name].append(reference_in_child(train_set.x, train_set.y, args.blocks,
                                                          width, args.batch_size, device)[-1])
                else:
                    result = train(compose(trainer_overrides(args, width, images, VARIANTS[name])))
                    rates[name].append(result.history[-1]["images_per_s"])
                    startups[name].append(result.startup_s)
                    precisions[name] = result.precision
                print(f"{',' if i else ''} {name} {rates[name][-1]:.0f} img/s", end="", flush=True)
            print(flush=True)
        ref = rates["reference"]
        flops = train_flops_per_image(args.blocks, width)
        try:  # the profiler needs CUPTI on CUDA: a missing one must not cost the rest of the run
            conv = convolution_time(args.blocks, width, args.batch_size, device, channels_last=True,
                                    amp=autocast_dtype("auto", device))
            conv["ceiling_ratio"] = args.batch_size / conv["convolutions_s"] / statistics.median(ref)
        except (RuntimeError, AttributeError) as e:  # AttributeError: an older torch's profiler
            conv = {"error": f"{type(e).__name__}: {e}"}
        report["widths"][str(width)] = {
            "images_per_epoch": images,
            "images_per_s": {name: summarise(r) for name, r in rates.items()},
            "train_flops_per_image": flops,
            # achieved arithmetic rate (median img/s x FLOPs per image) as a share of the peak
            "share_of_peak": {name: statistics.median(r) * flops / report["peak"]["flops"]
                              for name, r in rates.items()},
            # the ratio to the reference of a loop that ran the model at the device's peak
            "ceiling_ratio": report["peak"]["flops"] / (statistics.median(ref) * flops),
            # ... and of a loop that spent time only in the model's convolutions
            "convolutions": conv,
            "ratio_to_reference": {name: summarise([a / b for a, b in zip(rates[name], ref)])
                                   for name in args.variants},
            # train() call to the end of the first step: the first run of a variant pays the cold
            # start (compilation), the rest reuse the process's caches; overhead = start-up minus
            # the time of one steady step
            "precision": precisions,  # what each loop trained in (auto resolves per machine)
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
    peak = report["peak"]
    lines = [f"{report['device']}, {_cpu_text(report['cpu'])}, torch {report['torch']}, batch "
             f"{report['batch_size']}, blocks "
             f"{report['blocks']}, {report['reps']} rounds; CIFAR-10 loaded in "
             f"{report['data_load_s']:.1f} s; measured peak {peak['flops'] / 1e9:.0f} GFLOP/s "
             f"({peak['dtype']})",
             f"{'width':>5}  {'variant':<23}{'img/s (median)':>15}  {'x reference: median [min, max]':<31}"
             f"{'% of peak':>10}{'start-up s: first / cached':>28}{'overhead s':>12}"]
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
            share = f"{100 * w['share_of_peak'][name]:.0f}"
            precision = w.get("precision", {}).get(name)  # absent from earlier reports
            label = f"{name} ({precision})" if precision else name
            lines.append(f"{width:>5}  {label:<23}{rate['median']:>15.0f}  {ratio:<31}{share:>10}"
                         f"{startup:>28}{overhead:>12}")
        c = w["convolutions"]
        if "error" in c:
            lines.append(f"{width:>5}  {'(convs only)':<23}not measured: {c['error'][:80]}")
        else:
            lines.append(f"{width:>5}  {'(convs only)':<23}"
                         f"{report['batch_size'] / c['convolutions_s']:>15.0f}  "
                         f"{c['ceiling_ratio']:<31.2f}{'':>10}   <- ceiling: convolutions take "
                         f"{100 * c['convolutions_s'] / c['step_s']:.0f} % of a step")
        lines.append(f"{width:>5}  {'(at the peak)':<23}{'':>15}  {w['ceiling_ratio']:<31.2f}{100:>10}"
                     f"   <- ceiling: {w['train_flops_per_image'] / 1e9:.3f} GFLOP per training image")
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


MIN_TIMED_STEPS = 8  # steps per epoch below which the bench says its rates are rough


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, where the help does not already say it."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or action.default == 0:
            return action.help
        return super()._get_help_string(action)


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in one line (no usage block), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (python -m sweeper.bench --help lists the options)\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="python -m sweeper.bench", description=__doc__.split("\n")[0],
                formatter_class=_Help)
    p.add_argument("--widths", type=int, nargs="+", default=[64, 16], help="model.width values")
    p.add_argument("--blocks", type=int, nargs=4, default=[2, 2, 2, 2], help="blocks per stage")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--images", type=int, default=0,
                   help="training images per epoch (0: 65536 / width)")
    p.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    p.add_argument("--variants", nargs="+", default=None, choices=sorted(VARIANTS),
                   help="our trainer's variants (default: sweeper; on a CPU also sweeper-compile, "
                        "and sweeper-fp32 where the default precision is bf16)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="training device")
    p.add_argument("--data-root", default=os.environ.get("CIFAR10_ROOT", "../shared/datasets/cifar10"),
                   help="folder holding cifar-10-batches-py/")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file to write (default: benchmarks/<device>-<time>.json)")
    p.add_argument("--no-fresh-process", dest="fresh_process", action="store_false",
                   help="skip timing a fresh `python -m sweeper.train` process")
    args = p.parse_args(argv)
    args.data_root = str(Path(args.data_root).absolute())
    try:  # the trainer's own check, said in the bench's terms
        device = resolve_device(args.device)
    except ConfigError:
        p.error("--device cuda: no CUDA device is available here; allowed values are auto, cpu")
    if args.out is not None and (problem := _unwritable(args.out)):
        p.error(f"--out {args.out}: {problem}")
    if args.variants is None:
        args.variants = ["sweeper"]
        if device.type == "cpu":
            args.variants.append("sweeper-compile")
            if autocast_dtype("auto", device) is not None:
                args.variants.append("sweeper-fp32")
    if min(args.widths) < 1 or args.batch_size < 1 or args.reps < 1 or min(args.blocks) < 1:
        p.error("--widths, --blocks, --batch-size and --reps must be positive")
    if args.images < 0:
        p.error(f"--images={args.images} is invalid: 0 (65536 / width) or more")
    return args


def _unwritable(out: Path) -> str | None:
    """Why the JSON file `out` could not be written (checked before hours of measuring), or None."""
    if out.is_dir():
        return "is a folder; give a file name, e.g. --out " + str(out / "bench.json")
    folder = nearest_existing(out.parent)  # the bench creates the rest when it writes
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        probe_write(folder)
    except OSError as e:
        return f"{folder} is not writable ({e.strerror or e})"
    return None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if (missing := missing_file(args.data_root)) is not None:  # said in the bench's own terms
        print(f"error: CIFAR-10 not found: {missing} does not exist; point --data-root (or "
              f"$CIFAR10_ROOT) at the folder holding {FOLDER}/", file=sys.stderr)
        sys.exit(DataError.exit_code)
    try:
        report = run(args)
    except SweeperError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    out = args.out or ROOT / "benchmarks" / (
        f"{report['device'].split()[0]}-{datetime.now():%Y%m%d-%H%M%S}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps({**report, "args": sys.argv[1:]}, indent=2) + "\n")
    print(table(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
