"""``salt evaluate``: sample n completions per problem, score them, report pass@k and friends.

::

    salt evaluate --model DIR --benchmark NAME --data JSONL --out OUT [--n N] [--temperature T]
                  [--top-p P] [--max-new-tokens L] [--ks 1,4,16] [--batch-size B]
                  [--backend hf|vllm] [--seed S] [--tracking-uri URI] [--no-tracking]

* ``--model`` is a training output dir (its ``final/`` model is used and its ``run.json`` names
  the MLflow run to attach the metrics to) or a Hugging Face model dir.
* Completions come from the same rollout backends as training (:func:`salt.rollout.make_backend`)
  and are scored by :func:`salt.tasks.rewards.score_batch`.
* ``OUT/problems.jsonl``: one line per problem id (the n sample correctnesses, extracted answers, lengths, finish
  reasons and the completions, cut to :data:`MAX_SAVED_CHARS`), appended and fsynced as soon as
  the problem is scored. A rerun skips the problems already there (resumable; a torn last line
  from a crash is dropped).
* ``OUT/metrics.json``: :func:`summarise` of every problem of ``--data``: unbiased pass@k for each
  k <= n, avg@n, maj@n, mean response length (tokens), truncation rate (``finish_reason ==
  "length"``), n and the number of problems. Each of pass@k and avg@n is the mean over problems
  of :func:`problem_score`, so two models evaluated on the same problems can be compared paired,
  problem by problem (:func:`load_problem_scores`, used by ``salt aggregate``).
* MLflow: metrics ``eval/<benchmark>/<metric>`` on the run of the evaluated model (found through
  ``run.json`` next to ``final/``), else on a new run whose ``run.json`` is written to OUT.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from salt import metric_names as mn
from salt import config_spec as spec
from salt.config_spec import ConfigError, names_of, option
from salt.tasks.rows import read_rows
from salt.train.outputs import MODEL_DIR
from salt.utils import append_jsonl, atomic_write_text, read_jsonl, report_input_error

log = logging.getLogger(__name__)

MAX_SAVED_CHARS = 2000
PROBLEMS_FILE = "problems.jsonl"
METRICS_FILE = "metrics.json"


def output_files(out_dir: str | Path) -> dict[str, Path]:
    """What ``salt evaluate --out OUT`` writes: ``metrics`` (OUT/metrics.json) and ``problems``
    (OUT/problems.jsonl). The one owner of these names: the evaluation writes them, the workflow
    declares them (``salt.workflow_plan.LAYOUT``), aggregation reads them."""
    out = Path(out_dir)
    return {"metrics": out / METRICS_FILE, "problems": out / PROBLEMS_FILE}


# ---------------------------------------------------------------------------------------------
# the pure part


def summarise(problem_results: Sequence[Mapping[str, Any]], ks: Sequence[int]) -> dict[str, Any]:
    """Aggregate per-problem records into benchmark metrics.

    Args:
        problem_results: one record per problem with ``correct`` (list of bool, length n_i),
            ``extracted`` (list of str | None), ``lengths`` (completion tokens) and
            ``finish_reasons`` ("stop" | "length").
        ks: the k of pass@k; a k larger than the smallest n is left out (listed in
            ``ks_skipped``).
    Returns:
        ``{"n_problems", "n", "pass@k"..., "avg@n", "maj@n", "mean_response_length",
        "truncation_rate", "ks_skipped"}``; pass@k, avg@n and maj@n are means over problems.
    """
    from salt.eval.metrics import maj_at_k

    if not problem_results:
        raise ValueError("summarise: no problem results")
    ns = [len(r["correct"]) for r in problem_results]
    if min(ns) < 1:
        bad = next(r.get("id") for r in problem_results if not r["correct"])
        raise ValueError(f"summarise: problem {bad!r} has no samples")
    n_min = min(ns)
    out: dict[str, Any] = {mn.N_PROBLEMS: len(problem_results), mn.N_SAMPLES: n_min if n_min == max(ns) else ns}
    ks_used = sorted({int(k) for k in ks if 1 <= int(k) <= n_min})
    for name in [mn.pass_at(k) for k in ks_used] + [mn.AVG_AT_N]:
        out[name] = sum(problem_score(r["correct"], name) for r in problem_results) / len(problem_results)
    out[mn.MAJ_AT_N] = sum(maj_at_k(r["extracted"], [bool(c) for c in r["correct"]])
                       for r in problem_results) / len(problem_results)
    lengths = [int(x) for r in problem_results for x in r["lengths"]]
    reasons = [x for r in problem_results for x in r["finish_reasons"]]
    out[mn.MEAN_RESPONSE_LENGTH] = sum(lengths) / len(lengths) if lengths else 0.0
    out[mn.TRUNCATION_RATE] = sum(1 for x in reasons if x == "length") / len(reasons) if reasons else 0.0
    out["ks_skipped"] = sorted({int(k) for k in ks} - set(ks_used))
    return out


def problem_score(correct: Sequence[bool], metric: str) -> float:
    """One problem's contribution to ``metric`` (``pass@k`` unbiased, or ``avg@n``) from its n
    sample correctnesses; the benchmark's value is the mean over problems (:func:`summarise`).
    The results table pairs methods on these per-problem scores (``problems.jsonl``)."""
    from salt.eval.metrics import avg_at_k, pass_at_k

    if metric == mn.AVG_AT_N:
        return avg_at_k([float(bool(c)) for c in correct])
    kind, _, k = metric.partition("@")
    if kind != "pass" or not k.isdigit():
        raise ValueError(f"problem_score: metric {metric!r} is not pass@<k> or avg@n")
    return pass_at_k(len(correct), int(sum(map(bool, correct))), int(k))


def load_problem_scores(path: str | os.PathLike, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{metric: {problem id: score}}`` from an evaluation's ``problems.jsonl`` (:func:`problem_score`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: rerun `salt evaluate` for it (it writes one line per problem "
                                "with the n sample correctnesses, which the paired comparisons need)")
    recs = read_jsonl(path)
    return {m: {str(r["id"]): problem_score(r["correct"], m) for r in recs} for m in metrics}


def load_problem_samples(path: str | os.PathLike) -> dict[str, int]:
    """``{problem id: number of samples}`` from an evaluation's ``problems.jsonl``."""
    return {str(r["id"]): len(r["correct"]) for r in read_jsonl(Path(path))}


