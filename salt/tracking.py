"""MLflow helpers: SQLite tracking URI, retries on a locked database, one run per output dir.

Every call goes through :func:`with_retry`, which retries with exponential backoff (and jitter)
when SQLite reports ``database is locked`` / ``OperationalError`` or when two processes race to
create the schema or the same experiment, so parallel jobs logging into one
``sqlite:///results/mlflow.db`` lose nothing.

Tracking URI, first that is set: the ``MLFLOW_TRACKING_URI`` environment variable (redirects
every job, e.g. to a server on a cluster), ``tracking.uri`` from the config, then
:data:`DEFAULT_URI`. A relative ``sqlite:///`` path is made absolute (so ``run.json`` works from
any working directory) and its folder is created. Experiment: ``tracking.experiment``, else
``MLFLOW_EXPERIMENT_NAME``, else ``"salt"``.

A run is described by ``out_dir/run.json`` (``mlflow_run_id``, ``tracking_uri``,
``experiment``). :func:`start_run` resumes the run named there when the file exists (a resumed
training job keeps one MLflow run, and metric steps logged before the interruption are not
logged twice); :func:`attach_to_run` reopens it for evaluation.

Runs are driven through ``MlflowClient`` (no fluent global state), so several runs may be open
in one process; a run with ``parent_run_id`` is nested under that run in the UI.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import time
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, TypeVar

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; schema creation is then not serialised
    fcntl = None

from salt.utils import atomic_write_text

DEFAULT_URI = "sqlite:///results/mlflow.db"
DEFAULT_EXPERIMENT = "salt"
RUN_FILE = "run.json"
MAX_PARAM_LENGTH = 6000  # MLflow's limit for one param value
_BATCH_METRICS = 1000  # MLflow's limit per log_batch call
_BATCH_PARAMS = 100

T = TypeVar("T")

_TRANSIENT = ("database is locked", "database table is locked", "operationalerror", "already exists",
              "unique constraint failed", "temporarily_unavailable", "disk i/o error")


_NAME_BAD = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_name(key: str) -> str:
    """An MLflow-valid metric/param name: ``@`` becomes ``_at_`` (``pass@1`` -> ``pass_at_1``),
    any other character MLflow rejects becomes ``_``."""
    return _NAME_BAD.sub("_", str(key).replace("@", "_at_"))


def _is_transient(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    cause = exc.__cause__ or exc.__context__
    if cause is not None:
        text += f" {type(cause).__name__}: {cause}".lower()
    return any(marker in text for marker in _TRANSIENT)


def with_retry(fn: Callable[..., T], *args: Any, attempts: int = 12, base_delay: float = 0.05,
               max_delay: float = 2.0, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)``, retrying transient SQLite/MLflow errors with backoff.

    Non-transient errors are raised at once; a transient one is raised after ``attempts`` tries.
    """
    failures = 0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - filtered by _is_transient
            failures += 1
            if failures >= attempts or not _is_transient(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (failures - 1))
            time.sleep(delay * (0.5 + random.random()))  # jitter de-synchronises competing writers


def _cfg(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if is_dataclass(cfg):
        return {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    if isinstance(cfg, Mapping):
        return dict(cfg)
    raise TypeError(f"tracking config must be a dict or a dataclass, got {type(cfg).__name__}")


def configured_uri(uri: str | None = None) -> str:
    """The tracking URI in force, first that is set: ``MLFLOW_TRACKING_URI``, ``uri`` (the config's
    ``tracking.uri``), :data:`DEFAULT_URI`. The one home of this precedence; touches nothing."""
    return os.environ.get("MLFLOW_TRACKING_URI") or uri or DEFAULT_URI


def shared_sqlite_uri(tracking: Mapping[str, Any]) -> str | None:
    """The SQLite URI that every job of a workflow with this ``tracking`` section would write to,
    or None (tracking off, or a server URI); as :func:`configured_uri` resolves it in each job."""
    uri = configured_uri(tracking.get("uri"))
    return uri if tracking.get("enabled", True) and uri.startswith("sqlite:") else None


def resolve_uri(uri: str | None = None) -> str:
    """The tracking URI to use (:func:`configured_uri`), a relative SQLite path made absolute;
    creates a SQLite file's folder."""
    uri = configured_uri(uri)
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        path = uri[len(prefix):]
        if path and path != ":memory:":
            abs_path = Path(path).expanduser().resolve()
            abs_path.parent.mkdir(parents=True, exist_ok=True)
            uri = "sqlite:///" + abs_path.as_posix()  # absolute: sqlite:////abs/path.db
    return uri


def _artifact_root(uri: str) -> str | None:
    """Artifacts of a SQLite-tracked experiment live in ``mlartifacts/`` next to the database."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts").as_uri()
    return None


@contextlib.contextmanager
def _schema_lock(uri: str) -> Iterator[None]:
    """Serialise MLflow's schema creation/migration on one SQLite file across processes.

    Two processes migrating a fresh database at once leave it half-migrated (alembic's
    temporary tables collide), which no retry can repair; an exclusive ``flock`` on
    ``<db>.init.lock`` around the store creation prevents it. Other URIs need no lock.
    """
    if not uri.startswith("sqlite:///") or fcntl is None:
        yield
        return
    lock_path = uri[len("sqlite:///"):] + ".init.lock"
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    def make():
        with _schema_lock(uri):
            client = MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)  # forces store + schema creation
        return client

    return with_retry(make)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; dataclasses are expanded like dicts."""
    out: dict[str, Any] = {}
    for key, value in _cfg(d).items():
        name = f"{prefix}{key}"
        if is_dataclass(value) or isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


# "custom_model_development" is the value MLflow's UI writes for the classic machine-learning kind of an
# experiment (mlflow/server/js: ExperimentKind.CUSTOM_MODEL_DEVELOPMENT, tag key "mlflow.experimentKind").
# MLflow 3.17's UI no longer lands by this tag: it follows the browser's GenAI / classic-ML switch
# (localStorage "mlflow.workflowType", default GenAI; URL parameter workflowType=machine_learning), so
# `make ui` (workflow/scripts/mlflow_ui.py) prints a runs-table URL with that parameter; the tag is kept
# for older 3.x UIs and for the experiment's own record.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND_ML = "custom_model_development"


def get_or_create_experiment(name: str, client: Any = None, uri: str | None = None) -> str:
    """The id of experiment ``name``, created if missing; safe when processes race to create it."""
    client = client or _client(resolve_uri(uri))

    def attempt() -> str:
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                client.restore_experiment(exp.experiment_id)
            return exp.experiment_id
        try:
            root = _artifact_root(client.tracking_uri)
            return client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None,
                                            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_ML})
        except Exception as exc:  # noqa: BLE001 - a concurrent creator won: read it back
            exp = client.get_experiment_by_name(name)
            if exp is not None:
                return exp.experiment_id
            raise exc

    return with_retry(attempt)


