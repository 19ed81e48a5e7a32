"""train(cfg) in-process on the synthetic data: what a run records and how it ends."""

import json
import math
import os
import platform
import subprocess
import sys

import pytest

from sweeper.engine import duration, train
from tests.conftest import ROOT


def test_a_run_learns_and_writes_results(tiny_cfg, tmp_path):
    tiny_cfg.trainer.epochs = 4
    tiny_cfg.optimizer.lr = 0.05
    result = train(tiny_cfg, out_dir=tmp_path)
    assert result.status == "completed" and result.epochs_completed == 4
    assert result.val_acc > 0.5  # chance is 0.1; the class shows in the colour
    results = json.loads((tmp_path / "results.json").read_text())
    for key in ("val/acc", "test/acc", "test/acc_per_class", "n_params", "epochs_completed",
                "train_time_s", "images_per_s", "status"):
        assert key in results
    assert results["status"] == "completed" and results["val/acc"] == result.val_acc
    assert results["precision"] == result.precision in ("fp32", "bf16")  # auto: per machine
    assert list(results["test/acc_per_class"]) == ["plane", "car", "bird", "cat", "deer", "dog",
                                                   "frog", "horse", "ship", "truck"]
    assert results["images_per_s"] > 0 and results["train_time_s"] > 0
    assert [h["epoch"] for h in results["history"]] == [1, 2, 3, 4]
    # the first step (which may compile) is start-up, so training time is less than the epochs'
    epochs_s = sum(h["time/epoch_s"] for h in results["history"])
    assert results["train_time_s"] < epochs_s < results["train_time_s"] + results["startup_s"]
    assert results["objective"] == result.objective == result.val_acc


@pytest.mark.parametrize("pixels, maps", [(64, {8, 4}), (16, {4}), (0, set())])
def test_training_uses_forward_weight_grads_where_they_help(tiny_cfg, monkeypatch, pixels, maps):
    """Where sweeper.convs says they help (fp32 on a CPU up to AVX2: 8x8 and 4x4 maps; bf16 with
    AMX: 4x4), a run computes those maps' weight gradients as forward convolutions; elsewhere it
    leaves them to the library."""
    from sweeper import convs

    seen = set()
    original = convs.weight_grad
    monkeypatch.setattr(convs, "weight_grad", lambda x, gy: seen.add(x.shape[-1]) or original(x, gy))
    monkeypatch.setattr("sweeper.engine.forward_weight_grad_pixels", lambda device, amp: pixels)
    tiny_cfg.trainer.epochs = 1
    result = train(tiny_cfg)
    assert result.status == "completed" and math.isfinite(result.history[0]["train/loss"])
    assert seen == maps


def test_same_seed_same_result_on_cpu(tiny_cfg):
    a, b = train(tiny_cfg), train(tiny_cfg)
    assert a.history[-1]["train/loss"] == b.history[-1]["train/loss"] and a.val_acc == b.val_acc


@pytest.mark.parametrize("group", ["optimizer=adamw", "schedule=cosine", "schedule=step",
                                   "schedule=constant", "augment=seed", "augment=cutout",
                                   "trainer.label_smoothing=0.1"])
def test_each_option_trains(cifar_root, group):
    from tests.conftest import TINY, compose_cfg

    result = train(compose_cfg([*TINY, f"data.root={cifar_root}", group, "trainer.epochs=1"]))
    assert result.status == "completed" and math.isfinite(result.history[0]["train/loss"])


def test_divergence_stops_at_once_with_a_finite_worst_objective(tiny_cfg, tmp_path):
    tiny_cfg.optimizer.lr = 1e12
    tiny_cfg.trainer.epochs = 5
    result = train(tiny_cfg, out_dir=tmp_path)
    assert result.status == "diverged" and result.epochs_completed < 5
    assert result.objective == 0.0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "diverged" and "optimizer.lr" in results["message"]
    assert results["objective"] == 0.0 and results["test/acc"] is None


def test_an_exception_from_the_epoch_callback_is_recorded_and_raised(tiny_cfg, tmp_path):
    class Stop(Exception):
        status = "pruned"

    def on_epoch(epoch, metrics):
        assert 0 <= metrics["val/acc"] <= 1 and metrics["lr"] > 0
        raise Stop("pruned at epoch 1")

    with pytest.raises(Stop):
        train(tiny_cfg, out_dir=tmp_path, on_epoch=on_epoch)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "pruned" and results["epochs_completed"] == 1