def load_done(path: Path) -> dict[str, dict[str, Any]]:
    """Records already in ``problems.jsonl`` by id; a torn last line (crash mid-write) is cut off."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    done: dict[str, dict[str, Any]] = {}
    good_end = 0
    pos = 0
    for line in raw.split(b"\n"):
        end = pos + len(line) + 1
        if line.strip():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if end >= len(raw):  # only the last line may be torn
                    break
                raise ValueError(f"{path}: line at byte {pos} is not valid JSON; remove it to resume")
            done[rec["id"]] = rec
        good_end = min(end, len(raw))
        pos = end
    if good_end < len(raw):
        log.warning("%s: dropping a torn last line (%d bytes) before resuming", path, len(raw) - good_end)
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return done


# ---------------------------------------------------------------------------------------------
# model, backend and tracking


def resolve_model_dir(model: str | os.PathLike) -> tuple[Path, Path | None]:
    """``(model_dir, run_dir)``: a training output dir's ``final/`` (run dir = the output dir), or
    a model dir itself (run dir = its parent when the parent holds ``run.json``)."""
    from salt.tracking import RUN_FILE

    path = Path(model).expanduser()
    if (path / MODEL_DIR / "config.json").exists():
        return path / MODEL_DIR, path
    if (path / "config.json").exists():
        parent = path.resolve().parent
        return path, parent if (parent / RUN_FILE).exists() else None
    raise FileNotFoundError(
        f"--model {path}: no config.json there nor in {path / MODEL_DIR}; pass a training output dir "
        f"(with {MODEL_DIR}/) or a Hugging Face model dir"
    )


def load_model(model_dir: Path, backend: str):
    """Tokenizer and model for the backend (hf: float32 on CPU / the first GPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if backend == "vllm":
        # vLLM loads the weights itself from the directory: hand the backend a weightless stand-in
        # carrying what it reads (the directory and the generation EOS ids)
        from types import SimpleNamespace

        from transformers import GenerationConfig

        try:
            gen = GenerationConfig.from_pretrained(str(model_dir))
        except OSError:
            gen = None
        return SimpleNamespace(name_or_path=str(model_dir), generation_config=gen), tokenizer
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if torch.cuda.is_available():
        model = model.to("cuda")
    model.eval()
    return model, tokenizer


def _open_tracking(args: EvaluateConfig, run_dir: Path | None, out_dir: Path):
    if args.no_tracking:
        return None
    from salt import tracking

    if run_dir is not None and (run_dir / tracking.RUN_FILE).exists():
        return tracking.attach_to_run(run_dir)
    cfg = {"uri": args.tracking_uri} if args.tracking_uri else {}
    return tracking.start_run(cfg, run_name=f"eval-{args.benchmark}", out_dir=out_dir,
                              tags={"salt.kind": "evaluation", "salt.benchmark": args.benchmark})


# ---------------------------------------------------------------------------------------------
# the command


def evaluate(args: EvaluateConfig) -> dict[str, Any]:
    from salt.rollout import make_backend
    from salt.tasks.prompts import build_prompt
    from salt.tasks.rewards import check_code_sandbox, score_batch

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_rows(args.data, what="--data")  # every row validated: the first bad one names FILE:LINE
    if args.limit:
        rows = rows[: args.limit]
    # fail closed before any model is loaded: code rows need the sandbox (or --allow-unisolated)
    sandbox = check_code_sandbox(rows, getattr(args, "allow_unisolated", False))
    ks = [int(k) for k in str(args.ks).split(",") if k.strip()]  # checked by EvaluateConfig
    files = output_files(out_dir)
    problems_path = files["problems"]
    done = load_done(problems_path)
    for rid, rec in done.items():
        if len(rec["correct"]) != args.n:
            raise ValueError(f"{problems_path}: problem {rid!r} was scored with n={len(rec['correct'])}, "
                             f"not --n {args.n}; use another --out or the same --n")
    todo = [r for r in rows if r["id"] not in done]
    log.info("evaluate %s: %d problems, %d already scored, %d to go", args.benchmark, len(rows), len(done), len(todo))

    model_dir, run_dir = resolve_model_dir(args.model)
    if todo:
        model, tokenizer = load_model(model_dir, args.backend)
        rollout_cfg: dict[str, Any] = {"backend": args.backend, "batch_size": args.gen_batch_size,
                                       "max_new_tokens": args.max_new_tokens, "seed": args.seed}
        if args.backend == "vllm":
            rollout_cfg["vllm"] = {"model": str(model_dir), "dtype": args.vllm_dtype,
                                   "enforce_eager": args.vllm_enforce_eager}
        backend = make_backend(rollout_cfg, model, tokenizer)
        t0 = time.monotonic()
        index_of = {r["id"]: i for i, r in enumerate(rows)}
        for start in range(0, len(todo), args.batch_size):
            batch = todo[start:start + args.batch_size]
            prompts = [build_prompt(r, tokenizer, system_prompt=args.system_prompt) for r in batch]
            # the seed of a batch depends on its first problem, so a resumed run samples the same way
            seed = int(args.seed) * 1_000_003 + index_of[batch[0]["id"]]
            out = backend.generate(prompts, n=args.n, max_new_tokens=args.max_new_tokens,
                                   temperature=args.temperature, top_p=args.top_p, seed=seed)
            expanded = [r for r in batch for _ in range(args.n)]  # (P * n) rows, grouped by prompt
            scores = score_batch(expanded, out.texts, workers=args.workers, timeout_s=args.timeout_s,
                                 code_timeout_s=args.code_timeout_s)
            for j, row in enumerate(batch):
                sl = slice(j * args.n, (j + 1) * args.n)
                rec = {
                    "id": row["id"],
                    "task": row["task"],
                    "answer": row.get("answer"),
                    "correct": [s.reward >= 1.0 for s in scores[sl]],
                    "rewards": [s.reward for s in scores[sl]],
                    "extracted": [None if s.extracted is None else str(s.extracted)[:MAX_SAVED_CHARS]
                                  for s in scores[sl]],
                    "lengths": [len(c) for c in out.completion_ids[sl]],
                    "finish_reasons": list(out.finish_reasons[sl]),
                    "completions": [t[:MAX_SAVED_CHARS] for t in out.texts[sl]],
                }
                append_jsonl(problems_path, rec)
                done[row["id"]] = rec
            log.info("evaluate %s: %d/%d problems (%.1fs)", args.benchmark, len(done), len(rows),
                     time.monotonic() - t0)
        backend.close()

    results = [done[r["id"]] for r in rows]
    summary = summarise(results, ks)
    summary.update(benchmark=args.benchmark, data=str(Path(args.data).resolve()), model=str(model_dir.resolve()),
                   temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                   seed=args.seed, backend=args.backend)
    if sandbox is not None:
        summary["sandbox"] = sandbox["mode"] + (" (opted in: allow_unisolated)" if sandbox["missing"] else "")
    atomic_write_text(files["metrics"], json.dumps(summary, indent=2, sort_keys=True) + "\n")

    run = _open_tracking(args, run_dir, out_dir)
    if run is not None:
        from salt import tracking

        metrics = {mn.eval_benchmark(args.benchmark, k): v for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        tracking.log_metrics(run, metrics, step=args.step)
        tracking.log_params(run, {f"eval.{args.benchmark}": {
            "n": args.n, "temperature": args.temperature, "top_p": args.top_p,
            "max_new_tokens": args.max_new_tokens, "seed": args.seed, "data": summary["data"],
            **({"sandbox": summary["sandbox"]} if "sandbox" in summary else {})}})
        tracking.end_run(run)
        summary["mlflow_run_id"] = run.run_id
        summary["tracking_uri"] = run.tracking_uri
        atomic_write_text(files["metrics"], json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


def _check_ks(value: str, key: str) -> None:
    parts = [k.strip() for k in str(value).split(",") if k.strip()]
    if not parts or not all(k.isdigit() and int(k) >= 1 for k in parts):
        raise ConfigError(f"config key '{key}' = {value!r}: give comma-separated k >= 1 of pass@k, e.g. 1,4,16")


@dataclass
class EvaluateConfig:
    """``salt evaluate``: one model on one benchmark (each key is a command-line flag)."""

    model: str = option(help="training output dir (uses final/) or HF model dir")
    benchmark: str = option(help="benchmark name (metric namespace), e.g. math500")
    data: str = option(help="prepared rows (DIR/data.jsonl from salt prepare-data)")
    out: str = option(help="output dir: problems.jsonl + metrics.json")
    n: int = option(4, "samples per problem (pass@k needs n >= k)", ge=1)
    temperature: float = option(1.0, "sampling temperature", ge=0)
    top_p: float = option(1.0, "nucleus sampling threshold", gt=0, le=1)
    max_new_tokens: int = option(512, "maximum response length in tokens", ge=1)
    ks: str = option("1,4,16", "comma-separated k of pass@k (k > n are skipped)", check=_check_ks)
    batch_size: int = option(8, "problems per generate call", ge=1)
    gen_batch_size: int | None = option(None, "hf backend: max rollouts per model.generate", ge=1)
    backend: str = option("hf", "generation backend", choices=names_of("salt.rollout:BACKENDS"))
    vllm_dtype: str = option("auto", "vllm backend: engine dtype (auto: vLLM's rule, bf16/fp16 for a float32 "
                             "checkpoint; float32: the hf backend's numbers)",
                             choices=("auto", "float32", "bfloat16", "float16"))
    vllm_enforce_eager: bool = option(False, "vllm backend: no CUDA graphs, and on CPU no torch.compile of the model: "
                                      "a faster engine start, slower decoding (suits short evaluations of small "
                                      "models on CPU)")
    seed: int = option(0, "sampling seed")
    limit: int | None = option(None, "evaluate the first N problems only (0 or unset: all)", ge=0)
    system_prompt: str | None = option(None, "system prompt of every problem")
    workers: int = option(2, "math verifier processes / concurrent sandboxes", ge=1)
    timeout_s: float = option(5.0, "deadline per math comparison", gt=0)
    code_timeout_s: float = option(10.0, "deadline per program", gt=0)
    step: int = option(0, "MLflow step the metrics are logged at", ge=0)
    allow_unisolated: bool = option(
        False, "code benchmarks: run programs in the code sandbox's weaker fallback when bubblewrap is "
        "missing (default: stop at start-up; see salt.tasks.sandbox)")
    tracking_uri: str | None = option(None, "MLflow URI for a new run (default: salt.tracking's)")
    no_tracking: bool = option(False, "do not log to MLflow")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="salt evaluate", description=__doc__.split("\n\n")[0])
    spec.add_arguments(p, EvaluateConfig)
    return p


def cli_main(argv: list[str]) -> int:
    from salt.tasks.sandbox import SandboxIsolationError

    try:
        args = spec.parse_args(_parser(), EvaluateConfig, argv)
    except ConfigError as exc:
        return report_input_error("salt evaluate", exc)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        summary = evaluate(args)
    except (ValueError, FileNotFoundError, SandboxIsolationError) as exc:
        return report_input_error("salt evaluate", exc)
    shown = {k: v for k, v in summary.items() if k.startswith(("pass@", "avg@", "maj@")) or k in ("n_problems", "n")}
    print(json.dumps(shown, sort_keys=True))
    return 0


__all__ = ["EvaluateConfig", "cli_main", "evaluate", "load_done", "load_problem_scores", "problem_score",
           "resolve_model_dir", "summarise"]
