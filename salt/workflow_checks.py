"""Checks of a workflow config's input, before any job runs.

``salt check-config FILE...`` reads workflow config files as ``snakemake --configfile FILE...``
would (merged in order) and reports malformed YAML as ``FILE:LINE:COLUMN`` (Snakemake's own
message, "Config file is not valid JSON or YAML", names neither), then checks every key
(salt/workflow_config.py) and every path below. The Snakefile runs the same checks on the config
it is given (workflow/rules/common.smk).

:func:`check_paths`: every path a workflow config names, checked while the DAG is planned (so
`snakemake -n` reports it): ``datasets.*.source`` (a local file or snapshot dir must exist and be
readable), ``models.*.path`` (a local dir needs a ``config.json``; null = the toy model the DAG
builds), the warm-up SFT's ``models.*.sft_config`` file (valid YAML) and the model it names, and
``compute.accelerate_config`` (when ``compute.launcher`` is ``accelerate``).

Relative paths are read from the working directory of the jobs (``workdir``: Snakemake's, or
``salt check-config -d DIR``, resolved against DIR without changing the process's working
directory). A config file named relative to the repository (``config/accelerate/fsdp.yaml`` with
``snakemake -d ELSEWHERE``) is replaced by its absolute path, so that the jobs find it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from salt.config_spec import ConfigError


def _config_file(value: str, key: str, repo: str | Path, problems: list[str],
                 workdir: str | Path | None) -> tuple[str, Any]:
    """``(path the jobs can open, its YAML content)``; a problem is appended when it cannot be read."""
    from salt.tasks.sources import at
    from salt.utils import load_yaml_file

    path, name = at(value, workdir), value  # found from the jobs' working directory: named as given
    if not path.is_file() and not Path(value).expanduser().is_absolute() and (Path(repo) / value).is_file():
        path = name = Path(repo) / value
    if not path.is_file():
        problems.append(f"{key} = '{value}' does not exist (relative paths start at the working directory "
                        f"or the repository {repo}); fix the path")
        return value, None
    try:
        return str(name) if Path(name) != Path(value) else value, load_yaml_file(path)
    except (OSError, ValueError) as exc:
        problems.append(f"{key} = '{value}': {exc}")
        return value, None


def _sft_model_path(sft_set: Mapping[str, Any], sft_yaml: Any) -> str | None:
    """model.path of the warm-up SFT (its --set overrides win over its --config file), or None."""
    if "model.path" in sft_set:
        return sft_set["model.path"]
    for source in (sft_set, sft_yaml if isinstance(sft_yaml, Mapping) else {}):
        model = source.get("model")
        if isinstance(model, Mapping) and model.get("path"):
            return model["path"]
    return None


def check_paths(cfg: dict[str, Any], repo: str | Path, workdir: str | Path | None = None) -> None:
    """Check every path ``cfg`` (the checked workflow config) names, and the datasets' loader options;
    raise one :class:`ConfigError` listing each problem as ``KEY = 'PATH' <what is wrong>; <fix>``.
    Relative paths start at ``workdir`` (default: the working directory). Config files found only
    under ``repo`` are rewritten in ``cfg`` to their absolute path."""
    from salt.tasks.sources import source_problem
    from salt.train.config_checks import model_path_problem

    from salt.tasks.datasets import KNOWN_OPTIONS

    problems: list[str] = []
    for key, d in cfg["datasets"].items():
        unknown = sorted(set(d["set"]) - KNOWN_OPTIONS)
        if unknown:
            problems.append(f"datasets.{key}.set has unknown option(s) {unknown}; valid: {sorted(KNOWN_OPTIONS)}")
        what = source_problem(d["source"], workdir) if d["source"] else None
        if what:
            problems.append(f"datasets.{key}.source = '{d['source']}' {what}; fix the path (a local .jsonl/.json/"
                            ".parquet/.csv file or snapshot directory) or give a hub id")
    for key, m in cfg["models"].items():
        if m["path"]:
            # hub ids pass here: the job downloads them (or reads the cache of the host it runs on)
            what = model_path_problem(m["path"], check_cache=False, base=workdir)
            if what:
                problems.append(f"models.{key}.path = '{m['path']}' {what}; point it at a Hugging Face model dir "
                                "(with config.json) or a hub id, or set it to null for the toy model the workflow "
                                "builds (warmup_sft)")
            continue
        sft_yaml = None
        if m["sft_config"]:
            m["sft_config"], sft_yaml = _config_file(m["sft_config"], f"models.{key}.sft_config", repo, problems,
                                                      workdir)
            if sft_yaml is not None and not isinstance(sft_yaml, Mapping):
                problems.append(f"models.{key}.sft_config = '{m['sft_config']}' must hold a mapping of "
                                "salt.train.sft.SftConfig keys (salt sft --help-config)")
        base = _sft_model_path(m["sft_set"], sft_yaml)
        what = model_path_problem(base, check_cache=False, base=workdir) if base else None
        if what:
            problems.append(f"model.path of the warm-up SFT of models.{key} (sft_set / sft_config) = '{base}' {what}; "
                            "point it at a Hugging Face model dir or hub id, or drop it to build a toy model")
    c = cfg["compute"]
    if c["launcher"] == "accelerate" and c["accelerate_config"]:
        c["accelerate_config"], _ = _config_file(c["accelerate_config"], "compute.accelerate_config", repo, problems,
                                                  workdir)
    if problems:
        raise ConfigError("inputs that cannot be used (checked while the DAG is planned):\n  " + "\n  ".join(problems))


def check_config_files(files: list[str], repo: str | Path, workdir: str | Path | None = None) -> dict[str, Any]:
    """The checked workflow config made of ``files`` (merged in order, as Snakemake merges several
    ``--configfile``); raise ``InputError`` for malformed YAML (``FILE:LINE:COLUMN``), a file
    without a mapping, a bad key or a bad path (relative to ``workdir``, default here)."""
    from salt.utils import InputError, deep_merge, load_yaml_file
    from salt.workflow_config import load_workflow_config

    merged: dict[str, Any] = {}
    for name in files:
        if not Path(name).is_file():
            raise InputError(f"config file '{name}' does not exist")
        data = load_yaml_file(name)
        if not isinstance(data, Mapping):
            raise InputError(f"{name}: a workflow config file must hold a mapping of keys at the top level")
        merged = deep_merge(merged, data)
    cfg = load_workflow_config(merged)
    check_paths(cfg, repo, workdir)
    return cfg


def checked_config(cfg: Mapping[str, Any], repo: str | Path) -> dict[str, Any]:
    """The config the Snakefile was given, checked and with every default filled (the parse-time
    check of ``workflow/rules/common.smk``): a bad key or value raises ``ValueError`` naming the key
    path, the bad value and the fix, a bad path one naming the key and the path."""
    from salt.workflow_config import load_workflow_config

    try:
        resolved = load_workflow_config(cfg)
    except ValueError as exc:
        raise ValueError(f"config error (every key: salt/workflow_config.py, or workflow/schemas/config.schema.yaml):\n"
                         f"  {exc}") from None
    try:
        check_paths(resolved, repo)  # every path the config names, before any job runs
    except ValueError as exc:
        raise ValueError(f"config error: {exc}") from None
    return resolved


def cli_main(argv: list[str]) -> int:
    import argparse

    from salt.workflow_plan import Plan

    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(prog="salt check-config", description="Check workflow config files (YAML syntax "
                                 "with file, line and column; keys; paths) as `snakemake --configfile FILE...` "
                                 "would use them.")
    ap.add_argument("files", nargs="*", default=[str(repo / "config" / "config.yaml")],
                    help="config files, in --configfile order (default: config/config.yaml)")
    ap.add_argument("-d", "--directory", default=None,
                    help="the working directory relative paths start at (snakemake -d; default: here)")
    args = ap.parse_args(argv)
    cfg = check_config_files(args.files, repo, args.directory)  # the config files are named from here
    n_jobs = len(Plan(cfg).jobs)
    print(f"{' + '.join(args.files)}: valid ({len(cfg['studies'])} studies, {n_jobs} training jobs)")
    return 0


__all__ = ["check_config_files", "check_paths", "checked_config", "cli_main"]
