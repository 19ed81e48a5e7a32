"""The benchmark runs end to end on tiny data and reports what it promises (no timing asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sweeper.device import autocast_dtype
from tests.conftest import ROOT


def test_bench_writes_json_and_prints_a_table(cifar_root, tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "sweeper.bench", "--widths", "4", "--blocks", "1", "1", "1", "1",
         "--batch-size", "32", "--images", "64", "--reps", "2", "--device", "cpu",
         "--variants", "sweeper", "sweeper-eager", "--data-root", str(cifar_root), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    default = str(autocast_dtype("auto", torch.device("cpu")) or torch.float32)[6:]  # per CPU
    width = report["widths"]["4"]
    assert width["images_per_epoch"] == 64
    for name in ("reference", "sweeper", "sweeper-eager"):
        assert len(width["images_per_s"][name]["values"]) == 2  # interleaved rounds
        assert width["images_per_s"][name]["median"] > 0
    ratio = width["ratio_to_reference"]["sweeper"]
    assert ratio["min"] <= ratio["median"] <= ratio["max"]
    assert ratio["values"] == [a / b for a, b in zip(width["images_per_s"]["sweeper"]["values"],
                                                       width["images_per_s"]["reference"]["values"])]
    assert len(width["in_process_startup_s"]["sweeper"]["cached"]) == 1
    ours = {"float32": "fp32", "bfloat16": "bf16"}[default]
    assert width["precision"] == {"reference": "fp32", "sweeper": ours, "sweeper-eager": ours}
    # the ceilings: the peak is a real rate, and no loop can beat a loop of convolutions alone
    peak = report["peak"]
    assert peak["flops"] == max(peak["by_kernel"].values()) > 0
    assert peak["dtype"] == default
    assert width["train_flops_per_image"] > 0 and width["ceiling_ratio"] > 0
    conv = width["convolutions"]
    assert 0 < conv["convolutions_s"] < conv["step_s"]
    assert conv["ceiling_ratio"] == 32 / conv["convolutions_s"] / width["images_per_s"]["reference"]["median"]
    for name in ("reference", "sweeper"):
        share = width["share_of_peak"][name]
        assert share == width["images_per_s"][name]["median"] * width["train_flops_per_image"] / peak["flops"]
    fresh = report["fresh_process"]
    assert 0 < fresh["in_train_to_first_step_s"] < fresh["launch_to_first_step_s"] < fresh["whole_run_s"]
    assert report["data_load_s"] > 0 and report["device"].startswith("cpu")
    cpu = report["cpu"]  # which kind of machine ran it: the JSON alone must tell
    assert cpu["model"] and cpu["capability"] == torch.backends.cpu.get_cpu_capability()
    assert cpu["amx"] == bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    flags = Path("/proc/cpuinfo").read_text().split("\n\n")[0] if Path("/proc/cpuinfo").exists() else ""
    assert cpu["avx512_bf16"] == ("avx512_bf16" in flags.split())
    assert "x reference" in proc.stdout and f"sweeper-eager ({ours})" in proc.stdout
    assert "(convs only)" in proc.stdout and "(at the peak)" in proc.stdout
    assert "note: 2 steps per epoch at width 4: too few to time well" in proc.stdout
    # progress as it happens: what runs, then each round's results in the order they ran
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"bench on {report['device']}, {cpu['model']}, {cpu['capability']}")
    assert "2 rounds of reference, sweeper, sweeper-eager" in lines[0]
    rounds = [line for line in lines if line.startswith("width 4, round ")]
    assert [r.split(":")[1].split(",")[0].split()[0] for r in rounds] == ["reference", "sweeper-eager"]
    assert all(r.count(" img/s") == 3 for r in rounds)


def test_bench_bad_data_root_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sweeper.bench", "--data-root", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: CIFAR-10 not found") and proc.stderr.count("\n") == 1
    assert "--data-root" in proc.stderr and "data.root" not in proc.stderr  # the bench's own flag


def test_bench_refuses_a_negative_image_count():
    proc = subprocess.run([sys.executable, "-m", "sweeper.bench", "--images", "-5"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--images=-5 is invalid: 0 (65536 / width) or more" in proc.stderr


def test_bench_survives_a_failing_profiler(cifar_root, monkeypatch):
    """On a GPU machine without CUPTI the profiler raises: the rest of the run must still report."""
    from sweeper import bench

    def no_cupti(*args, **kwargs):
        raise RuntimeError("CUPTI not found")

    monkeypatch.setattr(bench, "convolution_time", no_cupti)
    args = bench.parse_args(["--widths", "4", "--blocks", "1", "1", "1", "1", "--batch-size", "32",
                             "--images", "64", "--reps", "1", "--device", "cpu", "--variants",
                             "sweeper", "--data-root", str(cifar_root), "--no-fresh-process"])
    report = bench.run(args)
    width = report["widths"]["4"]
    assert width["convolutions"] == {"error": "RuntimeError: CUPTI not found"}
    assert width["images_per_s"]["sweeper"]["median"] > 0 and width["ceiling_ratio"] > 0
    assert "(convs only)" + " " * 11 + "not measured: RuntimeError: CUPTI not found" in bench.table(report)


def test_default_variants_add_fp32_where_the_cpu_defaults_to_bf16(monkeypatch):
    from sweeper.bench import parse_args
    from tests.conftest import fake_amx

    for amx, vendor, variants in ((True, "GenuineIntel", ["sweeper", "sweeper-compile", "sweeper-fp32"]),
                                  (False, "GenuineIntel", ["sweeper", "sweeper-compile"]),
                                  (False, "AuthenticAMD", ["sweeper", "sweeper-compile", "sweeper-fp32"])):
        fake_amx(monkeypatch, amx, vendor, "avx512f avx512_bf16")
        assert parse_args(["--device", "cpu"]).variants == variants
    assert parse_args(["--device", "cpu", "--variants", "sweeper"]).variants == ["sweeper"]


def _bench(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "sweeper.bench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/a_file/bench.json"], "--out {tmp}/a_file/bench.json: {tmp}/a_file is a file, "
                                           "not a folder"),
    (["--out", "{tmp}"], "--out {tmp}: is a folder; give a file name"),
    (["--out", "/proc/bench.json"], "--out /proc/bench.json: /proc is not writable"),  # even as root
    (["--blocks", "1", "1", "1"], "argument --blocks: expected 4 arguments"),
    (["--batch-size", "100000"], "--batch-size 100000 is too large: two batches need 200000 "
                                 "training images"),
])
def test_bad_bench_arguments_are_one_line_before_anything_is_measured(cifar_root, tmp_path, args,
                                                                      message):
    """An unwritable --out is found before the measuring, not after it (which took 10+ minutes)."""
    (tmp_path / "a_file").write_text("")
    proc = _bench("--data-root", str(cifar_root), *(a.format(tmp=tmp_path) for a in args))
    assert proc.returncode == 2 and "round" not in proc.stdout
    assert proc.stderr.startswith("error: " + message.format(tmp=tmp_path))
    assert proc.stderr.count("\n") == 1


def test_bench_on_cuda_without_a_gpu_is_one_line(cifar_root):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here: --device cuda is valid")
    proc = _bench("--data-root", str(cifar_root), "--device", "cuda")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("error: --device cuda: no CUDA device is available here")
