"""MLflow tracking, behind a small interface. The only module of sweeper that imports mlflow.

`open_tracker(cfg.tracking, ...)` returns a context manager: a `NullTracker` when tracking is off,
else an `MlflowTracker` that opens one run (a child when given a parent run id), takes the run's
params, per-epoch metrics and final results, and on exit marks the run FINISHED, FAILED or KILLED
truthfully. The engine only calls `log_facts`, `log_metrics` and `resumes`.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from sweeper.data import CLASSES
from sweeper.stores import check_reachable, opening, redact, sqlite_file

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[1]
PARAM_MAX_CHARS = 6000  # MLflow's limit on a param value


def flatten(cfg: Any) -> dict[str, str]:
    """The composed config as MLflow params: dotted keys, string values, secrets redacted.

    A list is logged whole (`model.blocks`: "[4, 5, 6, 3]") and, for lists of ints, element by
    element too (`model.blocks.0`: "4"), so per-stage choices can be compared as numbers.
    """
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
            return
        if isinstance(node, list) and all(isinstance(v, int) for v in node):
            for i, value in enumerate(node):
                out[f"{prefix}.{i}"] = str(value)
        out[prefix] = redact(str(node))[:PARAM_MAX_CHARS]

    walk("", OmegaConf.to_container(cfg, resolve=True))
    return out


def git_commit() -> str:
    """The project's commit, with `-dirty` when the work tree has changes; "unknown" outside git."""
    try:
        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        return git("rev-parse", "HEAD") + ("-dirty" if git("status", "--porcelain") else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class NullTracker:
    """Records nothing: `tracking.enabled=false`."""

    run_id = None

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def log_facts(self, facts: dict) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_result(self, result, out_dir: Path | None) -> None:
        pass

    def resumes(self, run_id: str | None) -> None:
        pass


class MlflowTracker:
    """One MLflow run: a child of `parent_run_id` when given (a sweep trial)."""

    def __init__(self, cfg: Any, tracking: Any, *, run_name: str | None = None,
                 parent_run_id: str | None = None, tags: dict[str, str] | None = None):
        self.cfg, self.uri, self.experiment = cfg, tracking.uri, tracking.experiment
        self.run_name, self.parent_run_id, self.tags = run_name, parent_run_id, dict(tags or {})
        self.run_id: str | None = None

    def __enter__(self) -> MlflowTracker:
        import mlflow  # noqa: F401  (imported here: tracking off costs nothing)
        from mlflow import MlflowClient

        _bounded_retries()

        check_reachable(self.uri)
        with opening(self.uri):
            self.client = MlflowClient(tracking_uri=self.uri)
            experiment_id = experiment_id_for(self.client, self.experiment)
            tags = {"mlflow.source.git.commit": git_commit(), "mlflow.source.name": "sweeper.train",
                    "status": "running", **self.tags}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            self.run_id = self.client.create_run(experiment_id, run_name=self.run_name,
                                                 tags=tags).info.run_id
            self._log_params(flatten(self.cfg))
        log.info("MLflow run %s in experiment %r at %s", self.run_id, self.experiment, redact(self.uri))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id is None:
            return
        if exc_type is None:
            status = "FINISHED"
        elif issubclass(exc_type, KeyboardInterrupt):
            status, tag = "KILLED", "interrupted"
        elif getattr(exc, "status", None) == "pruned":
            status, tag = "FINISHED", "pruned"
        else:
            status, tag = "FAILED", "failed"
        if exc_type is not None:
            self.client.set_tag(self.run_id, "status", tag)
            self.client.set_tag(self.run_id, "error", f"{exc_type.__name__}: {exc}"[:PARAM_MAX_CHARS])
        self.client.set_terminated(self.run_id, status=status)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def log_facts(self, facts: dict) -> None:
        """Derived facts of the run: `n_params` as a param; the device, the precision trained in
        (trainer.precision=auto differs per machine) and the torch version as tags."""
        self._log_params({"n_params": str(facts["n_params"])})
        for key in ("device", "precision", "torch_version"):
            if key in facts:
                self.client.set_tag(self.run_id, key, str(facts[key]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = _now_ms()
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in metrics.items()])

    def resumes(self, run_id: str | None) -> None:
        """This run resumes, from its checkpoint, the run `run_id`: the two are linked by tags
        (resumed_from, resumed_by), and the earlier one, left RUNNING by a kill, becomes KILLED."""
        from mlflow.exceptions import MlflowException

        if not run_id or run_id == self.run_id:
            return
        try:
            earlier = self.client.get_run(run_id)
        except MlflowException:  # recorded in another store (tracking.uri changed since)
            log.info("MLflow run %s, which this run resumes, is not in %s", run_id, redact(self.uri))
            return
        self.client.set_tag(self.run_id, "resumed_from", run_id)
        self.client.set_tag(run_id, "resumed_by", self.run_id)
        if earlier.info.status == "RUNNING":
            log.warning("MLflow run %s, which this run resumes, was left running: marking it KILLED",
                        run_id)
            self.client.set_tag(run_id, "status", "killed")
            self.client.set_terminated(run_id, status="KILLED")

    def log_result(self, result, out_dir: Path | None) -> None:
        """Final metrics, the status tag and the run's files: config, results, log, weights, plots."""
        final = {}
        if result.test_acc is not None:
            final["test/acc"] = result.test_acc
            final.update({f"test/acc/{name}": acc for name, acc in result.test_acc_per_class.items()})
        if final:
            self.log_metrics(final, step=result.epochs_completed)
        self.client.set_tag(self.run_id, "status", result.status)
        if out_dir is not None:
            for path in run_files(Path(out_dir), result):
                self.client.log_artifact(self.run_id, str(path))


def run_files(out_dir: Path, result) -> list[Path]:
    """Files of a run directory worth keeping as artifacts, plus the run's two plots drawn here."""
    from sweeper import plots

    files = [out_dir / name for name in ("config.yaml", "results.json", "model.pt")]
    files += sorted(out_dir.glob("*.log"))
    if result.history:
        files.append(plots.learning_curves(result.history, out_dir / "learning_curves.png"))
    if result.test_confusion:
        files.append(plots.confusion_matrix(result.test_confusion, list(CLASSES),
                                            out_dir / "confusion_matrix.png"))
    return [f for f in files if f.is_file()]


def experiment_id_for(client, name: str) -> str:
    """Get or create the experiment `name` (two processes may race to create it).

    In a SQLite store, a new experiment keeps its artifacts beside the database file, in
    `mlruns/<name>/<run id>/artifacts`, not under the launch directory (MLflow's default); a
    server's experiments are placed by the server, and existing ones keep their location.
    """
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if db := sqlite_file(client.tracking_uri):
        folder = re.sub(r"[^\w.-]+", "_", name).strip("._") or "experiment"
        location = (db.parent / "mlruns" / folder).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:
        return client.get_experiment_by_name(name).experiment_id


def open_tracker(cfg: Any, **kwargs: Any) -> NullTracker | MlflowTracker:
    """The tracker `cfg.tracking` asks for; kwargs (run_name, parent_run_id, tags) go to MLflow."""
    if not cfg.tracking.enabled:
        return NullTracker()
    return MlflowTracker(cfg, cfg.tracking, **kwargs)


# MLflow retries a failed HTTP request 7 times, waiting 2, 4, ... 128 s: about 4 minutes per request,
# so a tracking server that died held a sweep for 8 minutes before its trial failed. Four retries
# 1-8 s apart ride out a server's restart (about 15 s in all); the user's own settings win.
HTTP_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}


