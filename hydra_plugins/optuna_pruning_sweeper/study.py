"""The study every worker shares: a lock around ask(), stale and lost trials, heartbeats, tell.

Workers on one machine or many open the same Optuna storage (SQLite or PostgreSQL); these keep
their trials consistent with each other and with workers that were killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading

import optuna

from sweeper.errors import first_line

log = logging.getLogger(__name__)
TrialState = optuna.trial.TrialState


@contextlib.contextmanager
def study_lock(storage: str | None):
    """Serialize ask() between workers: a file lock for SQLite, an advisory lock for PostgreSQL."""
    if storage and storage.startswith("sqlite:///"):
        import fcntl

        with open(storage[len("sqlite:///"):] + ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
        return
    if storage and storage.startswith("postgresql"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(storage, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(727272)"))
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(727272)"))
        return
    yield


def fail_stale_trials(study: optuna.Study) -> None:
    """Trials left RUNNING by a killed worker on this machine become FAIL (no RUNNING forever)."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker", "")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not alive(int(pid)):
            log.warning("Trial %d was left running by a killed sweep (%s): marking it FAIL",
                        t.number, owner)
            optuna.trial.Trial(study, t._trial_id).set_user_attr("reason", "killed")
            tell(study, t.number, state=TrialState.FAIL)


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial, interval_s: int):
    """Record `trial`'s heartbeat now and every `interval_s` seconds until the block ends."""
    if not interval_s:
        yield
        return
    storage, trial_id = study._storage, trial._trial_id
    stop = threading.Event()

    def beat():
        while not stop.wait(interval_s):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as e:  # retried at the next beat; three misses lose the trial
                log.warning("Trial %d: heartbeat not recorded (%s)", trial.number, first_line(e))

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def lost(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    log.warning("Trial %d stopped sending heartbeats (its worker %s died): marked FAIL",
                trial.number, trial.user_attrs.get("worker", "?"))


# Reasons of FAIL trials that are not failures: stopped from outside (killed with their sweep,
# interrupted, lost by heartbeat, which records no reason), and pruned or diverged in a study of
# several objectives (Optuna prunes single-objective studies only, so those are FAIL)
_STOPPED = ("killed", "interrupted", "lost")
_NOT_FAILURES = (*_STOPPED, "pruned", "diverged")


def _reason(t: optuna.trial.FrozenTrial) -> str:
    return t.user_attrs.get("reason", "lost").split(":")[0]


def stopped(t: optuna.trial.FrozenTrial) -> bool:
    """Whether `t` is FAIL because it was stopped from outside, not by its own outcome."""
    return t.state == TrialState.FAIL and _reason(t) in _STOPPED


def count_failures(study: optuna.Study) -> int:
    """Failed trials of the whole study, all workers, but for those of `_NOT_FAILURES`."""
    return sum(_reason(t) not in _NOT_FAILURES
               for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))


def requeue_stopped(study: optuna.Study) -> None:
    """Queue the points of stopped trials that no other trial has covered, to be run again: a
    grid's sampler takes a FAIL trial's point for visited and never proposes it again."""
    trials = study.get_trials(deepcopy=False)
    covered = [t.params for t in trials if not stopped(t)]
    covered += [t.system_attrs["fixed_params"] for t in trials
                if t.state == TrialState.WAITING and "fixed_params" in t.system_attrs]
    for t in trials:
        if stopped(t) and t.params and t.params not in covered:  # {}: stopped before its ask ended
            log.info("Trial %d was stopped (%s): its point %s is queued to run again", t.number,
                     _reason(t), t.params)
            study.enqueue_trial(t.params)
            covered.append(t.params)


def set_attr(trial: optuna.Trial, key: str, value) -> None:
    """trial.set_user_attr, except that a trial another worker has already ended (its heartbeats
    stopped arriving for a while) is passed over, as tell() passes it over: the attribute is lost,
    not the sweep."""
    try:
        trial.set_user_attr(key, value)
    except optuna.exceptions.UpdateFinishedTrialError:
        log.debug("trial %d has ended: user attribute %s not set", trial.number, key)


def tell(study: optuna.Study, trial, values=None, state=None) -> None:
    """study.tell, except that GridSampler's `study.stop()` once the grid is used up is harmless
    here (the sweep already stops at n_trials, capped to the grid size); the tell itself is stored."""
    try:
        study.tell(trial, values, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise
    except (ValueError, optuna.exceptions.UpdateFinishedTrialError) as e:
        # another worker already ended it (its heartbeats stopped arriving for a while); any other
        # refusal (values for a PRUNED trial, a NaN value) is a bug, not to be passed over
        if isinstance(e, ValueError) and not str(e).startswith("Cannot tell a "):
            raise
        number = trial if isinstance(trial, int) else trial.number
        log.warning("Trial %d was already ended by another worker (%s); its outcome is not "
                    "recorded", number, str(e).splitlines()[0])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
