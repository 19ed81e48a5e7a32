"""A Hydra sweeper on Optuna's ask-and-tell API: one trial per job, pruning, exact resume, free slots.

For each trial: ask Optuna (under a study lock, so workers sharing a study never exceed n_trials),
launch one Hydra job with the trial's params plus `trial.number`/`trial.study` overrides, read the
job's results.json, and tell Optuna COMPLETE, PRUNED or FAIL. The job reports per-epoch validation
accuracy to the same study (sweeper/trial.py), so pruning works in any process. n_jobs > 1 starts
n_jobs - 1 more worker processes on the same study: each asks for a new trial as soon as its last
one ends, with no batch barrier. Search-space parsing and samplers are the official plugin's.

The search space and a study's recipe are checked in searchspace.py, stops (Ctrl-C, SIGTERM) held
and raised in signals.py, helper workers started in workers.py, the shared study kept in study.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl
from omegaconf import DictConfig, OmegaConf, read_write

import hydra_plugins.optuna_pruning_sweeper.config  # noqa: F401  (registers hydra/sweeper)
from hydra_plugins.optuna_pruning_sweeper import searchspace, signals, workers
from hydra_plugins.optuna_pruning_sweeper.study import (
    count_failures,
    fail_stale_trials,
    heartbeat,
    lost,
    requeue_stopped,
    set_attr,
    stopped,
    study_lock,
    tell,
)
from sweeper import sweep_report
from sweeper.config import absolute_sqlite_url
from sweeper.errors import ConfigError, SweeperError, first_line, from_mlflow
from sweeper.multirun import jobs_run_here, preflight_job
from sweeper.stores import redact
from sweeper.trial import PRUNERS
from sweeper.trial import storage as trial_storage

log = logging.getLogger(__name__)
TrialState = optuna.trial.TrialState


@contextlib.contextmanager
def _quiet():
    """Heartbeats with ask-and-tell are what we mean to do; Optuna warns about them on every use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used")
        yield