@dataclass
class TrackedRun:
    """An open MLflow run: its id, URI, experiment, and a client bound to that URI."""

    run_id: str
    tracking_uri: str
    experiment: str
    experiment_id: str
    client: Any = field(repr=False)
    # (metric key -> steps already stored); filled when a run is resumed, so re-logged steps are skipped
    logged_steps: dict[str, set[int]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, str]:
        return {"mlflow_run_id": self.run_id, "tracking_uri": self.tracking_uri, "experiment": self.experiment}


def _params_list(params: Mapping[str, Any]):
    from mlflow.entities import Param

    out = []
    for key, value in flatten(params).items():
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        out.append(Param(metric_name(key), text[:MAX_PARAM_LENGTH]))
    return out


def _log_params(run: TrackedRun, params: Mapping[str, Any]) -> None:
    existing = with_retry(run.client.get_run, run.run_id).data.params
    todo = [p for p in _params_list(params) if p.key not in existing]
    for i in range(0, len(todo), _BATCH_PARAMS):
        with_retry(run.client.log_batch, run.run_id, params=todo[i:i + _BATCH_PARAMS])


def _set_tags(run: TrackedRun, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(str(k), str(v)[:MAX_PARAM_LENGTH]) for k, v in tags.items() if v is not None]
    if items:
        with_retry(run.client.log_batch, run.run_id, tags=items)


def read_run_file(out_dir: str | os.PathLike) -> dict[str, str] | None:
    """The content of ``out_dir/run.json`` or None when it does not exist."""
    path = Path(out_dir) / RUN_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc.msg}); delete it to start a new MLflow run") from exc
    missing = {"mlflow_run_id", "tracking_uri", "experiment"} - set(data)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}; delete it to start a new MLflow run")
    return data


