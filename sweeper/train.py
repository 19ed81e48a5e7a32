"""Command line: `python -m sweeper.train [overrides]` composes conf/ with Hydra and trains.

A thin entry over `sweeper.engine.train`: it makes `data.root` absolute, passes Hydra's output
directory, returns the objective (validation accuracy) for sweepers, and turns the errors users
can cause into one line on stderr and a non-zero exit.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from sweeper.config import register
from sweeper.engine import train
from sweeper.errors import SweeperError

log = logging.getLogger(__name__)

register()


@hydra.main(config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout`, `kill`, batch schedulers: as Ctrl-C
    cfg.data.root = to_absolute_path(cfg.data.root)
    try:
        result = train(cfg, out_dir=Path(hydra_cfg.runtime.output_dir))
    except SweeperError as e:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            raise  # a sweep records the trial as failed and goes on
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted: results.json says status: interrupted", file=sys.stderr)
        sys.exit(130)
    if result.status == "diverged" and hydra_cfg.mode != RunMode.MULTIRUN:
        print(f"error: diverged: {result.message}", file=sys.stderr)
        sys.exit(3)
    return result.objective


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


if __name__ == "__main__":
    main()
