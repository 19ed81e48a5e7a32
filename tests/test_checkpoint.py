"""Per-epoch checkpoints: resume to the same result, atomic writes, refusals with one clear line."""

import errno
import json
import resource
import signal
import subprocess
import sys
import time

import pytest
import torch

from sweeper import checkpoint
from sweeper.checkpoint import CheckpointError
from sweeper.engine import train
from tests.conftest import TINY


class Interrupt(KeyboardInterrupt):
    pass


def stop_after(epoch_to_stop: int):
    def on_epoch(epoch, metrics):
        if epoch == epoch_to_stop:
            raise Interrupt(f"stopped after epoch {epoch}")
    return on_epoch


def test_resume_after_an_interruption_ends_like_an_uninterrupted_run(tiny_cfg, tmp_path):
    tiny_cfg.trainer.epochs = 4
    tiny_cfg.augment.flip, tiny_cfg.augment.crop, tiny_cfg.augment.pad = True, 32, 4
    whole = train(tiny_cfg, out_dir=tmp_path / "whole")
    assert not (tmp_path / "whole" / "checkpoint.pt").exists()  # removed once complete

    out = tmp_path / "killed"
    with pytest.raises(Interrupt):
        train(tiny_cfg, out_dir=out, on_epoch=stop_after(2))
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and len(state["history"]) == 2

    tiny_cfg.trainer.resume = True
    resumed = train(tiny_cfg, out_dir=out)
    assert resumed.status == "completed" and resumed.epochs_completed == 4
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"] for h in whole.history]
    assert resumed.val_acc == whole.val_acc and resumed.test_acc == whole.test_acc
    assert json.loads((out / "results.json").read_text())["status"] == "completed"
    # each process's first step is left out of the time, and its images out of the count
    timed = resumed.images_per_s * resumed.train_time_s
    assert timed == pytest.approx(whole.images_per_s * whole.train_time_s - 32)  # one batch


def test_resume_without_a_checkpoint_starts_from_scratch(tiny_cfg, tmp_path):
    tiny_cfg.trainer.resume = True
    assert train(tiny_cfg, out_dir=tmp_path).status == "completed"


def test_resume_of_a_completed_run_is_refused_and_keeps_its_results(tiny_cfg, tmp_path):
    assert train(tiny_cfg, out_dir=tmp_path).status == "completed"
    before = (tmp_path / "results.json").read_bytes(), (tmp_path / "model.pt").read_bytes()
    tiny_cfg.trainer.resume = True
    with pytest.raises(CheckpointError, match="holds a completed run: nothing to resume"):
        train(tiny_cfg, out_dir=tmp_path)
    assert ((tmp_path / "results.json").read_bytes(), (tmp_path / "model.pt").read_bytes()) == before


def test_resume_into_other_settings_is_refused(tiny_cfg, tmp_path):
    tiny_cfg.trainer.epochs = 3
    with pytest.raises(Interrupt):
        train(tiny_cfg, out_dir=tmp_path, on_epoch=stop_after(1))
    tiny_cfg.trainer.resume, tiny_cfg.optimizer.lr = True, 0.5
    with pytest.raises(CheckpointError, match=r"optimizer.lr=.* not 0.5"):
        train(tiny_cfg, out_dir=tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1  # kept


def test_resume_on_a_machine_with_other_defaults_names_the_setting(tiny_cfg, tmp_path,
                                                                  monkeypatch):
    # written where precision=auto meant fp32 (a CPU without AMX), resumed where it means bf16
    from tests.conftest import fake_amx

    tiny_cfg.trainer.epochs = 3
    fake_amx(monkeypatch, False)
    with pytest.raises(Interrupt):
        train(tiny_cfg, out_dir=tmp_path, on_epoch=stop_after(1))
    tiny_cfg.trainer.resume = True
    fake_amx(monkeypatch, True)
    with pytest.raises(CheckpointError) as refused:
        train(tiny_cfg, out_dir=tmp_path)
    assert str(refused.value) == (
        f"{tmp_path / 'checkpoint.pt'} was written by a run with trainer.precision=fp32 (as it "
        f"resolved then), not bf16; resume with trainer.precision=fp32, or use another output "
        f"directory")
    tiny_cfg.trainer.precision = "fp32"  # as the message says: it resumes
    result = train(tiny_cfg, out_dir=tmp_path)
    assert result.status == "completed" and result.epochs_completed == 3
    assert result.precision == "fp32" and len(result.history) == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_corrupted_checkpoint_is_one_clear_error_and_kept(tiny_cfg, tmp_path, damage):
    tiny_cfg.trainer.epochs = 3
    with pytest.raises(Interrupt):
        train(tiny_cfg, out_dir=tmp_path, on_epoch=stop_after(1))
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x80\x04not a checkpoint",
                      "empty": b""}[damage])
    damaged = path.read_bytes()
    tiny_cfg.trainer.resume = True
    with pytest.raises(CheckpointError, match="corrupted or truncated") as info:
        train(tiny_cfg, out_dir=tmp_path)
    assert "\n" not in str(info.value) and "trainer.resume=false" in str(info.value)
    assert "weights_only" not in str(info.value)  # not torch's advice to load it unsafely
    assert path.read_bytes() == damaged  # nothing overwritten