def _bounded_retries() -> None:
    for name, value in HTTP_RETRIES.items():
        os.environ.setdefault(name, value)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)


class SweepRun:
    """The MLflow parent run of a sweep: trials are its children."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def log_progress(self, metrics: dict[str, float], tags: dict[str, str], step: int) -> None:
        from mlflow.entities import Metric, RunTag

        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), _now_ms(), step)
                                                    for k, v in metrics.items()],
                              tags=[RunTag(k, v) for k, v in tags.items()])

    def kill_orphans(self, live_trials: set[int]) -> None:
        """Children left RUNNING by a killed sweep (their trial no longer runs) become KILLED."""
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        children = self.client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{self.run_id}' "
                                           f"and attributes.status = 'RUNNING'")
        for child in children:
            if int(child.data.tags.get("trial", -1)) not in live_trials:
                log.warning("MLflow run %s (trial %s) was left running: marking it KILLED",
                            child.info.run_id, child.data.tags.get("trial"))
                self.client.set_tag(child.info.run_id, "status", "killed")
                self.client.set_terminated(child.info.run_id, status="KILLED")

    def end(self, status: str, message: str = "", files: list[Path] = ()) -> None:
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        if message:
            self.client.set_tag(self.run_id, "error", message[:PARAM_MAX_CHARS])
        elif "error" in self.client.get_run(self.run_id).data.tags:  # what stopped one worker
            self.client.delete_tag(self.run_id, "error")
        self.client.set_tag(self.run_id, "status", status.lower())
        self.client.set_terminated(self.run_id, status=status)


def open_sweep_run(cfg: Any, study_name: str, settings: dict[str, str], run_id: str | None = None,
                   known_id: str | None = None) -> SweepRun:
    """The parent run of sweep `study_name`: `run_id` when given (SWEEPER_PARENT_RUN_ID, set for the
    sweep's own workers); else `known_id`, the run the study recorded as its parent in this store,
    resumed if it is still there; else a new run. Another study of the same name (in another
    Optuna storage) never gets this study's parent: the name alone does not find it."""
    from mlflow import MlflowClient

    _bounded_retries()
    uri = cfg.tracking.uri
    check_reachable(uri)
    with opening(uri):
        client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            experiment_id = experiment_id_for(client, cfg.tracking.experiment)
            if known := (known_id and _active_run(client, known_id, experiment_id)):
                run_id = known_id
                client.update_run(run_id, status="RUNNING")
                client.set_tag(run_id, "status", "running")
                if "error" in known.data.tags:  # what stopped it before: over
                    client.delete_tag(run_id, "error")
                log.info("MLflow parent run %s (resumed)", run_id)
                _record_settings(client, run_id, known.data.params, settings)
            else:
                run = client.create_run(experiment_id, run_name=f"sweep-{study_name}", tags={
                    "sweep.study": study_name, "mlflow.source.git.commit": git_commit(),
                    "status": "running"})
                run_id = run.info.run_id
                _record_settings(client, run_id, {}, settings)
                log.info("MLflow parent run %s", run_id)
    return SweepRun(client, run_id)


def _record_settings(client, run_id: str, params: dict, settings: dict[str, str]) -> None:
    """The sweep's settings as params of its parent run, which holds `params` so far. A resumed
    sweep's settings that differ from them (more n_trials, another range or pruner): MLflow keeps a
    param's first value, so the new one is tag latest.<name>."""
    changed = {}
    for key, value in settings.items():
        value = redact(value)[:PARAM_MAX_CHARS]
        if key not in params:
            client.log_param(run_id, key, value)
        elif params[key] != value:
            changed[key] = value
            client.set_tag(run_id, f"latest.{key}", value)
    if changed:
        log.info("Settings changed since the parent run began (%s): its params keep the first "
                 "values, tags latest.<name> the new ones", ", ".join(changed))


def _active_run(client, run_id: str, experiment_id: str):
    """Run `run_id` when it is a run of the experiment in the client's store, not deleted; else None."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    active = run.info.experiment_id == experiment_id and run.info.lifecycle_stage == "active"
    return run if active else None
