"""Output directories: a check that one can be written, run before Hydra or the trainer writes to it.

Hydra creates the run's directory and its log file before any job code runs, so an unwritable
directory would end in Hydra's traceback; `OutputDirCheck` (listed under hydra.callbacks in
conf/config.yaml) turns it into one line and exit status 1 first.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from hydra.experimental.callback import Callback

from sweeper.errors import SweeperError


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists: the folder a new `path` would be made in."""
    return next(p for p in (path, *path.parents) if p.exists())


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader (or a run killed mid-write) sees the old file or the
    whole new one, never a part: a temporary file of its own name (workers may write the same
    path), then a rename."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                     delete=False) as f:
        f.write(text)
    try:
        os.replace(f.name, path)
    except BaseException:
        os.unlink(f.name)
        raise


def probe_write(folder: Path) -> None:
    """Make and remove a file in `folder`, or raise OSError: os.access passes anything for root,
    /proc included. The file has a name of its own, so workers starting together do not trip over
    each other."""
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
        pass


def writable_dir(path: Path, key: str = "hydra.run.dir", create: bool = True) -> Path:
    """`path`, created if need be, once a file could be written in it; else SweeperError.
    With create=False the folder that would hold it (its nearest existing ancestor) is tried
    instead, and nothing is created."""
    try:
        if create:
            path.mkdir(parents=True, exist_ok=True)
        probe_write(path if create else nearest_existing(path.absolute()))
    except OSError as e:
        raise SweeperError(f"the output directory {path} is not writable ({e.strerror or e}); "
                           f"set {key} to a writable folder") from None
    return path


# Hydra's .hydra/ snapshot of a run already in hydra.run.dir, read before Hydra overwrites it
_earlier_snapshot: dict[Path, bytes] = {}


class OutputDirCheck(Callback):
    def on_run_start(self, config, **kwargs) -> None:
        _check(config.hydra.run.dir, "hydra.run.dir")
        _earlier_snapshot.clear()
        if config.hydra.output_subdir is not None:
            for path in (Path(config.hydra.run.dir) / config.hydra.output_subdir).glob("*.yaml"):
                try:
                    _earlier_snapshot[path] = path.read_bytes()
                except OSError:
                    pass  # unreadable: nothing to put back

    def on_multirun_start(self, config, **kwargs) -> None:
        _check(config.hydra.sweep.dir, "hydra.sweep.dir")


def _check(path: str, key: str) -> None:
    try:
        writable_dir(Path(path), key, create=False)  # a sweep refused later leaves no folder
    except SweeperError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


def restore_earlier_snapshot() -> None:
    """Put back the .hydra/ snapshot of the run already in hydra.run.dir: a refused run (a resume
    with other settings, a bad value) must not leave that run described by its own overrides."""
    for path, data in _earlier_snapshot.items():
        try:
            path.write_bytes(data)
        except OSError:
            pass  # not ours to change any more: leave it