def test_tta_and_ema_evaluate_an_other_model_of_the_same_run(tiny_cfg, tmp_path, monkeypatch):
    import torch

    import sweeper.engine as engine

    plain = train(tiny_cfg, out_dir=tmp_path / "plain")
    real_evaluate, asked = engine.evaluate, []

    def evaluate(model, data, mean, std, batch_size, amp, channels_last, tta):
        asked.append(tta)
        return real_evaluate(model, data, mean, std, batch_size, amp, channels_last, tta)

    monkeypatch.setattr(engine, "evaluate", evaluate)
    tiny_cfg.trainer.tta = True
    tta = train(tiny_cfg)
    # same training, so same loss; evaluation differs (mirror images averaged in)
    assert tta.history[-1]["train/loss"] == plain.history[-1]["train/loss"]
    assert tta.status == "completed" and 0 <= tta.val_acc <= 1
    assert asked and all(asked)  # every validation and the test pass, with mirror images
    monkeypatch.setattr(engine, "evaluate", real_evaluate)
    tiny_cfg.trainer.tta, tiny_cfg.trainer.ema = False, 0.9
    ema = train(tiny_cfg, out_dir=tmp_path / "ema")
    assert ema.history[-1]["train/loss"] == plain.history[-1]["train/loss"]
    assert ema.status == "completed" and 0 <= ema.val_acc <= 1
    # the saved (and evaluated) weights are the average, not the last step's
    a, b = (torch.load(tmp_path / name / "model.pt", weights_only=True) for name in ("plain", "ema"))
    assert a.keys() == b.keys()
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())


def test_the_weight_average_warms_up():
    """With a constant decay of 0.999 a short run's average stayed mostly its first weights."""
    import torch

    from sweeper.engine import build_ema

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = build_ema(model, 0.999)
    ema.update_parameters(model)  # the first update copies
    first = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    for _ in range(20):
        ema.update_parameters(model)
    # a constant 0.999 would leave 98 % of the first weights; the warm-up leaves under 1e-6
    assert torch.allclose(ema.module[0].weight, first + 1.0, atol=1e-5)
    for _ in range(10000):  # the decay reaches its setting: 0.999, not the warm-up's 0.9999...
        ema.update_parameters(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module[0].weight, first + 1.001, atol=1e-5)


def test_evaluate_with_tta_is_mirror_invariant():
    import torch

    from sweeper.data import Split
    from sweeper.engine import evaluate
    from sweeper.model import PreActResNet

    torch.manual_seed(0)
    model = PreActResNet([1, 1, 1, 1], width=4)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    y = torch.zeros(16, dtype=torch.long)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    a = evaluate(model, Split(x, y), mean, std, 8, tta=True)
    b = evaluate(model, Split(x.flip(3), y), mean, std, 8, tta=True)
    assert torch.equal(a, b)


@pytest.mark.parametrize("seconds, text", [(0.4, "under 1 s"), (0.5, "1 s"), (89, "89 s"), (90, "2 min"),
                                           (5369, "89 min"), (5400, "1 h 30 min"),
                                           (45_600, "12 h 40 min")])
def test_time_left_reads_as_a_person_says_it(seconds, text):
    assert duration(seconds) == text


def test_startup_is_timed(tiny_cfg):
    import time

    before = time.time()
    result = train(tiny_cfg)
    assert 0 < result.startup_s < result.train_time_s + 60
    assert before < result.first_step_at < time.time()


def test_a_compiled_model_is_reused_by_the_next_run_of_its_shape(tiny_cfg, capfd, monkeypatch):
    """Same shape: the compiled module is reused, with fresh weights; the runs train alike.

    And compiling for a CPU does not warn of CUDA (torch does, where a CUDA toolkit is installed).
    """
    import sweeper.engine as engine

    monkeypatch.setattr(engine, "_compiled", {})
    tiny_cfg.trainer.compile = True
    tiny_cfg.trainer.epochs = 1
    first = train(tiny_cfg)
    assert "No CUDA runtime" not in capfd.readouterr().err
    [(_, compiled)] = engine._compiled.values()
    second = train(tiny_cfg)
    assert [forward for _, forward in engine._compiled.values()] == [compiled]
    assert second.history[-1]["train/loss"] == pytest.approx(first.history[-1]["train/loss"], rel=1e-5)
    assert second.startup_s < first.startup_s


