"""Collect the logged metrics of every run into tables (nothing is recomputed).

Inputs (listed by the workflow's manifest): each run's ``metrics.jsonl`` (one JSON object per
training step), its evaluation ``metrics.json`` per benchmark, and the Snakemake benchmark file of
the training job (wall time). Outputs in ``out_dir``:

- ``steps.csv``   one row per (run, step): the run's identifiers + every logged metric;
- ``runs.csv``    one row per run: final training reward, means of the geometry metrics over steps,
  rollouts used, wall time, the path of a Gram dump when the trainer wrote one;
- ``evals.csv``   one row per (run, benchmark, metric);
- ``results.csv`` / ``results.md``  final accuracy per study x method x benchmark x G: mean and
  95% t-interval over seeds of every pass@k / avg@k / maj@k, rollouts used and wall time, and
  each method's paired difference from the baseline (``figures.baseline``, same study, G, seed
  and evaluation problems) with its 95% interval (:mod:`salt.figures.stats`);
- ``claims.json`` / ``claims.md``  the published claims measured on these runs with a verdict
  (:mod:`salt.figures.claims`);
- ``manifest.json``  the manifest itself (figures read it);
- per study, at the paths the manifest's ``study_tables`` names (``<results_dir>/<study>/table.md``
  and ``table.csv``): that study's rows of ``results``; a study without benchmarks gets its final
  training reward per method x G instead (mean and 95% t-interval over seeds).

``salt aggregate --manifest M.json --out DIR`` is the command line. The file names are
:data:`salt.figures.registry.TABLE_FILES` (:func:`table_paths`), which the workflow declares too.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from salt import gram_dump
from salt import metric_names as mn
from salt.eval.evaluate import load_problem_samples, load_problem_scores, output_files
from salt.figures.claims import claims_markdown, evaluate_claims
from salt.figures.registry import table_paths
from salt.figures.stats import mean_ci, paired_difference, t_quantile  # noqa: F401 (re-exported)
from salt.train.outputs import run_files
from salt.utils import atomic_write_text, iter_jsonl

ID_COLS = ["study", "kind", "model", "task", "method", "label", "G", "prompts_per_step", "seed"]

FINAL_WINDOW = 3  # "final" training reward = mean over the last FINAL_WINDOW logged steps


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a metrics.jsonl, one per step (a step logged twice, e.g. after a resume, keeps its last row)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the training run did not log metrics (see its log under <results_dir>/logs/train/)")
    by_step: dict[int, dict[str, Any]] = {}
    order: list[int] = []
    for i, row in enumerate(iter_jsonl(path)):
        step = int(row.get(mn.STEP, i))
        if step not in by_step:
            order.append(step)
        by_step[step] = row
    return [by_step[s] for s in sorted(order)]


def _numeric(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _flatten_numeric(d: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten_numeric(value, name + "/"))
        else:
            num = _numeric(value)
            if num is not None:
                out[name] = num
    return out


def _benchmark_seconds(path: str | Path | None) -> float | None:
    """Wall seconds from a Snakemake benchmark TSV (column ``s``), or None."""
    if not path or not Path(path).exists():
        return None
    with open(path, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    if not rows or "s" not in rows[-1]:
        return None
    return float(rows[-1]["s"])


def _last(steps: list[dict[str, Any]], key: str) -> float:
    vals = [float(s[key]) for s in steps if _numeric(s.get(key)) is not None]
    return max(vals) if vals else float("nan")


def summarize_run(run: Mapping[str, Any], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """One runs.csv row: final accuracy, means over steps of every numeric metric, rollouts and time."""
    out: dict[str, Any] = {c: run[c] for c in ID_COLS}
    out["warmup"] = int(run["warmup"]) if run.get("warmup") is not None else int(run["seed"])
    out["steps"] = len(steps)
    keys = set().union(*(s.keys() for s in steps)) if steps else set()
    final = mn.FINAL_WINDOW_METRIC
    tail = [float(s[final]) for s in steps if _numeric(s.get(final)) is not None][-FINAL_WINDOW:]
    out["final_reward"] = sum(tail) / len(tail) if tail else float("nan")
    out["rollouts_used"] = _last(steps, mn.TRAIN_ROLLOUTS_GENERATED)  # cumulative: the last step's value
    out["rollouts_trained"] = _last(steps, mn.TRAIN_ROLLOUTS)
    seconds = _benchmark_seconds(run.get("benchmark"))
    if seconds is None and mn.TIME_STEP in keys:
        seconds = sum(float(s[mn.TIME_STEP]) for s in steps if _numeric(s.get(mn.TIME_STEP)) is not None)
    out["wall_time_s"] = seconds if seconds is not None else float("nan")
    for key in sorted(keys):
        if key == mn.STEP or not key.startswith(mn.STEP_PREFIXES):
            continue
        vals = [float(s[key]) for s in steps if _numeric(s.get(key)) is not None]
        if vals:
            out[mn.run_mean(key)] = sum(vals) / len(vals)
    dump = gram_dump.latest_informative(run["run_dir"])  # Figure 1's batch (salt/gram_dump.py)
    out["gram_file"] = str(dump) if dump is not None else ""
    out["run_dir"] = run["run_dir"]
    return out


ProblemScores = dict  # {(study, model, task, method, G, benchmark): {seed: {metric: {problem id: score}}}}


def results_table(runs_rows: list[dict[str, Any]], eval_rows: list[dict[str, Any]], level: float = 0.95,
                  problems: ProblemScores | None = None, baseline: str | None = None) -> list[dict[str, Any]]:
    """Mean and t-interval over seeds per (study, model, task, method, G, benchmark), and, when
    ``problems`` and ``baseline`` are given, the paired difference from the baseline of every
    pass@k and avg@n: ``diff_<metric>_mean`` / ``_ci95`` / ``_se_eval`` with ``diff_seeds`` and
    ``diff_problems`` (:func:`salt.figures.stats.paired_difference`: same study, G, seed and problems)."""
    by_run = {(r["study"], r["model"], r["task"], r["method"], r["G"], r["seed"]): r for r in runs_rows}
    order = {m: i for i, m in enumerate(dict.fromkeys(r["method"] for r in runs_rows))}
    groups: dict[tuple, dict[str, Any]] = {}
    for e in eval_rows:
        key = (e["study"], e["model"], e["task"], e["method"], e["G"], e["benchmark"])
        g = groups.setdefault(key, {"label": e["label"], "metrics": {}, "seeds": set()})
        g["metrics"].setdefault(e["metric"], {})[e["seed"]] = e["value"]
        g["seeds"].add(e["seed"])
    table = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[5], int(k[4]), order.get(k[3], len(order)), k[3])):
        study, model, task, method, G, bench = key
        g = groups[key]
        seeds = sorted(g["seeds"])
        row: dict[str, Any] = {"study": study, "model": model, "task": task, "method": method,
                               "label": g["label"], "G": G, "benchmark": bench, "seeds": len(seeds)}
        for metric in sorted(g["metrics"], key=_metric_order):
            mean, half, _ = mean_ci(list(g["metrics"][metric].values()), level)
            row[f"{metric}_mean"] = mean
            row[f"{metric}_ci95"] = half
        if problems is not None and key in problems:  # the evaluation's own interval (problems and samples)
            for metric in sorted({m for per in problems[key].values() for m in per}, key=_metric_order):
                row[f"{metric}_ci95_problems"] = problem_interval([v[metric] for v in problems[key].values()
                                                                   if metric in v], level)
        base_key = (study, model, task, baseline, G, bench)
        if problems is not None and baseline and method != baseline and key in problems and base_key in problems:
            mine, base = problems[key], problems[base_key]
            row["diff_baseline"] = baseline
            for metric in sorted({m for per in mine.values() for m in per}, key=_metric_order):
                d = paired_difference({s: v[metric] for s, v in mine.items() if metric in v},
                                      {s: v[metric] for s, v in base.items() if metric in v}, level)
                row[f"diff_{metric}_mean"], row[f"diff_{metric}_ci95"] = d["mean"], d["ci95"]
                row[f"diff_{metric}_se_eval"] = d["se_eval"]
                row["diff_seeds"], row["diff_problems"] = d["seeds"], d["problems"]
        runs = [by_run[(study, model, task, method, G, s)] for s in seeds if (study, model, task, method, G, s) in by_run]
        row["rollouts_used"] = mean_ci([r["rollouts_used"] for r in runs])[0]
        row["wall_time_s"] = mean_ci([r["wall_time_s"] for r in runs])[0]
        row["final_train_reward"] = mean_ci([r["final_reward"] for r in runs])[0]
        table.append(row)
    return table


def problem_interval(per_seed: Sequence[Mapping[str, float]], level: float = 0.95) -> float:
    """Half-width of the interval of the mean over seeds of the per-seed mean over problems that the evaluation
    alone (problem and sampling noise, not training) gives: t_{P-1} sqrt(sum_s var_s / P_s) / S; NaN without 2 problems."""
    parts = [list(d.values()) for d in per_seed if len(d) > 1]
    if not parts:
        return float("nan")
    var = sum(float(np.var(x, ddof=1)) / len(x) for x in parts)
    return t_quantile(level, min(len(x) for x in parts) - 1) * math.sqrt(var) / len(parts)


def _metric_order(name: str) -> tuple:
    kind, _, k = name.partition("@")
    return ({"pass": 0, "avg": 1, "maj": 2}.get(kind, 3), int(k) if k.isdigit() else 10**9)


def _fmt(x: Any, digits: int = 3) -> str:
    if isinstance(x, float):
        return "nan" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _pm(mean: Any, half: Any, signed: bool = False) -> str:
    """``mean ± half`` (``mean`` alone without an interval, blank without a value)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    m = f"{mean:+.3f}" if signed else _fmt(mean)
    return m if half is None or math.isnan(half) else f"{m} ± {_fmt(half)}"


