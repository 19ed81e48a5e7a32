"""MLflow tracking against real MLflow stores (a copied SQLite store, a real `mlflow server`)."""

import base64
import http.server
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import optuna
import pytest
from omegaconf import OmegaConf

from sweeper import sweep_report
from sweeper.engine import train
from sweeper.stores import TrackingError, check_reachable, redact
from sweeper.tracking import flatten, open_sweep_run, open_tracker
from tests.conftest import TINY, compose_cfg, free_port, run_cli, runs_of, start_mlflow_server

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
    assert tags["precision"] == result.precision in ("fp32", "bf16")  # as auto resolved here
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
    written = [f for f in (tmp_path / "run").rglob("*") if f.is_file()]
    assert not any("hunter2" in f.read_text(errors="replace") for f in written)


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


@pytest.mark.slow
def test_a_tracking_server_that_dies_mid_run_is_one_line_and_the_run_resumes(
        cifar_root, mlflow_template, tmp_path):
    server, url = start_mlflow_server(mlflow_template, tmp_path)
    args = [*TINY, f"data.root={cifar_root}", "trainer.epochs=200", "tracking=mlflow",
            f"tracking.uri={url}", f"hydra.run.dir={tmp_path}/run"]
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "sweeper.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "run" / "train.log"
    deadline = time.monotonic() + 120
    try:
        while not (log.exists() and "epoch 2/200" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-3000:]
            time.sleep(0.2)
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server and its workers
        server.wait(timeout=30)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-3000:]
    assert err.startswith("error: the MLflow tracking store stopped answering (") and err.count(
        "\n") == 1, err[-3000:]
    assert err.rstrip().endswith("run the same command with trainer.resume=true to continue from "
                                 "checkpoint.pt")
    assert json.loads((tmp_path / "run" / "results.json").read_text())["status"] == "failed"
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_a_lost_tracking_store_says_what_the_run_kept(tmp_path):
    from mlflow.exceptions import MlflowException

    from sweeper.train import tracking_lost

    gone = MlflowException("API request to http://u:pw@127.0.0.1:5058/api/2.0/mlflow/runs/log-batch "
                           "failed with exception HTTPConnectionPool: Max retries exceeded\nmore")
    assert str(tracking_lost(gone, tmp_path)) == (
        "the MLflow tracking store stopped answering (API request to http://u:***@127.0.0.1:5058/api/"
        "2.0/mlflow/runs/log-batch failed with exception HTTPConnectionPool: Max retries exceeded); "
        "the run stopped (no results.json)")
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed"}))
    assert str(tracking_lost(gone, tmp_path)).endswith(
        "; training completed (results.json, model.pt in the run's folder), but MLflow has not "
        "recorded all of it")


def test_a_long_cause_keeps_its_end_where_the_http_client_names_it(tmp_path):
    from mlflow.exceptions import MlflowException

    from sweeper.train import tracking_lost

    gone = MlflowException(
        "API request to http://u:pw@127.0.0.1:5055/api/2.0/mlflow/runs/log-batch failed with "
        "exception HTTPConnectionPool(host='127.0.0.1', port=5055): Max retries exceeded with url: "
        "/api/2.0/mlflow/runs/log-batch (Caused by NewConnectionError('<urllib3.connection."
        "HTTPConnection object at 0x7f3b2c1d5e50>: Failed to establish a new connection: [Errno 111]"
        " Connection refused'))")
    message = str(tracking_lost(gone, tmp_path))
    cause = message[message.index("(") + 1:message.rindex("); the run stopped")]
    assert len(cause) <= 300 and " ... " in cause
    assert cause.startswith("API request to http://u:***@127.0.0.1:5055/api/2.0/mlflow/runs/")
    assert cause.endswith("[Errno 111] Connection refused'))")


def test_an_epoch_the_tracking_store_failed_to_record_is_kept_in_the_checkpoint(tiny_cfg, tmp_path):
    """Metrics are sent after the epoch's checkpoint: a store lost at the end of epoch 1 cost that
    epoch (the run stopped before its checkpoint), though a resume records it with the rest."""
    import torch

    from sweeper.engine import train
    from sweeper.tracking import NullTracker

    class LostStore(NullTracker):
        def log_metrics(self, metrics, step):
            raise ConnectionError("the tracking store stopped answering")

    with pytest.raises(ConnectionError):
        train(tiny_cfg, out_dir=tmp_path, tracker=LostStore())
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert json.loads((tmp_path / "results.json").read_text())["epochs_completed"] == 1


