"""MLflow helpers: parallel writers into one SQLite DB, experiments, resume through run.json."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3

import pytest

from salt import tracking

N_PROC, N_STEPS, N_METRICS = 4, 50, 5


def _worker(db_uri: str, out_dir: str, worker: int, experiment: str) -> None:
    run = tracking.start_run({"uri": db_uri, "experiment": experiment}, run_name=f"w{worker}",
                             out_dir=out_dir, params={"worker": worker, "cfg": {"lr": 0.1 * worker}})
    for step in range(N_STEPS):
        tracking.log_metrics(run, {f"m{k}": worker * 1000 + step * 10 + k for k in range(N_METRICS)}, step=step)
    tracking.end_run(run)


def _history(run, key):
    return run.client.get_metric_history(run.run_id, key)


def test_parallel_writers_lose_and_duplicate_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db_uri = f"sqlite:///{tmp_path}/db/mlflow.db"  # fresh DB: the schema creation races too
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(db_uri, str(tmp_path / f"run{w}"), w, "shared"))
             for w in range(N_PROC)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0] * N_PROC

    run_ids = set()
    for w in range(N_PROC):
        run = tracking.attach_to_run(tmp_path / f"run{w}")
        run_ids.add(run.run_id)
        assert run.experiment == "shared"
        data = run.client.get_run(run.run_id).data
        assert data.params == {"worker": str(w), "cfg.lr": str(0.1 * w)}
        for k in range(N_METRICS):
            hist = _history(run, f"m{k}")
            assert sorted(m.step for m in hist) == list(range(N_STEPS))  # no loss, no duplicate
            assert {m.step: m.value for m in hist} == {s: w * 1000 + s * 10 + k for s in range(N_STEPS)}
    assert len(run_ids) == N_PROC
    con = sqlite3.connect(tmp_path / "db" / "mlflow.db")
    assert con.execute("select count(*) from experiments where name='shared'").fetchone()[0] == 1
    assert con.execute("select count(*) from metrics").fetchone()[0] == N_PROC * N_STEPS * N_METRICS
    con.close()


def test_two_experiments_and_concurrent_creation(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    a = tracking.start_run({"uri": uri, "experiment": "exp_a"}, run_name="a", out_dir=tmp_path / "a")
    b = tracking.start_run({"uri": uri, "experiment": "exp_b"}, run_name="b", out_dir=tmp_path / "b",
                           parent_run_id=None, tags={"method": "salt"})
    assert a.experiment_id != b.experiment_id
    again = tracking.get_or_create_experiment("exp_a", uri=uri)
    assert again == a.experiment_id
    # a standalone run's new experiment opens on the runs table in MLflow 3's UI, not the GenAI view
    tags = a.client.get_experiment(a.experiment_id).tags
    assert tags.get(tracking.EXPERIMENT_KIND_TAG) == tracking.EXPERIMENT_KIND_ML == "custom_model_development"
    # a create that loses the race (experiment appears between the read and the create) re-reads
    client = a.client
    real_get = client.get_experiment_by_name
    calls = {"n": 0}

    def racing_get(name):
        calls["n"] += 1
        return None if calls["n"] == 1 else real_get(name)

    client.get_experiment_by_name = racing_get
    assert tracking.get_or_create_experiment("exp_b", client=client) == b.experiment_id
    assert calls["n"] == 2
    assert b.client.get_run(b.run_id).data.tags["method"] == "salt"
    child = tracking.start_run({"uri": uri, "experiment": "exp_a"}, run_name="child", parent_run_id=a.run_id)
    assert child.client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == a.run_id


def test_resume_keeps_one_run_and_skips_logged_steps(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = {"uri": f"sqlite:///{tmp_path}/m.db", "experiment": "resume"}
    out = tmp_path / "job"
    run = tracking.start_run(cfg, run_name="job", out_dir=out, params={"train": {"lr": 1e-3}})
    for step in range(5):
        tracking.log_metrics(run, {"loss": float(step), "train/acc": 0.1 * step}, step)
    info = json.loads((out / "run.json").read_text())
    assert info == {"mlflow_run_id": run.run_id, "tracking_uri": run.tracking_uri, "experiment": "resume"}
    assert run.tracking_uri.startswith("sqlite:////")  # absolute path

    # the job is killed after step 4 but its last checkpoint was step 2: it re-logs 3..7
    resumed = tracking.start_run(cfg, run_name="ignored", out_dir=out, params={"train": {"lr": 1e-3, "steps": 8}})
    assert resumed.run_id == run.run_id
    written = [tracking.log_metrics(resumed, {"loss": float(s), "train/acc": 0.1 * s}, s) for s in range(3, 8)]
    assert written == [0, 0, 2, 2, 2]
    hist = _history(resumed, "loss")
    assert sorted(m.step for m in hist) == list(range(8))
    assert resumed.client.get_run(run.run_id).data.params == {"train.lr": "0.001", "train.steps": "8"}
    assert resumed.client.get_run(run.run_id).info.status == "RUNNING"

    tracking.end_run(resumed)
    evaluator = tracking.attach_to_run(out)
    assert evaluator.client.get_run(run.run_id).info.status == "FINISHED"  # attaching does not reopen
    tracking.log_metrics(evaluator, {"eval/pass@1": 0.5}, step=8)
    final = evaluator.client.get_run(run.run_id)
    assert final.data.metrics["eval/pass_at_1"] == 0.5 and final.info.status == "FINISHED"
    assert tracking.attach_to_run(tmp_path / "nothing-here") is None


def test_disabled_env_uri_and_bad_run_file(tmp_path, monkeypatch):
    assert tracking.start_run({"enabled": False}, out_dir=tmp_path) is None
    assert tracking.log_metrics(None, {"a": 1.0}, 0) == 0
    assert not (tmp_path / "run.json").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/env.db")
    assert tracking.resolve_uri("sqlite:///elsewhere.db") == f"sqlite:///{tmp_path}/env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)
    assert tracking.resolve_uri(None) == f"sqlite:///{tmp_path}/results/mlflow.db"
    assert (tmp_path / "results").is_dir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="delete it"):
        tracking.attach_to_run(tmp_path / "bad")


def test_retry_on_locked_database_only():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] < 4:
            raise sqlite3.OperationalError("database is locked")
        return "ok"

    assert tracking.with_retry(flaky, base_delay=0.001) == "ok" and calls["n"] == 4

    def broken():
        calls["n"] += 1
        raise ValueError("bad metric name")

    calls["n"] = 0
    with pytest.raises(ValueError):
        tracking.with_retry(broken, base_delay=0.001)
    assert calls["n"] == 1
    with pytest.raises(sqlite3.OperationalError):
        tracking.with_retry(lambda: (_ for _ in ()).throw(sqlite3.OperationalError("database is locked")),
                            attempts=3, base_delay=0.001)


def test_metric_names_are_made_valid():
    assert tracking.metric_name("eval/pass@1") == "eval/pass_at_1"
    assert tracking.metric_name("salt/n_eff") == "salt/n_eff"
    assert tracking.metric_name("a[0]{x}") == "a_0__x_"


def test_flatten():
    assert tracking.flatten({"a": {"b": 1, "c": {"d": [1]}}, "e": None}) == {"a.b": 1, "a.c.d": [1], "e": None}


def test_uri_precedence_has_one_home(tmp_path, monkeypatch):
    """configured_uri: MLFLOW_TRACKING_URI, then tracking.uri, then the default; it touches nothing.
    shared_sqlite_uri (the workflow's executor check) follows the same order."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.configured_uri(None) == tracking.DEFAULT_URI == "sqlite:///results/mlflow.db"
    assert tracking.configured_uri("http://host:5000") == "http://host:5000"
    assert not (tmp_path / "results").exists()  # unlike resolve_uri, no folder is made
    assert tracking.shared_sqlite_uri({"enabled": True, "uri": "sqlite:///x.db"}) == "sqlite:///x.db"
    assert tracking.shared_sqlite_uri({"enabled": False, "uri": "sqlite:///x.db"}) is None
    assert tracking.shared_sqlite_uri({"enabled": True, "uri": "http://host:5000"}) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://server:5000")
    assert tracking.configured_uri("sqlite:///x.db") == "http://server:5000"
    assert tracking.shared_sqlite_uri({"enabled": True, "uri": "sqlite:///x.db"}) is None  # the server wins
    assert tracking.resolve_uri("sqlite:///x.db") == "http://server:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.shared_sqlite_uri({"enabled": True, "uri": "http://host:5000"}) == "sqlite:///env.db"
