"""MLflow tracking against real MLflow stores (a copied SQLite store, a real `mlflow server`)."""

import json
import shutil
import time

import pytest

from sweeper.engine import train
from sweeper.tracking import flatten, open_tracker, redact
from tests.conftest import TINY, compose_cfg, free_port, run_cli, runs_of

ARTIFACTS = {"config.yaml", "results.json", "model.pt", "learning_curves.png", "confusion_matrix.png"}


def tracked_cfg(cifar_root, uri, *overrides):
    return compose_cfg([*TINY, f"data.root={cifar_root}", "tracking=mlflow", f"tracking.uri={uri}",
                        *overrides])


def run_tracked(cfg, out_dir, on_epoch=None, **kwargs):
    with open_tracker(cfg, **kwargs) as tracker:
        result = train(cfg, out_dir=out_dir, tracker=tracker, on_epoch=on_epoch)
        tracker.log_result(result, out_dir)
    return result


def test_a_run_records_params_tags_metric_histories_and_artifacts(cifar_root, mlflow_uri, tmp_path):
    cfg = tracked_cfg(cifar_root, mlflow_uri, "model.blocks=[1,2,1,1]", "trainer.epochs=3")
    result = run_tracked(cfg, tmp_path, run_name="mine", tags={"hydra_overrides": "a=b"})
    client, runs = runs_of(mlflow_uri)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "mine"
    params = run.data.params
    assert params["model.blocks"] == "[1, 2, 1, 1]" and params["model.blocks.1"] == "2"
    assert float(params["optimizer.lr"]) == cfg.optimizer.lr and params["trainer.epochs"] == "3"
    assert params["n_params"] == str(result.n_params)
    tags = run.data.tags
    assert tags["status"] == "completed" and tags["device"].startswith("cpu")
    assert tags["torch_version"] and tags["hydra_overrides"] == "a=b"
    assert len(tags["mlflow.source.git.commit"]) >= 7
    for key in ("train/loss", "train/acc", "val/acc", "lr", "time/epoch_s", "images_per_s"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [1, 2, 3], key
    assert [m.value for m in client.get_metric_history(run.info.run_id, "val/acc")] == \
        [h["val/acc"] for h in result.history]
    assert run.data.metrics["test/acc"] == pytest.approx(result.test_acc)
    assert run.data.metrics["test/acc/plane"] == pytest.approx(result.test_acc_per_class["plane"])
    (tmp_path / "train.log").write_text("a log line\n")
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert ARTIFACTS - {"config.yaml"} <= files


@pytest.mark.parametrize("raised, status, tag", [
    (RuntimeError("boom"), "FAILED", "failed"),
    (KeyboardInterrupt(), "KILLED", "interrupted"),
])
def test_status_is_truthful_when_a_run_raises(cifar_root, mlflow_uri, tmp_path, raised, status, tag):
    def on_epoch(epoch, metrics):
        raise raised

    with pytest.raises(type(raised)):
        run_tracked(tracked_cfg(cifar_root, mlflow_uri), tmp_path, on_epoch=on_epoch)
    _, [run] = runs_of(mlflow_uri)
    assert run.info.status == status and run.data.tags["status"] == tag
    assert json.loads((tmp_path / "results.json").read_text())["status"] == tag


def test_a_pruned_run_is_finished_with_a_status_tag(cifar_root, mlflow_uri, tmp_path):
    class Pruned(Exception):
        status = "pruned"

    def on_epoch(epoch, metrics):
        raise Pruned()

    with pytest.raises(Pruned):
        run_tracked(tracked_cfg(cifar_root, mlflow_uri), tmp_path, on_epoch=on_epoch)
    _, [run] = runs_of(mlflow_uri)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "pruned"


def test_a_diverged_run_is_finished_with_a_status_tag(cifar_root, mlflow_uri, tmp_path):
    run_tracked(tracked_cfg(cifar_root, mlflow_uri, "optimizer.lr=1e12"), tmp_path)
    _, [run] = runs_of(mlflow_uri)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "diverged"


def test_the_cli_records_into_mlflow_db_in_the_launch_directory(cifar_root, mlflow_template, tmp_path):
    shutil.copy(mlflow_template, tmp_path / "mlflow.db")  # the default store: ./mlflow.db
    proc = run_cli(*TINY, f"data.root={cifar_root}", "tracking=mlflow", f"hydra.run.dir={tmp_path}/run",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    client, [run] = runs_of(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert run.info.status == "FINISHED"
    assert "model.width=4" in run.data.tags["hydra_overrides"]
    files = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert ARTIFACTS | {"train.log"} <= files


def test_an_unreachable_server_is_one_line_before_training_and_hides_the_password(cifar_root, tmp_path):
    uri = f"http://alice:hunter2@127.0.0.1:{free_port()}"
    start = time.monotonic()
    proc = run_cli(*TINY, f"data.root={cifar_root}", "tracking=mlflow", f"tracking.uri={uri}",
                   f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert time.monotonic() - start < 30
    errors = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(errors) == 1 and "unreachable" in errors[0]
    assert "alice:***@" in errors[0] and "hunter2" not in proc.stdout + proc.stderr
    assert "Using device" not in proc.stdout  # nothing trained
    assert "hunter2" not in (tmp_path / "run" / "config.yaml").read_text()


def test_passwords_are_never_params():
    cfg = compose_cfg(["tracking.uri=postgresql://bob:s3cret@127.0.0.1/db"])
    assert flatten(cfg)["tracking.uri"] == "postgresql://bob:***@127.0.0.1/db"
    assert redact("see https://u:p@host:1/x and http://plain/") == "see https://u:***@host:1/x and http://plain/"


@pytest.mark.slow
def test_runs_log_to_a_real_tracking_server(cifar_root, mlflow_server, tmp_path):
    url, artifact_root = mlflow_server
    proc = run_cli(*TINY, f"data.root={cifar_root}", "tracking=mlflow", f"tracking.uri={url}",
                   "tracking.experiment=served", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    client, [run] = runs_of(url, "served")
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "completed"
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2
    assert ARTIFACTS <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert any(p.name == "model.pt" for p in artifact_root.rglob("*"))  # stored by the server
