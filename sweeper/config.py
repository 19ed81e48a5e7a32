"""Typed schema of every config group, registered in Hydra's ConfigStore, and `validate(cfg)`.

The YAML files under `conf/` are merged into these dataclasses, so a misspelt key or a value of the
wrong type fails when Hydra composes the config. `validate` then checks what types cannot express
(ranges, allowed names) and raises `ConfigError` with a one-line message naming the field.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore

from sweeper.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "step", "cosine", "onecycle")
# MLflow's tracking stores: SQLAlchemy databases (dialect[+driver]://) and tracking servers
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


@dataclass
class ModelConfig:
    blocks: list[int] = field(default_factory=lambda: [2, 2, 2, 2])  # pre-activation blocks per stage
    width: int = 64  # channels of stage 1; stages 2-4 have 2x, 4x, 8x
    num_classes: int = 10  # outputs of the linear head


@dataclass
class DataConfig:
    # folder holding cifar-10-batches-py/ (relative to the directory the command runs from)
    root: str = "${oc.env:CIFAR10_ROOT,../shared/datasets/cifar10}"
    download: bool = False  # fetch CIFAR-10 with torchvision when root has no batches
    val_size: int = 5000  # images held out of the 50,000 training images for the objective
    train_size: int | None = None  # cap on training images after the split (null = all)
    test_size: int | None = None  # cap on test images (null = all 10,000)
    mean: list[float] = field(default_factory=lambda: [0.4914, 0.4822, 0.4465])  # per channel, 0..1
    std: list[float] = field(default_factory=lambda: [0.2470, 0.2435, 0.2616])  # per channel, 0..1


@dataclass
class AugmentConfig:
    flip: bool = False  # random horizontal flip, per image
    pad: int = 0  # zero padding (pixels) added on each side before cropping
    crop: int = 0  # side of the random crop in pixels (0 = no crop)
    cutout: int = 0  # side of a random square zeroed after normalization (0 = off)


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.1  # peak learning rate (the schedule scales it)
    momentum: float = 0.9  # SGD momentum; AdamW beta1
    nesterov: bool = False  # SGD Nesterov momentum
    weight_decay: float = 5e-4  # applied to conv and linear weights only, never to BN or bias
    beta2: float = 0.999  # AdamW second-moment decay


@dataclass
class ScheduleConfig:
    name: str = "onecycle"  # constant | step | cosine | onecycle (linear warmup, linear decay)
    warmup: float = 0.0  # fraction of all steps spent ramping the lr up from 0 (cosine, onecycle)
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # step: fractions of training
    gamma: float = 0.1  # step: lr factor at each milestone
    final: float = 0.0  # cosine, onecycle: lr at the end, as a fraction of the peak


@dataclass
class TrainerConfig:
    epochs: int = 30  # passes over the training split
    batch_size: int = 128  # images per optimizer step
    device: str = "auto"  # auto | cpu | cuda (auto = cuda when available)
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto: bf16 where native, else fp32)
    channels_last: bool | None = None  # NHWC memory format (null = on: faster on cuda and cpu)
    compile: bool | None = None  # torch.compile the model (null = on for cuda only)
    compile_mode: str = "default"  # torch.compile's mode: default | reduce-overhead (CUDA graphs)
    # | max-autotune | max-autotune-no-cudagraphs (longer compiles; see README, "On a GPU")
    label_smoothing: float = 0.0  # cross-entropy label smoothing, 0..1
    ema: float = 0.0  # per-step decay of an average of the weights used for evaluation (0 = off;
    # it warms up: min(ema, (1 + n) / (10 + n)) at step n)
    tta: bool = False  # evaluate on each image and its mirror image, averaging the predictions
    eval_batch_size: int = 1024  # images per forward pass when evaluating
    log_every: int = 50  # print "[epoch, batch] loss" every this many batches (0 = never; the
    # seed printed every 2000, as experiment=seed does)
    save_model: bool = True  # write the final weights to model.pt in the run's output directory
    checkpoint: bool = True  # write checkpoint.pt to the output directory after every epoch
    # (removed once the run completes); see resume
    resume: bool = False  # continue from checkpoint.pt in the output directory (hydra.run.dir=...)
    # when there is one; start from scratch when there is none


@dataclass
class TrackingConfig:
    enabled: bool = True  # record the run in MLflow (false: mlflow is not even imported)
    uri: str = "sqlite:///mlflow.db"  # sqlite:///file.db (relative to the launch directory) or
    # http://host:port of an `mlflow server`
    experiment: str = "sweeper"  # MLflow experiment name
    run_name: str | None = None  # MLflow run name (null: MLflow picks one; sweeps: trial-N)
    parent_run_id: str | None = None  # set by sweeps: the run becomes a child of this run


@dataclass
class TrialConfig:
    number: int | None = None  # set by the sweeper: this job's Optuna trial number
    study: str | None = None  # set by the sweeper: the Optuna study the trial belongs to


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    trial: TrialConfig = field(default_factory=TrialConfig)
    seed: int = 0  # seeds weights, the validation split, shuffling and augmentation


def absolute_path(path: str) -> str:
    """`path` from the launch folder, absolute and normalised: what every job and worker opens."""
    return os.path.normpath(os.path.abspath(path))


def absolute_sqlite_url(url: str | None) -> str | None:
    """`sqlite:///x.db` -> `sqlite:////launch/dir/x.db`, so every job and worker opens the same file."""
    prefix = "sqlite:///"
    if url and url.startswith(prefix) and not url.startswith(prefix + "/"):
        return prefix + str(Path(url[len(prefix):]).absolute())
    return url


def register() -> None:
    """Register the schema as `base_config`; conf/config.yaml lists it first in its defaults."""
    ConfigStore.instance().store(name="base_config", node=Config, replace=True)


def _require(ok: bool, key: str, allowed: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    _require(value in allowed, key, "allowed values are " + ", ".join(allowed), value)


def validate(cfg: Any) -> None:
    """Check ranges and names that the schema's types cannot; raise ConfigError on the first bad field."""
    blocks = list(cfg.model.blocks)
    _require(
        len(blocks) == 4 and all(isinstance(b, int) and b >= 1 for b in blocks),
        "model.blocks", "a list of 4 positive ints, e.g. [2,2,2,2]", blocks,
    )
    _require(cfg.model.width >= 1, "model.width", "a positive int", cfg.model.width)
    _require(cfg.model.num_classes == 10, "model.num_classes", "10 (the classes of CIFAR-10)",
             cfg.model.num_classes)

    data = cfg.data
    _require(data.val_size >= 1, "data.val_size", "an int >= 1", data.val_size)
    for key in ("train_size", "test_size"):
        size = data[key]
        _require(size is None or size >= 1, f"data.{key}", "a positive int or null (all)", size)
    for key in ("mean", "std"):
        values = list(data[key])
        _require(len(values) == 3, f"data.{key}", "3 floats, one per channel", values)
    _require(all(s > 0 for s in data.std), "data.std", "3 positive floats", list(data.std))

    aug = cfg.augment
    _require(aug.pad >= 0, "augment.pad", "an int >= 0", aug.pad)
    _require(0 <= aug.crop <= 32 + 2 * aug.pad, "augment.crop",
             f"0 (off) or a side of at most 32 + 2*augment.pad = {32 + 2 * aug.pad}", aug.crop)
    _require(aug.pad == 0 or aug.crop > 0, "augment.pad", "0 unless augment.crop is set", aug.pad)
    _require(0 <= aug.cutout <= 32, "augment.cutout", "an int in 0..32", aug.cutout)

    opt = cfg.optimizer
    _one_of("optimizer.name", opt.name, OPTIMIZERS)
    _require(0 < opt.lr < math.inf, "optimizer.lr", "a finite float > 0", opt.lr)
    _require(0 <= opt.momentum < 1, "optimizer.momentum", "a float in [0, 1)", opt.momentum)
    _require(opt.weight_decay >= 0, "optimizer.weight_decay", "a float >= 0", opt.weight_decay)
    _require(0 <= opt.beta2 < 1, "optimizer.beta2", "a float in [0, 1)", opt.beta2)
    _require(not (opt.nesterov and opt.momentum == 0), "optimizer.nesterov",
             "false when optimizer.momentum is 0", opt.nesterov)

    sched = cfg.schedule
    _one_of("schedule.name", sched.name, SCHEDULES)
    _require(0 <= sched.warmup < 1, "schedule.warmup", "a fraction in [0, 1)", sched.warmup)
    _require(all(0 < m < 1 for m in sched.milestones), "schedule.milestones",
             "fractions of training in (0, 1)", list(sched.milestones))
    _require(0 < sched.gamma <= 1, "schedule.gamma", "a float in (0, 1]", sched.gamma)
    _require(0 <= sched.final <= 1, "schedule.final", "a fraction in [0, 1]", sched.final)

    tr = cfg.trainer
    _require(tr.epochs >= 1, "trainer.epochs", "an int >= 1", tr.epochs)
    _require(tr.batch_size >= 1, "trainer.batch_size", "an int >= 1", tr.batch_size)
    _require(tr.eval_batch_size >= 1, "trainer.eval_batch_size", "an int >= 1", tr.eval_batch_size)
    _one_of("trainer.device", tr.device, DEVICES)
    _one_of("trainer.precision", tr.precision, PRECISIONS)
    _one_of("trainer.compile_mode", tr.compile_mode, COMPILE_MODES)
    _require(0 <= tr.label_smoothing < 1, "trainer.label_smoothing", "a float in [0, 1)",
             tr.label_smoothing)
    _require(0 <= tr.ema < 1, "trainer.ema", "a decay in [0, 1) (0 = off), e.g. 0.99", tr.ema)
    _require(tr.log_every >= 0, "trainer.log_every", "an int >= 0 (0 = never)", tr.log_every)

    name = cfg.tracking.experiment
    _require(not cfg.tracking.enabled or bool(name and name.strip()), "tracking.experiment",
             "an MLflow experiment name, not empty", name)
    uri = str(cfg.tracking.uri)
    scheme, sep, _ = uri.partition("://")  # shown without the rest: it may hold a password
    _require(not cfg.tracking.enabled or scheme.partition("+")[0] in TRACKING_SCHEMES,
             "tracking.uri", "sqlite:///file.db, postgresql://..., mysql://..., mssql://..., "
             "http(s)://host:port of an MLflow server, or databricks (MLflow 3 keeps runs in a "
             "database, not in folders)", f"{scheme}://..." if sep else uri)
