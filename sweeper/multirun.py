"""The jobs of a `--multirun`: where they run, and the checks made before the first one starts.

`MultirunCheck` (listed under hydra.callbacks in conf/config.yaml) composes every job of a plain
`--multirun` (Hydra's basic sweeper) and checks it; the Optuna sweeper checks its search space
itself, with the same `preflight_job`.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from sweeper.config import absolute_path
from sweeper.errors import ConfigError, SweeperError


def jobs_run_here(config: Any) -> bool:
    """Whether `config`'s jobs run on this machine: in this process, or as submitit's local jobs
    (a cluster's jobs check their device and data where they run)."""
    launcher = str(OmegaConf.select(config, "hydra.launcher._target_"))
    return launcher.endswith(("BasicLauncher", "LocalLauncher"))


def preflight_job(job_cfg: Any, config: Any) -> None:
    """`engine.preflight` of one job's config (without its hydra node), as it will run: data.root
    made absolute (a job runs in its own folder), the device and data checked where it runs here."""
    from sweeper.engine import preflight

    cfg = job_cfg.copy()
    cfg.data.root = absolute_path(str(cfg.data.root))
    preflight(cfg, local=jobs_run_here(config))


class MultirunCheck(Callback):
    """A plain `--multirun` checks every job's config, composed as that job will run, before the
    first job starts: a bad value in a list (`trainer.epochs=1,0`) is one line and exit status 2
    then, not an error after the jobs before it trained."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        if not str(OmegaConf.select(config, "hydra.sweeper._target_")).endswith("BasicSweeper"):
            return
        try:
            check_jobs(config)
        except SweeperError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(e.exit_code)


def check_jobs(config: Any) -> None:
    """Compose and check the jobs a basic sweep of `config` will run, as Hydra's BasicSweeper splits
    them; raise SweeperError on the first bad one. Where parsing or composing fails, Hydra says why
    when it composes the jobs itself (it composes each once more: about 70 ms a job on 2 cores)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    lines += list(config.hydra.overrides.task)
    try:
        loader = GlobalHydra.instance().config_loader()
        parsed = OverridesParser.create(config_loader=loader).parse_overrides(lines)  # glob() too
        jobs = BasicSweeper.split_arguments(parsed, None)[0]
    except Exception:
        return
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    if not jobs:  # Hydra launches no job and exits with 0
        empty = next((o.input_line for o in parsed if o.is_sweep_override() and
                      not list(o.sweep_string_iterator())), "a sweep")
        raise ConfigError(f"{empty} matches nothing (no option or value), so the sweep would run "
                          f"no job")
    for number, job in enumerate(jobs):
        try:
            cfg = loader.load_sweep_config(config, list(job))
        except Exception:
            return
        try:
            preflight_job(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), config)
        except SweeperError as e:
            values = " ".join(line for line in job if line.split("=", 1)[0] in swept)
            e.args = (f"job {number + 1} of {len(jobs)} (#{number}: {values}): {e}; no job has "
                      f"started",)
            raise