def test_a_checkpoint_that_runs_code_on_load_is_refused(tiny_cfg, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"fingerprint": "{}", "epoch": 1, "model": Evil(), "optimizer": {}},
               tmp_path / "checkpoint.pt")
    tiny_cfg.trainer.resume = True
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        train(tiny_cfg, out_dir=tmp_path)


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tiny_cfg, tmp_path,
                                                                       monkeypatch):
    tiny_cfg.trainer.epochs = 3
    real_save = torch.save
    calls = []

    def save_until_disk_full(obj, f):
        calls.append(1)
        if len(calls) == 2:  # epoch 2's checkpoint: half written, then the disk is full
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoint is intact"):
        train(tiny_cfg, out_dir=tmp_path)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "checkpoint.pt.tmp").exists()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and results["epochs_completed"] == 2


def test_a_pruned_run_leaves_no_checkpoint(tiny_cfg, tmp_path):
    class Pruned(Exception):
        status = "pruned"

    def prune(epoch, metrics):
        raise Pruned("pruned")

    with pytest.raises(Pruned):
        train(tiny_cfg, out_dir=tmp_path, on_epoch=prune)
    assert not (tmp_path / "checkpoint.pt").exists()


# The command line, as users meet it: a killed run resumed, a disk that fills up.

def _launch(cifar_root, run_dir, *overrides, preexec_fn=None):
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper.train", *TINY, f"data.root={cifar_root}", "model.width=16",
         "trainer.batch_size=16", "trainer.epochs=6", "augment=standard", f"hydra.run.dir={run_dir}",
         *overrides],
        cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=preexec_fn)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_with_the_same_metrics(cifar_root, tmp_path):
    whole = _launch(cifar_root, tmp_path / "whole")
    killed_dir = tmp_path / "killed"
    killed = _launch(cifar_root, killed_dir)
    ckpt = killed_dir / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not ckpt.exists():  # epoch 1 is checkpointed: kill during epoch 2
        assert killed.poll() is None and time.monotonic() < deadline, killed.communicate()
        time.sleep(0.01)
    killed.kill()
    killed.communicate()
    assert not (killed_dir / "results.json").exists()  # SIGKILL: no chance to write anything
    epoch = torch.load(ckpt, weights_only=True)["epoch"]
    assert 1 <= epoch < 6

    resumed = _launch(cifar_root, killed_dir, "trainer.resume=true")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    _, err = whole.communicate(timeout=300)
    assert whole.returncode == 0, err
    a = json.loads((tmp_path / "whole" / "results.json").read_text())
    b = json.loads((killed_dir / "results.json").read_text())
    assert b["status"] == "completed" and b["epochs_completed"] == 6
    for key in ("val/acc", "test/acc", "test/confusion"):
        assert a[key] == b[key], key
    assert [h["train/loss"] for h in a["history"]] == [h["train/loss"] for h in b["history"]]
    assert f"Resuming from {ckpt}: {epoch} of 6 epochs done" in (killed_dir / "train.log").read_text()
    assert not ckpt.exists()