@contextlib.contextmanager
def _optuna_quiet():
    """Optuna's own INFO lines off for a while."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


WORKER = f"{socket.gethostname()}:{os.getpid()}"


class SweepError(SweeperError):
    """The sweep cannot start or must stop; printed as one line."""


class OptunaPruningSweeper(Sweeper):
    def __init__(self, sampler: Any, pruner: Any, direction: Any, objectives: Any, storage: Any,
                 study_name: Any, n_trials: int, n_jobs: int, max_failure_rate: float,
                 heartbeat_s: int, params: Any) -> None:
        self.sampler_cfg, self.pruner_cfg = sampler, pruner
        self.directions = list(direction) if isinstance(direction, (list, tuple)) or \
            OmegaConf.is_list(direction) else [direction]
        self.objectives = list(objectives)
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params, self.heartbeat_s = params, heartbeat_s
        self._running: int | None = None  # the number of the trial this process runs now
        self._fixed_lines: list[str] = []
        self._created_study = False  # whether this process created the study it sweeps
        self._grid = False  # a grid sampler: each point of the grid once, a stopped one again

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function)

    def sweep(self, arguments: list[str]) -> None:
        try:
            self._sweep(arguments)
        except SweeperError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            resume = f"run the same command to resume study '{self.study_name}'"
            if self._running is None:
                print(f"interrupted between trials: {resume}", file=sys.stderr)
            elif self._grid:
                print(f"interrupted: the running trial is FAIL; {resume}, which runs its point of "
                      f"the grid again", file=sys.stderr)
            else:
                print(f"interrupted: the running trial is FAIL, and counts as one of the study's "
                      f"{self.n_trials} trials; {resume} (with hydra.sweeper.n_trials="
                      f"{self.n_trials + 1} to replace that trial)", file=sys.stderr)
            sys.exit(130)
        except Exception as e:
            if not from_mlflow(e):
                raise
            first = first_line(e)
            print(f"error: the MLflow tracking server stopped answering ({first[:300]}); the "
                  f"study keeps its trials: once it answers, run the same command to resume study "
                  f"'{self.study_name}'", file=sys.stderr)
            sys.exit(1)

    # -- set-up ------------------------------------------------------------------------------------

    def _search_space(self, arguments: list[str]):
        space, fixed_lines, lines = searchspace.parse(self.params, arguments)
        job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, fixed_lines)
        return space, fixed_lines, job_cfg, lines


    def _resolve_max_resource(self, space: dict, shared: DictConfig) -> list[str]:
        """Hyperband's max_resource=null is the epochs of a full trial, trainer.epochs: set here and
        in the override line returned, which every trial's job (that builds its pruner) gets."""
        pruner = self.pruner_cfg
        if pruner.name != "hyperband" or pruner.max_resource is not None:
            return []
        if any(name.lstrip("+") == "trainer.epochs" for name in space):
            raise ConfigError("hydra.sweeper.pruner.max_resource=null is invalid while trainer.epochs "
                              "is searched: give the most epochs a trial trains, e.g. "
                              "hydra.sweeper.pruner.max_resource=30")
        epochs = int(shared.trainer.epochs)
        if epochs < pruner.min_resource:
            raise ConfigError(f"hydra.sweeper.pruner.min_resource={pruner.min_resource} is invalid: "
                              f"an int <= trainer.epochs={epochs}, the epochs of a full trial")
        for node in (pruner, self.config.hydra.sweeper.pruner):
            with read_write(node):
                node.max_resource = epochs
        return [f"hydra.sweeper.pruner.max_resource={epochs}"]

    def _is_grid(self) -> bool:
        return "GridSampler" in str(self.sampler_cfg.get("_target_"))

    def _name_study(self, lines: list[str]) -> str:
        """Same search space, same study: a re-run resumes it. The name is set in the sweep's
        config too (multirun/${hydra.sweeper.study_name}); the override that sets it in each job's
        is returned, since Hydra requires a job's hydra.sweeper to equal the sweep's."""
        digest = hashlib.sha1("\n".join(sorted(lines)).encode()).hexdigest()[:8]
        self.study_name = f"sweep-{digest}"
        with read_write(self.config.hydra.sweeper):
            self.config.hydra.sweeper.study_name = self.study_name
        return f"hydra.sweeper.study_name={self.study_name}"

    def _open_study(self, space: dict) -> optuna.Study:
        self.storage = absolute_sqlite_url(self.storage)
        try:
            storage = trial_storage(self.storage)
            if self._heartbeats():
                with _quiet():
                    storage = trial_storage(
                        self.storage, heartbeat_interval=self.heartbeat_s,
                        grace_period=3 * self.heartbeat_s, heartbeat_stale_trial_callback=lost)
            try:
                with _optuna_quiet():  # "A new study created": said below, once past every check
                    study = optuna.create_study(study_name=self.study_name, storage=storage,
                                                directions=self.directions)
                self._created_study = True
            except optuna.exceptions.DuplicatedStudyError:
                study = optuna.load_study(study_name=self.study_name, storage=storage)
        except Exception as e:
            raise SweepError(f"hydra.sweeper.storage={redact(str(self.storage))} cannot be used: "
                             f"{str(e).splitlines()[0]}") from None
        wanted = [optuna.study.StudyDirection[d.upper()] for d in self.directions]
        if list(study.directions) != wanted:
            raise ConfigError(f"study '{self.study_name}' exists with direction "
                             f"{[d.name.lower() for d in study.directions]}, not {self.directions}; "
                             f"set another hydra.sweeper.study_name")
        study.sampler = self._sampler(len(study.trials), space)
        return study

    def _heartbeats(self) -> bool:
        """Heartbeats need a database storage (SQLite, PostgreSQL, MySQL)."""
        return bool(self.heartbeat_s) and not self.storage.startswith(("redis", "journal"))

    def _walks_a_sequence(self) -> bool:
        target = str(self.sampler_cfg.get("_target_"))
        return any(name in target for name in ("GridSampler", "QMCSampler"))

    def _reseed_each_ask(self) -> bool:
        return self.sampler_cfg.get("seed") is not None and not self._walks_a_sequence()

    def _sampler(self, n_trials: int, space: dict) -> optuna.samplers.BaseSampler:
        """The configured sampler; a seeded one is seeded with seed + the study's trial count.

        A resumed sweep thus does not replay its first points. Samplers that walk a sequence (grid,
        QMC) keep their seed and are made once per process; the others again before every ask
        (under the study lock), so each trial number gets its own seed: concurrent workers started
        with the same seed do not propose the same points, and one worker's sweep stays
        reproducible.
        """
        cfg = OmegaConf.to_container(self.sampler_cfg)
        # a sequence's seed orders it (the grid's points, QMC's scrambling) and must stay the same
        # on resume: shifted, a resumed grid's trial numbers named other points than before
        if cfg.get("seed") is not None and not self._walks_a_sequence():
            cfg["seed"] += n_trials
        sampler = instantiate(cfg, _execution_whitelist_=(
            "hydra_plugins.hydra_optuna_sweeper.*", "optuna.samplers.*"))
        if not isinstance(sampler, optuna.samplers.BaseSampler):  # GridSampler comes partial
            grid = {k: OptunaSweeperImpl._to_grid_sampler_choices(d) for k, d in space.items()}
            sampler = sampler(grid)
            self.n_trials = min(self.n_trials, math.prod(len(v) for v in grid.values()))
            self._grid = True
        return sampler

    # -- the loop ----------------------------------------------------------------------------------

    def _preflight(self, job_cfg: DictConfig) -> None:
        """Check the settings every trial shares once, before the study is touched: a bad value,
        a missing dataset or an absent device is one line and exit status 2 (or 1), not a study
        of failed trials. Jobs of a cluster launcher check their device and data where they run."""
        if job_cfg.trainer.resume:  # trials write no checkpoints: a sweep resumes as a whole
            raise ConfigError("trainer.resume=true is for a single run; a sweep's trials keep no "
                              "checkpoints, and the sweep resumes when the same command runs again")
        preflight_job(job_cfg, self.config)


    def _drop_if_unused(self, study: optuna.Study) -> None:
        """A refused sweep leaves no study behind: one this process created is deleted while no
        run has recorded its recipe or asked for a trial (under study_lock, so none can meanwhile)."""
        if self._created_study and study.user_attrs.get("recipe") is None and \
                not study.get_trials(deepcopy=False):
            optuna.delete_study(study_name=self.study_name, storage=self.storage)

    def _refuse_foreign_folders(self, study: optuna.Study, sweep_dir: Path) -> None:
        """Trial N runs in sweep_dir/N. A folder there with a number this study has not given out
        yet holds another study's trial (one of the same name in another storage, or one whose
        database was deleted): its results.json and config would be read as this study's."""
        taken = sorted(int(p.name) for p in sweep_dir.glob("*")
                       if p.name.isdigit() and p.is_dir() and any(p.iterdir()))
        issued = len(study.get_trials(deepcopy=False))  # read after the folders: no race
        foreign = [n for n in taken if n >= issued]
        if foreign:
            shown = ", ".join(map(str, foreign[:5])) + (", ..." if len(foreign) > 5 else "")
            raise ConfigError(f"{sweep_dir} holds trial folders ({shown}) that study "
                             f"'{self.study_name}' in {redact(str(self.storage))} did not run, "
                             f"so its trials would mix with them: move that folder away, or set "
                             f"hydra.sweeper.study_name=<another name>")

    def _check_settings(self) -> None:
        storage = self.storage
        if not storage or not isinstance(storage, str) or "://" not in storage:
            raise ConfigError(f"hydra.sweeper.storage={storage or 'null'} is invalid: a database "
                             f"URL that keeps the study, e.g. sqlite:///optuna.db or "
                             f"postgresql+psycopg://user@host/db")
        if storage.startswith("postgres:") or storage.startswith("postgres+"):
            raise ConfigError(f"hydra.sweeper.storage={redact(storage)} is invalid: SQLAlchemy "
                             f"names PostgreSQL postgresql:// (or postgresql+psycopg://)")
        if self.study_name is not None and not str(self.study_name).strip():
            raise ConfigError("hydra.sweeper.study_name='' is invalid: a name, or null to derive "
                             "one from the search space")
        pruner = self.pruner_cfg
        for key, value, ok, allowed in (
                ("n_trials", self.n_trials, self.n_trials >= 1, "an int >= 1"),
                ("n_jobs", self.n_jobs, self.n_jobs >= 1, "an int >= 1"),
                ("max_failure_rate", self.max_failure_rate, 0 <= self.max_failure_rate <= 1,
                 "a fraction in [0, 1]"),
                ("heartbeat_s", self.heartbeat_s, self.heartbeat_s >= 0, "an int >= 0 (0 = off)"),
                ("direction", self.directions if len(self.directions) > 1 else self.directions[0],
                 all(str(d).lower() in ("maximize", "minimize") for d in self.directions),
                 "maximize or minimize, or a list of them, one per objective"),
                ("objectives", self.objectives, all(o in searchspace.OBJECTIVES for o in self.objectives),
                 "keys of results.json: " + ", ".join(searchspace.OBJECTIVES)
                 + " (not test/acc: the test set is reported, never optimized)"),
                ("pruner.name", pruner.name, pruner.name in PRUNERS,
                 "allowed values are " + ", ".join(PRUNERS)),
                ("pruner.n_startup_trials", pruner.n_startup_trials, pruner.n_startup_trials >= 0,
                 "an int >= 0"),
                ("pruner.n_warmup_steps", pruner.n_warmup_steps, pruner.n_warmup_steps >= 0,
                 "an int >= 0 (epochs)"),
                ("pruner.min_resource", pruner.min_resource, pruner.min_resource >= 1,
                 "an int >= 1 (epochs)"),
                ("pruner.max_resource", pruner.max_resource, pruner.max_resource is None
                 or pruner.max_resource >= pruner.min_resource,
                 "an int >= pruner.min_resource, or null for trainer.epochs"),
                ("pruner.reduction_factor", pruner.reduction_factor, pruner.reduction_factor >= 2,
                 "an int >= 2")):
            if not ok:
                shown = f"[{','.join(value)}]" if isinstance(value, list) else value
                raise ConfigError(f"hydra.sweeper.{key}={shown} is invalid: {allowed}")
        if len(self.objectives) != len(self.directions):  # either may be the one that changed
            raise ConfigError(
                f"hydra.sweeper.direction=[{','.join(map(str, self.directions))}] and hydra.sweeper."
                f"objectives=[{','.join(self.objectives)}] do not match: one direction per objective")

    def _sweep(self, arguments: list[str]) -> None:
        self._check_settings()
        space, fixed_lines, job_cfg, lines = self._search_space(arguments)
        shared = OmegaConf.masked_copy(job_cfg, [k for k in job_cfg if k != "hydra"])  # no hydra
        searchspace.check_space(space, shared, lines, self._is_grid())
        fixed_lines += self._resolve_max_resource(space, shared)
        searchspace.refuse_overlaps(space, fixed_lines, job_cfg.hydra.runtime.choices)
        self._preflight(searchspace.proposable(shared, space))
        if self.study_name is None:
            fixed_lines.append(self._name_study(lines))
        study = self._open_study(space)
        searchspace.check_recipe(study, shared, space, self.heartbeat_s)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).absolute()
        worker = os.environ.get("SWEEPER_WORKER") is not None
        signals.stops.install()
        if worker:
            workers.die_with_parent()
        with study_lock(self.storage):  # workers starting together: one parent run, not two
            new_dir = not sweep_dir.exists()
            try:
                self._refuse_foreign_folders(study, sweep_dir)
                sweep_dir.mkdir(parents=True, exist_ok=True)
                fail_stale_trials(study)
                parent = sweep_report.parent_run(job_cfg, study, self, space,
                                                 resume_id=os.environ.get("SWEEPER_PARENT_RUN_ID"))
            except BaseException:  # refused: no study, and no folder, left behind
                self._drop_if_unused(study)
                if new_dir:
                    with contextlib.suppress(OSError):
                        sweep_dir.rmdir()  # only if still empty
                raise
            # past every check: the study is this one's
            searchspace.record_recipe(study, shared, space, self.heartbeat_s)
        self._fixed_lines = fixed_lines
        done = len(study.trials)
        log.info("%s %s in %s: %s; sampler %s, pruner %s",
                 "New study" if self._created_study else "Study", self.study_name,
                 redact(str(self.storage)), f"{done} of {self.n_trials} trials done"
                 if done < self.n_trials else f"{done} trials done, n_trials={self.n_trials}: "
                 f"none left to run", type(study.sampler).__name__, self.pruner_cfg.name)
        if len(self.directions) > 1 and self.pruner_cfg.name != "none":
            log.warning("hydra.sweeper.pruner.name=%s has no effect: Optuna prunes studies of one "
                        "objective only, and this one has %d", self.pruner_cfg.name,
                        len(self.directions))
        threads = workers.threads_per_worker(1 if worker or not jobs_run_here(self.config) else self.n_jobs)
        if threads is not None:
            import torch

            torch.set_num_threads(threads)  # for the trials run in this process
            os.environ["OMP_NUM_THREADS"] = str(threads)  # for the workers' and submitit's jobs
            log.info("n_jobs=%d: %d CPU thread(s) per worker, the cores shared out (set "
                     "OMP_NUM_THREADS to choose)", self.n_jobs, threads)
        helpers = [] if worker else workers.start_helpers(self.n_jobs, self.study_name, sweep_dir, parent)
        allowed_failures = math.floor(self.max_failure_rate * self.n_trials)
        failed_before = count_failures(study)  # an earlier run's failures, fixed since: not counted
        try:
            while (trial := self._ask(study, space)) is not None:
                self._run_trial(study, trial, fixed_lines, parent)
                sweep_report.progress(parent, study)
                failures = count_failures(study) - failed_before
                if failures > allowed_failures:
                    raise SweepError(
                        f"{failures} trials failed in this run, more than hydra.sweeper."
                        f"max_failure_rate={self.max_failure_rate} of {self.n_trials} allows; see "
                        f"{sweep_dir}/*/train.log")
            for i, proc in enumerate(helpers, 1):
                if proc.wait():  # its trial, if it left one RUNNING, is failed below
                    log.warning("Worker %d exited with status %d; its output: %s", i,
                                proc.returncode, sweep_dir / f"worker-{i}.log")
            if not worker:
                self._wait_for_other_workers(study, parent)
        except BaseException as e:
            for proc in helpers:  # the signal of this process's death, which a worker takes once:
                proc.send_signal(workers.PARENT_GONE)  # one stopping already (Ctrl-C) fails its trial
            try:
                sweep_report.close_parent(parent, e, study)
            except Exception as err:  # a tracking server that stopped answering: say the first
                log.warning("The MLflow parent run could not be closed: %s",
                            first_line(err))
            raise
        if not worker:
            sweep_report.finish(study, self, sweep_dir, parent)

    def compose_trial(self, trial: optuna.trial.FrozenTrial) -> DictConfig:
        """The config `trial`'s job ran with, composed again here (its folder may be on another
        machine): this sweep's fixed settings with the trial's parameters."""
        lines = self._fixed_lines + [f"{k}={v}" for k, v in trial.params.items()]
        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, lines)
        # untyped, as Hydra saves a job's .hydra/config.yaml
        return OmegaConf.create(OmegaConf.to_container(
            OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])))

    def _wait_for_other_workers(self, study: optuna.Study, parent) -> None:
        """Until every heartbeating trial of the study has ended or lost its heartbeat: the
        results are then complete, and the MLflow runs of lost trials are marked KILLED. Trials
        of workers without heartbeats (heartbeat_s=0) are not waited for, but those of a dead
        worker of this machine are failed all the same."""
        def others():
            with study_lock(self.storage), _quiet():
                fail_stale_trials(study)  # a dead worker of this machine: its trial fails now
                if self._heartbeats():
                    optuna.storages.fail_stale_trials(study)  # of another machine: by heartbeat
            return [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                    if t.user_attrs.get("heartbeat_s") and self._heartbeats()]

        running = others()
        if running:
            log.info("Waiting for trial(s) %s of other workers", running)
        while running:
            time.sleep(min(self.heartbeat_s, 2))
            running = others()
        if parent is not None:
            parent.kill_orphans({t.number for t in study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING,))})

    def _ask(self, study: optuna.Study, space: dict) -> optuna.Trial | None:
        """A new trial, or None once the study holds n_trials (atomic across workers)."""
        with study_lock(self.storage):
            fail_stale_trials(study)  # trials of a dead worker of this machine (a helper, say)
            with _quiet():
                optuna.storages.fail_stale_trials(study)  # trials whose worker stopped beating
            if self._grid:  # a stopped trial's point is run again; the study ends with each
                requeue_stopped(study)  # point of the grid tried once, stopped ones not counted
                n = sum(t.state != TrialState.WAITING and not stopped(t)
                        for t in study.get_trials(deepcopy=False))
            else:
                n = len(study.get_trials(deepcopy=False))
            if n >= self.n_trials:
                return None
            if self._reseed_each_ask():
                study.sampler = self._sampler(n, space)
            signals.stops.install()
            signals.stops.hold()  # a stop from here on is raised in _run_trial, which fails the trial
            try:
                with _quiet():
                    trial = study.ask(space)
                trial.set_user_attr("worker", WORKER)
                if self._heartbeats():  # its first beat under the lock: a trial never lacks one
                    trial.set_user_attr("heartbeat_s", self.heartbeat_s)
                    study._storage.record_heartbeat(trial._trial_id)
            except BaseException:
                signals.stops.release()
                raise
            return trial

    def _run_trial(self, study: optuna.Study, trial: optuna.Trial, fixed_lines: list[str],
                   parent) -> None:
        self._running = trial.number
        try:
            signals.stops.release()  # a Ctrl-C that came while the trial was asked for: raised here
            done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,
                                                                        TrialState.PRUNED))]
            same = next((t for t in done if t.params == trial.params), None)
            if same is None:
                overrides = [f"{k}={v}" for k, v in trial.params.items()] + fixed_lines + [
                    f"trial.number={trial.number}", f"trial.study={self.study_name}",
                    f"tracking.run_name=trial-{trial.number}"]
                if parent is not None:
                    overrides.append(f"tracking.parent_run_id={parent.run_id}")
                log.info("Trial %d: %s", trial.number,
                         " ".join(f"{k}={v}" for k, v in trial.params.items()))
                raised = signals.stops.raised
                try:
                    with heartbeat(study, trial, self.heartbeat_s if self._heartbeats() else 0):
                        [ret] = self.launcher.launch([overrides], initial_job_idx=trial.number)
                except Exception as e:  # a cluster's job lost (killed, out of memory, preempted)
                    if signals.stops.raised > raised or signals.stopped_by(e):  # a stop Hydra or OmegaConf
                        raise KeyboardInterrupt("stopped") from e  # wrapped (job composition)
                    ret, lost_job = None, e
                else:
                    lost_job = None
                signals.stops.install()  # the job set its own handler for SIGTERM
                signals.stops.hold()  # a stop from here on is raised once the outcome is recorded
                if lost_job is None:
                    self._record_outcome(study, trial, ret)
                else:  # a failed trial, counted as one: the sweep goes on to max_failure_rate
                    reason = f"{type(lost_job).__name__}: {first_line(lost_job)}"
                    set_attr(trial, "reason", reason)
                    tell(study, trial, state=TrialState.FAIL)
                    log.warning("Trial %d: FAIL (%s)", trial.number, reason)
            else:  # never train a configuration twice: reuse its outcome
                signals.stops.hold()
                set_attr(trial, "duplicate_of", same.number)
                log.info("Trial %d repeats trial %d %s: reusing its outcome", trial.number,
                         same.number, trial.params)
                # a PRUNED trial keeps its last reported value, which a tell of PRUNED refuses
                tell(study, trial, same.values if same.state == TrialState.COMPLETE else None,
                     state=same.state)
            self._running = None
        except BaseException as e:
            signals.fail_stopped(study, trial, e)
            raise  # with self._running still set: the message says the trial is FAIL
        signals.stops.release()  # a stop that came while the outcome was recorded: the sweep ends here

    def _record_outcome(self, study: optuna.Study, trial: optuna.Trial, ret) -> None:
        results = sweep_report.results_of(ret)  # read once: the outcome and where it ran
        state, values, reason = sweep_report.outcome(ret, results, self.objectives)
        self._record_machine(study, trial, results)
        if len(self.directions) > 1 and state == TrialState.PRUNED:
            state = TrialState.FAIL  # Optuna prunes single-objective studies only
        if reason:
            set_attr(trial, "reason", reason)
        tell(study, trial, values if state == TrialState.COMPLETE else None, state=state)
        log.info("Trial %d: %s%s", trial.number, state.name,
                 f" {values}" if state == TrialState.COMPLETE else f" ({reason})")

    @staticmethod
    def _record_machine(study: optuna.Study, trial: optuna.Trial, results: dict) -> None:
        """Record where the trial ran: trainer.precision=auto (bf16 or fp32) and the thread count
        differ per machine, so trials of one study (resumed elsewhere, or workers on mixed
        machines) may have trained in different precisions; say so when they did."""
        precision = results.get("precision")
        if not precision:
            return
        set_attr(trial, "precision", precision)
        set_attr(trial, "device", results.get("device", ""))
        others = {t.user_attrs.get("precision") for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number} - {None, precision}
        if others:
            log.warning("Trial %d trained in %s, other trials of this study in %s (trainer."
                        "precision=auto resolves per machine): their speeds differ, and their "
                        "accuracies may; set trainer.precision to compare like with like",
                        trial.number, precision, ", ".join(sorted(others)))
