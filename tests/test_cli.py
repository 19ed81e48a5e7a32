"""`python -m sweeper.train` as a user runs it: real subprocesses on the synthetic data."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sweeper.data import FOLDER
from tests.conftest import ROOT, TINY, make_cifar, run_cli, runs_of


def test_end_to_end_run_prints_device_progress_and_per_class_accuracy(cifar_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(*TINY, f"data.root={cifar_root}", "trainer.log_every=3", f"hydra.run.dir={run_dir}",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Using device: cpu")
    assert any(line.startswith("[1,     3] loss: ") for line in lines)
    epochs = [line for line in lines if line.startswith("epoch ")]  # the time left, while any is
    assert len(epochs) == 2 and re.search(r"img/s; (about \d+ s|under 1 s) left\)$", epochs[0]), epochs
    assert epochs[1].endswith(" img/s)"), epochs
    for name in ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"):
        assert any(line.startswith("Accuracy of") and f" {name} :" in line for line in lines), name
    assert any(line.startswith("Accuracy of the network on the 100 test images") for line in lines)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["epochs_completed"] == 2
    assert len(results["test/acc_per_class"]) == 10 and 0 <= results["val/acc"] <= 1
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "val/acc" in (run_dir / "train.log").read_text()


def _screen(raw: str) -> list[str]:
    """The lines a terminal shows for `raw`: a carriage return writes over its line from the left."""
    shown = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        text = ""
        for part in line.split("\r"):
            text = part + text[len(part):]
        shown.append(text.rstrip())
    return shown


def test_on_a_terminal_log_lines_stay_off_the_progress_bar(cifar_root, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    main, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))  # 40 x 100

    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper.train", *TINY, f"data.root={cifar_root}",
         "trainer.log_every=1", "trainer.epochs=1", f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path, stdin=child, stdout=child, stderr=child)
    os.close(child)
    raw = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(main)
    assert proc.wait(timeout=120) == 0
    shown = _screen(raw.decode(errors="replace"))
    assert "it/s" in raw.decode(errors="replace")  # the bar was drawn
    losses = [line for line in shown if "] loss: " in line]
    assert losses and all(line.startswith("[1, ") for line in losses), losses


def test_relative_data_root_is_taken_from_the_launch_directory(cifar_root, tmp_path):
    (tmp_path / "data").symlink_to(cifar_root)
    proc = run_cli(*TINY, "data.root=data", "trainer.epochs=1", f"hydra.run.dir={tmp_path}/run",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_the_gpu_preset_on_a_cpu_says_it_will_take_hours(cifar_root, tmp_path):
    proc = run_cli("experiment=fast", *TINY, f"data.root={cifar_root}", "trainer.epochs=1",
                   f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "experiment=fast is a preset for a GPU: on a CPU its ResNet-18 takes hours" in proc.stdout
    quiet = run_cli("experiment=smoke", *TINY, f"data.root={cifar_root}", "trainer.epochs=1",
                    f"hydra.run.dir={tmp_path}/smoke", cwd=tmp_path)
    assert quiet.returncode == 0 and "preset for a GPU" not in quiet.stdout


def _truncated_root(tmp_path):
    root = make_cifar(tmp_path / "truncated")
    path = root / FOLDER / "test_batch"
    path.write_bytes(path.read_bytes()[:999])
    return root


# (overrides, what the one error line must contain, expected exit code)
BAD_INPUTS = {
    "blocks not 4": (["model.blocks=[2,2,2]"], "model.blocks=", 2),
    "blocks zero": (["model.blocks=[2,0,2,2]"], "4 positive ints", 2),
    "width": (["model.width=0"], "model.width=0", 2),
    "lr": (["optimizer.lr=-0.01"], "optimizer.lr=", 2),
    "batch size": (["trainer.batch_size=0"], "trainer.batch_size=0", 2),
    "val as large as train": (["data.val_size=300"], "data.val_size=300", 2),
    "device": (["trainer.device=tpu"], "allowed values are auto, cpu, cuda", 2),
    "precision": (["trainer.precision=fp8"], "allowed values are auto, fp32, bf16, fp16", 2),
    "cuda absent": (["trainer.device=cuda"], "no CUDA device", 2),
    "root missing": (["data.root=/nonexistent/cifar"], "data.root", 1),
    "truncated batch": ([], "test_batch is truncated or malformed", 1),
    "diverged": (["optimizer.lr=1e12"], "diverged", 3),
    "malformed override": (["model.blocks=[2,2"], "cannot parse the override 'model.blocks=[2,2'", 2),
    "misspelt key": (["model.blok=3"], "model.blok is not a config key (did you mean model.blocks?)", 2),
    "wrong type": (["trainer.epochs=abc"], "trainer.epochs=abc is invalid: an int", 2),
    "adding a key that exists": (["+trainer.epochs=3"], "+trainer.epochs=3 adds a key, but "
                                 "trainer.epochs exists: set it with trainer.epochs=3", 2),
    "deleted field": (["~model.width"], "~model.width is invalid: model.width is a field of the "
                      "typed config and cannot be deleted; set it instead", 2),
    "unknown group option": (["model=resnet99"], "model=resnet99 is invalid: allowed values are "
                             "preact18, preact34, tiny", 2),
    "read-only output dir": ([], "is not writable", 1),
    "out of memory": (["model.width=1000000"], "error: out of memory: a tensor of", 1),
    "unreachable tracking server": (["tracking=mlflow", "tracking.uri=http://u:s3cret@127.0.0.1:1"],
                                    "tracking.uri=http://u:***@127.0.0.1:1 is unreachable", 1),
    "corrupted checkpoint": (["trainer.resume=true"], "checkpoint.pt is corrupted or truncated", 1),
}


def read_only_dir(tmp_path: Path) -> Path:
    """A directory no file can be written in, also for root (who ignores permission bits)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        (folder / "probe").write_bytes(b"")
    except PermissionError:
        return folder
    return Path("/sys/kernel")  # a folder of a kernel filesystem that takes no new files