def test_a_full_disk_at_the_first_checkpoint_is_one_line(cifar_root, tmp_path):
    """The kernel refuses the write (a file-size limit: EFBIG, as a full disk gives ENOSPC)."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))

    run_dir = tmp_path / "run"
    proc = _launch(cifar_root, run_dir, "trainer.epochs=2", preexec_fn=limit_file_size)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: could not write the checkpoint"), err
    assert "File too large" in lines[0] and "no earlier checkpoint" in lines[0]
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "checkpoint.pt.tmp").exists()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "failed" and results["epochs_completed"] == 1


def test_resume_after_the_last_epoch_only_evaluates(tiny_cfg, tmp_path):
    tiny_cfg.trainer.epochs = 2
    whole = train(tiny_cfg, out_dir=tmp_path / "whole")
    with pytest.raises(Interrupt):  # killed after the last checkpoint, before the test set
        train(tiny_cfg, out_dir=tmp_path / "late", on_epoch=stop_after(2))
    tiny_cfg.trainer.resume = True
    resumed = train(tiny_cfg, out_dir=tmp_path / "late")
    assert resumed.status == "completed" and resumed.epochs_completed == 2
    assert resumed.val_acc == whole.val_acc and resumed.test_acc == whole.test_acc
    assert [h["train/loss"] for h in resumed.history] == [h["train/loss"] for h in whole.history]


def test_a_stop_during_the_test_pass_is_recorded_and_resumable(tiny_cfg, tmp_path, monkeypatch):
    """Ctrl-C (or SLURM's SIGTERM) while the test set is evaluated, after the last epoch: the run
    was left without results.json, and the command line said it had not started."""
    import sweeper.engine as engine

    tiny_cfg.trainer.epochs = 2
    whole = train(tiny_cfg, out_dir=tmp_path / "whole")
    real_evaluate, calls = engine.evaluate, []

    def evaluate(model, data, *args):
        calls.append(len(data.y))
        if len(calls) == 3:  # two validations, then the test set
            raise Interrupt("SIGTERM")
        return real_evaluate(model, data, *args)

    monkeypatch.setattr(engine, "evaluate", evaluate)
    out = tmp_path / "late"
    with pytest.raises(Interrupt):
        train(tiny_cfg, out_dir=out)
    assert json.loads((out / "results.json").read_text())["status"] == "interrupted"
    assert not (out / "model.pt").exists() and (out / "checkpoint.pt").exists()
    monkeypatch.setattr(engine, "evaluate", real_evaluate)
    tiny_cfg.trainer.resume = True
    resumed = train(tiny_cfg, out_dir=out)
    assert resumed.status == "completed" and resumed.test_acc == whole.test_acc
    assert (out / "model.pt").exists() and not (out / "checkpoint.pt").exists()


def test_a_full_disk_when_saving_the_model_is_a_failed_run(tiny_cfg, tmp_path, monkeypatch):
    import sweeper.engine as engine

    def save_weights(model, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine, "save_weights", save_weights)
    with pytest.raises(OSError):
        train(tiny_cfg, out_dir=tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and "No space left" in results["message"]
    assert (tmp_path / "checkpoint.pt").exists()  # kept: trainer.resume=true finishes the run


def test_resume_with_ema_ends_like_an_uninterrupted_run(tiny_cfg, tmp_path):
    tiny_cfg.trainer.epochs, tiny_cfg.trainer.ema = 3, 0.9
    whole = train(tiny_cfg, out_dir=tmp_path / "whole")
    with pytest.raises(Interrupt):
        train(tiny_cfg, out_dir=tmp_path / "cut", on_epoch=stop_after(1))
    tiny_cfg.trainer.resume = True
    resumed = train(tiny_cfg, out_dir=tmp_path / "cut")
    assert resumed.val_acc == whole.val_acc and resumed.test_acc == whole.test_acc
