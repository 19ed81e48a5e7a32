"""Stops of a sweep: Ctrl-C, SIGTERM (`kill`, a batch scheduler) and a worker's dying main process.

A stop is raised as KeyboardInterrupt, except while a trial is asked for or its outcome recorded:
then it waits (`hold`/`release`), so no trial is left RUNNING without a worker. `fail_stopped`
records a stopped trial as FAIL (reason interrupted).
"""

from __future__ import annotations

import gc
import signal
import traceback

import optuna

from hydra_plugins.optuna_pruning_sweeper.study import set_attr, tell

TrialState = optuna.trial.TrialState


class Stops:
    """Ctrl-C, SIGTERM (from `kill` or a batch scheduler) and a worker's dying main process as
    KeyboardInterrupt, except while a trial is asked for or its outcome recorded: then they wait
    until the trial can be failed or is recorded, instead of leaving it RUNNING without a worker."""

    def __init__(self) -> None:
        self.holding, self.pending = False, None
        self.parent_died: int | None = None  # the signal that says so, in a worker
        self.raised = 0  # stops raised so far: one the code it landed in wrapped is still a stop

    def install(self) -> None:  # again before each ask: a trial's job sets its own for SIGTERM
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def watch_parent(self, signum: int) -> None:
        self.parent_died = signum
        signal.signal(signum, self._handle)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        """Stop holding, and raise the stop that came meanwhile, if one did."""
        self.holding = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            self._raise(signum)

    def drop(self) -> None:
        """Stop holding, for a caller that is raising already: a stop that came meanwhile is
        dropped, and the next one is raised again (a held Ctrl-C would otherwise be ignored)."""
        self.holding, self.pending = False, None

    def _handle(self, signum, frame) -> None:
        if self.holding:
            self.pending = signum
        else:
            self._raise(signum)

    def _raise(self, signum) -> None:
        self.raised += 1
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # once: a second one ends the process
        if self.parent_died is not None:  # stopping already: the main process's death (again, or
            signal.signal(self.parent_died, signal.SIG_IGN)  # after its Ctrl-C) is no new stop
        raise KeyboardInterrupt(signal.Signals(signum).name)


stops = Stops()


def fail_stopped(study: optuna.Study, trial: optuna.Trial, error: BaseException) -> None:
    """Record `trial`, which `error` stopped, as FAIL (reason interrupted). Stops that come
    meanwhile wait, and are dropped: one stop often brings more (Ctrl-C reaches every process of
    the sweep, and its main process then ends its workers), and one that cut this short left the
    trial RUNNING."""
    stops.install()  # the job may have set its own handler for SIGTERM
    stops.hold()
    try:
        free_frames(error)
        set_attr(trial, "reason", "interrupted")
        tell(study, trial, state=TrialState.FAIL)
    finally:
        stops.drop()


def stopped_by(error: BaseException) -> bool:
    """Whether a KeyboardInterrupt is among the causes of `error`."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def free_frames(error: BaseException) -> None:
    """Let go of what the frames `error` passed through still hold. A stop that lands while the
    job reads the study (Optuna's storage, SQLAlchemy) leaves that read's cursor in them, and with
    it a read lock on an SQLite study (a transaction on PostgreSQL): this process's own write of
    the trial's failure then waited out SQLite's busy timeout, failed, and left the trial RUNNING."""
    seen, errors = set(), [error]
    while errors:
        error = errors.pop()
        if error is not None and id(error) not in seen:
            seen.add(id(error))
            traceback.clear_frames(error.__traceback__)  # frames still running are kept
            errors += [error.__cause__, error.__context__]
    gc.collect()  # cursors and connections in reference cycles: closed now, not some time later
