"""The shared trainer: `train(cfg, out_dir) -> Result`, and `evaluate`. Knows nothing of Hydra."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from sweeper import checkpoint
from sweeper.config import validate
from sweeper.convs import forward_weight_grad_pixels
from sweeper.data import CLASSES, Augment, Split, check_val_size, load_cifar10, normalize, split
from sweeper.device import (
    autocast,
    autocast_dtype,
    describe,
    keep_freed_memory,
    resolve_device,
    resolve_precision,
)
from sweeper.errors import ConfigError
from sweeper.model import build_model, count_parameters, use_forward_weight_grads
from sweeper.outputs import writable_dir, write_atomic
from sweeper.schedule import lr_at
from sweeper.tracking import NullTracker

log = logging.getLogger(__name__)

# On CUDA, reading the loss back stalls the pipeline, so finiteness is checked every this many steps.
CUDA_CHECK_EVERY = 25
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch.compile modes that use CUDA graphs

EpochCallback = Callable[[int, dict], None]


@dataclass
class Result:
    status: str  # running | completed | diverged | pruned (a sweep's pruner) | interrupted | failed
    val_acc: float | None = None  # accuracy on the held-out validation split, 0..1
    test_acc: float | None = None
    test_acc_per_class: dict = field(default_factory=dict)
    test_confusion: list = field(default_factory=list)  # [true class][predicted class] counts
    n_params: int = 0
    epochs_completed: int = 0
    train_time_s: float = 0.0  # time in training steps after the first (evaluation excluded)
    images_per_s: float = 0.0  # training images per second of train_time_s
    startup_s: float = 0.0  # from the call of train() to the end of the first step, which may
    # compile and record CUDA graphs: counted here, not in train_time_s
    first_step_at: float = 0.0  # when the first step ended (Unix time)
    device: str = ""
    precision: str = ""  # what trainer.precision resolved to: fp32 | bf16 | fp16
    message: str = ""  # why the run stopped early, if it did
    history: list = field(default_factory=list)  # one dict of metrics per epoch

    @property
    def objective(self) -> float:
        """Validation accuracy; 0.0 (the worst value, never NaN) for a run that did not complete."""
        return self.val_acc if self.status == "completed" and self.val_acc is not None else 0.0

    def to_json(self) -> dict:
        out = asdict(self)
        for key in ("val_acc", "test_acc", "test_acc_per_class", "test_confusion"):
            out[key.replace("_", "/", 1)] = out.pop(key)  # metric names as elsewhere: val/acc
        out["objective"] = self.objective
        return out


class Diverged(Exception):
    """The training loss became NaN or infinite."""


def runtime_of(cfg, device: torch.device) -> dict:
    """How `cfg` runs on `device` (what a checkpoint must match to be resumed)."""
    tr = cfg.trainer
    return {"device": device.type,
            "compile": tr.compile if tr.compile is not None else device.type == "cuda",
            "channels_last": tr.channels_last if tr.channels_last is not None else True,
            "precision": str(autocast_dtype(tr.precision, device))}


def preflight(cfg, out_dir: Path | None = None, local: bool = True) -> torch.device | None:
    """Every check that can refuse a run, made before anything is written or recorded.

    The config's ranges and names, then, where the run would start here (`local`), the device,
    the data (read once per process: the run reuses it) and the validation split's size, and,
    with trainer.resume, that the checkpoint in `out_dir` can be resumed with this config.
    Raises SweeperError; returns the device (None when not `local`).
    """
    validate(cfg)
    if not local:  # a cluster's job: its device and data are checked where it runs
        return None
    device = resolve_device(cfg.trainer.device)
    data = load_cifar10(str(cfg.data.root), cfg.data.download)
    check_val_size(cfg.data.val_size, len(data.train_y))
    if cfg.trainer.resume and out_dir is not None:
        if (Path(out_dir) / checkpoint.FILE).exists():
            checkpoint.load(Path(out_dir) / checkpoint.FILE, cfg, runtime_of(cfg, device))
        else:
            refuse_completed(Path(out_dir))
    return device


def recorded_results(out_dir: Path) -> dict:
    """What results.json in `out_dir` records; {} where there is no such file or it is not readable."""
    try:
        results = json.loads((out_dir / "results.json").read_text())
    except (OSError, ValueError):
        return {}
    return results if isinstance(results, dict) else {}


def run_status(out_dir: Path) -> str | None:
    """The status results.json in `out_dir` records, or None (no such file, or not readable)."""
    return recorded_results(out_dir).get("status")


def refuse_completed(out_dir: Path) -> None:
    """trainer.resume in a directory whose run completed: nothing to resume, and training from
    scratch would overwrite its results and weights."""
    results = out_dir / "results.json"
    if run_status(out_dir) == "completed":
        raise checkpoint.CheckpointError(
            f"{results} holds a completed run: nothing to resume, and its results and model.pt "
            f"are kept; use another hydra.run.dir, or trainer.resume=false to train it again")


def completed_earlier(out_dir: Path, cfg) -> float | None:
    """For a job of a plain --multirun resumed with trainer.resume=true: the objective of the run
    that completed in `out_dir` with the same settings, which is not trained again; None where no
    run completed there. A completed run of other settings is refused (a grid changed since)."""
    recorded = recorded_results(out_dir)
    if recorded.get("status") != "completed":
        return None
    results = out_dir / "results.json"
    try:
        earlier = checkpoint.fingerprint(OmegaConf.load(out_dir / "config.yaml"))
        objective = float(recorded["objective"])
    except Exception:  # no config.yaml, or one of another version's schema: not comparable
        earlier, objective = {}, 0.0
    now = checkpoint.fingerprint(cfg)
    differ = sorted(k for k in set(now) | set(earlier) if now.get(k) != earlier.get(k))
    if differ:
        shown = ", ".join(f"{k}={earlier[k]} there, {now.get(k)} here" for k in differ[:3]) \
            if earlier else "its config.yaml cannot be compared"
        raise checkpoint.CheckpointError(
            f"{results} holds a completed run of other settings ({shown}); its results and "
            f"model.pt are kept: use another hydra.sweep.dir, or trainer.resume=false to train "
            f"this grid's jobs again")
    return objective


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD or AdamW with weight decay on conv and linear weights only (not on BN or bias)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, cfg.beta2))


# The compiled models of the last shapes (and modes) trained in this process, each reused (with
# fresh weights) by the next run of its shape, so a sweep's trials and the bench's alternating
# variants do not compile the same graph again. TorchDynamo keeps what it compiled per function,
# and every network shares the model classes' forward: past `recompile_limit` (8) entries it
# would run that forward uncompiled for the rest of the process, with one warning (an in-process
# sweep's 9th architecture). So when the cache is full it is emptied and Dynamo reset with it.
_compiled: dict[tuple, tuple[nn.Module, Callable]] = {}
MAX_COMPILED = 4


def build_compiled(cfg, device: torch.device, channels_last: bool, use_compile: bool,
                   mode: str = "default") -> tuple[nn.Module, Callable]:
    """(model, forward): the network of `cfg` with fresh seeded weights, and the callable to train.

    `forward` is the model torch.compile'd in `mode` when `use_compile`, else the model itself.
    """
    model = build_model(cfg)  # initialised from torch's seeded generator, on the CPU
    key = (tuple(cfg.blocks), cfg.width, cfg.num_classes, str(device), channels_last, mode)
    if use_compile and key in _compiled:
        cached, forward = _compiled[key]
        cached.load_state_dict(model.state_dict())  # in place: memory format and graph are kept
        return cached.train(), forward
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not use_compile:
        return model, model
    if len(_compiled) >= MAX_COMPILED:
        _compiled.clear()
        torch.compiler.reset()  # also frees the CUDA graphs' memory pools
    if device.type == "cpu":  # the C++ toolchain lookup warns of CUDA, which a CPU run never uses
        logging.getLogger("torch.utils.cpp_extension").addFilter(_not_cuda_runtime)
    _compiled[key] = model, torch.compile(model, mode=None if mode == "default" else mode)
    return _compiled[key]


def _not_cuda_runtime(record: logging.LogRecord) -> bool:
    """Drops "No CUDA runtime is found, using CUDA_HOME=...", logged when inductor looks for its
    compiler on a machine with a CUDA toolkit and no GPU."""
    return not record.getMessage().startswith("No CUDA runtime is found")


def build_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of `model`'s weights and BN statistics, updated per step.

    Its decay warms up as TensorFlow's ExponentialMovingAverage's does, min(decay, (1 + n) /
    (10 + n)) at the n-th update: with a constant 0.999 a 64-step run evaluated an average that
    was still 94 % its weights after the first step, near chance.
    """
    from torch.optim.swa_utils import AveragedModel

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n: torch.Tensor):
        if not torch.is_floating_point(averaged[0]):  # BN's num_batches_tracked: a count
            torch._foreach_copy_(averaged, current)
            return
        # a tensor on the model's device: no synchronisation with a GPU per step
        weight = 1 - torch.clamp((1 + n) / (10 + n), max=decay).to(averaged[0].dtype)
        deltas = torch._foreach_sub(current, averaged)
        torch._foreach_mul_(deltas, weight)
        torch._foreach_add_(averaged, deltas)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


