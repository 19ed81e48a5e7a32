"""Config of the `optuna_pruning` sweeper: the official plugin's keys plus pruning and objectives.

Samplers come from the official hydra-optuna-sweeper (group `hydra/sweeper/sampler`: tpe, random,
cmaes, nsgaii, grid, gp, qmc), so its documentation applies unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper.config import SamplerConfig
from omegaconf import MISSING


@dataclass
class PrunerConf:
    name: str = "median"  # none | median | successive_halving | hyperband
    n_startup_trials: int = 2  # median: trials that finish before any is pruned
    n_warmup_steps: int = 1  # median: epochs a trial always runs
    min_resource: int = 1  # successive_halving, hyperband: epochs before the first rung
    max_resource: int | None = None  # hyperband: epochs of a full trial (null: trainer.epochs)
    reduction_factor: int = 3  # successive_halving, hyperband


@dataclass
class OptunaPruningSweeperConf:
    _target_: str = "hydra_plugins.optuna_pruning_sweeper.sweeper.OptunaPruningSweeper"
    defaults: list[Any] = field(default_factory=lambda: [{"sampler": "tpe"}])

    sampler: SamplerConfig = MISSING  # hydra/sweeper/sampler=tpe|random|cmaes|nsgaii|grid|gp|qmc
    pruner: PrunerConf = field(default_factory=PrunerConf)
    direction: Any = "maximize"  # or a list, one per objective
    objectives: list[str] = field(default_factory=lambda: ["val/acc"])  # keys of results.json
    storage: str | None = "sqlite:///optuna.db"  # any Optuna storage URL (postgresql://... too)
    study_name: str | None = None  # null: derived from the search space
    n_trials: int = 20  # the study's total: a re-run only runs what is missing
    n_jobs: int = 1  # trials at once: n_jobs worker processes share the study
    max_failure_rate: float = 0.0  # failed trials allowed, as a fraction of n_trials
    # A running trial's worker records a heartbeat in the study this often (seconds); a trial
    # silent for 3 heartbeats (its machine died) becomes FAIL. 0: off, and only trials of dead
    # processes on the same machine are found (when a worker starts there).
    heartbeat_s: int = 60
    params: dict[str, str] | None = None  # search space, in the official plugin's grammar


ConfigStore.instance().store(group="hydra/sweeper", name="optuna_pruning",
                             node=OptunaPruningSweeperConf, provider="sweeper", replace=True)
