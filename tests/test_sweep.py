"""Sweeps as users run them: real `--multirun` subprocesses, tiny synthetic data, CPU."""

import contextlib
import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid

import optuna
import pytest
import sqlalchemy
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from hydra_plugins.optuna_pruning_sweeper.workers import cores
from sweeper.device import autocast_dtype
from sweeper.trial import storage
from tests.conftest import CONF, runs_of

TrialState = optuna.trial.TrialState


def sweep_args(cifar_root, tmp_path, *overrides, n_trials=3):
    return ["--multirun", "sweep=smoke", f"data.root={cifar_root}", "data.val_size=50",
            "data.train_size=null", "data.test_size=null", "model.width=4", "trainer.batch_size=32",
            "tracking=off", f"hydra.sweeper.storage=sqlite:///{tmp_path}/optuna.db",
            f"hydra.sweep.dir={tmp_path}/multirun", f"hydra.sweeper.n_trials={n_trials}", *overrides]


def _cpu_with(threads: int) -> str:
    """results.json's device for a CPU run with `threads` threads (at least 1)."""
    threads = max(1, threads)
    return f"cpu ({threads} thread{'s' if threads > 1 else ''})"


def sweep(args, cwd, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "sweeper.train", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


def study_of(tmp_path, name="smoke"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/optuna.db")


def test_trials_have_integer_stage_params_and_per_epoch_values(cifar_root, tmp_path):
    (tmp_path / "data").symlink_to(cifar_root)  # a relative data.root, as users type it
    args = sweep_args(cifar_root, tmp_path, "hydra.sweeper.pruner.name=none", "trainer.epochs=3")
    proc = sweep(["data.root=data" if a.startswith("data.root=") else a for a in args], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2]
    for t in trials:
        assert t.state == TrialState.COMPLETE
        assert isinstance(t.params["model.blocks.0"], int) and 1 <= t.params["model.blocks.3"] <= 2
        assert sorted(t.intermediate_values) == [1, 2, 3]
        assert t.intermediate_values[3] == pytest.approx(t.value)
        auto = autocast_dtype("auto", torch.device("cpu"))  # where it ran: auto differs per CPU
        assert t.user_attrs["precision"] == ("bf16" if auto else "fp32")
        assert t.user_attrs["device"] == _cpu_with(torch.get_num_threads())
        assert (tmp_path / "multirun" / str(t.number) / "results.json").is_file()  # job num = trial
    results = (tmp_path / "multirun" / "optimization_results.yaml").read_text()
    assert "best_params" in results and "model.blocks.0" in results
    assert "Re-run it with:" in proc.stdout + proc.stderr and "Top 3:" in proc.stdout + proc.stderr

    command = shlex.split((tmp_path / "multirun" / "best_command.txt").read_text())
    assert command[:3] == ["python", "-m", "sweeper.train"]
    elsewhere = tmp_path / "elsewhere"  # the printed command works from any folder
    elsewhere.mkdir()
    rerun = subprocess.run([sys.executable, *command[1:], f"hydra.run.dir={tmp_path}/best"],
                           cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    results = json.loads((tmp_path / "best" / "results.json").read_text())
    best = study_of(tmp_path).best_trial
    assert results["val/acc"] == pytest.approx(best.value)  # same config, same seed, same result


def test_the_pruner_prunes_hopeless_trials(cifar_root, tmp_path):
    proc = sweep(sweep_args(cifar_root, tmp_path, "hydra/sweeper/sampler=grid", "hydra.sweeper.params=null",
                            "optimizer.lr=choice(0.05,0.0000001)", "model.blocks.0=choice(1,2)",
                            "hydra.sweeper.pruner.n_startup_trials=1", "trainer.epochs=4",
                            n_trials=4), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert len(trials) == 4 and trials[0].state == TrialState.COMPLETE  # the startup trial
    hopeless = [t for t in trials[1:] if t.params["optimizer.lr"] < 1e-3]
    assert hopeless and all(t.state == TrialState.PRUNED for t in hopeless)
    for t in trials:
        if t.state == TrialState.PRUNED:  # stopped early, its per-epoch values kept
            assert 1 <= len(t.intermediate_values) < 4
            assert t.user_attrs["reason"].startswith(
                f"pruned: after epoch {len(t.intermediate_values)} with val/acc=")


def test_hyperband_budget_is_trainer_epochs_unless_given(cifar_root, tmp_path):
    proc = sweep(sweep_args(cifar_root, tmp_path, "hydra.sweeper.pruner.name=hyperband",
                            "trainer.epochs=2", n_trials=2), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hydra_cfgs = sorted((tmp_path / "multirun").glob("*/.hydra/hydra.yaml"))
    assert len(hydra_cfgs) == 2  # every trial's job built its pruner for 2 epochs, not 30
    for path in hydra_cfgs:
        assert OmegaConf.load(path).hydra.sweeper.pruner.max_resource == 2
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study_of(tmp_path).trials)


@pytest.mark.parametrize("overrides, message", [
    (["trainer.epochs=2", "hydra.sweeper.pruner.min_resource=3"],
     "error: hydra.sweeper.pruner.min_resource=3 is invalid: an int <= trainer.epochs=2, the epochs "
     "of a full trial"),
    (["trainer.epochs=range(1,3)"],
     "error: hydra.sweeper.pruner.max_resource=null is invalid while trainer.epochs is searched: "
     "give the most epochs a trial trains, e.g. hydra.sweeper.pruner.max_resource=30"),
])
def test_hyperband_without_a_budget_it_can_derive_is_refused(cifar_root, tmp_path, overrides, message):
    proc = sweep(sweep_args(cifar_root, tmp_path, "hydra.sweeper.pruner.name=hyperband", *overrides),
                 tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == message, proc.stderr
    assert not (tmp_path / "optuna.db").exists()


def test_a_raising_and_a_diverging_trial_are_recorded_and_the_sweep_goes_on(cifar_root, tmp_path):
    proc = sweep(sweep_args(cifar_root, tmp_path, "hydra/sweeper/sampler=grid", "hydra.sweeper.params=null",
                            "data.val_size=choice(50,1000000)", "optimizer.lr=choice(0.05,1e12)",
                            "hydra.sweeper.pruner.name=none", "hydra.sweeper.max_failure_rate=0.5",
                            n_trials=4), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    by_params = {(t.params["data.val_size"], t.params["optimizer.lr"]): t
                 for t in study_of(tmp_path).trials}
    assert by_params[(50, 0.05)].state == TrialState.COMPLETE
    diverged = by_params[(50, 1e12)]
    assert diverged.state == TrialState.PRUNED and diverged.user_attrs["reason"].startswith("diverged")
    for lr in (0.05, 1e12):
        failed = by_params[(1000000, lr)]
        assert failed.state == TrialState.FAIL and "data.val_size=1000000" in failed.user_attrs["reason"]


def test_too_many_failures_stop_the_sweep_with_one_line(cifar_root, tmp_path):
    # 50 passes the checks made before the first trial; 1000000 fails in its trial
    proc = sweep(sweep_args(cifar_root, tmp_path, "data.val_size=choice(50,1000000)",
                            "hydra.sweeper.max_failure_rate=0.0", n_trials=6), tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: 1 trials failed in this run")
    states = [t.state for t in study_of(tmp_path).trials]
    assert states[-1] == TrialState.FAIL and TrialState.FAIL not in states[:-1]  # stopped at once


def test_trials_in_other_precisions_are_pointed_out(cifar_root, tmp_path):
    # trial 0 as if it had run on a machine where trainer.precision=auto meant something else
    args = sweep_args(cifar_root, tmp_path, "hydra.sweeper.pruner.name=none", "trainer.epochs=1",
                      n_trials=1)
    assert sweep(args, tmp_path).returncode == 0
    [first] = study_of(tmp_path).trials
    study_of(tmp_path).add_trial(optuna.trial.create_trial(
        params=first.params, distributions=first.distributions, value=first.value,
        user_attrs={**first.user_attrs, "precision": "fp16"}))
    proc = sweep([*args, "hydra.sweeper.n_trials=3"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Trial 2 trained in" in proc.stdout + proc.stderr
    assert "other trials of this study in fp16" in proc.stdout + proc.stderr


def test_an_earlier_runs_failures_do_not_stop_a_resumed_sweep(cifar_root, tmp_path):
    study = optuna.create_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/optuna.db",
                                direction="maximize")
    for _ in range(2):  # failed in an earlier run (a full disk, say), since fixed
        trial = study.ask()
        trial.set_user_attr("reason", "OSError: No space left on device")
        study.tell(trial, state=TrialState.FAIL)
    proc = sweep(sweep_args(cifar_root, tmp_path, "hydra.sweeper.max_failure_rate=0.5",
                            "hydra.sweeper.pruner.name=none", n_trials=4), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.state for t in study_of(tmp_path).trials][2:] == [TrialState.COMPLETE] * 2


@pytest.mark.parametrize("override, message, code", [
    ("model.width=0", "error: model.width=0 is invalid: a positive int", 2),
    ("trainer.device=cuda", "error: trainer.device='cuda' is invalid: no CUDA device", 2),
    ("data.root=/nonexistent", "error: CIFAR-10 not found: /nonexistent/", 1),
    ("hydra.sweeper.n_trials=0", "error: hydra.sweeper.n_trials=0 is invalid: an int >= 1", 2),
    ("hydra.sweeper.n_jobs=0", "error: hydra.sweeper.n_jobs=0 is invalid: an int >= 1", 2),
    ("hydra.sweeper.max_failure_rate=2", "error: hydra.sweeper.max_failure_rate=2", 2),
    ("hydra.sweeper.pruner.name=foo", "error: hydra.sweeper.pruner.name=foo is invalid: allowed "
     "values are none, median, successive_halving, hyperband", 2),
    ("hydra.sweeper.pruner.n_warmup_steps=-1", "error: hydra.sweeper.pruner.n_warmup_steps=-1", 2),
    ("hydra.sweeper.objectives=[val/acc,nope]", "error: hydra.sweeper.objectives=[val/acc,nope] "
     "is invalid: keys of results.json", 2),
    ("hydra.sweeper.objectives=[test/acc]", "error: hydra.sweeper.objectives=[test/acc] is "
     "invalid: keys of results.json: val/acc, n_params, train_time_s, images_per_s, startup_s (not "
     "test/acc: the test set is reported, never optimized)", 2),
    ("hydra.sweeper.direction=up", "error: hydra.sweeper.direction=up is invalid", 2),
    ("hydra.sweeper.direction=[maximize,minimize]", "error: hydra.sweeper.direction=[maximize,"
     "minimize] and hydra.sweeper.objectives=[val/acc] do not match: one direction per objective",
     2),
    ("model.blocks.0=range(0,3)", "error: model.blocks.0=range(0,3) can propose 0: "
     "model.blocks=[0, 1, 1, 1] is invalid", 2),
    ("optimizer.lr=interval(-0.5,0.1)", "error: optimizer.lr=interval(-0.5,0.1) can propose -0.5", 2),
    ("hydra/sweeper/sampler=grid", "error: optimizer.lr=tag(log, interval(0.01, 1.0)) is continuous", 2),
    ("model.blocks=[1,1,1]", "error: model.blocks=[1, 1, 1] is invalid: a list of 4", 2),
    # a fixed value over a searched stage: every trial would train [3,3,3,3], whatever Optuna said
    ("model.blocks=[3,3,3,3]", "error: model.blocks=[3,3,3,3] overlaps model.blocks.0, which this "
     "sweep searches", 2),
    ("trainer.resume=true", "error: trainer.resume=true is for a single run; a sweep's trials keep "
     "no checkpoints", 2),
    # an in-memory study: every trial failed, and each worker had a study of its own
    ("hydra.sweeper.storage=null", "error: hydra.sweeper.storage=null is invalid: a database URL "
     "that keeps the study, e.g. sqlite:///optuna.db", 2),
    ("hydra.sweeper.storage=optuna.db", "error: hydra.sweeper.storage=optuna.db is invalid: a "
     "database URL that keeps the study, e.g. sqlite:///optuna.db", 2),
    ("hydra.sweeper.storage=postgres://me@127.0.0.1/db", "error: hydra.sweeper.storage=postgres://"
     "me@127.0.0.1/db is invalid: SQLAlchemy names PostgreSQL postgresql://", 2),
    ("hydra.sweeper.study_name=", "error: hydra.sweeper.study_name='' is invalid: a name, or null", 2),
])
def test_a_bad_shared_setting_is_refused_before_any_trial(cifar_root, tmp_path, override, message,
                                                          code):
    if override == "trainer.device=cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = sweep(sweep_args(cifar_root, tmp_path, override), tmp_path)
    assert proc.returncode == code and "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]
    assert proc.stderr.strip().startswith(message), proc.stderr
    assert not (tmp_path / "optuna.db").exists()  # no study, no trial
    assert not (tmp_path / "multirun").exists()  # not even an empty sweep folder


def test_a_study_refuses_a_run_with_other_shared_settings(cifar_root, tmp_path):
    first = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", n_trials=1), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=2", n_trials=2), tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stdout + again.stderr
    assert again.stderr.strip().splitlines()[-1] == (
        "error: study 'smoke' was run with trainer.epochs=1; this command has trainer.epochs=2: "
        "run it with the study's settings, or start a new study with "
        "hydra.sweeper.study_name=<another name>")
    assert len(study_of(tmp_path).trials) == 1
    searched = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", "model.width=choice(4,8)",
                                n_trials=2), tmp_path)
    assert searched.returncode == 2 and searched.stderr.strip().splitlines()[-1].startswith(
        "error: study 'smoke' was run with model.width=4; this command has model.width searched: ")
    # how trials run and are recorded is not part of the recipe: this run goes on
    more = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", "trainer.log_every=1",
                            n_trials=2), tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(study_of(tmp_path).trials) == 2


def test_a_study_refuses_a_run_that_searches_other_keys(cifar_root, tmp_path):
    """Two sweep presets given one study name: the second's trials would join the first's study,
    report its best trial, and list their own stage counts as None."""
    first = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", n_trials=1), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    other = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", "sweep=lr",
                             "hydra.sweeper.study_name=smoke", "model=tiny", "data.val_size=50",
                             "data.train_size=null", "data.test_size=null", "model.width=4",
                             "trainer.batch_size=32", n_trials=2), tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stdout + other.stderr
    assert other.stderr.strip().splitlines()[-1] == (
        "error: study 'smoke' searches model.blocks.0, model.blocks.3, optimizer.lr; this command "
        "searches optimizer.lr: run it with the study's search space, or start a new study with "
        "hydra.sweeper.study_name=<another name>")
    assert len(study_of(tmp_path).trials) == 1


def test_a_refused_sweep_leaves_no_study_and_keeps_one_it_found(cifar_root, tmp_path):
    db = f"sqlite:///{tmp_path}/optuna.db"
    unreachable = sweep_args(cifar_root, tmp_path, "trainer.epochs=1", "tracking=mlflow",
                             "tracking.uri=http://127.0.0.1:9")
    refused = sweep(unreachable, tmp_path)
    assert refused.returncode == 1 and "is unreachable" in refused.stderr.strip().splitlines()[-1]
    assert optuna.get_all_study_names(db) == []  # the study it had created is gone
    assert not (tmp_path / "multirun").exists() and "A new study created" not in refused.stderr

    optuna.create_study(study_name="smoke", storage=db, direction="maximize")  # the user's own
    refused = sweep(unreachable, tmp_path)
    assert refused.returncode == 1 and "is unreachable" in refused.stderr.strip().splitlines()[-1]
    assert study_of(tmp_path).user_attrs == {}  # kept, with no recipe or search space recorded

    fixed = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=2", n_trials=1), tmp_path)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert [t.state for t in study_of(tmp_path).trials] == [TrialState.COMPLETE]
    assert "] Study smoke in sqlite:///" in fixed.stderr + fixed.stdout  # the user's, not new


def test_trial_folders_of_another_study_are_refused(cifar_root, tmp_path):
    """A study of the same name in another storage (or one whose database was deleted) would read
    the old folders' results.json as its own trials' outcomes, and write best.yaml from them."""
    first = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", n_trials=2), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    other = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", n_trials=2,
                             ) + [f"hydra.sweeper.storage=sqlite:///{tmp_path}/other.db"], tmp_path)
    assert other.returncode == 2 and "Traceback" not in other.stdout + other.stderr
    assert other.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path}/multirun holds trial folders (0, 1) that study 'smoke' in "
        f"sqlite:///{tmp_path}/other.db did not run, so its trials would mix with them: move that "
        f"folder away, or set hydra.sweeper.study_name=<another name>")
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path}/other.db") == []  # none left behind
    # the study that ran them resumes in its own folders
    more = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", n_trials=3), tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert len(study_of(tmp_path).trials) == 3


