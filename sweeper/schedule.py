"""Learning-rate schedules as one pure function of the step: `lr_at(step, total, peak, cfg)`."""

from __future__ import annotations

import bisect
import math


def lr_at(step: int, total: int, peak: float, cfg) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total`, given the peak lr and `cfg.schedule`.

    constant: `peak` throughout (the seed script).
    step:     `peak` times `gamma` for every milestone (fraction of training) already passed.
    cosine:   linear warmup over `warmup` of the steps, then half a cosine down to `final * peak`.
    onecycle: linear warmup over `warmup` of the steps, then a straight line down to `final * peak`.
    """
    progress = step / max(total, 1)
    if cfg.name == "constant":
        return peak
    if cfg.name == "step":
        return peak * cfg.gamma ** bisect.bisect_right(sorted(cfg.milestones), progress)
    if progress < cfg.warmup:  # capped: the last warmup step would pass the peak where
        return peak * min(1.0, (step + 1) / (cfg.warmup * total))  # warmup * total is fractional
    decay = (progress - cfg.warmup) / (1 - cfg.warmup)  # 0 -> 1 after warmup
    end = cfg.final * peak
    if cfg.name == "cosine":
        return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * decay))
    if cfg.name == "onecycle":
        return peak + (end - peak) * decay
    raise ValueError(f"unknown schedule.name {cfg.name!r}")