def test_every_architecture_of_a_long_in_process_sweep_is_compiled(monkeypatch):
    """Dynamo keeps its compiled code per function, shared by every network: from the 9th shape
    in one process it ran forward uncompiled (recompile_limit, 8), warning once."""
    import torch
    from omegaconf import OmegaConf

    import sweeper.engine as engine

    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(len(example_inputs))
        return gm.forward

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: real_compile(
        model, backend=counting_backend))
    monkeypatch.setattr("sweeper.engine._compiled", {})
    x = torch.randn(2, 3, 8, 8)
    for n in range(1, 10):  # 9 architectures, each compiled once
        cfg = OmegaConf.create({"blocks": [1, 1, 1, n], "width": 2, "num_classes": 10})
        _, forward = engine.build_compiled(cfg, torch.device("cpu"), False, True)
        before = len(graphs)
        forward(x)
        assert len(graphs) > before, f"architecture {n} ran uncompiled"
        assert len(engine._compiled) <= engine.MAX_COMPILED
    torch.compiler.reset()

@pytest.mark.parametrize("mode, passed", [("default", None), ("reduce-overhead", "reduce-overhead")])
def test_compile_mode_reaches_torch_compile(tiny_cfg, monkeypatch, mode, passed):
    """trainer.compile_mode is torch.compile's mode (reduce-overhead: CUDA graphs on a GPU), and a
    model compiled in one mode is not reused by a run that asks for another."""
    import torch

    modes = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: modes.append(mode) or model)
    monkeypatch.setattr("sweeper.engine._compiled", {})
    tiny_cfg.trainer.compile, tiny_cfg.trainer.compile_mode = True, mode
    tiny_cfg.trainer.epochs = 1
    assert train(tiny_cfg).status == "completed" and modes == [passed]
    tiny_cfg.trainer.compile_mode = "max-autotune-no-cudagraphs"
    train(tiny_cfg)
    assert modes == [passed, "max-autotune-no-cudagraphs"]