def test_best_yaml_is_composed_when_the_best_trials_folder_is_elsewhere(cifar_root, tmp_path):
    """Workers on machines without a shared disk: the one that finishes last may not hold the best
    trial's folder. It crashed (FileNotFoundError) and left the MLflow parent run RUNNING."""
    args = sweep_args(cifar_root, tmp_path, "trainer.epochs=1", "hydra.sweeper.pruner.name=none",
                      n_trials=2)
    assert sweep(args, tmp_path).returncode == 0
    study = study_of(tmp_path)
    best = max(study.trials, key=lambda t: t.value)
    kept = OmegaConf.load(tmp_path / "multirun" / str(best.number) / ".hydra" / "config.yaml")
    preset = tmp_path / "multirun" / "experiment" / "best.yaml"
    before = OmegaConf.load(preset)
    for folder in (tmp_path / "multirun").iterdir():  # as on the other machine
        if folder.name.isdigit():
            subprocess.run(["rm", "-r", str(folder)], check=True)
    preset.unlink()
    again = sweep(args, tmp_path)  # the study is done: it only reports
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-3000:]
    assert f"Trial {best.number}'s folder is not on this machine" in again.stdout + again.stderr
    composed = OmegaConf.load(preset)
    assert OmegaConf.to_container(composed) == OmegaConf.to_container(before)
    for key, value in best.params.items():
        assert OmegaConf.select(composed, key) == OmegaConf.select(kept, key) == value