def _reopen(info: Mapping[str, str], resume: bool) -> TrackedRun:
    """Reopen a recorded run; ``resume`` (a restarted job) marks it RUNNING and loads its logged steps."""
    from mlflow.entities import RunStatus

    client = _client(info["tracking_uri"])
    mlrun = with_retry(client.get_run, info["mlflow_run_id"])
    run = TrackedRun(info["mlflow_run_id"], info["tracking_uri"], info["experiment"],
                     mlrun.info.experiment_id, client)
    if resume and mlrun.info.status != "RUNNING":
        with_retry(client.update_run, run.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    if resume:
        for key in mlrun.data.metrics:
            history = with_retry(client.get_metric_history, run.run_id, key)
            run.logged_steps[key] = {m.step for m in history}
    return run


def start_run(tracking_cfg: Any = None, *, run_name: str | None = None, out_dir: str | os.PathLike | None = None,
              params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
              parent_run_id: str | None = None) -> TrackedRun | None:
    """Open (or resume) the MLflow run of one job; None when ``tracking.enabled`` is false.

    Args:
        tracking_cfg: the ``tracking`` section (dict or dataclass): ``enabled``, ``uri``,
            ``experiment``, ``run_name``, ``parent_run_id``, ``tags``. Keyword arguments win.
        run_name: display name of a new run.
        out_dir: where ``run.json`` is written; when it already holds one, that run is resumed.
        params: logged flattened with dots (``train.lr``); on resume only missing keys are added.
        tags: extra tags (merged with ``tracking.tags``).
        parent_run_id: nest the new run under this run.
    """
    cfg = _cfg(tracking_cfg)
    if not cfg.get("enabled", True):
        return None
    if out_dir is not None:
        info = read_run_file(out_dir)
        if info is not None:
            run = _reopen(info, resume=True)
            if params:
                _log_params(run, params)
            return run
    uri = resolve_uri(cfg.get("uri"))
    experiment = cfg.get("experiment") or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    client = _client(uri)
    exp_id = get_or_create_experiment(experiment, client=client)
    all_tags = {str(k): v for k, v in (cfg.get("tags") or {}).items()}
    all_tags.update(tags or {})
    parent = parent_run_id or cfg.get("parent_run_id")
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    name = run_name or cfg.get("run_name")
    mlrun = with_retry(client.create_run, exp_id, run_name=name,
                       tags={k: str(v) for k, v in all_tags.items() if v is not None})
    run = TrackedRun(mlrun.info.run_id, uri, experiment, exp_id, client)
    if out_dir is not None:
        atomic_write_text(Path(out_dir) / RUN_FILE, json.dumps(run.to_json(), indent=2) + "\n")
    if params:
        _log_params(run, params)
    return run


def open_run(tracking_uri: str, run_id: str, experiment: str = "") -> TrackedRun:
    """Reopen an existing run by id, its status left as it is (e.g. to attach artifacts to it)."""
    return _reopen({"mlflow_run_id": run_id, "tracking_uri": tracking_uri, "experiment": experiment}, resume=False)


def find_or_create_run(experiment: str, match_tags: Mapping[str, str], *, uri: str | None = None,
                       run_name: str | None = None, tags: Mapping[str, str] | None = None) -> TrackedRun:
    """The run of ``experiment`` whose tags include ``match_tags``, else a new FINISHED run tagged with
    ``match_tags`` and ``tags``. Looking the run up first means a rerun never duplicates it. The
    experiment opens on the runs table in ``mlflow ui`` (:data:`EXPERIMENT_KIND_TAG`)."""
    uri = resolve_uri(uri)
    client = _client(uri)
    exp_id = get_or_create_experiment(experiment, client=client)
    with_retry(client.set_experiment_tag, exp_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_ML)
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in match_tags.items())
    found = with_retry(client.search_runs, [exp_id], filter_string=query, max_results=1)
    if found:
        run_id = found[0].info.run_id
    else:
        all_tags = {str(k): str(v) for k, v in {**match_tags, **(tags or {})}.items()}
        run_id = with_retry(client.create_run, exp_id, run_name=run_name, tags=all_tags).info.run_id
        with_retry(client.set_terminated, run_id, "FINISHED")
    return TrackedRun(run_id, uri, experiment, exp_id, client)


def attach_to_run(out_dir: str | os.PathLike) -> TrackedRun | None:
    """Reopen the run recorded in ``out_dir/run.json`` (e.g. to add evaluation metrics); None if absent.

    The run's status is left as it is (MLflow accepts metrics on a finished run).
    """
    info = read_run_file(out_dir)
    return None if info is None else _reopen(info, resume=False)


def log_metrics(run: TrackedRun | None, metrics: Mapping[str, Any], step: int) -> int:
    """Log numeric ``metrics`` at ``step`` in batched calls; returns how many were written.

    Names pass through :func:`metric_name` (``eval/pass@1`` is stored as ``eval/pass_at_1``).
    Non-numeric values are ignored; booleans are logged as 0/1; steps already stored for a
    resumed run are skipped. ``run=None`` (tracking disabled) does nothing.
    """
    if run is None:
        return 0
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = []
    for key, value in metrics.items():
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, (int, float)) or isinstance(value, complex):
            try:
                value = float(value)  # 0-d tensors / numpy scalars
            except (TypeError, ValueError):
                continue
        key = metric_name(key)
        if step in run.logged_steps.get(key, ()):
            continue
        batch.append(Metric(key, float(value), now, int(step)))
    for i in range(0, len(batch), _BATCH_METRICS):
        with_retry(run.client.log_batch, run.run_id, metrics=batch[i:i + _BATCH_METRICS])
    for m in batch:
        run.logged_steps.setdefault(m.key, set()).add(m.step)
    return len(batch)


def log_params(run: TrackedRun | None, params: Mapping[str, Any]) -> None:
    """Log params not yet present (flattened with dots)."""
    if run is not None:
        _log_params(run, params)


def set_tags(run: TrackedRun | None, tags: Mapping[str, Any]) -> None:
    if run is not None:
        _set_tags(run, tags)


def log_artifacts(run: TrackedRun | None, path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Upload a file or a folder's content to the run's artifact store."""
    if run is None:
        return
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"log_artifacts: {path} does not exist")
    if path.is_dir():
        with_retry(run.client.log_artifacts, run.run_id, str(path), artifact_path)
    else:
        with_retry(run.client.log_artifact, run.run_id, str(path), artifact_path)


def end_run(run: TrackedRun | None, status: str = "FINISHED") -> None:
    """Mark the run FINISHED / FAILED / KILLED."""
    if run is not None:
        with_retry(run.client.set_terminated, run.run_id, status)
