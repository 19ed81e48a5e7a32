"""What a sweep leaves behind: trial outcomes read from results.json, the MLflow parent run's
progress, optimization_results.yaml, a summary table, and a preset that re-runs the best trial."""

from __future__ import annotations

import json
import logging
import math
import shlex
from pathlib import Path
from typing import Any

import optuna
from omegaconf import OmegaConf

from sweeper import stores, tracking
from sweeper.config import absolute_path, absolute_sqlite_url
from sweeper.outputs import write_atomic

log = logging.getLogger(__name__)
TrialState = optuna.trial.TrialState


def results_of(ret: Any) -> dict:
    """A finished Hydra job's results.json ({} when it wrote none)."""
    path = Path(ret.hydra_cfg.hydra.runtime.output_dir) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def outcome(ret: Any, results: dict,
            objectives: list[str]) -> tuple[TrialState, list[float] | None, str]:
    """(state, objective values, reason) of a finished Hydra job, from its results.json
    (`results_of(ret)`)."""
    status = results.get("status")
    if status == "completed":
        try:
            return TrialState.COMPLETE, [float(results[k]) for k in objectives], ""
        except (KeyError, TypeError, ValueError):
            return TrialState.FAIL, None, f"results.json lacks an objective of {objectives}"
    if status in ("pruned", "diverged"):
        return TrialState.PRUNED, None, f"{status}: {results.get('message', '')}"
    try:
        _ = ret.return_value  # re-raises what the job raised, if it raised
    except Exception as error:
        return TrialState.FAIL, None, f"{type(error).__name__}: {error}"
    return TrialState.FAIL, None, f"results.json says status {status}"


PARENT_ATTR = "mlflow_parent"  # study user attr: {tracking store: the study's parent run id}


def parent_run(job_cfg: Any, study: optuna.Study, sweeper: Any, space: dict,
               resume_id: str | None = None):
    """The sweep's MLflow parent run, or None. The study records its parent per tracking store, so a
    resumed study finds it again and another study of the same name does not."""
    if not job_cfg.tracking.enabled:
        return None
    settings = {f"space.{k}": str(d) for k, d in space.items()}
    settings.update({"study_name": sweeper.study_name, "n_trials": str(sweeper.n_trials),
                     "direction": str(sweeper.directions), "objectives": str(sweeper.objectives),
                     "sampler": type(study.sampler).__name__,
                     "sampler.settings": json.dumps(OmegaConf.to_container(sweeper.sampler_cfg)),
                     "pruner": json.dumps(OmegaConf.to_container(sweeper.pruner_cfg)),
                     "storage": stores.redact(str(sweeper.storage))})
    store = stores.store_key(job_cfg.tracking.uri)
    known = dict(study.user_attrs.get(PARENT_ATTR) or {})
    parent = tracking.open_sweep_run(job_cfg, sweeper.study_name, settings, run_id=resume_id,
                                     known_id=known.get(store))
    if resume_id is None and known.get(store) != parent.run_id:
        study.set_user_attr(PARENT_ATTR, {**known, store: parent.run_id})
    parent.kill_orphans({t.number for t in study.get_trials(deepcopy=False,
                                                             states=(TrialState.RUNNING,))})
    return parent