def test_ctrl_c_between_trials_does_not_name_a_running_trial(capsys):
    from hydra_plugins.optuna_pruning_sweeper.sweeper import OptunaPruningSweeper

    swept = OptunaPruningSweeper(sampler={}, pruner={}, direction="maximize", objectives=["val/acc"],
                                 storage="sqlite:///x.db", study_name="s", n_trials=3, n_jobs=1,
                                 max_failure_rate=0.0, heartbeat_s=0, params={})

    def interrupted(arguments):
        raise KeyboardInterrupt

    swept._sweep = interrupted
    with pytest.raises(SystemExit) as exit_info:
        swept.sweep([])
    assert exit_info.value.code == 130
    assert capsys.readouterr().err.strip() == (
        "interrupted between trials: run the same command to resume study 's'")


def test_a_tracking_server_that_stops_answering_is_one_line(capsys):
    from mlflow.exceptions import MlflowException

    from hydra_plugins.optuna_pruning_sweeper.sweeper import OptunaPruningSweeper

    swept = OptunaPruningSweeper(sampler={}, pruner={}, direction="maximize", objectives=["val/acc"],
                                 storage="sqlite:///x.db", study_name="s", n_trials=3, n_jobs=1,
                                 max_failure_rate=0.0, heartbeat_s=0, params={})

    def server_gone(arguments):
        raise MlflowException("API request to http://127.0.0.1:5058/api/2.0/mlflow/runs/set-tag "
                              "failed with exception HTTPConnectionPool: Max retries exceeded\nmore")

    swept._sweep = server_gone
    with pytest.raises(SystemExit) as exit_info:
        swept.sweep([])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the MLflow tracking server stopped answering (API request to ")
    assert err.endswith("once it answers, run the same command to resume study 's'")
    assert "\n" not in err


def _ctrl_c_in_first_trial(args, tmp_path, epochs: int) -> str:
    """Run the sweep of `args`, Ctrl-C it once its first trial has trained an epoch; its stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "sweeper.train", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "multirun" / "0" / "train.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and f"epoch 1/{epochs}" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err
    return err


def test_ctrl_c_fails_the_running_trial_and_says_how_to_resume(cifar_root, tmp_path):
    args = sweep_args(cifar_root, tmp_path, "hydra.sweeper.pruner.name=none", "trainer.epochs=50",
                      n_trials=2)
    err = _ctrl_c_in_first_trial(args, tmp_path, epochs=50)
    assert err.strip().splitlines()[-1] == (
        "interrupted: the running trial is FAIL, and counts as one of the study's 2 trials; run the "
        "same command to resume study 'smoke' (with hydra.sweeper.n_trials=3 to replace that trial)")
    [trial] = study_of(tmp_path).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["reason"] == "interrupted"


def _one_trial_sweeper(tmp_path, launch):
    """A sweeper with a study of one asked trial, whose launcher runs `launch` as the job."""
    from hydra_plugins.optuna_pruning_sweeper.sweeper import OptunaPruningSweeper

    url = f"sqlite:///{tmp_path}/optuna.db"
    swept = OptunaPruningSweeper(sampler={}, pruner={}, direction="maximize", objectives=["val/acc"],
                                 storage=url, study_name="s", n_trials=1, n_jobs=1,
                                 max_failure_rate=0.0, heartbeat_s=0, params={})
    swept.launcher = type("Launcher", (), {"launch": staticmethod(launch)})
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    return swept, study, study.ask()


def test_a_stop_during_the_jobs_read_of_the_study_still_fails_its_trial(tmp_path):
    """SIGTERM that lands while the job reads the study leaves that read's cursor in the frames
    the KeyboardInterrupt passed through, and with it a read lock on the SQLite file: the sweep's
    own write of the failure waited out SQLite's 5 s busy timeout and failed, leaving the trial
    RUNNING (a helper whose main process died was seen running on for minutes)."""
    url = f"sqlite:///{tmp_path}/optuna.db"

    def launch(job_overrides, initial_job_idx):
        engine = sqlalchemy.create_engine(url)  # the job's own storage, as trial_reporter opens it
        rows = engine.connect().exec_driver_sql("SELECT * FROM trials")  # noqa: F841  (cut short)
        raise KeyboardInterrupt("SIGTERM")

    swept, study, trial = _one_trial_sweeper(tmp_path, launch)
    with pytest.raises(KeyboardInterrupt):  # not optuna's StorageInternalError: database is locked
        swept._run_trial(study, trial, [], None)
    [frozen] = study.trials
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["reason"] == "interrupted"
    assert swept._running == trial.number  # the message says the running trial is FAIL


def test_a_stop_while_a_trials_outcome_is_recorded_waits_for_it(tmp_path, monkeypatch):
    """Ctrl-C once the job has returned: the outcome is recorded, then the sweep stops between
    trials (it was raised before the tell, and the trial stayed RUNNING with nobody running it)."""
    from sweeper import sweep_report

    def results_of(ret):
        signal.raise_signal(signal.SIGINT)
        return {"status": "completed", "val/acc": 0.5}

    monkeypatch.setattr(sweep_report, "results_of", results_of)
    swept, study, trial = _one_trial_sweeper(tmp_path, lambda job_overrides, initial_job_idx: [None])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with pytest.raises(KeyboardInterrupt):
            swept._run_trial(study, trial, [], None)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    [frozen] = study.trials
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.5
    assert swept._running is None  # the message says: interrupted between trials


def test_a_workers_main_process_dying_stops_it_once(tmp_path, monkeypatch):
    """SIGKILL ends a main process's threads in turn, and the kernel signals its worker once for
    each one the worker passes to; a Ctrl-C reaches every process of the sweep, whose main process
    then ends its workers too. The first stop fails the trial, the others wait or are ignored (the
    second SIGTERM ended a worker before it had failed its trial, which stayed RUNNING)."""
    from hydra_plugins.optuna_pruning_sweeper import signals

    monkeypatch.setattr(signals, "stops", signals.Stops())
    told = signals.tell

    def tell(*args, **kwargs):
        signal.raise_signal(signal.SIGUSR1)  # the main process's next thread ends
        signal.raise_signal(signal.SIGINT)  # a Ctrl-C, or the main process ending its workers
        told(*args, **kwargs)

    def launch(job_overrides, initial_job_idx):
        signal.raise_signal(signal.SIGUSR1)  # the main process died
        raise AssertionError("the worker went on")

    monkeypatch.setattr(signals, "tell", tell)
    swept, study, trial = _one_trial_sweeper(tmp_path, launch)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        signals.stops.install()
        signals.stops.watch_parent(signal.SIGUSR1)
        with pytest.raises(KeyboardInterrupt, match="SIGUSR1"):
            swept._run_trial(study, trial, [], None)
        try:
            signal.raise_signal(signal.SIGUSR1)  # and once it has: still ignored
        except KeyboardInterrupt:
            pytest.fail("the main process's death stopped its worker twice")
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    [frozen] = study.trials
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["reason"] == "interrupted"


def test_a_sweep_where_every_trial_fails_ends_with_one_line(cifar_root, tmp_path):
    # passes every check made before the first trial; building the model then fails (36 TB)
    proc = sweep(sweep_args(cifar_root, tmp_path, "model.width=choice(1000000)",
                            "hydra.sweeper.max_failure_rate=1.0", n_trials=2), tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no trial of study 'smoke' completed") and "out of memory" in last
    assert last.endswith("or start afresh with hydra.sweeper.study_name=<another name>")


@pytest.mark.slow
def test_resume_after_sigkill_runs_only_the_missing_trials(cifar_root, mlflow_uri, tmp_path):
    args = sweep_args(cifar_root, tmp_path, "hydra.sweeper.pruner.name=none", "trainer.epochs=12",
                      "tracking=mlflow", f"tracking.uri={mlflow_uri}", n_trials=3)
    proc = subprocess.Popen([sys.executable, "-m", "sweeper.train", *args], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "multirun" / "0" / "train.log"
    deadline = time.monotonic() + 120
    while not (log.exists() and "epoch 1/12" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)  # mid-trial: no chance to clean up
    proc.wait()
    assert [t.state for t in study_of(tmp_path).trials] == [TrialState.RUNNING]

    again = sweep(args, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2]
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs["reason"] == "killed"
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 3  # no configuration twice
    assert all((tmp_path / "multirun" / str(n) / "results.json").is_file() for n in (1, 2))

    done = sweep(args, tmp_path)  # complete: a third run trains nothing
    assert done.returncode == 0 and len(study_of(tmp_path).trials) == 3

    _, runs = runs_of(mlflow_uri)  # one parent, reused on resume; the killed child is KILLED
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["trial"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert parent.info.status == "FINISHED" and sorted(children) == ["0", "1", "2"]
    assert children["0"].info.status == "KILLED" and children["0"].data.tags["status"] == "killed"
    assert all(children[n].info.status == "FINISHED" for n in ("1", "2"))


@pytest.mark.slow
def test_two_workers_share_one_study_without_duplicates(cifar_root, mlflow_uri, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the sweeper's choice
    proc = sweep(sweep_args(cifar_root, tmp_path, "hydra.sweeper.n_jobs=2", "tracking=mlflow",
                            f"tracking.uri={mlflow_uri}", "hydra.sweeper.pruner.name=none",
                            n_trials=4), tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both processes ran trials
    assert (tmp_path / "multirun" / "worker-1.log").is_file()
    for t in trials:  # the cores shared out, not a thread pool per core in each worker
        results = json.loads((tmp_path / "multirun" / str(t.number) / "results.json").read_text())
        assert results["device"] == _cpu_with(cores() // 2)
    _, runs = runs_of(mlflow_uri)  # trials of both processes are children of the one parent
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 5 and sorted(r.data.tags["trial"] for r in children) == ["0", "1", "2", "3"]


def _running_trials(tmp_path) -> dict[int, int]:
    """{worker pid: trial number} of the study's running trials."""
    # the study not created yet, or its SQLite file locked by a writing worker
    with contextlib.suppress(KeyError, sqlalchemy.exc.OperationalError):
        return {int(t.user_attrs["worker"].rsplit(":", 1)[1]): t.number
                for t in study_of(tmp_path).trials
                if t.state == TrialState.RUNNING and "worker" in t.user_attrs}
    return {}


def _helper_running(main, tmp_path) -> tuple[int, int]:
    """(pid, trial) of the helper worker once it and `main` both run a trial."""
    deadline = time.monotonic() + 120
    while len(running := _running_trials(tmp_path)) < 2:
        assert main.poll() is None and time.monotonic() < deadline, main.communicate()
        time.sleep(0.1)
    [(pid, number)] = [(p, n) for p, n in running.items() if p != main.pid]
    return pid, number


@pytest.mark.slow
def test_n_jobs_helpers_are_supervised(cifar_root, tmp_path):
    """A killed helper's trial fails when the main process sees it dead (it waited out three
    heartbeats, 3 minutes here), and a helper dies with the main process (one went on alone)."""
    args = sweep_args(cifar_root, tmp_path, "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner.name=none",
                      "hydra.sweeper.heartbeat_s=60", "trainer.epochs=40", n_trials=2)
    popen = functools.partial(subprocess.Popen, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    main = popen([sys.executable, "-m", "sweeper.train", *args])
    helper, trial = _helper_running(main, tmp_path)
    log, deadline = tmp_path / "multirun" / "worker-1.log", time.monotonic() + 60
    while f"Trial {trial}:" not in log.read_text():  # logged just after it asked: kept on resume
        assert main.poll() is None and time.monotonic() < deadline, main.communicate()
        time.sleep(0.1)
    os.kill(helper, signal.SIGKILL)
    killed_at = time.monotonic()
    out, _ = main.communicate(timeout=170)
    assert main.returncode == 0, out[-3000:]
    assert time.monotonic() - killed_at < 60
    killed = study_of(tmp_path).trials[trial]
    assert killed.state == TrialState.FAIL and killed.user_attrs["reason"] == "killed"
    assert f"Worker 1 exited with status {-signal.SIGKILL}" in out
    # resumed with two more trials: SIGKILL the main process while both run one
    main = popen([sys.executable, "-m", "sweeper.train", *args, "hydra.sweeper.n_trials=4"])
    helper, trial = _helper_running(main, tmp_path)
    main.kill()
    main.communicate()
    # about a second; 30 s leave room for a loaded machine, where each of the helper's two writes
    # (the reason, the FAIL) may wait out SQLite's 5 s busy timeout behind another writer once
    deadline = time.monotonic() + 30
    while trial in _running_trials(tmp_path).values():
        assert time.monotonic() < deadline, (f"the helper's trial {trial} is RUNNING 30 s after "
                                             f"its main process died; worker-1.log ends:\n"
                                             f"{log.read_text()[-3000:]}")
        time.sleep(0.2)
    assert study_of(tmp_path).trials[trial].user_attrs["reason"] == "interrupted"
    assert "Trial" in log.read_text().split("Study")[1]


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_fails_every_workers_trial(cifar_root, tmp_path):
    """Ctrl-C reaches the main process and its helper together; the main process then stops the
    helper too, which must not end it before it has failed its own trial."""
    args = sweep_args(cifar_root, tmp_path, "hydra.sweeper.n_jobs=2", "hydra.sweeper.pruner.name=none",
                      "trainer.epochs=40", n_trials=2)
    main = subprocess.Popen([sys.executable, "-m", "sweeper.train", *args], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as in a terminal
    helper, trial = _helper_running(main, tmp_path)
    os.killpg(main.pid, signal.SIGINT)
    out, _ = main.communicate(timeout=120)
    assert main.returncode != 0 and "FAIL" in out, out[-3000:]
    deadline = time.monotonic() + 30
    while trial in _running_trials(tmp_path).values():
        assert time.monotonic() < deadline, (tmp_path / "multirun" / "worker-1.log").read_text()
        time.sleep(0.2)
    trials = study_of(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 2
    assert all(t.user_attrs["reason"] == "interrupted" for t in trials)


@pytest.mark.parametrize("override, message", [
    ("model.blok=range(1,3)", "model.blok is not a config key (did you mean model.blocks?)"),
    ("hydra.sweeper.params=null", "hydra.sweeper.params is empty"),
    ("optimizer.lr=tag(log,interval(-1,1))", "optimizer.lr=tag(log,interval(-1,1)) cannot be "
                                             "parsed: `low > 0` must hold for `log=True`"),
    ("optimizer.lr=interval(0.5,0.1)", "optimizer.lr=interval(0.5,0.1) cannot be parsed: "
                                       "`low <= high` must hold"),
])
def test_a_bad_search_space_is_one_line(cifar_root, tmp_path, override, message):
    proc = sweep(sweep_args(cifar_root, tmp_path, override), tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {message}")


def test_an_existing_study_with_another_direction_is_refused(cifar_root, tmp_path):
    optuna.create_study(study_name="smoke", storage=f"sqlite:///{tmp_path}/optuna.db",
                        direction="minimize")
    proc = sweep(sweep_args(cifar_root, tmp_path), tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "exists with direction ['minimize']" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("storage, reason", [
    ("postgresql+psycopg://sweeper:s3cret@127.0.0.1:1/optuna", "Connection refused"),
    ("sqlite:////nonexistent-dir/optuna.db", "unable to open database file"),
])
def test_an_unusable_storage_is_one_line_within_seconds(cifar_root, tmp_path, storage, reason):
    started = time.monotonic()
    proc = sweep(sweep_args(cifar_root, tmp_path, f"hydra.sweeper.storage={storage}"), tmp_path)
    assert time.monotonic() - started < 30
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("error: hydra.sweeper.storage=") and reason in lines[-1], lines
    assert "s3cret" not in proc.stdout + proc.stderr
    assert not (tmp_path / "multirun" / "0").exists()  # no trial started


def test_without_multirun_a_sweep_preset_says_so(cifar_root, tmp_path):
    proc = sweep(sweep_args(cifar_root, tmp_path)[1:], tmp_path)
    assert proc.returncode == 2 and "needs --multirun" in proc.stderr


def test_a_sweep_is_one_mlflow_parent_with_a_child_per_trial(cifar_root, mlflow_uri, tmp_path):
    proc = sweep(sweep_args(cifar_root, tmp_path, "tracking=mlflow", f"tracking.uri={mlflow_uri}",
                            "hydra.sweeper.pruner.name=none"), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, runs = runs_of(mlflow_uri)
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 4 and len(children) == 3
    assert sorted(r.info.run_name for r in children) == ["trial-0", "trial-1", "trial-2"]
    assert sorted(r.data.tags["trial"] for r in children) == ["0", "1", "2"]
    for child in children:
        assert child.info.status == "FINISHED" and "model.blocks.0" in child.data.params
        assert len(client.get_metric_history(child.info.run_id, "val/acc")) == 2
        files = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"config.yaml", "model.pt", "learning_curves.png", "confusion_matrix.png"} <= files
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.study"] == "smoke"
    assert "space.optimizer.lr" in parent.data.params and "sampler" in parent.data.params
    best = study_of(tmp_path).best_trial
    assert parent.data.metrics["best/value"] == pytest.approx(best.value)
    assert parent.data.tags["best.trial"] == str(best.number)
    files = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optimization_results.yaml", "optimization_history.png", "parallel_coordinate.png",
            "param_importances.png"} <= files

    # resumed with one more trial and a narrower range: said, and recorded on the same parent
    more = sweep(sweep_args(cifar_root, tmp_path, "tracking=mlflow", f"tracking.uri={mlflow_uri}",
                            "hydra.sweeper.pruner.name=none", "optimizer.lr=tag(log,interval(0.05,0.5))",
                            n_trials=4), tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert ("study 'smoke' searched optimizer.lr in [0.01, 1] log; this run searches optimizer.lr "
            "in [0.05, 0.5] log: new trials come from the new ranges") in more.stdout + more.stderr
    assert 0.05 <= study_of(tmp_path).trials[3].params["optimizer.lr"] <= 0.5
    parent = client.get_run(parent.info.run_id)
    assert parent.data.params["n_trials"] == "3" and parent.data.tags["latest.n_trials"] == "4"
    assert "0.05" in parent.data.tags["latest.space.optimizer.lr"]
    assert len(runs_of(mlflow_uri)[1]) == 5  # one parent, four trials


PG = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_on_postgresql_share_one_study_exactly(cifar_root, tmp_path):
    name = f"pg-{uuid.uuid4().hex[:8]}"
    try:
        proc = sweep(sweep_args(cifar_root, tmp_path, f"hydra.sweeper.storage={PG}",
                                f"hydra.sweeper.study_name={name}", "hydra.sweeper.n_jobs=2",
                                "hydra.sweeper.pruner.n_startup_trials=1", n_trials=4), tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        trials = optuna.load_study(study_name=name, storage=PG).trials
        assert sorted(t.number for t in trials) == [0, 1, 2, 3]
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert all(t.intermediate_values for t in trials)  # jobs reported through PostgreSQL
        assert len({t.user_attrs["worker"] for t in trials}) == 2
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG)


def _worker(args, cwd):
    """One sweep worker, as a user starts it, with the README's OMP_NUM_THREADS for several workers
    on one machine (2 test workers on CI's 2 cores); its output is read at the end."""
    threads = str(max(1, cores() // 2))
    return subprocess.Popen([sys.executable, "-m", "sweeper.train", *args], cwd=cwd,
                            env={**os.environ, "OMP_NUM_THREADS": threads},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _kill_mid_trial(proc, study_name, tmp_path, epochs, elsewhere=False):
    """SIGKILL `proc` once it is an epoch into a trial of the study; return that trial's number.
    `elsewhere`: the trial is first made to look like another machine's, which only its missing
    heartbeats can tell dead (a worker of this machine is seen dead at the next ask)."""
    deadline = time.monotonic() + 180
    while True:
        with contextlib.suppress(KeyError):
            study = optuna.load_study(study_name=study_name, storage=storage(PG))
            for t in study.trials:
                log = tmp_path / "multirun" / str(t.number) / "train.log"
                if (t.state == TrialState.RUNNING
                        and t.user_attrs.get("worker", "").endswith(f":{proc.pid}")
                        and log.exists() and f"epoch 1/{epochs}" in log.read_text()):
                    if elsewhere:
                        optuna.trial.Trial(study, t._trial_id).set_user_attr(
                            "worker", f"a-machine-gone-for-good:{proc.pid}")
                    proc.kill()
                    proc.wait()
                    return t.number
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_workers_on_postgresql_and_a_tracking_server_survive_a_killed_worker(
        cifar_root, mlflow_server, tmp_path):
    """The multi-machine recipe: two independent workers, one killed mid-trial and restarted."""
    url, _ = mlflow_server
    name = f"pg-{uuid.uuid4().hex[:8]}"
    args = sweep_args(cifar_root, tmp_path, f"hydra.sweeper.storage={PG}", "tracking=mlflow",
                      f"hydra.sweeper.study_name={name}", f"tracking.uri={url}",
                      f"tracking.experiment={name}", "hydra.sweeper.pruner.name=none",
                      "trainer.epochs=15", n_trials=10)

    try:
        a, b = _worker(args, tmp_path), _worker(args, tmp_path)
        killed = _kill_mid_trial(b, name, tmp_path, epochs=15)
        b = _worker(args, tmp_path)  # the same command again
        for proc in (a, b):
            out, _ = proc.communicate(timeout=600)
            assert proc.returncode == 0, out[-3000:]

        trials = optuna.load_study(study_name=name, storage=PG).trials
        assert sorted(t.number for t in trials) == list(range(10))  # exactly n_trials, no gaps
        states = {t.number: t.state for t in trials}
        assert states.pop(killed) == TrialState.FAIL
        assert set(states.values()) == {TrialState.COMPLETE}
        assert [t.user_attrs["reason"] for t in trials if t.number == killed] == ["killed"]
        assert len({tuple(sorted(t.params.items())) for t in trials}) == 10  # none repeated

        _, runs = runs_of(url, name)
        [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = {int(r.data.tags["trial"]): r for r in runs
                    if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
        assert len(runs) == 11 and sorted(children) == list(range(10))
        assert children[killed].info.status == "KILLED"
        assert all(r.info.status == "FINISHED" for n, r in children.items() if n != killed)
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_worker_that_dies_for_good_loses_its_trial_by_heartbeat(cifar_root, mlflow_uri, tmp_path):
    """A machine gone for good: no restart finds its trial, its missing heartbeats do."""
    name = f"pg-{uuid.uuid4().hex[:8]}"
    args = sweep_args(cifar_root, tmp_path, f"hydra.sweeper.storage={PG}", "tracking=mlflow",
                      f"hydra.sweeper.study_name={name}", f"tracking.uri={mlflow_uri}",
                      "hydra.sweeper.pruner.name=none", "hydra.sweeper.heartbeat_s=2",
                      "trainer.epochs=15", n_trials=6)

    try:
        a, b = _worker(args, tmp_path), _worker(args, tmp_path)
        killed = _kill_mid_trial(b, name, tmp_path, epochs=15, elsewhere=True)  # never restarted
        out, _ = a.communicate(timeout=600)
        assert a.returncode == 0, out[-3000:]
        assert f"Trial {killed} stopped sending heartbeats" in out

        trials = optuna.load_study(study_name=name, storage=PG).trials
        assert sorted(t.number for t in trials) == list(range(6))
        assert {t.number: t.state for t in trials}[killed] == TrialState.FAIL
        assert sum(t.state == TrialState.COMPLETE for t in trials) == 5
        _, runs = runs_of(mlflow_uri)
        [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        children = {int(r.data.tags["trial"]): r for r in runs if "mlflow.parentRunId" in r.data.tags}
        assert children[killed].info.status == "KILLED" and parent.info.status == "FINISHED"
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=PG)


def test_a_configuration_is_never_trained_twice(cifar_root, tmp_path):
    proc = sweep(sweep_args(cifar_root, tmp_path, "hydra.sweeper.params=null", "model.blocks.0=choice(1,2)",
                            "hydra.sweeper.pruner.name=none", "trainer.epochs=1", n_trials=5), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(tmp_path).trials
    repeats = [t for t in trials if "duplicate_of" in t.user_attrs]
    assert len(trials) == 5 and len(repeats) >= 3  # only 2 distinct configurations exist
    for t in repeats:
        first = trials[t.user_attrs["duplicate_of"]]
        assert first.params == t.params and t.value == first.value
        assert not (tmp_path / "multirun" / str(t.number)).exists()  # nothing was trained
    # the report names trials that trained: the best one, and each configuration once in the table
    results = OmegaConf.load(tmp_path / "multirun" / "optimization_results.yaml")
    assert "duplicate_of" not in trials[results.best_trial].user_attrs
    assert (tmp_path / "multirun" / "experiment" / "best.yaml").exists()
    table = proc.stdout[proc.stdout.index("Top "):].splitlines()
    listed = [int(line.split()[0]) for line in table[2:] if line.split() and line.split()[0].isdigit()]
    assert sorted(listed) == sorted(t.number for t in trials if "duplicate_of" not in t.user_attrs)


def test_two_objectives_give_a_pareto_front(cifar_root, tmp_path):
    proc = sweep(sweep_args(cifar_root, tmp_path, "hydra/sweeper/sampler=nsgaii",
                            "hydra.sweeper.direction=[maximize,minimize]",
                            "hydra.sweeper.objectives=[val/acc,n_params]", "hydra.sweeper.pruner.name=median",
                            "trainer.epochs=1", n_trials=3), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert ("hydra.sweeper.pruner.name=median has no effect: Optuna prunes studies of one objective "
            "only, and this one has 2") in proc.stdout + proc.stderr
    trials = study_of(tmp_path).trials
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 2 for t in trials)
    assert all(t.values[1] == json.loads((tmp_path / "multirun" / str(t.number) / "results.json")
                                         .read_text())["n_params"] for t in trials)
    results = (tmp_path / "multirun" / "optimization_results.yaml").read_text()
    assert "solutions:" in results and "values:" in results


@pytest.mark.parametrize("sampler", ["random", "cmaes", "gp", "qmc"])
def test_each_sampler_runs_a_sweep(cifar_root, tmp_path, sampler):
    proc = sweep(sweep_args(cifar_root, tmp_path, f"hydra/sweeper/sampler={sampler}",
                            "hydra.sweeper.pruner.name=none", "trainer.epochs=1", n_trials=2), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [t.state for t in study_of(tmp_path).trials] == [TrialState.COMPLETE] * 2


def test_a_sampler_setting_on_the_command_line_is_used(cifar_root, tmp_path):
    """hydra.sweeper.sampler.seed=5: trial 0 is what a RandomSampler seeded with 5 proposes."""
    proc = sweep(sweep_args(cifar_root, tmp_path, "hydra/sweeper/sampler=random",
                            "hydra.sweeper.sampler.seed=5", "hydra.sweeper.pruner.name=none",
                            "trainer.epochs=1", n_trials=1), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trial = study_of(tmp_path).trials[0]
    seeded = {s: optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=s)).ask(
        fixed_distributions=trial.distributions).params for s in (5, 6)}
    assert trial.params == seeded[5] != seeded[6]


@pytest.mark.slow
def test_launcher_local_runs_each_trial_as_a_submitit_job(cifar_root, tmp_path):
    """launcher=slurm's code path (Hydra's submitit launcher) on this machine, without a cluster."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # the sweeper's choice
    proc = sweep(sweep_args(cifar_root, tmp_path, "launcher=local", "hydra.sweeper.n_jobs=2",
                            n_trials=2), tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    jobs = [p for p in (tmp_path / "multirun" / ".submitit").iterdir() if p.name.isdigit()]
    assert len(jobs) == 2 and all(list(job.glob("*_result.pkl")) for job in jobs)
    for t in trials:  # two local jobs at a time: each got its share of the cores
        results = json.loads((tmp_path / "multirun" / str(t.number) / "results.json").read_text())
        assert results["device"] == _cpu_with(cores() // 2)


def test_launcher_slurm_composes_to_submitit():
    with initialize_config_dir(config_dir=str(CONF)):
        cfg = compose(config_name="config", overrides=["launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.timeout_min == 120


def test_a_derived_study_name_names_the_sweep_folder(cifar_root, tmp_path):
    proc = sweep(sweep_args(cifar_root, tmp_path, "hydra.sweeper.study_name=null",
                            "hydra.sweep.dir=multirun/${hydra.sweeper.study_name}",
                            "hydra.sweeper.pruner.name=none", "trainer.epochs=1", n_trials=1), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [name] = optuna.get_all_study_names(f"sqlite:///{tmp_path}/optuna.db")
    assert name.startswith("sweep-") and (tmp_path / "multirun" / name / "0" / "results.json").is_file()
    assert not (tmp_path / "multirun" / "None").exists()


def test_a_trial_that_finished_its_epochs_is_not_pruned(tmp_path):
    from omegaconf import OmegaConf

    from sweeper.trial import Pruned, trial_reporter

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = optuna.create_study(study_name="s", storage=url, direction="maximize")
    for value in (0.9, 0.8):  # two good trials: the median pruner then stops a worse one
        trial = study.ask()
        trial.report(value, step=1)
        trial.report(value, step=2)
        study.tell(trial, value)
    cfg = OmegaConf.create({"storage": url, "pruner": {"name": "median", "n_startup_trials": 0,
                                                       "n_warmup_steps": 0}})
    with pytest.raises(Pruned):  # epoch 1 of 2: worse than the median, stopped
        trial_reporter(study.ask().number, "s", cfg, last_epoch=2)(1, {"val/acc": 0.1})
    trial_reporter(study.ask().number, "s", cfg, last_epoch=1)(1, {"val/acc": 0.1})  # its last: kept


def test_local_workers_share_the_cores_out(monkeypatch):
    from hydra_plugins.optuna_pruning_sweeper.workers import threads_per_worker

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert [threads_per_worker(n) for n in (1, 2, 3, 8, 16)] == [None, 4, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
    assert threads_per_worker(2) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows: all the CPUs
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert threads_per_worker(2) == 3


def test_parameter_importances_are_drawn_only_from_two_complete_trials(tmp_path):
    """With one complete trial Optuna draws every key as equally important: a plot that misleads."""
    from sweeper.sweep_report import plots

    study = optuna.create_study(direction="maximize")
    space = {"lr": optuna.distributions.FloatDistribution(0.01, 1.0, log=True),
             "blocks": optuna.distributions.IntDistribution(1, 6)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.1, "blocks": 2}, distributions=space,
                                              value=0.5))
    assert {p.name for p in plots(study, tmp_path)} == {"optimization_history.png",
                                                          "parallel_coordinate.png"}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.3, "blocks": 4}, distributions=space,
                                              value=0.6))
    assert "param_importances.png" in {p.name for p in plots(study, tmp_path)}


def test_a_repeat_of_a_pruned_trial_is_pruned_without_training(tmp_path):
    """A pruned trial keeps its last reported value, which Optuna refuses in a tell of PRUNED: the
    repeat's tell failed, was taken for another worker's, and left the repeat RUNNING."""
    swept, study, first = _one_trial_sweeper(tmp_path, lambda job_overrides, initial_job_idx: 1 / 0)
    first.report(0.25, step=1)
    study.tell(first, state=TrialState.PRUNED)
    assert study.trials[0].value == 0.25
    repeat = study.ask()  # the same (empty) params: a repeat, so the launcher is never called
    swept._run_trial(study, repeat, [], None)
    frozen = study.trials[repeat.number]
    assert frozen.state == TrialState.PRUNED and frozen.user_attrs["duplicate_of"] == 0


def test_a_tell_refused_for_another_reason_than_an_ended_trial_raises(tmp_path):
    from hydra_plugins.optuna_pruning_sweeper.study import tell

    study = optuna.create_study()
    trial = study.ask()
    with pytest.raises(ValueError):
        tell(study, trial, [0.5], state=TrialState.PRUNED)
    tell(study, trial, None, state=TrialState.PRUNED)
    tell(study, trial, 0.5)  # already ended: logged, not raised
    assert study.trials[0].state == TrialState.PRUNED


def test_pruned_and_diverged_trials_of_a_two_objective_study_are_not_failures():
    """Optuna prunes single-objective studies only: in sweep=blocks_size a diverged or pruned
    trial is FAIL, and counted as a failure it could stop the sweep at max_failure_rate."""
    from hydra_plugins.optuna_pruning_sweeper.study import count_failures

    study = optuna.create_study(directions=["maximize", "minimize"])
    for reason in ("diverged: training loss became nan at epoch 1, batch 3", "pruned: epoch 2",
                   "killed", "interrupted", None, "ValueError: bad", "results.json says status x"):
        trial = study.ask()
        if reason is not None:
            trial.set_user_attr("reason", reason)
        study.tell(trial, state=TrialState.FAIL)
    assert count_failures(study) == 2  # the ValueError and the unreadable status


@pytest.mark.parametrize("then, now, message", [
    ("optimizer.lr=tag(log,interval(0.01,1.0))", "optimizer.lr=interval(0.01,1.0)",
     "searched optimizer.lr in [0.01, 1] log; this command searches it in [0.01, 1], which Optuna "
     "cannot add to the same study (a range keeps its kind, ints or floats, and its scale, log or "
     "not): search it as before"),
    ("model.width=choice(4,8)", "model.width=choice(4,6)",
     "searched model.width in {4, 8}; this command searches it in {4, 6}, which Optuna cannot add "
     "to the same study (choices, once searched, stay the same)"),
])
def test_a_resumed_study_refuses_a_key_searched_in_a_way_optuna_cannot_add(cifar_root, tmp_path,
                                                                          then, now, message):
    """Optuna refuses such a trial only once it is created: the sweep ended in a traceback and
    left the trial RUNNING for good, counted against n_trials."""
    first = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", then, n_trials=1), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", now, n_trials=2), tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stdout + again.stderr
    assert again.stderr.strip().splitlines()[-1].startswith(f"error: study 'smoke' {message}")
    assert [t.state for t in study_of(tmp_path).trials] == [TrialState.COMPLETE]


def test_a_job_its_launcher_lost_fails_its_trial_and_the_sweep_goes_on(tmp_path):
    """submitit raises when a cluster's job was killed (out of memory, preempted, time limit): the
    sweep ended there, and the trial's reason (interrupted) hid it from max_failure_rate."""
    def launch(job_overrides, initial_job_idx):
        raise RuntimeError("Job 123 (task: 0) with path .submitit/123 has not produced any output\n"
                           "Error stream produced:\n...")

    swept, study, trial = _one_trial_sweeper(tmp_path, launch)
    swept._run_trial(study, trial, [], None)  # no exception: the sweep goes on
    [frozen] = study.trials
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["reason"] == (
        "RuntimeError: Job 123 (task: 0) with path .submitit/123 has not produced any output")
    from hydra_plugins.optuna_pruning_sweeper.study import count_failures
    assert count_failures(study) == 1 and swept._running is None


def test_an_outcome_for_a_trial_another_worker_ended_is_passed_over(tmp_path, monkeypatch):
    """Another worker failed the trial (its heartbeats were late): recording where it ran raised
    UpdateFinishedTrialError, before tell() could pass it over, and the sweep died."""
    from sweeper import sweep_report

    def launch(job_overrides, initial_job_idx):
        study.tell(trial, state=TrialState.FAIL)  # another worker's stale-trial check
        return [None]

    monkeypatch.setattr(sweep_report, "results_of", lambda ret: {
        "status": "completed", "val/acc": 0.5, "precision": "fp32", "device": "cpu (2 threads)"})
    swept, study, trial = _one_trial_sweeper(tmp_path, launch)
    swept._run_trial(study, trial, [], None)
    [frozen] = study.trials
    assert frozen.state == TrialState.FAIL and swept._running is None


def test_a_dead_workers_trial_fails_by_the_end_without_heartbeats(tmp_path):
    """heartbeat_s=0: the end of a sweep waited for no trial and failed none, so a dead helper's
    trial stayed RUNNING, and the summary counted no failure."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    swept, study, trial = _one_trial_sweeper(tmp_path, lambda job_overrides, initial_job_idx: [None])
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    swept._wait_for_other_workers(study, None)
    [frozen] = study.trials
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["reason"] == "killed"


def test_a_study_keeps_the_heartbeat_of_its_first_run(cifar_root, tmp_path):
    """Each worker fails trials that missed 3 of its own beats: one started with heartbeat_s=10
    failed the healthy trials of workers beating every 60 s after 30 s."""
    first = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", n_trials=1), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = sweep(sweep_args(cifar_root, tmp_path, "trainer.epochs=1", "hydra.sweeper.heartbeat_s=10",
                             n_trials=2), tmp_path)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1] == (
        "error: study 'smoke' runs with hydra.sweeper.heartbeat_s=60; this command has 10: every "
        "worker fails a trial that missed 3 of its own beats, so all of them need the same; use "
        "hydra.sweeper.heartbeat_s=60")
    assert len(study_of(tmp_path).trials) == 1


def test_an_interrupted_grid_point_runs_again_on_resume(cifar_root, tmp_path):
    """Optuna's grid sampler takes a FAIL trial's point for visited: the point of a trial stopped
    by Ctrl-C was never run, whatever n_trials the message suggested."""
    args = sweep_args(cifar_root, tmp_path, "hydra/sweeper/sampler=grid", "hydra.sweeper.params=null",
                      "optimizer.lr=choice(0.05,0.1,0.2)", "hydra.sweeper.pruner.name=none",
                      "trainer.epochs=20", n_trials=3)
    err = _ctrl_c_in_first_trial(args, tmp_path, epochs=20)
    assert err.strip().splitlines()[-1] == (
        "interrupted: the running trial is FAIL; run the same command to resume study 'smoke', "
        "which runs its point of the grid again")
    [stopped] = study_of(tmp_path).trials
    resumed = sweep(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert [t.state for t in trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 3
    assert sorted(t.params["optimizer.lr"] for t in trials[1:]) == [0.05, 0.1, 0.2]
    assert trials[1].params == stopped.params  # queued first


def test_a_grid_resumed_with_more_trials_runs_each_point_once(cifar_root, tmp_path):
    """The grid's seed orders its points: shifted on resume, as other samplers' seeds are, trial
    numbers of the second run named other points than the first's (a point twice, one never)."""
    args = sweep_args(cifar_root, tmp_path, "hydra/sweeper/sampler=grid", "hydra.sweeper.params=null",
                      "optimizer.lr=choice(0.05,0.1,0.2)", "model.blocks.0=choice(1,2)",
                      "hydra.sweeper.pruner.name=none", "trainer.epochs=1")
    for n_trials in (2, 6):
        proc = sweep([*args, f"hydra.sweeper.n_trials={n_trials}"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    trials = study_of(tmp_path).trials
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
    assert not any("duplicate_of" in t.user_attrs for t in trials)


def test_the_parent_run_is_left_to_the_last_worker():
    """One worker's error or Ctrl-C ended the shared MLflow parent run FAILED or KILLED while the
    other workers went on recording trials under it."""
    from sweeper.sweep_report import close_parent

    class Parent:
        run_id, ended = "p", []

        def end(self, status, message=""):
            self.ended.append(status)

    study = optuna.create_study()
    other = study.ask()  # another worker's trial, still running
    close_parent(Parent(), KeyboardInterrupt(), study)
    assert Parent.ended == []
    study.tell(other, 0.5)
    close_parent(Parent(), KeyboardInterrupt(), study)
    assert Parent.ended == ["KILLED"]


def test_a_stop_wrapped_by_the_jobs_composition_is_still_a_stop(tmp_path):
    """A stop landing while Hydra composes the job's config comes out of the launcher wrapped in
    a ConfigCompositionException: taken for a lost job, it failed the trial as a failure."""
    def launch(job_overrides, initial_job_idx):
        try:
            raise KeyboardInterrupt("SIGUSR1")
        except KeyboardInterrupt as e:
            raise RuntimeError("ConfigCompositionException") from e

    swept, study, trial = _one_trial_sweeper(tmp_path, launch)
    with pytest.raises(KeyboardInterrupt):
        swept._run_trial(study, trial, [], None)
    [frozen] = study.trials
    assert frozen.state == TrialState.FAIL and frozen.user_attrs["reason"] == "interrupted"
