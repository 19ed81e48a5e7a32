"""Tracking stores named by URL: their passwords masked wherever a URL is shown, and a check, in
seconds and before any training, that a store answers (MLflow itself retries an unusable store for
about 100 s and says so over many lines). No mlflow import here: the checks run without it."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from sweeper.config import absolute_sqlite_url
from sweeper.errors import SweeperError, first_line

DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}  # default ports of database stores


class TrackingError(SweeperError):
    """The tracking store cannot be reached or written; raised before any training starts."""


_SECRET_IN_URL = re.compile(r"([a-zA-Z][\w+.-]*://[^\s:/@]+:)[^\s@/]+@")


def redact(text: str) -> str:
    """Mask passwords of URLs anywhere in `text`: `postgresql://user:secret@host` -> `user:***@host`."""
    return _SECRET_IN_URL.sub(r"\1***@", text)


def check_reachable(uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, in one line, when the tracking store cannot answer: an http(s) server
    without /health, a database server that refuses connections, a SQLite file that cannot be
    opened (MLflow itself retries such stores for about 100 s, warning over many lines)."""
    try:
        parts = urllib.parse.urlsplit(uri)
        scheme = parts.scheme.split("+")[0]
        if scheme in ("http", "https"):
            url, auth = _without_credentials(parts)
            request = urllib.request.Request(url.rstrip("/") + "/health")
            if auth:
                request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read()
        elif scheme in DB_PORTS and parts.hostname:
            socket.create_connection((parts.hostname, parts.port or DB_PORTS[scheme]),
                                     timeout=timeout_s).close()
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = redact(str(getattr(e, "reason", e)))
        raise TrackingError(f"tracking.uri={redact(uri)} is unreachable ({reason}); start the "
                            f"server, fix the URI, or run with tracking.enabled=false") from None
    if db := sqlite_file(uri):
        with opening(uri):
            db.parent.mkdir(parents=True, exist_ok=True)  # as MLflow does
            sqlite3.connect(db).close()


def _without_credentials(parts: urllib.parse.SplitResult) -> tuple[str, str]:
    """(URL without its `user:password@`, "user:password" for basic auth or ""), the credentials
    taken as MLflow takes them: MLFLOW_TRACKING_USERNAME/PASSWORD first, else the URL's."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (user and password) and parts.username is not None:
        user, password = (urllib.parse.unquote(v or "") for v in (parts.username, parts.password))
    url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return url, f"{user}:{password}" if user else ""


def sqlite_file(uri: str) -> Path | None:
    """The absolute path of a `sqlite:///` store's file; None for other stores and in-memory ones."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?")[0]
    return Path(path).absolute() if path and path != ":memory:" else None


@contextlib.contextmanager
def opening(uri: str):
    """Any failure to open the store or to create a run in it (a sqlalchemy, OS or driver error as
    well as an MlflowException) becomes a one-line TrackingError, passwords masked."""
    try:
        yield
    except TrackingError:
        raise
    except Exception as e:
        raise TrackingError(f"tracking.uri={redact(uri)} cannot be used: "
                            f"{redact(first_line(e))}") from None


def store_key(uri: str) -> str:
    """The tracking store `uri` names, as a key without secrets: a relative SQLite path made absolute."""
    return redact(absolute_sqlite_url(uri))