def test_artifacts_go_beside_the_sqlite_file_not_into_the_launch_directory(
        cifar_root, mlflow_uri, tmp_path, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    run_tracked(tracked_cfg(cifar_root, mlflow_uri), tmp_path / "out")
    client, [run] = runs_of(mlflow_uri)
    assert run.info.artifact_uri == (tmp_path / "mlruns" / "sweeper" / run.info.run_id / "artifacts").as_uri()
    assert (tmp_path / "mlruns" / "sweeper" / run.info.run_id / "artifacts" / "model.pt").is_file()
    assert not (elsewhere / "mlruns").exists()


def sweep_parent(uri, optuna_db, name="same", end=("FINISHED",), **kwargs):
    """The parent run id `parent_run` gives study `name` of `optuna_db`, the run then ended with
    `end` (SweepRun.end's arguments), as a sweep ends."""
    storage = f"sqlite:///{optuna_db}"
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True)
    sweeper = SimpleNamespace(study_name=name, n_trials=2, directions=["maximize"], objectives=["val/acc"],
                              sampler_cfg=OmegaConf.create({}), pruner_cfg=OmegaConf.create({}),
                              storage=storage)
    cfg = compose_cfg(["tracking=mlflow", f"tracking.uri={uri}"])
    parent = sweep_report.parent_run(cfg, study, sweeper, {}, **kwargs)
    parent.end(*end)
    return parent.run_id


def test_a_resumed_sweep_parent_keeps_no_error_from_before(mlflow_uri, tmp_path):
    first = sweep_parent(mlflow_uri, tmp_path / "a.db", end=("KILLED", "KeyboardInterrupt: SIGINT"))
    client, [run] = runs_of(mlflow_uri)
    assert run.data.tags["error"] == "KeyboardInterrupt: SIGINT" and run.info.status == "KILLED"
    assert sweep_parent(mlflow_uri, tmp_path / "a.db") == first  # resumed, and finished this time
    client, [run] = runs_of(mlflow_uri)
    assert run.info.status == "FINISHED" and run.data.tags["status"] == "finished"
    assert "error" not in run.data.tags


def test_a_sweep_parent_belongs_to_its_study_not_to_its_name(mlflow_uri, mlflow_template, tmp_path):
    first = sweep_parent(mlflow_uri, tmp_path / "a.db")
    other = sweep_parent(mlflow_uri, tmp_path / "b.db")  # same study name, another Optuna storage
    assert other != first
    assert sweep_parent(mlflow_uri, tmp_path / "a.db") == first  # resumed: the study's own parent
    assert sweep_parent(mlflow_uri, tmp_path / "b.db") == other
    client, runs = runs_of(mlflow_uri)
    assert sorted(r.info.run_id for r in runs) == sorted([first, other])
    assert {r.data.tags["sweep.study"] for r in runs} == {"same"}

    second_store = tmp_path / "second.db"  # the same study tracked in another store: a parent there
    shutil.copy(mlflow_template, second_store)
    there = sweep_parent(f"sqlite:///{second_store}", tmp_path / "a.db")
    assert there not in (first, other) and sweep_parent(mlflow_uri, tmp_path / "a.db") == first

    assert sweep_parent(mlflow_uri, tmp_path / "a.db", resume_id=other) == other  # the env override
    assert sweep_parent(mlflow_uri, tmp_path / "a.db") == first  # ... is not recorded
    client.delete_run(first)  # a parent gone from the store: a new one, recorded
    renewed = sweep_parent(mlflow_uri, tmp_path / "a.db")
    assert renewed not in (first, other) and sweep_parent(mlflow_uri, tmp_path / "a.db") == renewed


@pytest.fixture
def health_server():
    """A loopback HTTP server answering 200 on /health; yields its port and the headers it got."""
    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, dict(self.headers)))
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], seen
    server.shutdown()
    server.server_close()


def basic_auth(user_password: bytes) -> str:
    return "Basic " + base64.b64encode(user_password).decode()


def test_a_server_uri_with_credentials_is_probed_with_basic_auth(health_server, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    port, seen = health_server
    check_reachable(f"http://alice:p%40ss@127.0.0.1:{port}/")
    [(path, headers)] = seen
    assert path == "/health" and headers["Authorization"] == basic_auth(b"alice:p@ss")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "bob")  # as MLflow does: these come first
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw2")
    check_reachable(f"http://alice:secret@127.0.0.1:{port}")
    assert seen[1][1]["Authorization"] == basic_auth(b"bob:pw2")


