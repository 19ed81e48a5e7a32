"""Command line: `python -m sweeper.train [overrides]` composes conf/ with Hydra and trains.

A thin entry over `sweeper.engine.train`: it makes relative paths absolute, writes the composed
config, opens the MLflow run, passes Hydra's output directory, returns the objective (validation
accuracy) for sweepers, and turns the errors users can cause into one line on stderr and a non-zero
exit.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from sweeper import checkpoint
from sweeper.config import absolute_sqlite_url, register
from sweeper.engine import completed_earlier, preflight, run_status, train
from sweeper.errors import ConfigError, SweeperError, first_line, from_mlflow
from sweeper.outputs import restore_earlier_snapshot, write_atomic
from sweeper.overrides import check_overrides
from sweeper.stores import TrackingError, redact
from sweeper.tracking import open_tracker

log = logging.getLogger(__name__)

register()


@hydra.main(config_path="../conf", config_name="config",
             execution_whitelist=["sweeper.outputs.OutputDirCheck", "sweeper.multirun.MultirunCheck"])
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout`, `kill`, batch schedulers: as Ctrl-C
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    out_dir = Path(hydra_cfg.runtime.output_dir)
    _mask_hydra_files(out_dir, hydra_cfg, multirun)
    started = False  # whether this run has written its config.yaml: past that, it is its folder
    try:
        if hydra_cfg.runtime.choices.get("sweep") and not multirun:
            raise ConfigError(f"sweep={hydra_cfg.runtime.choices['sweep']} needs --multirun: "
                              f"python -m sweeper.train --multirun sweep=...")
        cfg.data.root = os.path.normpath(to_absolute_path(cfg.data.root))
        cfg.tracking.uri = absolute_sqlite_url(cfg.tracking.uri)
        if cfg.trial.number is not None:
            cfg.trainer.checkpoint = False  # a killed trial is not resumed: a new one replaces it
        if multirun and cfg.trial.number is None and cfg.trainer.resume:  # a grid resumed
            objective = completed_earlier(out_dir, cfg)
            if objective is not None:
                log.info("Completed earlier with these settings (%s): not trained again; "
                         "val/acc %.1f %%", out_dir / "results.json", 100 * objective)
                return objective
        device = preflight(cfg, out_dir)  # a refused run writes no config.yaml, no MLflow run
        if hydra_cfg.runtime.choices.get("experiment") == "fast" and device.type == "cpu":
            log.warning("experiment=fast is a preset for a GPU: on a CPU its ResNet-18 takes "
                        "hours, with no progress lines (trainer.log_every=0); experiment=smoke "
                        "is the quick check of a CPU set-up")
        tags = {"hydra_overrides": redact(" ".join(hydra_cfg.overrides.task))}
        on_epoch = None
        if cfg.trial.number is not None:  # a sweep's trial: report each epoch, maybe be pruned
            from sweeper.trial import trial_reporter

            tags["trial"] = str(cfg.trial.number)
            on_epoch = trial_reporter(cfg.trial.number, cfg.trial.study, hydra_cfg.sweeper,
                                      last_epoch=cfg.trainer.epochs)
        try:
            with open_tracker(cfg, run_name=cfg.tracking.run_name,
                              parent_run_id=cfg.tracking.parent_run_id, tags=tags) as tracker:
                write_atomic(out_dir / "config.yaml", redact_yaml(cfg))  # once the store has opened
                started = True
                try:
                    result = train(cfg, out_dir=out_dir, tracker=tracker, on_epoch=on_epoch)
                except RuntimeError as e:  # torch.OutOfMemoryError too
                    if (oom := out_of_memory(e, cfg)) is None:
                        raise
                    raise oom from None
                tracker.log_result(result, out_dir)
        except Exception as e:  # a sweep's trial leaves this to the sweep, which stops
            if cfg.trial.number is not None or not from_mlflow(e):
                raise
            raise tracking_lost(e, out_dir) from None
    except SweeperError as e:
        if cfg.trial.number is not None:
            raise  # the Optuna sweep records the trial as failed and goes on
        if multirun:  # Hydra's own sweep of a list of values stops at its first bad job
            message = f"error: job #{hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)}): {e}"
        else:
            message = f"error: {e}"
            if not started:
                restore_earlier_snapshot()
        print(message, file=sys.stderr)
        _to_log_file(message)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        if cfg.trial.number is not None:
            raise  # the sweep marks the trial FAIL and says how to resume
        if (out_dir / "results.json").is_file():
            ckpt = out_dir / checkpoint.FILE
            resume = (f"; run the same command with trainer.resume=true to continue from {ckpt}"
                      if ckpt.is_file() else "")
            message = f"interrupted: results.json says status: interrupted{resume}"
        else:
            message = "interrupted before training started: no results.json"
        print(message, file=sys.stderr)
        _to_log_file(message)  # train.log says why it ends there
        sys.exit(130)
    if result.status == "diverged" and not multirun:
        print(f"error: diverged: {result.message}", file=sys.stderr)
        sys.exit(3)
    return result.objective


def cli() -> None:
    """`python -m sweeper.train`: malformed overrides and unknown options get one line, then Hydra."""
    from hydra._internal.utils import get_args_parser  # the parser hydra.main itself uses

    args, rest = get_args_parser().parse_known_args()
    # overrides typed after a flag (`-m sweep=smoke x=1`) are left over here, and Hydra takes them
    overrides = args.overrides + [arg for arg in rest if not arg.startswith("-")]
    try:
        dirs = [args.config_dir] if args.config_dir else []
        if args.config_path:  # -cp: absolute, or relative to this file as in @hydra.main
            dirs.append(Path(__file__).parent / args.config_path)
        check_overrides(overrides, dirs, multirun=args.multirun)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    main()


def out_of_memory(error: RuntimeError, cfg: DictConfig) -> SweeperError | None:
    """A one-line error for a run that asked for more memory than the device has (PyTorch's CPU
    and CUDA allocators say so over many lines); None for any other error."""
    text = str(error)
    if "out of memory" not in text.lower() and "can't allocate memory" not in text:
        return None
    asked = re.search(r"allocate (\d+) bytes", text)
    asked = f"{int(asked[1]) / 2**30:,.1f} GiB" if asked else \
        (re.search(r"allocate ([\d.]+ \w+)", text) or ["", "more"])[1]
    return SweeperError(f"out of memory: a tensor of {asked} did not fit (model.blocks="
                        f"{list(cfg.model.blocks)}, model.width={cfg.model.width}, trainer.batch_size="
                        f"{cfg.trainer.batch_size}); make the model or the batch smaller")


def tracking_lost(error: Exception, out_dir: Path) -> TrackingError:
    """A one-line error for a run whose tracking store stopped answering after the run began
    (MLflow reports it over many lines, with the HTTP client's retries): what is kept, and how
    to go on."""
    cause = shorten(redact(first_line(error)), 300)
    status = run_status(out_dir)
    if status == "completed":
        kept = ("training completed (results.json, model.pt in the run's folder), but MLflow has "
                "not recorded all of it")
    elif (out_dir / checkpoint.FILE).exists():
        kept = (f"the run stopped ({status or 'no results.json'}); once the store answers, run "
                f"the same command with trainer.resume=true to continue from {checkpoint.FILE}")
    else:
        kept = f"the run stopped ({status or 'no results.json'})"
    return TrackingError(f"the MLflow tracking store stopped answering ({cause}); {kept}")


def shorten(text: str, limit: int) -> str:
    """`text`, or its start and its end (where an HTTP client puts the cause) within `limit`."""
    if len(text) <= limit:
        return text
    half = (limit - 5) // 2
    return f"{text[:half]} ... {text[-half:]}"


def redact_yaml(cfg: DictConfig) -> str:
    """The composed config as YAML, resolved, with any password in a URL masked."""
    return redact(OmegaConf.to_yaml(cfg, resolve=True))


def _mask_hydra_files(out_dir: Path, hydra_cfg: DictConfig, multirun: bool) -> None:
    """Hydra's own snapshots (.hydra/*.yaml, a sweep's multirun.yaml) keep the overrides as typed:
    mask any password in a URL there too."""
    files = list((out_dir / hydra_cfg.output_subdir).glob("*.yaml")) if hydra_cfg.output_subdir \
        else []
    if multirun:
        files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    for path in files:
        try:
            text = path.read_text()
            if redact(text) != text:
                write_atomic(path, redact(text))
        except OSError:
            pass  # not there, or not ours to change: nothing to mask


def _to_log_file(message: str) -> None:
    """`message` into the job's log file (train.log) only: the terminal has had it on stderr."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    cli()