@torch.inference_mode()
def evaluate(model: nn.Module, data: Split, mean: torch.Tensor, std: torch.Tensor,
             batch_size: int, amp: torch.dtype | None = None,
             channels_last: bool = False, tta: bool = False) -> torch.Tensor:
    """Predicted class of every image of `data`, in eval mode, in large batches.

    With `tta`, the logits of each image and of its mirror image are averaged.
    """
    was_training = model.training
    model.eval()
    preds = []
    for start in range(0, len(data), batch_size):
        x = normalize(data.x[start:start + batch_size], mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(x.device, amp):
            logits = model(x).float()
            if tta:
                logits += model(x.flip(3)).float()
        preds.append(logits.argmax(1))
    model.train(was_training)
    return torch.cat(preds)


def confusion(preds: torch.Tensor, labels: torch.Tensor) -> list[list[int]]:
    n = len(CLASSES)
    return torch.bincount(labels * n + preds, minlength=n * n).view(n, n).tolist()


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    correct = torch.bincount(labels[preds == labels], minlength=len(CLASSES)).float()
    total = torch.bincount(labels, minlength=len(CLASSES)).float()
    acc = (correct / total.clamp(min=1)).tolist()
    return {name: a for name, a, n in zip(CLASSES, acc, total.tolist()) if n > 0}


def write_json(path: Path, payload: dict) -> None:
    """Write atomically: a reader sees the old file or the whole new one, never half of it."""
    write_atomic(path, json.dumps(payload, indent=2) + "\n")


def train(cfg, out_dir: Path | None = None, tracker=None,
          on_epoch: EpochCallback | None = None) -> Result:
    """Train `cfg.model` on CIFAR-10 as `cfg` says; write `results.json` (and `model.pt`) to `out_dir`.

    `tracker` (see sweeper.tracking) receives the run's facts and each epoch's metrics.
    `on_epoch(epoch, metrics)` is called after every epoch's validation; an exception it raises
    stops training (the run is recorded with status "failed" unless the exception says otherwise).
    """
    entered = time.perf_counter()
    tracker = tracker if tracker is not None else NullTracker()
    device = preflight(cfg)
    if out_dir is not None:
        out_dir = writable_dir(Path(out_dir))
    log.info("Using device: %s", describe(device))
    if device.type == "cpu":
        keep_freed_memory()
    data = load_cifar10(str(cfg.data.root), cfg.data.download)
    train_set, val_set, test_set = (s.to(device) for s in split(
        data, cfg.data.val_size, cfg.data.train_size, cfg.data.test_size, cfg.seed))
    log.info("Data: %d train, %d validation, %d test images", len(train_set), len(val_set),
             len(test_set))

    tr = cfg.trainer
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    runtime = runtime_of(cfg, device)
    channels_last, use_compile = runtime["channels_last"], runtime["compile"]
    precision, auto = resolve_precision(tr.precision, device), resolve_precision("auto", device)
    amp = autocast_dtype(precision, device)
    if device.type == "cpu" and precision not in ("fp32", auto):
        log.warning("trainer.precision=%s on this CPU: usually slower than fp32, often several "
                    "times (trainer.precision=auto uses %s here)", tr.precision, auto)
    if tr.compile is False and tr.compile_mode != "default":
        log.warning("trainer.compile_mode=%s has no effect with trainer.compile=false",
                    tr.compile_mode)
    if cfg.optimizer.name == "adamw" and cfg.optimizer.nesterov:
        log.warning("optimizer.nesterov=true has no effect with optimizer=adamw (SGD only)")
    for key in ("warmup", "final"):
        if cfg.schedule.name in ("constant", "step") and cfg.schedule[key]:
            log.warning("schedule.%s=%g has no effect with schedule=%s (cosine and onecycle only)",
                        key, cfg.schedule[key], cfg.schedule.name)
    model, forward = build_compiled(cfg.model, device, channels_last, use_compile, tr.compile_mode)
    if not use_compile and (pixels := forward_weight_grad_pixels(device, amp)):
        use_forward_weight_grads(model, pixels)
        log.debug("Weight gradients of maps up to %d pixels computed as forward convolutions", pixels)
    # CUDA graphs replay a step's kernels in one launch; each step begins a new replay, whose
    # outputs (the logits) overwrite the last step's
    graphs = use_compile and device.type == "cuda" and tr.compile_mode in CUDA_GRAPH_MODES
    log.info("Precision %s, channels_last %s, compile %s%s", precision,
             str(channels_last).lower(), str(use_compile).lower(),
             f" ({tr.compile_mode})" if use_compile and tr.compile_mode != "default" else "")
    result = Result(status="running", n_params=count_parameters(model), device=describe(device),
                    precision=precision)
    log.info("Model: blocks %s, width %d, %.2fM parameters", list(cfg.model.blocks),
             cfg.model.width, result.n_params / 1e6)
    tracker.log_facts({"n_params": result.n_params, "device": result.device,
                       "precision": precision,
                       "torch_version": torch.__version__})
    optimizer = build_optimizer(model, cfg.optimizer)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    ema = build_ema(model, tr.ema) if tr.ema else None
    eval_model = ema.module if ema is not None else model
    mean = torch.tensor(list(cfg.data.mean), device=device)
    std = torch.tensor(list(cfg.data.std), device=device)
    augment = Augment(cfg.augment, mean, std, gen)

    def predict(data: Split) -> torch.Tensor:
        return evaluate(eval_model, data, mean, std, tr.eval_batch_size, amp, channels_last, tr.tta)

    steps_per_epoch = math.ceil(len(train_set) / tr.batch_size)
    if use_compile and len(train_set) > tr.batch_size:
        # One batch shape for the compiled graph (a last, smaller batch would compile a second,
        # dynamic graph): drop the epoch's last partial batch, a different one each epoch.
        steps_per_epoch = len(train_set) // tr.batch_size
    per_epoch = min(len(train_set), steps_per_epoch * tr.batch_size)  # images trained per epoch
    total_steps = steps_per_epoch * tr.epochs
    check_every = 1 if device.type == "cpu" else CUDA_CHECK_EVERY
    ckpt_path = out_dir / checkpoint.FILE if out_dir is not None else None
    parts = {"model": model, "optimizer": optimizer, "scaler": scaler, "ema": ema}
    step = 0
    timed = 0  # images of the steps train_time_s covers: all but each process's first
    if tr.resume:
        if ckpt_path is None:
            raise ConfigError("trainer.resume=true is invalid here: it needs the run's output "
                              "directory, which holds checkpoint.pt")
        if ckpt_path.exists():
            state = checkpoint.load(ckpt_path, cfg, runtime)
            step = checkpoint.restore(ckpt_path, state, parts, gen)
            result.history, result.train_time_s = state["history"], state["train_time_s"]
            result.epochs_completed, result.val_acc = state["epoch"], result.history[-1]["val/acc"]
            timed = state["images"]
            result.images_per_s = timed / max(result.train_time_s, 1e-9)
            for h in result.history:  # the resumed run's record starts complete
                tracker.log_metrics({k: v for k, v in h.items() if k != "epoch"}, step=h["epoch"])
            tracker.resumes(state.get("tracking_run_id"))
            log.info("Resuming from %s: %d of %d epochs done", ckpt_path, result.epochs_completed,
                     tr.epochs)
        else:
            refuse_completed(out_dir)
            log.info("trainer.resume: no %s yet, starting from scratch", ckpt_path)
    start, first_epoch = time.perf_counter(), result.epochs_completed + 1
    paced_from = None  # the end of this call's first step: the time left is paced from there
    above_bars = _log_above_bars()  # log lines over the progress bar, not glued to it
    above_bars.__enter__()
    try:
        for epoch in range(result.epochs_completed + 1, tr.epochs + 1):
            epoch_start = time.perf_counter()
            perm = torch.randperm(len(train_set), generator=gen, device=device)
            loss_sum = torch.zeros((), device=device)  # summed over the epoch's batches
            window = torch.zeros((), device=device)  # summed since the last log line
            correct = torch.zeros((), device=device, dtype=torch.long)
            bar = _progress(steps_per_epoch, f"epoch {epoch}/{tr.epochs}")
            for batch in range(1, steps_per_epoch + 1):
                idx = perm[(batch - 1) * tr.batch_size: batch * tr.batch_size]
                x, y = augment(train_set.x[idx]), train_set.y[idx]
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                lr = lr_at(step, total_steps, cfg.optimizer.lr, cfg.schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                if graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                with autocast(device, amp):
                    logits = forward(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=tr.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                if not result.startup_s:  # a start's cost: data, model, compile, first step
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    paced_from = time.perf_counter()
                    result.startup_s = paced_from - entered
                    result.first_step_at = time.time()
                    log.info("First step after %.1f s", result.startup_s)
                loss = loss.detach().float()
                loss_sum += loss
                window += loss
                correct += (logits.argmax(1) == y).sum()
                if (batch % check_every == 0 or batch == steps_per_epoch) \
                        and not math.isfinite(loss_sum.item()):
                    raise Diverged(f"training loss became {loss_sum.item()} at epoch {epoch}, batch "
                                   f"{batch}; try a lower optimizer.lr (now {cfg.optimizer.lr})")
                if tr.log_every and batch % tr.log_every == 0:
                    log.info("[%d, %5d] loss: %.3f  (%.0f s)", epoch, batch,
                             window.item() / tr.log_every, time.perf_counter() - start)
                    window.zero_()
                if bar is not None:
                    bar.update()
            if bar is not None:
                bar.close()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            epoch_end = time.perf_counter()
            epoch_s = epoch_end - epoch_start
            # this call's first step (which may compile) is start-up, not training time
            result.train_time_s += epoch_end - (epoch_start if epoch > first_epoch else paced_from)
            val_preds = predict(val_set)
            metrics = {
                "train/loss": loss_sum.item() / steps_per_epoch,
                "train/acc": correct.item() / per_epoch,
                "val/acc": (val_preds == val_set.y).float().mean().item(),
                "lr": lr,
                "time/epoch_s": epoch_s,
                "images_per_s": per_epoch / epoch_s,
            }
            result.history.append({"epoch": epoch, **metrics})
            result.epochs_completed, result.val_acc = epoch, metrics["val/acc"]
            # this process's first step (which may compile) is not timed: its images not counted
            timed += per_epoch - (min(tr.batch_size, per_epoch) if epoch == first_epoch else 0)
            result.images_per_s = timed / result.train_time_s if timed else 0.0
            # what is left at this process's pace since its first step (which may have compiled),
            # evaluation included
            steps_since = (epoch - first_epoch + 1) * steps_per_epoch - 1
            left = ((time.perf_counter() - paced_from) / steps_since if steps_since else
                    time.perf_counter() - start) * (tr.epochs - epoch) * steps_per_epoch
            log.info("epoch %d/%d: train/loss %.4f  train/acc %.4f  val/acc %.4f  lr %.4g  "
                     "(%.1f s, %.0f img/s%s)", epoch, tr.epochs, metrics["train/loss"],
                     metrics["train/acc"], metrics["val/acc"], lr, epoch_s, metrics["images_per_s"],
                     f"; {'about ' if left >= 0.5 else ''}{duration(left)} left" if epoch < tr.epochs
                     else "")
            if ckpt_path is not None and tr.checkpoint:
                checkpoint.save(ckpt_path, checkpoint.snapshot(
                    cfg, runtime, parts, gen, epoch=epoch, step=step, history=result.history,
                    train_time_s=result.train_time_s, images=timed,
                    tracking_run_id=tracker.run_id))
            # after the checkpoint: an epoch a lost tracking store failed to record is kept, and
            # recorded by the resumed run with the rest of the history
            tracker.log_metrics(metrics, step=epoch)
            if on_epoch is not None:
                on_epoch(epoch, metrics)
        # inside the try: a stop or a full disk here is recorded as for any epoch
        test_preds = predict(test_set)
        result.test_acc = (test_preds == test_set.y).float().mean().item()
        result.test_acc_per_class = per_class_accuracy(test_preds, test_set.y)
        result.test_confusion = confusion(test_preds, test_set.y)
        for name, acc in result.test_acc_per_class.items():
            log.info("Accuracy of %5s : %5.1f %%", name, 100 * acc)
        log.info("Accuracy of the network on the %d test images: %.1f %%", len(test_set),
                 100 * result.test_acc)
        log.info("Validation accuracy (the objective): %.1f %%", 100 * result.val_acc)
        if out_dir is not None and tr.save_model:
            save_weights(eval_model, Path(out_dir) / "model.pt")
        result.status = "completed"
    except Diverged as e:
        log.error("Diverged: %s", e)
        result.status, result.message, result.val_acc = "diverged", str(e), None
    except BaseException as e:  # interrupted (Ctrl-C) or failed: record it, then let it propagate
        result.status = "interrupted" if isinstance(e, KeyboardInterrupt) else getattr(
            e, "status", "failed")
        # an outcome the run was told (pruned) is its own message; an error is named by its type
        result.message = str(e) if hasattr(e, "status") else f"{type(e).__name__}: {e}"
        if result.status == "pruned" and ckpt_path is not None:
            ckpt_path.unlink(missing_ok=True)  # nothing will resume a pruned trial
        try:
            _finish(result, out_dir)
        except OSError as err:  # a full disk, say: report the first error, not this one
            log.error("could not write results.json: %s", err)
        raise
    finally:
        above_bars.__exit__(None, None, None)

    _finish(result, out_dir)
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)  # finished: results.json and model.pt hold the outcome
    return result


def save_weights(model: nn.Module, path: Path) -> None:
    """The trained weights (a state_dict; load with torch.load(path, weights_only=True))."""
    tmp = path.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


def _finish(result: Result, out_dir: Path | None) -> None:
    if out_dir is not None:
        write_json(Path(out_dir) / "results.json", result.to_json())


def _log_above_bars():
    """With a terminal, console log lines are written above tqdm's bar instead of after it."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def duration(seconds: float) -> str:
    """A span of time as a person reads it: 45 s, 12 min, 3 h 05 min."""
    if seconds < 0.5:
        return "under 1 s"
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


def _progress(total: int, desc: str):
    """A tqdm bar on stderr when a terminal is attached, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