def test_an_unreachable_server_with_credentials_hides_the_password():
    with pytest.raises(TrackingError) as error:
        check_reachable(f"http://alice:hunter2@127.0.0.1:{free_port()}")
    assert "unreachable" in str(error.value) and "alice:***@" in str(error.value)
    assert "hunter2" not in str(error.value) and "Name or service" not in str(error.value)


@pytest.mark.parametrize("store", ["afile/x.db", "/proc/x.db", "notadb.db", "not_mlflow.db",
                                   "postgresql://u:pw@127.0.0.1:1/db"])
def test_a_store_that_cannot_be_opened_is_one_line_without_the_password(store, cifar_root, tmp_path):
    (tmp_path / "afile").write_text("a regular file, not a folder")
    (tmp_path / "notadb.db").write_bytes(b"garbage, not a database " * 10)
    # a SQLite file that is not an MLflow store
    sqlite3.connect(tmp_path / "not_mlflow.db").execute("CREATE TABLE experiments (x)").connection.close()
    uri = store if "://" in store else f"sqlite:///{tmp_path / store}"
    cfg = tracked_cfg(cifar_root, uri)
    start = time.monotonic()
    for opening in (lambda: open_tracker(cfg).__enter__(), lambda: open_sweep_run(cfg, "s", {})):
        with pytest.raises(TrackingError) as error:
            opening()
        message = str(error.value)
        assert len(message.splitlines()) == 1 and message.startswith("tracking.uri=")
        assert ":pw@" not in message and ("cannot be used" in message or "unreachable" in message)
    assert time.monotonic() - start < 30  # not MLflow's ~100 s of retries
    assert not list(tmp_path.glob("**/mlruns"))


@pytest.mark.parametrize("store", ["notadb.db", "postgresql://u:pw@127.0.0.1:1/db"])
def test_the_cli_says_a_broken_store_in_one_line_before_training(store, cifar_root, tmp_path):
    (tmp_path / "notadb.db").write_bytes(b"garbage, not a database " * 10)
    uri = store if "://" in store else f"sqlite:///{tmp_path / store}"
    proc = run_cli(*TINY, f"data.root={cifar_root}", "tracking=mlflow", f"tracking.uri={uri}",
                   f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    errors = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(errors) == 1 and errors[0].startswith("error: tracking.uri=")
    assert ":pw@" not in proc.stdout + proc.stderr and "Using device" not in proc.stdout


def test_a_resumed_run_closes_the_killed_run_it_resumes(cifar_root, mlflow_uri, tmp_path):
    """SIGKILL leaves the first run RUNNING (nothing could close it); resuming from its checkpoint
    marks it KILLED and links the two runs."""
    from tests.test_checkpoint import Interrupt, stop_after

    cfg = tracked_cfg(cifar_root, mlflow_uri, "trainer.epochs=2")
    killed = open_tracker(cfg).__enter__()  # never exited, as under SIGKILL
    with pytest.raises(Interrupt):
        train(cfg, out_dir=tmp_path, tracker=killed, on_epoch=stop_after(1))
    cfg.trainer.resume = True
    result = run_tracked(cfg, tmp_path)
    assert result.status == "completed"
    client, runs = runs_of(mlflow_uri)
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    assert first.info.run_id == killed.run_id
    assert first.info.status == "KILLED" and first.data.tags["status"] == "killed"
    assert first.data.tags["resumed_by"] == second.info.run_id
    assert second.info.status == "FINISHED" and second.data.tags["resumed_from"] == first.info.run_id
    assert [m.step for m in client.get_metric_history(second.info.run_id, "val/acc")] == [1, 2]


@pytest.fixture
def overloaded_server():
    """A loopback server whose /health answers 200 and whose API answers 503 to every request, as
    a tracking server that died behind its proxy: MLflow retries each request."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(200 if self.path == "/health" else 503)
            self.end_headers()

        do_GET = do_POST = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_tracking_server_that_stops_answering_fails_the_run_within_seconds(
        cifar_root, overloaded_server, monkeypatch):
    """MLflow's own retries (7, waiting 2 ... 128 s) held a sweep 8 minutes per failed trial."""
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    cfg = tracked_cfg(cifar_root, f"http://127.0.0.1:{overloaded_server}")
    started = time.monotonic()
    with pytest.raises(TrackingError, match="too many 503 error responses"):
        open_tracker(cfg).__enter__()
    assert time.monotonic() - started < 45  # 4 retries 1-8 s apart, plus jitter
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a user's own setting wins
    started = time.monotonic()
    with pytest.raises(TrackingError):
        open_tracker(cfg).__enter__()
    assert time.monotonic() - started < 5