INTERVAL_NOTE = (
    "Cells: mean ± half-width of the 95% t-interval over seeds (no ± with one seed). Δ columns: the paired "
    "difference from {base}: in each seed, the mean over the evaluation problems both runs share of the "
    "per-problem difference (same study, G, seed and problems), then the t-interval over seeds of those "
    "per-seed differences, so the interval carries training, problem and sampling noise alike.\n")


def markdown_table(table: list[dict[str, Any]]) -> str:
    """Markdown: one line per row, ``mean ± ci`` cells for every metric, then the paired Δ from the
    baseline of pass@1 and of the largest pass@k."""
    if not table:
        return "_No evaluation results (no study lists benchmarks)._\n"
    metrics = sorted({k[: -len("_mean")] for row in table for k in row if k.endswith("_mean") and not k.startswith("diff_")},
                     key=_metric_order)
    passk = [m for m in metrics if m.startswith("pass@")]
    diffs = list(dict.fromkeys(passk[:1] + passk[-1:]))
    base = next((r["diff_baseline"] for r in table if r.get("diff_baseline")), None)
    head = ["study", "method", "G", "benchmark", "seeds"] + metrics
    if base:
        head += [f"Δ {m} vs {base}" for m in diffs]
    head += ["train reward", "rollouts", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        cells = [row["study"], row["label"], str(row["G"]), row["benchmark"], str(row["seeds"])]
        cells += [_pm(row.get(f"{m}_mean", float("nan")), row.get(f"{m}_ci95", float("nan"))) for m in metrics]
        if base:
            cells += [_pm(row.get(f"diff_{m}_mean"), row.get(f"diff_{m}_ci95"), signed=True) or "—" for m in diffs]
        cells += [_fmt(row["final_train_reward"]), _fmt(row["rollouts_used"], 0), _fmt(row["wall_time_s"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + INTERVAL_NOTE.format(base=base or "the baseline")


def training_table(runs_rows: list[dict[str, Any]], level: float = 0.95) -> list[dict[str, Any]]:
    """Final training reward, rollouts and wall time per (study, model, task, method, G): mean and t-interval over seeds."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs_rows:
        groups.setdefault((r["study"], r["model"], r["task"], r["method"], int(r["G"])), []).append(r)
    table = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[2], k[3], k[4])):
        rs = groups[key]
        mean, half, n = mean_ci([r["final_reward"] for r in rs], level)
        table.append({"study": key[0], "model": key[1], "task": key[2], "method": key[3], "label": rs[0]["label"],
                      "G": key[4], "seeds": len(rs), "final_train_reward_mean": mean, "final_train_reward_ci95": half,
                      "rollouts_used": mean_ci([r["rollouts_used"] for r in rs])[0],
                      "wall_time_s": mean_ci([r["wall_time_s"] for r in rs])[0]})
    return table


def markdown_training_table(table: list[dict[str, Any]]) -> str:
    """Markdown of :func:`training_table` (studies without benchmarks)."""
    if not table:
        return "_No training runs._\n"
    head = ["study", "method", "G", "seeds", "final train reward", "rollouts", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table:
        mean, half = row["final_train_reward_mean"], row["final_train_reward_ci95"]
        cell = _fmt(mean) if math.isnan(half) else f"{_fmt(mean)} ± {_fmt(half)}"
        lines.append("| " + " | ".join([row["study"], str(row["label"]), str(row["G"]), str(row["seeds"]), cell,
                                        _fmt(row["rollouts_used"], 0), _fmt(row["wall_time_s"], 1)]) + " |")
    return ("\n".join(lines) + "\n\nThis study lists no benchmarks: final training reward (mean of the last "
            f"{FINAL_WINDOW} logged steps), mean ± half-width of the 95% t-interval over seeds.\n")


def warmup_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, warm-up seed): the warm-up SFT's own held-out evaluation (its metrics.json:
    greedy pass@1, sampled pass@1 and pass@k at T = 1), the baseline every replicate starts from."""
    rows = []
    for model, ws in (manifest.get("warmups") or {}).items():
        for w, path in ws.items():
            if not Path(path).exists():
                raise FileNotFoundError(f"{path} is missing: the warm-up SFT of {model} (seed {w}) did not finish "
                                        "(see <results_dir>/logs/warmup_sft/)")
            m = json.loads(Path(path).read_text())
            rows.append({"model": model, "warmup": int(w),
                         **{k: float(v) for k, v in m.items() if k.startswith(mn.EVAL) and _numeric(v) is not None
                            and "_level" not in k}})
    return rows


def markdown_warmups(rows: list[dict[str, Any]]) -> str:
    """Markdown: each warm-up's held-out scores, then per model the mean and 95% t-interval over warm-ups."""
    if not rows:
        return "_No warm-up SFT in this config (every model has a path)._\n"
    metrics = sorted({k for r in rows for k in r if k.startswith(mn.EVAL)})
    head = ["model", "warm-up seed"] + metrics
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["model"], str(r["warmup"])] + [_fmt(r.get(m, float("nan"))) for m in metrics]) + " |")
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        cells = [_pm(*mean_ci([r.get(m, float("nan")) for r in mine])[:2]) for m in metrics]
        lines.append("| " + " | ".join([f"**{model}: mean over {len(mine)}**", ""] + cells) + " |")
    return ("\n".join(lines) + "\n\nThe warm-up baseline: each warm-up SFT's own evaluation on the held-out split (the "
            "same problems as the runs' evaluations; salt/train/sft.py). Replicate r of a study trains from warm-up r; "
            "last line: mean ± half-width of the 95% t-interval over warm-ups.\n")


def write_csv(path: str | Path, rows: list[dict[str, Any]], first: Sequence[str] = ()) -> None:
    cols = list(first) + sorted({k for r in rows for k in r} - set(first))
    lines: list[str] = []

    class _Sink:
        def write(self, s: str) -> None:
            lines.append(s)

    writer = csv.DictWriter(_Sink(), fieldnames=cols, lineterminator="\n", restval="")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _fmt(v, 6) if isinstance(v, float) else v for k, v in r.items()})
    atomic_write_text(path, "".join(lines))


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a CSV written by :func:`write_csv`, numbers parsed back to float/int."""
    def parse(v: str) -> Any:
        if v == "":
            return None
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v

    with open(path, encoding="utf-8") as fh:
        return [{k: parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def load(manifest: Mapping[str, Any]) -> tuple[list, list, list, ProblemScores, dict]:
    """Read every run of the manifest: (step rows, run rows, eval rows, per-problem scores, samples per problem)."""
    step_rows, run_rows, eval_rows = [], [], []
    problems: ProblemScores = {}
    samples: dict = {}  # same keys: {seed: {problem id: n samples}}
    for run in manifest["runs"]:
        ids = {c: run[c] for c in ID_COLS}
        steps = read_metrics(run_files(run["run_dir"])["metrics"])
        for i, s in enumerate(steps):
            row = dict(ids)
            row["step"] = int(s.get(mn.STEP, i))
            row.update({k: float(v) for k, v in s.items() if k != mn.STEP and _numeric(v) is not None})
            step_rows.append(row)
        run_rows.append(summarize_run(run, steps))
        for bench, path in run.get("evals", {}).items():
            if not Path(path).exists():
                raise FileNotFoundError(f"{path} is missing: evaluation of {run['run_dir']} on {bench} did not finish")
            names = []
            for metric, value in _flatten_numeric(json.loads(Path(path).read_text())).items():
                if mn.BENCHMARK_METRIC.match(metric):
                    eval_rows.append({**ids, "benchmark": bench, "metric": metric, "value": value})
                    names.append(metric)
            key = (run["study"], run["model"], run["task"], run["method"], run["G"], bench)
            problems_file = output_files(Path(path).parent)["problems"]  # next to the evaluation's metrics.json
            problems.setdefault(key, {})[run["seed"]] = load_problem_scores(
                problems_file, [m for m in names if mn.PAIRED_METRIC.match(m)])
            samples.setdefault(key, {})[run["seed"]] = load_problem_samples(problems_file)
    return step_rows, run_rows, eval_rows, problems, samples


def main(manifest: Mapping[str, Any] | str | Path, out_dir: str | Path) -> dict[str, Path]:
    """Build every table from the manifest (a dict or a JSON path); returns the written paths."""
    if not isinstance(manifest, Mapping):
        manifest = json.loads(Path(manifest).read_text())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    step_rows, run_rows, eval_rows, problems, samples = load(manifest)
    baseline = (manifest.get("figures") or {}).get("baseline", "grpo")
    table = results_table(run_rows, eval_rows, problems=problems, baseline=baseline)
    claims = evaluate_claims(manifest, run_rows, step_rows, problems, samples)
    files = table_paths(out)
    paths = {name: files[name] for name in ("steps", "runs", "evals", "results")}
    write_csv(paths["steps"], step_rows, ID_COLS + ["step"])
    write_csv(paths["runs"], run_rows, ID_COLS + ["steps", "final_reward", "rollouts_used", "wall_time_s"])
    write_csv(paths["evals"], eval_rows, ID_COLS + ["benchmark", "metric", "value"])
    write_csv(paths["results"], table, ["study", "model", "task", "method", "label", "G", "benchmark", "seeds"])
    paths["results_md"] = files["results_md"]
    atomic_write_text(paths["results_md"], markdown_table(table))
    for study, where in manifest.get("study_tables", {}).items():
        rows = [r for r in table if r["study"] == study]
        if rows:
            write_csv(where["csv"], rows, ["study", "model", "task", "method", "label", "G", "benchmark", "seeds"])
            atomic_write_text(where["md"], markdown_table(rows))
        else:
            rows = training_table([r for r in run_rows if r["study"] == study])
            write_csv(where["csv"], rows, ["study", "model", "task", "method", "label", "G", "seeds"])
            atomic_write_text(where["md"], markdown_training_table(rows))
        paths[f"table_md:{study}"], paths[f"table_csv:{study}"] = Path(where["md"]), Path(where["csv"])
    warm = warmup_rows(manifest)
    paths["warmups_csv"], paths["warmups_md"] = files["warmups_csv"], files["warmups_md"]
    write_csv(paths["warmups_csv"], warm, ["model", "warmup"])
    atomic_write_text(paths["warmups_md"], markdown_warmups(warm))
    paths["claims_json"], paths["claims_md"] = files["claims_json"], files["claims_md"]
    atomic_write_text(paths["claims_json"], json.dumps(nan_to_none(claims), indent=1) + "\n")
    atomic_write_text(paths["claims_md"], claims_markdown(claims))
    paths["manifest"] = files["manifest"]
    atomic_write_text(paths["manifest"], json.dumps(manifest, indent=1) + "\n")
    return paths


def nan_to_none(x: Any) -> Any:
    """NaN -> None (null) throughout, so that the JSON is strict."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, Mapping):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    return x


def cli_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="salt aggregate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="JSON manifest of the runs (results/tables/manifest.json)")
    parser.add_argument("--out", required=True, help="output folder of the tables")
    args = parser.parse_args(argv)
    paths = main(args.manifest, args.out)
    print("\n".join(str(p) for p in paths.values()))
    return 0
