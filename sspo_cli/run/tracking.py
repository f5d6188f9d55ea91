"""MLflow: one run per training, metrics written in one batch per step."""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sspo_cli.errors import InputError, first_line

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

MAX_PARAMS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
# MLflow's experiment kind, the tag its UI's kind selector writes: "Machine learning" (runs and charts) rather than
# "GenAI apps & agents" (traces). MLflow 3.17.2's UI reads it only with its workflow navigation off, which it ships
# on: it opens an experiment by the sidebar's GenAI / Model training switch (or ?workflowType=machine_learning in
# the URL), GenAI by default (README, "Where results go").
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class TrackingError(InputError):
    """The tracking store cannot be opened or written; names the option."""


def default_tracking_uri(output_dir: str | Path) -> str:
    return f"sqlite:///{Path(output_dir).resolve() / 'mlflow.db'}"


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def _quiet_mlflow_logs() -> None:
    for name in ("alembic", "mlflow.tracking", "mlflow.store"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Logs every failed query with a traceback, then raises: the exception is reported once, by us.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def open_client(uri: str) -> MlflowClient:
    """Open (and, for sqlite, create) the store, failing fast with a clear message if that is not possible."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _quiet_mlflow_logs()
    from mlflow.tracking import MlflowClient

    database = sqlite_path(uri)
    if database is not None:
        check_sqlite_writable(database)  # MLflow itself retries a bad sqlite path for ~100 s
    try:
        with _fail_fast_http():
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types here (sqlalchemy, requests, its own)
        raise TrackingError("--tracking-uri", f"cannot open MLflow store {uri!r}: {_reason(exc)}") from None
    return client


def check_tracking_uri(uri: str) -> None:
    """Fail fast on a store that cannot work, creating nothing: a sqlite file is probed, any other store opened."""
    database = sqlite_path(uri)
    if database is not None:
        check_sqlite_writable(database)
    elif not uri.startswith("sqlite:"):
        open_client(uri)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (None for other stores and in-memory sqlite)."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(raw) if raw and not raw.startswith("file:") and raw != ":memory:" else None


def absolute_uri(uri: str) -> str:
    """A relative sqlite path made absolute, so run.json still finds the store from another directory."""
    database = sqlite_path(uri)
    if database is None or database.is_absolute():
        return uri
    query = uri.partition("?")[2]
    return f"sqlite:///{database.resolve()}" + (f"?{query}" if query else "")


def check_sqlite_writable(database: Path) -> None:
    """The sqlite file (or, for a new store, its folder) must take a write; checked without changing anything."""
    import sqlite3

    key = "--tracking-uri"
    if database.exists():
        if not database.is_file():
            raise TrackingError(key, f"sqlite store {str(database)!r} is not a file")
        try:
            connection = sqlite3.connect(
                f"{database.resolve().as_uri()}?mode=rw", uri=True, timeout=5.0, isolation_level=None
            )
            try:
                connection.execute("PRAGMA schema_version").fetchone()  # fails on a file that is not a database
                # A write in a transaction that is rolled back: fails if the file is read-only or locked
                # (sqlite silently opens a write-protected file read-only, so the lock alone proves nothing).
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("CREATE TABLE sspo_write_probe (x INTEGER)")
                connection.execute("ROLLBACK")
            finally:
                connection.close()
        except sqlite3.Error as exc:
            raise TrackingError(key, f"sqlite store {str(database)!r} cannot be written: {exc}") from None
        return
    folder = database.parent
    if not folder.is_dir():
        problem = "does not exist" if not folder.exists() else "is not a folder"
        raise TrackingError(key, f"folder {str(folder)!r} of the sqlite store {problem}")
    probe = folder / f".sspo-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise TrackingError(
            key, f"folder {str(folder)!r} of the sqlite store cannot be written: {exc.strerror or exc}"
        ) from None


class _fail_fast_http:
    """An unreachable tracking server fails in seconds, not after MLflow's minutes of retries."""

    SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}

    def __enter__(self) -> None:
        self._saved = {name: os.environ.get(name) for name in self.SETTINGS}
        for name, value in self.SETTINGS.items():
            os.environ.setdefault(name, value)

    def __exit__(self, *exc: object) -> None:
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)


def check_store_writable(client: MlflowClient, uri: str, experiment: str, artifact_root: Path | None) -> str:
    """The experiment's id, creating it if needed: for a server, that is the write check before any run exists."""
    try:
        return get_or_create_experiment(client, experiment, artifact_root if is_local_store(uri) else None)
    except Exception as exc:
        raise TrackingError("--tracking-uri", f"cannot write to MLflow store {uri!r}: {_reason(exc)}") from None


def runs_view_url(experiment_id: str, host: str = "http://127.0.0.1:5000") -> str:
    """Where `mlflow ui` shows an experiment's runs and charts: MLflow 3.17 opens its GenAI overview unless the URL
    (or the sidebar's Model training switch) asks for the machine-learning view; it does not read the kind tag."""
    return f"{host}/#/experiments/{experiment_id}?workflowType=machine_learning"


