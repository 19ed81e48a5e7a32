"""Shared fixtures: tiny synthetic CIFAR-10 in the canonical on-disk format, and composed configs."""

from __future__ import annotations

import os

# `pytest -n N`: the N test processes share the cores out (each PyTorch process otherwise starts a
# thread per core, and OpenMP's spinning threads fight over them: `make test` took 5 min 46 s so,
# 3 min 33 s with one thread each on 2 cores). Before torch is imported; CLI runs inherit it.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ["OMP_NUM_THREADS"] = str(max(1, (_cores or 1)
                                            // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

import pickle
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from sweeper.config import register
from sweeper.data import FOLDER, TEST_FILE, TRAIN_FILES

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
TRAIN_PER_BATCH = 60  # 300 training images in all
TEST_IMAGES = 100

register()


def synthetic_batch(n: int, palette: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """n images whose class shows in their colour (so a tiny model can learn it), plus pixel noise."""
    labels = rng.permutation(np.arange(n) % 10)
    noise = rng.integers(-40, 41, size=(n, 3, 32, 32))
    images = np.clip(palette[labels][:, :, None, None] + noise, 0, 255).astype(np.uint8)
    return images.reshape(n, -1), labels.tolist()


def write_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    """Write one batch as the canonical files are: a pickled dict with bytes keys."""
    batch = {b"batch_label": path.name.encode(), b"labels": labels, b"data": data,
             b"filenames": [f"{i}.png".encode() for i in range(len(labels))]}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def make_cifar(root: Path, seed: int = 0) -> Path:
    """Write cifar-10-batches-py/ under root: 5 training batches and a test batch, same class colours."""
    folder = root / FOLDER
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(10, 3))
    for name in TRAIN_FILES:
        write_batch(folder / name, *synthetic_batch(TRAIN_PER_BATCH, palette, rng))
    write_batch(folder / TEST_FILE, *synthetic_batch(TEST_IMAGES, palette, rng))
    return root


def fake_amx(monkeypatch, present: bool | None, vendor: str = "GenuineIntel",
             flags: str = "avx512f") -> None:
    """Make this CPU one with usable AMX, one without, or (None) one torch cannot tell about; and
    (/proc/cpuinfo) one of `vendor` with `flags`, so that no test depends on the CPU it runs on."""
    import torch

    if present is None:
        monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    else:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: present)
        monkeypatch.setattr(torch.cpu, "_init_amx", lambda: present, raising=False)
    monkeypatch.setattr("sweeper.device._cpuinfo", lambda: {"vendor_id": vendor, "flags": flags})
    for cap in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):  # no cap on oneDNN's kernels
        monkeypatch.delenv(cap, raising=False)


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory) -> Path:
    """A data.root holding cifar-10-batches-py/ with 300 training and 100 test images."""
    return make_cifar(tmp_path_factory.mktemp("cifar"))


# Overrides that make any config train in about a second on a CPU against the synthetic data.
TINY = ["model=tiny", "model.width=4", "data.val_size=50", "trainer.epochs=2",
        "trainer.batch_size=32", "trainer.device=cpu", "trainer.log_every=0", "tracking=off"]


def compose_cfg(overrides: list[str] = (), conf_dir: Path = CONF):
    with initialize_config_dir(config_dir=str(conf_dir)):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def tiny_cfg(cifar_root):
    """The default config, shrunk to train in about a second on the synthetic data."""
    return compose_cfg([*TINY, f"data.root={cifar_root}"])


def run_cli(*overrides: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m sweeper.train overrides...` as a user runs it, output captured."""
    return subprocess.run([sys.executable, "-m", "sweeper.train", *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """One migrated MLflow SQLite store per session (creating one costs seconds of migrations)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow") / "template.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def mlflow_uri(mlflow_template, tmp_path) -> str:
    """A fresh copy of the migrated store for one test."""
    path = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, path)
    return f"sqlite:///{path}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runs_of(uri: str, experiment: str = "sweeper"):
    """All runs of `experiment` in the store at `uri`, oldest first, with the client that read them."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []
    return client, runs


def start_mlflow_server(template: Path, tmp: Path) -> tuple[subprocess.Popen, str]:
    """A real `mlflow server` on loopback, answering, with a SQLite backend (a copy of `template`)
    and a local artifact root under `tmp`: (its process, its URL). Its workers are its children,
    in its own process group (`os.killpg(proc.pid, ...)` stops them all)."""
    shutil.copy(template, tmp / "backend.db")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp / 'backend.db'}",
         "--artifacts-destination", str(tmp / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(url + "/health", timeout=2).read()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
    return proc, url


@pytest.fixture(scope="session")
def mlflow_server(mlflow_template, tmp_path_factory):
    """A real `mlflow server` on loopback with a SQLite backend and a local artifact root."""
    tmp = tmp_path_factory.mktemp("server")
    proc, url = start_mlflow_server(mlflow_template, tmp)
    yield url, tmp / "artifacts"
    proc.terminate()
    proc.wait(timeout=30)
