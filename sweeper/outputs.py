"""Output directories: a check that one can be written, run before Hydra or the trainer writes to it.

Hydra creates the run's directory and its log file before any job code runs, so an unwritable
directory would end in Hydra's traceback; `OutputDirCheck` (listed under hydra.callbacks in
conf/config.yaml) turns it into one line and exit status 1 first.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback

from sweeper.errors import SweeperError


def writable_dir(path: Path, key: str = "hydra.run.dir", create: bool = True) -> Path:
    """`path`, created if need be, once a file could be written in it; else SweeperError.
    With create=False the folder that would hold it (its nearest existing ancestor) is tried
    instead, and nothing is created."""
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        probe = path if create else next(p for p in (path.absolute(), *path.absolute().parents)
                                          if p.exists())
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".write-test-"):
            pass  # a name of its own: workers starting together do not trip over each other
    except OSError as e:
        raise SweeperError(f"the output directory {path} is not writable ({e.strerror or e}); "
                           f"set {key} to a writable folder") from None
    return path


class OutputDirCheck(Callback):
    def on_run_start(self, config, **kwargs) -> None:
        _check(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        _check(config.hydra.sweep.dir, "hydra.sweep.dir")


def _check(path: str, key: str) -> None:
    try:
        writable_dir(Path(path), key, create=False)  # a sweep refused later leaves no folder
    except SweeperError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