def get_or_create_experiment(client: MlflowClient, name: str, artifact_root: Path | None) -> str:
    """The experiment's id, created if needed, tagged as model training (`EXPERIMENT_KIND_TAG`) if it lacks a kind."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        try:
            return client.create_experiment(
                name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        except Exception:  # parallel workers race to create it: the loser uses the winner's
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        try:
            client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        except Exception as exc:  # a label for the UI: never worth failing a run (a read-only or racing store)
            logging.getLogger(__name__).debug("could not tag experiment %s: %s", name, exc)
    return experiment.experiment_id


# A `log_batch` to a sqlite store costs about as much for one step's metrics as for twenty steps': metrics wait up to
# this long (or until a batch is full) and go together, so a fast run spends a third of the time logging.
FLUSH_SECONDS = 5.0


class Tracker:
    """A single MLflow run: params once, metrics batched (every FLUSH_SECONDS, and before a checkpoint and at the
    end: `flush`), artifacts, final status."""

    def __init__(self, client: MlflowClient, run_id: str):
        self.client = client
        self.run_id = run_id
        self._logged_through: dict[str, int] = {}
        self._pending: list[Any] = []
        self._flushed_at = time.monotonic()

    @property
    def experiment_id(self) -> str:
        return self.client.get_run(self.run_id).info.experiment_id

    @classmethod
    def start(
        cls,
        uri: str,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
        artifact_root: Path | None,
        parent_run_id: str | None = None,
    ) -> Tracker:
        client = open_client(uri)
        experiment_id = get_or_create_experiment(client, experiment, artifact_root if is_local_store(uri) else None)
        all_tags = dict(tags)
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        try:
            run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        except Exception as exc:
            raise TrackingError(
                "--tracking-uri", f"cannot create a run in MLflow store {uri!r}: {_reason(exc)}"
            ) from None
        tracker = cls(client, run.info.run_id)
        tracker.log_params(params)
        return tracker

    @classmethod
    def resume(cls, uri: str, run_id: str, skip_logged_steps: bool = False) -> Tracker:
        """Reopen a run and mark it RUNNING. With `skip_logged_steps`, a metric is not logged again
        for a step it already has (a resumed training re-runs the steps after its checkpoint)."""
        client = open_client(uri)
        run = find_run(client, uri, run_id)
        tracker = cls(client, run_id)
        if skip_logged_steps:
            tracker._logged_through = {
                key: max((m.step for m in client.get_metric_history(run_id, key)), default=-1)
                for key in run.data.metrics
            }
        client.update_run(run_id, status="RUNNING")
        return tracker

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for chunk in _chunks(items, MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=chunk)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """The step's metrics, logged with the next `flush` (at once when FLUSH_SECONDS have passed since the last or
        a batch is full); non-finite values are dropped (MLflow rejects NaN)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [
            Metric(k, float(v), now, step)
            for k, v in metrics.items()
            if v is not None and math.isfinite(v) and step > self._logged_through.get(k, -1)
        ]
        if len(self._pending) >= MAX_METRICS_PER_BATCH or time.monotonic() - self._flushed_at >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Log the metrics waiting: before a checkpoint (a resumed run logs only the steps after it) and at the end."""
        pending, self._pending = self._pending, []
        for chunk in _chunks(pending, MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=chunk)
        self._flushed_at = time.monotonic()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.flush()
        self.client.set_terminated(self.run_id, status=status)

    def finish_quietly(self, status: str) -> None:
        """Record how the run ended (and the metrics logged so far) without hiding the error that ended it."""
        try:
            self.finish(status)
        except Exception as exc:
            print(f"warning: could not mark MLflow run {self.run_id} {status}: {exc}", file=sys.stderr)


def failure_status(exc: BaseException) -> str:
    """KILLED for Ctrl-C, SIGTERM and a stop after a checkpoint (all KeyboardInterrupt); FAILED otherwise."""
    return "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"


@contextmanager
def failure_marked(tracker: Tracker | None) -> Iterator[None]:
    """If the block raises, mark the MLflow run (where this process has one) KILLED or FAILED; the error goes on."""
    try:
        yield
    except BaseException as exc:
        if tracker is not None:
            tracker.finish_quietly(failure_status(exc))
        raise


def find_run(client: MlflowClient, uri: str, run_id: str):
    """The run, or a TrackingError naming run.json's run id and the store."""
    try:
        run = client.get_run(run_id)
    except Exception as exc:
        raise TrackingError(
            "--resume", f"MLflow run {run_id!r} (from run.json) is not in {uri!r}: {_reason(exc)}"
        ) from None
    if run.info.lifecycle_stage == "deleted":
        raise TrackingError("--resume", f"MLflow run {run_id!r} (from run.json) was deleted from {uri!r}")
    return run


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the resolved recipe as MLflow params."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _param_value(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text[:6000]


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _reason(exc: BaseException) -> str:
    """A store error in one short line; a refused connection says so instead of a wall of urllib3 text."""
    text = str(exc)
    if "Failed to establish a new connection" in text or "Max retries exceeded" in text:
        return "the server cannot be reached (connection refused or timed out)"
    return first_line(exc)
