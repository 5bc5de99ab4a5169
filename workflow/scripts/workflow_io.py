"""The workflow's glue (imported by the scripts beside it): run-config files, the MLflow parent run
of each study and the artifacts attached to it.

MLflow goes through the public functions of :mod:`salt.tracking` (SQLite URI made absolute,
retries on a locked database), so parallel Snakemake jobs and two workflows sharing one database
lose nothing.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Mapping

import yaml

from salt.utils import atomic_write_text

PARENT_TAG = "salt.parent"
STUDY_TAG = "salt.study"


def write_run_config(run: Mapping[str, Any], parent_json: str | Path, out: str | Path) -> dict[str, Any]:
    """Write ``run`` as YAML to ``out`` with ``tracking.parent_run_id`` taken from ``parent_json``."""
    cfg = copy.deepcopy(dict(run))
    parent = json.loads(Path(parent_json).read_text())
    cfg.setdefault("tracking", {})["parent_run_id"] = parent.get("mlflow_run_id")
    atomic_write_text(out, yaml.safe_dump(cfg, sort_keys=False))
    return cfg


def ensure_parent_run(tracking: Mapping[str, Any], study: Mapping[str, Any], out_json: str | Path) -> dict[str, Any]:
    """Find the study's parent run (tags ``salt.parent``, ``salt.study``) or create it; write its id.

    Looking the run up first means a rerun of this step (or a deleted json) never duplicates it.
    """
    from salt import tracking as tr

    record: dict[str, Any] = {"study": study["name"], "mlflow_run_id": None, "tracking_uri": None,
                              "experiment": tracking.get("experiment")}
    if tracking.get("enabled", True):
        run = tr.find_or_create_run(tracking["experiment"], {PARENT_TAG: "true", STUDY_TAG: study["name"]},
                                    uri=tracking.get("uri"), run_name=study["name"],
                                    tags={"salt.study_kind": study.get("kind", "")})
        record.update(mlflow_run_id=run.run_id, tracking_uri=run.tracking_uri, experiment_id=run.experiment_id)
    atomic_write_text(out_json, json.dumps(record, indent=2) + "\n")
    return record


def log_artifacts_to_parents(parent_jsons: list[str | Path], files: list[str | Path], artifact_path: str = "figures") -> int:
    """Log ``files`` as artifacts of every parent run listed in ``parent_jsons``; returns the runs touched."""
    from salt import tracking as tr

    touched = 0
    for path in parent_jsons:
        record = json.loads(Path(path).read_text())
        if not record.get("mlflow_run_id"):
            continue
        run = tr.open_run(record["tracking_uri"], record["mlflow_run_id"])
        for file in files:
            tr.log_artifacts(run, file, artifact_path)
        touched += 1
    return touched


def log_study_artifacts(manifest: Mapping[str, Any], figures: list[str | Path], claims: list[str | Path],
                        report_html: str | Path | None) -> int:
    """Attach to each study's parent run its own table (``table/``), every figure (``figures/``), the
    report (``report/``) and, for studies of kind main (the ones the claims measure), the claims
    (``claims/``). Returns the parent runs touched (0 with tracking off)."""
    if not (manifest.get("tracking") or {}).get("enabled", True):
        return 0
    kinds = {r["study"]: r["kind"] for r in manifest["runs"]}
    touched = 0
    for study, parent_json in manifest.get("parents", {}).items():
        table = manifest.get("study_tables", {}).get(study, {})
        groups = {"table": [table[k] for k in ("md", "csv") if k in table], "figures": list(figures),
                  "report": [report_html] if report_html else [],
                  "claims": list(claims) if kinds.get(study) == "main" else []}
        hits = [log_artifacts_to_parents([parent_json], files, path) for path, files in groups.items() if files]
        touched += int(any(hits))
    return touched
