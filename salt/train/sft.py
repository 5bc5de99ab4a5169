"""Warm-up SFT of the toy model: ``salt sft --out DIR [--config SFT.yaml] [--set k=v]``.

Teaches a randomly initialised toy model (or ``model.path``) the toy task by teacher forcing on
``prompt + target + EOS`` with the loss on the target tokens and EOS only, then measures pass@1
on the toy test split, greedy and sampled at T=1, and sampled pass@k. The demonstrations come
from a mixture of solvers (``data.mixture``, see :func:`salt.tasks.toy.demonstrations`): by
default two correct answers and three systematic slips per problem, so the warm-up learns the
arithmetic but samples the right answer only about a third of the time (pass@8 is high): RL
then has headroom that transfers across problems (README, "The embedded toy task: why RL can
learn it").

Outputs in ``DIR``: ``final/`` (``save_pretrained`` model + tokenizer, written atomically
through ``final.tmp/``), ``metrics.json``, ``sft_config.resolved.yaml``, ``run.json`` when
tracking is enabled. Same config and seed give the same model and numbers on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from salt import config_spec as spec
from salt import metric_names as mn
from salt import tracking
from salt.config_spec import ConfigError, names_of, option, section
from salt.eval.metrics import pass_at_k
from salt.rollout.hf import HFBackend
from salt.tasks.prompts import build_prompt
from salt.tasks.toy import DEFAULT_MIXTURE, check_mixture, demonstrations, format_target, generate_problems, toy_reward
from salt.train.config import TrackingConfig
from salt.train.outputs import warmup_files
from salt.train.toy_model import build_toy_model, train_toy_tokenizer
from salt.utils import InputError, atomic_write_text, deep_merge, load_yaml_file, parse_set_overrides, seed_everything


@dataclass
class SftModelConfig:
    path: str | None = option(None, "HF model dir to fine-tune; null = build the toy tokenizer + a random toy model.")
    size: str = option("tiny", "Toy model size when path is null.", choices=names_of("salt.train.toy_model:MODEL_SIZES"))
    max_position_embeddings: int = option(64, "Toy model context length (prompt + completion).", ge=1)


def _mixture(value: Mapping[str, int], key: str) -> None:

    try:
        check_mixture(value)
    except ValueError as exc:
        raise ConfigError(f"sft config: {key}: {exc}") from exc


@dataclass
class SftDataConfig:
    train_problems: int = option(1150, "Distinct toy warm-up problems (split 'train', data seed = seed).", ge=1)
    test_problems: int = option(300, "Toy test problems for the accuracy (split 'test', data seed 0).", ge=1)
    levels: list = option([1], "Difficulty levels, round-robin.", min_items=1,
                          items={"choices": names_of("salt.tasks.toy:LEVELS")})
    mixture: dict = option(DEFAULT_MIXTURE,
                           "Demonstrations per problem from each solver of salt.tasks.toy.SOLVERS (a mixture given "
                           "replaces this one, it is not merged into it).", check=_mixture)


@dataclass
class SftTrainConfig:
    steps: int = option(6000, "Optimizer steps (about 2 minutes on one core).", ge=1)
    batch_size: int = option(64, "Sequences per step.", ge=1)
    lr: float = option(1.0e-3, "AdamW peak learning rate.", gt=0)
    weight_decay: float = option(0.01, "AdamW weight decay.", ge=0)
    warmup_steps: int = option(20, "Linear warm-up steps, then cosine decay to 10% of lr.", ge=0)
    max_grad_norm: float = option(1.0, "Gradient clipping norm.", gt=0)
    log_every: int = option(50, "Log the mean loss every K steps.", ge=1)


@dataclass
class SftEvalConfig:
    max_new_tokens: int = option(6, "Completion length of the evaluation (toy answers: at most 4 characters + EOS).",
                                 ge=1)
    samples: int = option(8, "Rollouts per test problem at T=1 for the sampled pass@1 and pass@k.", ge=1)
    batch_size: int = option(512, "Rollouts per generate call.", ge=1)


@dataclass
class SftTrackingConfig(TrackingConfig):
    experiment: str = option("salt-sft", "MLflow experiment name.")


@dataclass
class SftConfig:
    """``salt sft``: the warm-up of the toy model."""

    seed: int = option(0, "Model init, batch order and sampled evaluation.")
    model: SftModelConfig = section(SftModelConfig, "The model fine-tuned (or built).")
    data: SftDataConfig = section(SftDataConfig, "The toy problems and demonstrations.")
    train: SftTrainConfig = section(SftTrainConfig, "Optimisation.")
    eval: SftEvalConfig = section(SftEvalConfig, "Evaluation on the toy test split.")
    tracking: SftTrackingConfig = section(SftTrackingConfig, "MLflow.")


DEFAULTS: dict[str, Any] = spec.to_dict(SftConfig())  # every key and its default, as a plain dict


def resolve_config(cfg: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults filled into ``cfg`` (a plain dict); unknown keys and bad values raise naming the key."""
    out = spec.to_dict(spec.load(SftConfig, cfg or {}))
    if out["model"]["path"] is not None and not (Path(out["model"]["path"]) / "config.json").is_file():
        raise ConfigError(f"sft config: model.path = '{out['model']['path']}' has no config.json; "
                          "point it at a Hugging Face model dir or set it to null for the toy model")
    return out


