"""The job's side of a sweep: its Optuna trial, rebuilt from the study's storage, and pruning.

The sweeper (hydra_plugins/optuna_pruning_sweeper) passes `trial.number` and `trial.study` as
overrides; the storage URL and the pruner settings are read from the job's own Hydra config
(`hydra.sweeper.*`), so a job in another process or on another machine reaches the same study.
The job never imports the sweeper; both build the pruner with `build_pruner` below.
"""

from __future__ import annotations

import logging
from typing import Any

import optuna

log = logging.getLogger(__name__)

PRUNERS = ("none", "median", "successive_halving", "hyperband")


class Pruned(optuna.TrialPruned):
    """The pruner stopped this trial; results.json and MLflow record status "pruned"."""

    status = "pruned"


def build_pruner(cfg: Any) -> optuna.pruners.BasePruner:
    """The pruner that `hydra.sweeper.pruner` describes (epochs are the pruning steps)."""
    name = cfg.name
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.n_startup_trials,
                                           n_warmup_steps=cfg.n_warmup_steps)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=cfg.min_resource,
                                                      reduction_factor=cfg.reduction_factor)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=cfg.min_resource,
                                              max_resource=cfg.max_resource or "auto",
                                              reduction_factor=cfg.reduction_factor)
    raise ValueError(f"hydra.sweeper.pruner.name={name!r} is invalid: allowed values are "
                     + ", ".join(PRUNERS))


def storage(url: str, **kwargs):
    """An Optuna storage for `url`; for a server database (PostgreSQL, MySQL) one that holds no
    idle connections: sweeps open many storages (every worker, every trial), and a server allows
    only so many clients (PostgreSQL: 100 by default)."""
    if url.startswith(("sqlite", "redis", "journal")):
        return optuna.storages.RDBStorage(url, **kwargs) if kwargs else url
    import sqlalchemy.pool

    return optuna.storages.RDBStorage(url, engine_kwargs={"poolclass": sqlalchemy.pool.NullPool},
                                      **kwargs)


def trial_reporter(number: int, study_name: str, sweeper_cfg: Any, metric: str = "val/acc",
                   last_epoch: int | None = None):
    """An `on_epoch(epoch, metrics)` callback that reports `metric` and raises Pruned when told.

    After `last_epoch` the trial has finished training: pruning it then would save nothing and
    throw its result away, so it is reported but never pruned."""
    study = optuna.load_study(study_name=study_name, storage=storage(sweeper_cfg.storage),
                              pruner=build_pruner(sweeper_cfg.pruner))
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    trial = optuna.trial.Trial(study, frozen._trial_id)
    if len(study.directions) > 1:  # Optuna prunes single-objective studies only
        return None

    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        trial.report(metrics[metric], step=epoch)
        if (last_epoch is None or epoch < last_epoch) and trial.should_prune():
            raise Pruned(f"after epoch {epoch} with {metric}={metrics[metric]:.4f}")

    return on_epoch
