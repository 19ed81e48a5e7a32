"""A sweep's helper workers (n_jobs > 1): started by its main process, stopped by its death.

Each helper runs the sweep's own command on the same study and sweep folder, with one CPU thread
share of this machine's cores, and asks for a trial as soon as its last one ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from hydra_plugins.optuna_pruning_sweeper import signals

# What a worker (n_jobs > 1) takes as its main process's death or stop: once, as Ctrl-C
PARENT_GONE = signal.SIGUSR1 if sys.platform.startswith("linux") else signal.SIGTERM


def die_with_parent() -> None:
    """A worker started by a sweep's main process (n_jobs > 1) stops as with Ctrl-C, failing its
    running trial, when that process dies, even by SIGKILL (Linux only). The kernel sends the
    signal once for each of the dying process's threads the worker passes to (its heartbeat
    thread, say): with SIGTERM, the second ended the worker at once, its trial left RUNNING; this
    one, SIGUSR1, stops it once and is ignored after."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    signals.stops.watch_parent(PARENT_GONE)
    ctypes.CDLL(None, use_errno=True).prctl(1, PARENT_GONE)  # 1: PR_SET_PDEATHSIG
    if str(os.getppid()) != os.environ.get("SWEEPER_PARENT_PID", str(os.getppid())):
        os.kill(os.getpid(), PARENT_GONE)  # it died before the line above



def start_helpers(n_jobs: int, study_name: str, sweep_dir: Path, parent) -> list[subprocess.Popen]:
    """n_jobs - 1 more processes running this same command on the same study and sweep dir."""
    argv = sys.orig_argv[1:]
    extra = [f"hydra.sweep.dir={sweep_dir}", f"hydra.sweeper.study_name={study_name}",
             "hydra.sweeper.n_jobs=1"]
    env = {**os.environ, "SWEEPER_WORKER": "1", "SWEEPER_PARENT_PID": str(os.getpid())}
    if parent is not None:
        env["SWEEPER_PARENT_RUN_ID"] = parent.run_id
    procs = []
    for i in range(1, n_jobs):
        out = open(sweep_dir / f"worker-{i}.log", "a")  # a resumed sweep keeps the old log
        procs.append(subprocess.Popen([sys.executable, *argv, *extra], env=env, stdout=out,
                                      stderr=subprocess.STDOUT))
    return procs


def threads_per_worker(n_jobs: int) -> int | None:
    """Intra-op CPU threads for each of `n_jobs` workers on this machine: its cores shared out.

    Each PyTorch process otherwise starts one thread per core, and OpenMP's threads spin while
    they wait: on 2 cores, a 6-trial smoke sweep with n_jobs=2 took 57-127 s with 2 threads per
    worker, 18 s with 1 (15.7 s with n_jobs=1). None (leave it to the library) for one worker,
    or when the user chose with OMP_NUM_THREADS.
    """
    if n_jobs <= 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, cores() // n_jobs)


def cores() -> int:
    """The CPUs this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