def progress(parent, study: optuna.Study) -> None:
    """Update the parent run with the best trial so far."""
    if parent is None:
        return
    counts = {s.name.lower(): 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    for t in study.get_trials(deepcopy=False):
        if t.state.name.lower() in counts:
            counts[t.state.name.lower()] += 1
    metrics = {f"trials/{k}": v for k, v in counts.items()}
    tags = {}
    if len(study.directions) == 1 and counts["complete"]:
        best = best_trial(study)
        metrics["best/value"] = best.value
        tags = {"best.trial": str(best.number), **{f"best.{k}": str(v) for k, v in best.params.items()}}
    parent.log_progress(metrics, tags, step=len(study.trials))


def close_parent(parent, error: BaseException, study: optuna.Study) -> None:
    """End the parent run of a sweep that `error` stopped, unless other workers (of this sweep, or
    on other machines) still run trials under it: their outcomes are still to be recorded there,
    and the last of them ends it."""
    if parent is None:
        return
    if running := [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]:
        log.info("MLflow parent run %s left running: other workers run trial(s) %s", parent.run_id,
                 running)
        return
    parent.end("KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED",
               f"{type(error).__name__}: {error}")


def finish(study: optuna.Study, sweeper: Any, sweep_dir: Path, parent) -> None:
    """optimization_results.yaml, the summary table, the best preset, and the parent's plots."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        reasons = {t.user_attrs.get("reason", "?") for t in study.trials}
        message = (f"no trial of study '{study.study_name}' completed "
                   f"({'; '.join(sorted(reasons))[:300]}); once the cause is fixed, raise "
                   f"hydra.sweeper.n_trials to run more, or start afresh with "
                   f"hydra.sweeper.study_name=<another name>")
        if parent is not None:
            parent.end("FAILED", message)
        from sweeper.errors import SweeperError

        raise SweeperError(message)
    if len(study.directions) == 1:
        best = best_trial(study)
        results = {"name": "optuna", "study_name": study.study_name, "best_trial": best.number,
                   "best_params": best.params, "best_value": best.value}
    else:
        results = {"name": "optuna", "study_name": study.study_name, "objectives": sweeper.objectives,
                   "solutions": [{"trial": t.number, "params": t.params, "values": t.values}
                                 for t in study.best_trials if not _repeat(t)]}
    results_path = sweep_dir / "optimization_results.yaml"
    write_atomic(results_path, OmegaConf.to_yaml(OmegaConf.create(results)))
    log.info("%s", summary_table(study, sweeper.objectives))
    files = [results_path]
    if len(study.directions) == 1:
        preset, command = write_best_preset(sweep_dir, best, study.study_name,
                                            getattr(sweeper, "compose_trial", None))
        files.append(preset)
        log.info("Best trial %d: %s = %s\nRe-run it with:\n  %s", best.number, sweeper.objectives[0],
                 best.value, command)
    files += plots(study, sweep_dir)
    if parent is not None:
        progress(parent, study)
        parent.end("FINISHED", "", files)


def _repeat(trial: optuna.trial.FrozenTrial) -> bool:
    """A trial of a configuration already trained: it took that trial's values, trained nothing."""
    return "duplicate_of" in trial.user_attrs


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The best completed trial that trained (of equals, the first): a repeat has no run folder."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not _repeat(t)]
    if not done:
        return study.best_trial
    pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
    return pick(done, key=lambda t: t.value)


def summary_table(study: optuna.Study, objectives: list[str], top: int = 10) -> str:
    """The counts of trials by state, and the best completed ones (repeats left out)."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and not _repeat(t)]
    if len(study.directions) == 1:
        sign = -1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
        done.sort(key=lambda t: sign * t.value)
    names = sorted({k for t in done for k in t.params})
    header = ["trial", *objectives, *names]
    rows = [[str(t.number), *(f"{v:.4g}" for v in t.values), *(str(t.params.get(n)) for n in names)]
            for t in done[:top]]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    counts = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                            TrialState.FAIL)}
    lines = [f"Study {study.study_name}: {len(trials)} trials, "
             + ", ".join(f"{n} {s.name.lower()}" for s, n in counts.items()), f"Top {len(rows)}:"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    return "\n".join(lines)


def write_best_preset(sweep_dir: Path, best: optuna.trial.FrozenTrial, study_name: str = "",
                      compose: Any = None) -> tuple[Path, str]:
    """experiment/best.yaml: the best trial's composed config as a preset, and the command to run it.

    The config comes from the trial's folder when that holds the trial's parameters; else (the
    trial ran on another machine, without a shared disk) from `compose(best)`.
    """
    job_config = sweep_dir / str(best.number) / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(job_config) if job_config.is_file() else None
    if (cfg is None or not _holds(cfg, best.params)) and compose is not None:
        log.info("Trial %d's folder is not on this machine (its worker was %s): best.yaml is "
                 "composed from its parameters", best.number, best.user_attrs.get("worker", "?"))
        cfg = compose(best)
    if cfg is None:
        raise FileNotFoundError(job_config)
    cfg.trial = {"number": None, "study": None}
    cfg.tracking.run_name = f"best-of-{best.number}"
    cfg.tracking.parent_run_id = None
    # paths as the trial resolved them (from the launch folder), so the preset runs from any folder
    cfg.data.root = absolute_path(OmegaConf.select(cfg, "data.root"))
    cfg.tracking.uri = absolute_sqlite_url(OmegaConf.select(cfg, "tracking.uri"))
    preset = sweep_dir / "experiment" / "best.yaml"
    preset.parent.mkdir(exist_ok=True)
    # whole or not at all: a preset cut short would compose, with defaults for the missing keys
    write_atomic(preset, f"# @package _global_\n# Trial {best.number} of study '{study_name}', "
                 f"value {best.value}\n" + OmegaConf.to_yaml(cfg))
    command = ("python -m sweeper.train "
               + shlex.quote(f"hydra.searchpath=[file://{sweep_dir}]") + " experiment=best")
    write_atomic(sweep_dir / "best_command.txt", command + "\n")
    return preset, command


def _holds(cfg: Any, params: dict) -> bool:
    """Whether `cfg` has each of a trial's `params` (keys as searched: `+key` adds a key)."""
    for key, value in params.items():
        held = OmegaConf.select(cfg, key.lstrip("+"), default=None)
        if not (held == value or isinstance(value, float) and isinstance(held, (int, float))
                and math.isclose(held, value, rel_tol=1e-9)):
            return False
    return True


def plots(study: optuna.Study, sweep_dir: Path) -> list[Path]:
    """Optimization history, parameter importances and parallel coordinates, as PNG files."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    out = []
    target = None if len(study.directions) == 1 else (lambda t: t.values[0])
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    for name, draw in (("optimization_history", vis.plot_optimization_history),
                       ("param_importances", vis.plot_param_importances),
                       ("parallel_coordinate", vis.plot_parallel_coordinate)):
        if name == "param_importances" and complete < 2:  # one trial: every key "equally important"
            log.info("No %s plot: it compares complete trials, and the study has %d", name, complete)
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw(study, target=target) if target else draw(study)
            path = sweep_dir / f"{name}.png"
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.set_size_inches(10, 6)
            fig.tight_layout()
            fig.savefig(path, dpi=100)
            plt.close(fig)
            out.append(path)
        except (ValueError, RuntimeError, ZeroDivisionError) as e:  # e.g. importances of 1 trial
            log.info("No %s plot: %s", name, e)
    return out