def load_or_build(cfg: Mapping[str, Any]):
    """(model, tokenizer): ``model.path`` loaded, or the toy tokenizer + a random toy model."""
    if cfg["model"]["path"] is not None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg["model"]["path"])
        model = AutoModelForCausalLM.from_pretrained(cfg["model"]["path"], dtype=torch.float32)
        return model, tok

    tok = train_toy_tokenizer(None)
    model = build_toy_model(tok, cfg["model"]["size"], seed=int(cfg["seed"]),
                            max_position_embeddings=int(cfg["model"]["max_position_embeddings"]))
    return model, tok


def encode_examples(rows: list[dict], tokenizer) -> list[tuple[list[int], int]]:
    """Per row ``(ids, n_prompt)``: ids = prompt ids + target ids + EOS; the loss starts at ``n_prompt``."""

    out = []
    for row in rows:
        prompt_ids = tokenizer(build_prompt(row, tokenizer))["input_ids"]
        target_ids = tokenizer(format_target(row), add_special_tokens=False)["input_ids"]
        out.append((list(prompt_ids) + list(target_ids) + [tokenizer.eos_token_id], len(prompt_ids)))
    return out


def collate(examples: list[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask`` (B, T) and ``labels`` (B, T) with -100 off-target."""
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for i, (ids, n_prompt) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def target_loss(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the target tokens (labels != -100)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1])  # (B*(T-1), V)
    shift_labels = batch["labels"][:, 1:].reshape(-1)  # (B*(T-1),)
    return torch.nn.functional.cross_entropy(shift_logits.float(), shift_labels, ignore_index=-100)


def evaluate_toy(model, tokenizer, rows: list[dict], max_new_tokens: int, samples: int, seed: int,
                 batch_size: int | None = None) -> dict[str, float]:
    """Greedy pass@1, sampled (T=1) pass@1 (mean over ``samples`` rollouts) overall and per level,
    and the unbiased sampled pass@k for k = 2, 4, ... up to ``samples``."""

    backend = HFBackend(model, tokenizer, batch_size=batch_size)
    prompts = [build_prompt(r, tokenizer) for r in rows]
    greedy = backend.generate(prompts, n=1, max_new_tokens=max_new_tokens, temperature=0.0)
    sampled = backend.generate(prompts, n=samples, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed)
    g = [toy_reward(r["answer"], t) for r, t in zip(rows, greedy.texts)]
    s = [sum(toy_reward(r["answer"], sampled.texts[j * samples + k]) for k in range(samples)) / samples
         for j, r in enumerate(rows)]
    metrics = {mn.EVAL_PASS1_GREEDY: sum(g) / len(g), mn.eval_pass_at_t1(1): sum(s) / len(s),
               mn.EVAL_STOP_RATE_GREEDY: sum(f == "stop" for f in greedy.finish_reasons) / len(rows)}
    k = 2
    while k <= samples:
        metrics[mn.eval_pass_at_t1(k)] = sum(pass_at_k(samples, round(x * samples), k) for x in s) / len(s)
        k *= 2
    for level in sorted({r["meta"]["difficulty"] for r in rows}):
        idx = [i for i, r in enumerate(rows) if r["meta"]["difficulty"] == level]
        metrics[mn.eval_pass1_greedy_level(level)] = sum(g[i] for i in idx) / len(idx)
        metrics[mn.eval_pass1_t1_level(level)] = sum(s[i] for i in idx) / len(idx)
    return metrics


def _lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def run_sft(cfg: Mapping[str, Any] | None, out_dir: str | Path) -> dict[str, Any]:
    """Run the warm-up; returns the metrics written to ``out_dir/metrics.json``.

    Runs with one torch thread (restored afterwards): the toy model is too small to gain from
    more, and the numbers then do not depend on the machine's core count.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_sft(cfg, out_dir)
    finally:
        torch.set_num_threads(threads)


def _run_sft(cfg: Mapping[str, Any] | None, out_dir: str | Path) -> dict[str, Any]:
    import yaml


    cfg = resolve_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "sft_config.resolved.yaml", yaml.safe_dump(cfg, sort_keys=False))
    seed = int(cfg["seed"])
    seed_everything(seed)
    model, tok = load_or_build(cfg)
    levels = tuple(cfg["data"]["levels"])
    train_rows = generate_problems(int(cfg["data"]["train_problems"]), "train", seed=seed, levels=levels)
    test_rows = generate_problems(int(cfg["data"]["test_problems"]), "test", seed=0, levels=levels)
    examples = encode_examples(demonstrations(train_rows, cfg["data"]["mixture"]), tok)
    longest = max(len(ids) for ids, _ in examples) + int(cfg["eval"]["max_new_tokens"])
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and longest > limit:
        raise ValueError(f"sft: prompt + eval.max_new_tokens = {longest} tokens exceeds the model's "
                         f"max_position_embeddings ({limit}); raise model.max_position_embeddings")


    run = tracking.start_run(cfg["tracking"], run_name=cfg["tracking"]["run_name"] or f"sft-{out.name}",
                             out_dir=out, params=cfg, tags={"stage": "sft"})
    tcfg = cfg["train"]
    steps, bs = int(tcfg["steps"]), int(tcfg["batch_size"])
    opt = torch.optim.AdamW(model.parameters(), lr=float(tcfg["lr"]), weight_decay=float(tcfg["weight_decay"]),
                            betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, int(tcfg["warmup_steps"]), steps))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(examples), generator=gen).tolist()
    pos = 0
    model.train()
    t0 = time.time()
    losses: list[float] = []
    try:
        for step in range(steps):
            idx = []
            while len(idx) < bs:  # epochs of shuffled examples
                if pos == len(order):
                    order, pos = torch.randperm(len(examples), generator=gen).tolist(), 0
                idx.append(order[pos])
                pos += 1
            batch = collate([examples[i] for i in idx], tok.pad_token_id)
            loss = target_loss(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), float(tcfg["max_grad_norm"]))
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if (step + 1) % int(tcfg["log_every"]) == 0 or step + 1 == steps:
                window = losses[-int(tcfg["log_every"]):]
                tracking.log_metrics(run, {mn.SFT_LOSS: sum(window) / len(window), mn.SFT_GRAD_NORM: float(grad_norm),
                                           mn.SFT_LR: sched.get_last_lr()[0]}, step=step + 1)
                print(f"sft step {step + 1}/{steps} loss {sum(window) / len(window):.4f} "
                      f"({time.time() - t0:.1f}s)", file=sys.stderr, flush=True)
        train_time = time.time() - t0
        model.eval()
        ecfg = cfg["eval"]
        metrics: dict[str, Any] = evaluate_toy(model, tok, test_rows, int(ecfg["max_new_tokens"]),
                                               int(ecfg["samples"]), seed, int(ecfg["batch_size"]))
        metrics.update({mn.SFT_FINAL_LOSS: losses[-1], mn.SFT_TRAIN_SECONDS: train_time,
                        mn.SFT_TOTAL_SECONDS: time.time() - t0, mn.SFT_STEPS: steps,
                        "test_problems": len(test_rows), "train_problems": len(train_rows),
                        "train_demonstrations": len(examples)})
        files = warmup_files(out)
        tmp = out / "final.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if files["final"].exists():
            shutil.rmtree(files["final"])
        tmp.rename(files["final"])
        atomic_write_text(files["metrics"], json.dumps(metrics, indent=2) + "\n")
        tracking.log_metrics(run, {k: v for k, v in metrics.items() if k.startswith((mn.EVAL, mn.SFT))}, step=steps)
        tracking.log_artifacts(run, files["metrics"])
        tracking.end_run(run)
    except BaseException:
        tracking.end_run(run, "FAILED")
        raise
    return metrics


def load_config_file(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise InputError(f"--config '{p}' does not exist; pass an existing YAML file (keys: salt sft --help-config)")
    data = load_yaml_file(p) or {}  # not UTF-8 / not YAML: InputError naming FILE:LINE:COLUMN
    if not isinstance(data, dict):
        raise InputError(f"--config '{p}' must hold a mapping at the top level")
    return data


def cli_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="salt sft", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output dir (DIR/final, DIR/metrics.json)")
    parser.add_argument("--config", default=None, help="YAML file with keys of salt.train.sft.SftConfig")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a key, e.g. --set train.steps=100 (repeatable)")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its default and help")
    args = parser.parse_args(argv)
    if args.help_config:
        print(spec.describe(SftConfig))
        return 0
    if not args.out:
        parser.error("--out is required")
    cfg = deep_merge(load_config_file(args.config), parse_set_overrides(args.sets))
    metrics = run_sft(cfg, args.out)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}, indent=2))
    return 0