def _launch_bad(name: str, cifar_root: Path, tmp: Path):
    """Run the bad-input case `name` of BAD_INPUTS: (the finished process, its run directory)."""
    overrides, _, _ = BAD_INPUTS[name]
    root = _truncated_root(tmp) if name == "truncated batch" else cifar_root
    run_dir = tmp / name.replace(" ", "_")
    if name == "read-only output dir":
        run_dir = read_only_dir(tmp)
    if name == "corrupted checkpoint":
        run_dir.mkdir()
        (run_dir / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
        (run_dir / "config.yaml").write_text("# the run that wrote the checkpoint\n")
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text("- optimizer.lr=0.2\n")
    return run_cli(*TINY, f"data.root={root}", *overrides, f"hydra.run.dir={run_dir}", cwd=tmp), run_dir


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_gets_one_line_and_a_nonzero_exit(cifar_root, tmp_path, name):
    if name == "cuda absent" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc, run_dir = _launch_bad(name, cifar_root, tmp_path)
    _, expected, code = BAD_INPUTS[name]
    assert proc.returncode == code, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and expected in errors[0], proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    if name in ("blocks not 4", "root missing", "corrupted checkpoint"):  # the log says why, too
        assert errors[0] in (run_dir / "train.log").read_text()
    results = run_dir / "results.json"
    if name == "corrupted checkpoint":
        assert (run_dir / "checkpoint.pt").read_bytes() == b"PK\x03\x04 cut short"  # kept as it was
        # the refused run did not overwrite the config of the run it would have resumed
        assert (run_dir / "config.yaml").read_text() == "# the run that wrote the checkpoint\n"
        # nor Hydra's snapshot of it with the refused run's overrides
        assert (run_dir / ".hydra" / "overrides.yaml").read_text() == "- optimizer.lr=0.2\n"
    elif name not in ("diverged", "read-only output dir", "out of memory"):
        assert not (run_dir / "config.yaml").exists()  # refused before anything is written
    if name == "unreachable tracking server":  # Hydra's own snapshots in .hydra/ are masked too
        assert not any("s3cret" in f.read_text() for f in run_dir.rglob("*") if f.is_file())
    if name == "diverged":
        assert json.loads(results.read_text())["status"] == "diverged"
    else:
        assert not results.exists()  # nothing that looks like a finished run


@pytest.mark.parametrize("override", ["trainer.device=cuda", "data.root=/nonexistent/cifar",
                                      "data.val_size=300"])
def test_a_refused_run_opens_no_mlflow_run(mlflow_uri, cifar_root, tmp_path, override):
    if override == "trainer.device=cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = run_cli(*TINY, f"data.root={cifar_root}", "tracking=mlflow", f"tracking.uri={mlflow_uri}",
                   override, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode in (1, 2) and "Traceback" not in proc.stdout + proc.stderr
    assert runs_of(mlflow_uri)[1] == []


def test_a_typo_fails_before_training_naming_the_key(tmp_path):
    proc = run_cli("model.blok=3", cwd=tmp_path)
    assert proc.returncode != 0 and "model.blok" in proc.stderr and "Traceback" not in proc.stderr
    assert "Using device" not in proc.stdout


def test_ctrl_c_leaves_a_run_marked_interrupted(cifar_root, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sweeper.train", *TINY, f"data.root={cifar_root}", "trainer.epochs=500",
         f"hydra.run.dir={run_dir}"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        # pytest-xdist workers ignore SIGINT and children inherit that; a terminal's child does not
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    log = run_dir / "train.log"
    deadline = time.monotonic() + 60
    while not (log.exists() and "epoch 1/500" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)  # generous: CI runs two test workers on 2 cores
    assert proc.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (  # after epoch 1: a checkpoint to go on from
        f"interrupted: results.json says status: interrupted; run the same command with "
        f"trainer.resume=true to continue from {run_dir / 'checkpoint.pt'}")
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "interrupted" and 1 <= results["epochs_completed"] < 500
    assert log.read_text().rstrip().endswith(err.strip().splitlines()[-1])  # the log says why too


@pytest.mark.parametrize("sweep, message", [
    (["trainer.epochs=1,0"], "error: job 2 of 2 (#1: trainer.epochs=0): trainer.epochs=0 is invalid: "
     "an int >= 1; no job has started"),
    (["data.val_size=50,5000"], "error: job 2 of 2 (#1: data.val_size=5000): data.val_size=5000 "
     "leaves no training images"),
    (["trainer.epochs=1,2", "trainer.device=cpu,tpu"], "error: job 2 of 4 (#1: trainer.epochs=1 "
     "trainer.device=tpu): trainer.device='tpu' is invalid: allowed values are auto, cpu, cuda; no "
     "job has started"),
    (["model=glob(tiny)", "trainer.epochs=1,0"], "error: job 2 of 2 (#1: model=tiny trainer.epochs=0): "
     "trainer.epochs=0 is invalid"),  # a glob needs the config loader to be split into jobs
    # Hydra: "Launching 0 jobs", exit status 0
    (["model=glob(foo*)"], "error: model=glob(foo*) matches nothing (no option or value), so the "
     "sweep would run no job"),
    (["trainer.epochs=range(5,1)"], "error: trainer.epochs=range(5,1) matches nothing"),
])
def test_a_plain_multirun_checks_every_job_before_the_first_starts(cifar_root, tmp_path, sweep,
                                                                   message):
    """Hydra composes every job before launching but checks no values: a bad one in a list failed
    only when its job started, after the jobs before it had trained."""
    proc = run_cli(*TINY, f"data.root={cifar_root}", "-m", *sweep, f"hydra.sweep.dir={tmp_path}/sweep",
                   cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith(message), lines[0]
    assert not (tmp_path / "sweep").exists()  # no job ran, no folder was made


def test_a_plain_multirun_runs_every_job_and_resumes_without_training_one_twice(cifar_root,
                                                                                tmp_path):
    grid = [*TINY, f"data.root={cifar_root}", "-m", "seed=0,1", f"hydra.sweep.dir={tmp_path}/sweep"]
    proc = run_cli(*grid, "trainer.epochs=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = [tmp_path / "sweep" / job / "results.json" for job in ("0", "1")]
    assert all(json.loads(path.read_text())["status"] == "completed" for path in results)

    first = results[0].read_text()
    results[1].unlink()  # job #1 killed before it completed (and before its first checkpoint)
    proc = run_cli(*grid, "trainer.epochs=1", "trainer.resume=true", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Completed earlier with these settings ({results[0]}): not trained again" in proc.stdout
    assert results[0].read_text() == first  # job #0 kept, not trained again
    assert json.loads(results[1].read_text())["status"] == "completed"

    proc = run_cli(*grid, "trainer.epochs=2", "trainer.resume=true", cwd=tmp_path)  # another grid
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and lines[-1].startswith("error: job #0 (") and lines[-1].endswith(
        f"{results[0]} holds a completed run of other settings (trainer.epochs=1 there, 2 here); "
        f"its results and model.pt are kept: use another hydra.sweep.dir, or trainer.resume=false "
        f"to train this grid's jobs again"), lines[-1]
    assert results[0].read_text() == first


@pytest.mark.parametrize("args, message", [
    (["tracking=off", "-m", "sweep=smoke", "model.blok=3"], "model.blok is not a config key"),
    (["--multirun", "sweep=smoke", "hydra.sweeper.n_trials=abc"],
     "hydra.sweeper.n_trials=abc is invalid: an int"),
    # Hydra: a traceback ("BasicSweeper does not support sweep type : INTERVAL_SWEEP")
    (["-m", "optimizer.lr=interval(0.1,0.2)"], "optimizer.lr=interval(0.1,0.2) is a search range "
     "of the Optuna sweeper, which a sweep preset chooses: add sweep=<preset> (blocks_lr, "),
    (["optimizer.lr=interval(0.1,0.2)"], "optimizer.lr=interval(0.1,0.2) is a search range"),
    # Hydra: four lines ("Ambiguous value for argument ...")
    (["optimizer.lr=0.1,0.2"], "optimizer.lr=0.1,0.2 sweeps values, which needs --multirun (-m)"),
    # a sweep's values, and a key under hydra.sweeper, named as typed
    (["-m", "+trainer.epochs=1,2"], "+trainer.epochs=1,2 adds a key, but trainer.epochs exists: set "
     "it with trainer.epochs=1,2"),
    (["-m", "sweep=lr", "hydra/sweeper/sampler=tpe", "+hydra.sweeper.sampler.n_startup_trials=5"],
     "+hydra.sweeper.sampler.n_startup_trials=5 adds a key, but hydra.sweeper.sampler."
     "n_startup_trials exists: set it with hydra.sweeper.sampler.n_startup_trials=5"),
])
def test_overrides_after_a_flag_are_checked_too(tmp_path, args, message):
    """Hydra takes overrides on both sides of -m; they were checked only before it."""
    proc = run_cli(*args, f"hydra.sweep.dir={tmp_path}/sweep", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}")
    assert not (tmp_path / "sweep").exists()


def test_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    """results.json, config.yaml, a sweep's best.yaml and the bench's JSON are written this way: a
    kill or a full disk mid-write keeps the old file (a best.yaml cut short would still compose)."""
    from sweeper import outputs

    path = tmp_path / "best.yaml"
    outputs.write_atomic(path, "a: 1\n")
    assert path.read_text() == "a: 1\n"

    def no_space(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(outputs.os, "replace", no_space)
    with pytest.raises(OSError):
        outputs.write_atomic(path, "a: 2\nb: 3\n")
    assert path.read_text() == "a: 1\n" and [p.name for p in tmp_path.iterdir()] == ["best.yaml"]
