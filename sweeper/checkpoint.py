"""Per-epoch checkpoints of one run: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint holds everything the next epoch depends on (weights, optimizer and gradient-scaler
state, the weight average, the state of the generator behind shuffling and augmentation, epoch,
step, metrics so far) plus a fingerprint of the
settings that shape training, so a run resumes only into the same configuration.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from sweeper.errors import SweeperError

FILE = "checkpoint.pt"
# Settings that may differ between the killed run and its resumption: where and how it runs,
# what it logs, and where it records. Device, precision, compile and channels_last are compared
# as they resolved (`resolved.*`): trainer.precision=fp32 resumes a run whose auto meant fp32.
_FREE = {"trainer.resume", "trainer.checkpoint", "trainer.device", "trainer.precision",
         "trainer.compile", "trainer.channels_last", "trainer.log_every", "trainer.save_model",
         "trainer.eval_batch_size", "data.root", "data.download"}


class CheckpointError(SweeperError):
    """A checkpoint cannot be written, read, or resumed into this configuration."""


def fingerprint(cfg, runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings a resumed run must share with the run that wrote the checkpoint.

    `runtime` holds what the config leaves to the machine (device type; compile, channels_last
    and precision as resolved from auto/null): they change the steps, the numerics and the RNG.
    """
    out = {f"resolved.{key}": value for key, value in (runtime or {}).items()}
    for section in ("model", "data", "augment", "optimizer", "schedule", "trainer"):
        for key, value in OmegaConf.to_container(cfg[section], resolve=True).items():
            if f"{section}.{key}" not in _FREE:
                out[f"{section}.{key}"] = value
    out["seed"] = cfg.seed
    return out


def save(path: Path, state: dict) -> None:
    """Write `state` to `path` atomically: a crash or a full disk leaves the previous file intact."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        kept = "the previous checkpoint is intact" if path.exists() else "no earlier checkpoint"
        hint = "; free some disk space" if e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) else ""
        raise CheckpointError(f"could not write the checkpoint {path} "
                              f"({e.strerror or e}); {kept}{hint}") from None


def load(path: Path, cfg, runtime: dict[str, Any] | None = None) -> dict:
    """Read a checkpoint written by a run of the same configuration as `cfg` (and `runtime`)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        written = json.loads(state["fingerprint"])
        _ = state["epoch"], state["step"], state["model"], state["optimizer"], state["history"]
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile,
            KeyError, TypeError, ValueError) as e:
        raise _refusal(path, "is corrupted or truncated", e) from None
    wanted = fingerprint(cfg, runtime)
    differ = [key for key, value in wanted.items() if written.get(key) != value]
    if differ:
        key = min(differ, key=lambda k: k.startswith("resolved."))  # the config's own keys first
        if key.startswith("resolved."):  # what auto/null chose on the machine that wrote it
            raise CheckpointError(_machine_refusal(path, key, written.get(key), wanted[key]))
        raise CheckpointError(f"{path} was written by a run with {key}={written.get(key)!r}, not "
                              f"{wanted[key]!r}; resume with the same settings, or use another "
                              f"output directory")
    return state


# resolved.precision holds the autocast dtype as text (None: fp32)
_PRECISIONS = {"None": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}


def _machine_refusal(path: Path, key: str, written: Any, wanted: Any) -> str:
    """A refusal for a setting that auto/null resolves per machine (and per version of this
    code), naming the override that resumes it."""
    name = key.removeprefix("resolved.")

    def setting(value: Any) -> str:
        if name == "precision":
            return _PRECISIONS.get(value, str(value))
        return str(value).lower()  # compile and channels_last: true/false; device: cpu/cuda

    return (f"{path} was written by a run with trainer.{name}={setting(written)} (as it resolved "
            f"then), not {setting(wanted)}; resume with trainer.{name}={setting(written)}, or use "
            f"another output directory")


def snapshot(cfg, runtime: dict[str, Any], parts: dict, gen: torch.Generator, **progress) -> dict:
    """What the next epoch depends on, as tensors and plain values (loadable with weights_only).

    `parts` maps names to objects with a state_dict (model, optimizer, ...; None is skipped);
    `progress` holds plain values (epoch, step, metrics so far).
    """
    state = {name: part.state_dict() for name, part in parts.items() if part is not None}
    # all of training's randomness (shuffling, augmentation) is drawn from `gen`
    state.update(progress, fingerprint=json.dumps(fingerprint(cfg, runtime), sort_keys=True),
                 rng_gen=gen.get_state())
    return state


def restore(path: Path, state: dict, parts: dict, gen: torch.Generator) -> int:
    """Load `state` into `parts` and `gen`; return the optimizer step it had reached."""
    try:
        for name, part in parts.items():
            if part is not None:
                part.load_state_dict(state[name])
        gen.set_state(state["rng_gen"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise _refusal(path, "does not fit this run", e) from None
    return state["step"]


def _refusal(path: Path, what: str, e: Exception) -> CheckpointError:
    text = str(e)
    if "WeightsUnpickler error:" in text:  # torch's first lines advise weights_only=False: not here
        text = text.split("WeightsUnpickler error:", 1)[1]
    reason = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return CheckpointError(f"{path} {what} ({type(e).__name__}: {reason}); delete it to start "
                           f"over, or set trainer.resume=false")