PAGE_FAULTS = """
import resource, sys, torch
from sweeper.device import keep_freed_memory
from sweeper.engine import train
from tests.conftest import compose_cfg, TINY

def faults_of_large_blocks(cycles=8):  # 64 MiB each, over glibc's largest mmap threshold (32 MiB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(cycles):
        torch.empty(64 << 20, dtype=torch.uint8).fill_(1)  # written, then freed
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

print(faults_of_large_blocks())
train(compose_cfg([*TINY, f"data.root={sys.argv[1]}", "trainer.device=cpu"]))
print(faults_of_large_blocks(), keep_freed_memory())
"""
BLOCK_PAGES = (64 << 20) // 4096  # a block written to fresh memory faults in each of its pages


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (mallopt)")
@pytest.mark.parametrize("env, kept", [({}, True), ({"MALLOC_MMAP_MAX_": "65536"}, False)])
def test_training_on_cpu_reuses_freed_memory(cifar_root, env, kept):
    """By default every large block is fresh memory, each page faulted in again; after train() on a
    CPU freed blocks are reused (the heap grows once or twice, then no faults): unless the user set
    glibc's own variables, which then rule."""
    proc = subprocess.run([sys.executable, "-c", PAGE_FAULTS, str(cifar_root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    first, (second, applied) = proc.stdout.split("\n")[0], proc.stdout.split("\n")[1].split()
    assert int(first) >= 7 * BLOCK_PAGES  # every block faulted in afresh
    assert applied == str(kept)
    if kept:
        assert int(second) <= 3 * BLOCK_PAGES  # 8 blocks: at most 3 from new memory
    else:
        assert int(second) >= 7 * BLOCK_PAGES


@pytest.fixture(params=[True, False, None], ids=["amx", "no-amx", "unknown"])
def amx(request, monkeypatch):
    """A CPU with AMX, one without, and a torch that cannot tell (no such private function)."""
    from tests.conftest import fake_amx

    fake_amx(monkeypatch, request.param)
    return bool(request.param)


def test_auto_precision_is_bf16_on_cuda_and_on_cpus_with_amx(amx, monkeypatch):
    import torch

    from sweeper.device import autocast_dtype

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is (torch.bfloat16 if amx else None)
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    for native in (True, False):  # Ampere and later; a T4 only emulates bf16
        monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                            lambda including_emulation=True, native=native: native)
        assert autocast_dtype("auto", cuda) is (torch.bfloat16 if native else None)


def test_amx_the_kernel_does_not_enable_means_fp32(monkeypatch):
    import torch

    from sweeper.device import autocast_dtype
    from tests.conftest import fake_amx

    fake_amx(monkeypatch, True)
    monkeypatch.setattr(torch.cpu, "_init_amx", lambda: False, raising=False)
    assert autocast_dtype("auto", torch.device("cpu")) is None


@pytest.mark.parametrize("vendor, flags, bf16", [
    ("AuthenticAMD", "avx512f avx512_bf16", True),  # Zen 4 and later: bf16 convolutions 2x fp32's
    ("AuthenticAMD", "avx2", False),
    ("GenuineIntel", "avx512f avx512_bf16", False),  # without AMX: 1.4-1.5x slower than fp32
])
def test_auto_precision_without_amx_is_bf16_on_amd_cpus_with_avx512_bf16(vendor, flags, bf16,
                                                                          monkeypatch):
    import torch

    from sweeper.device import autocast_dtype, cpu_info
    from tests.conftest import fake_amx

    fake_amx(monkeypatch, False, vendor, flags)
    assert cpu_info()["avx512_bf16"] is ("avx512_bf16" in flags)
    assert autocast_dtype("auto", torch.device("cpu")) is (torch.bfloat16 if bf16 else None)


@pytest.mark.parametrize("amx, vendor, variable, cap, bf16", [
    (False, "AuthenticAMD", "ONEDNN_MAX_CPU_ISA", "AVX2", False),  # 12x slower in bf16 there
    (False, "AuthenticAMD", "DNNL_MAX_CPU_ISA", "avx512_core", False),
    (False, "AuthenticAMD", "ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", True),
    (True, "GenuineIntel", "ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", False),  # AMX held back
    (True, "GenuineIntel", "ONEDNN_MAX_CPU_ISA", "avx512_core_amx", True),
    (True, "GenuineIntel", "ONEDNN_MAX_CPU_ISA", "ALL", True),
])
def test_auto_precision_follows_a_cap_on_onednns_instructions(amx, vendor, variable, cap, bf16,
                                                               monkeypatch):
    import torch

    from sweeper.device import autocast_dtype, cpu_info
    from tests.conftest import fake_amx

    fake_amx(monkeypatch, amx, vendor, "avx512f avx512_bf16")
    monkeypatch.setenv(variable, cap)
    assert autocast_dtype("auto", torch.device("cpu")) is (torch.bfloat16 if bf16 else None)
    assert cpu_info()["onednn_max_cpu_isa"] == cap.upper()  # recorded in the bench's JSON


def test_bf16_on_a_cpu_without_amx_warns_and_trains(tiny_cfg, amx, caplog):
    tiny_cfg.trainer.precision = "bf16"
    tiny_cfg.trainer.epochs = 1
    result = train(tiny_cfg)
    assert result.status == "completed" and math.isfinite(result.history[0]["train/loss"])
    slower = [r for r in caplog.records if "usually slower than fp32" in r.getMessage()]
    assert len(slower) == (0 if amx else 1) and result.precision == "bf16"


@pytest.mark.parametrize("overrides, warning", [
    ({"trainer.compile": False, "trainer.compile_mode": "reduce-overhead"},
     "trainer.compile_mode=reduce-overhead has no effect with trainer.compile=false"),
    ({"optimizer.name": "adamw", "optimizer.nesterov": True},
     "optimizer.nesterov=true has no effect with optimizer=adamw"),
    ({"schedule.name": "constant", "schedule.warmup": 0.5},
     "schedule.warmup=0.5 has no effect with schedule=constant (cosine and onecycle only)"),
    ({"schedule.name": "step", "schedule.final": 0.1},
     "schedule.final=0.1 has no effect with schedule=step"),
])
def test_a_setting_another_one_turns_off_is_named(tiny_cfg, caplog, overrides, warning):
    from omegaconf import OmegaConf

    for key, value in overrides.items():
        OmegaConf.update(tiny_cfg, key, value)
    tiny_cfg.trainer.epochs = 1
    assert train(tiny_cfg).status == "completed"
    assert [r.levelname for r in caplog.records if warning in r.getMessage()] == ["WARNING"]
