"""RL with ``rollout.backend: vllm`` on the real engine: the engine holds the trainer's weights after every
push, the run learns like the HF backend's on the same seed, and a killed run resumes with the
checkpoint's weights in the engine.

Probe tolerance (issue 18): after every push the engine's log-probs of the probe batch must equal the
trainer's current weights' within TOL = 1e-5, against the trainer's own float32 forward (``max_now``:
the log-probs the trainer itself computes), not a float64 reference. The probes also record, printed
only, ``max_exact`` (the engine against the same weights' float64 log-probs: the engine's own float32
error) and ``floor`` (the trainer's float32 against float64); see
``salt.train.engine_probe.probe_trainer_cls``.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from salt.train.engine_probe import logprob_gap, pad_id_of, probe_trainer_cls, recompute_logprobs
from salt.utils import read_jsonl
from tests.vllm.conftest import ENGINE

TOL = 1e-5  # float32 on both sides (engine and trainer)
STEPS = 24
EVAL_PROBLEMS, EVAL_SAMPLES = 200, 8


def run_cfg(model_dir: Path, backend: str, **train) -> dict:
    return {
        "seed": 0,
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {"train": "toy:rl", "toy_rows": 256},
        "rollout": {"backend": backend, "group_size": 8, "prompts_per_step": 8, "max_new_tokens": 8,
                    "temperature": 1.0, "vllm": dict(ENGINE)},
        "algorithm": {"advantage": "grpo", "loss": {"name": "grpo"}, "salt": {"enabled": True}},
        "train": {"steps": STEPS, "lr": 1e-4, "checkpoint_every": 0, "log_samples_every": 0, "eval_every": 0,
                  "num_threads": 1, "progress": False, **train},
        "tracking": {"enabled": False},
    }


def held_out(model_dir: Path) -> list[float]:
    """Per-problem sampled pass rate (T = 1, HF generation, fixed seed) on held-out toy problems."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from salt.rollout.hf import HFBackend
    from salt.tasks.prompts import build_prompt
    from salt.tasks.rewards import score_batch
    from salt.tasks.toy import generate_problems

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows = generate_problems(EVAL_PROBLEMS, "test", seed=0, levels=(1,))
    out = HFBackend(model, tok).generate([build_prompt(r, tok) for r in rows], EVAL_SAMPLES, 6, 1.0, 1.0, seed=0)
    scores = score_batch([r for r in rows for _ in range(EVAL_SAMPLES)], out.texts)
    return [sum(s.reward >= 1.0 for s in scores[i * EVAL_SAMPLES:(i + 1) * EVAL_SAMPLES]) / EVAL_SAMPLES
            for i in range(len(rows))]


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean paired difference a - b and its standard error."""
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
    return mean, sd / math.sqrt(len(d))


def test_rl_with_vllm_rollouts_tracks_the_trainer_and_learns_like_hf(warm_model, tmp_path):
    from salt.train.config import from_dict
    from salt.train.trainer import Trainer

    vllm_run = probe_trainer_cls(float64=True)(from_dict(run_cfg(warm_model, "vllm")), tmp_path / "vllm")
    vllm_run.run()
    # the engine after every push (one per step) against the trainer's current weights
    syncs = [p for p in vllm_run.probes if p["kind"] == "sync"]
    assert len(syncs) == STEPS
    worst = max(p["max_now"] for p in vllm_run.probes)
    print(f"engine vs trainer after {len(syncs)} pushes: max {worst:.3g}; vs the trainer's exact (float64) "
          f"log-probs max {max(p['max_exact'] for p in vllm_run.probes):.3g} (over the pushes: "
          f"{sum(p['max_now'] <= TOL for p in syncs)} of {STEPS} <= 1e-5; the trainer's own float32 rounding "
          f"up to {max(p['floor'] for p in syncs):.3g}); vs the weights before the step: "
          f"min {min(p['gap_old'] for p in syncs):.3g}, median {sorted(p['gap_old'] for p in syncs)[STEPS // 2]:.3g}")
    assert all(p["max_now"] <= TOL for p in vllm_run.probes), \
        [(p["step"], round(p["max_now"], 8), round(p["max_exact"], 8)) for p in vllm_run.probes]
    # the steps move the policy far beyond the tolerance: an engine left on the previous weights fails above
    assert sum(p["gap_old"] > 100 * TOL for p in syncs) >= STEPS // 2, [p["gap_old"] for p in syncs]

    Trainer(from_dict(run_cfg(warm_model, "hf")), tmp_path / "hf").run()
    r_v = [r["reward/mean"] for r in read_jsonl(tmp_path / "vllm" / "metrics.jsonl")]
    r_h = [r["reward/mean"] for r in read_jsonl(tmp_path / "hf" / "metrics.jsonl")]
    # same seed, same prompts per step (the data order does not depend on the backend); the samples differ
    # (each backend its own RNG): the step-paired reward difference is within 3 standard errors
    mean_d, se = paired(r_v, r_h)
    p_w, p_v, p_h = held_out(warm_model), held_out(tmp_path / "vllm" / "final"), held_out(tmp_path / "hf" / "final")
    pass_d, pass_se = paired(p_v, p_h)
    avg = lambda x: sum(x) / len(x)  # noqa: E731
    print(f"reward per step vllm {avg(r_v):.3f} hf {avg(r_h):.3f} (paired diff {mean_d:+.3f}, SE {se:.3f}); "
          f"held-out pass@1 warm-up {avg(p_w):.3f}, vllm {avg(p_v):.3f}, hf {avg(p_h):.3f} "
          f"(paired diff {pass_d:+.3f}, SE {pass_se:.3f}); rewards vllm {[round(r, 3) for r in r_v]} "
          f"hf {[round(r, 3) for r in r_h]}")
    assert abs(mean_d) <= 3 * se, (mean_d, se)
    assert abs(pass_d) <= 3 * pass_se, (pass_d, pass_se)


def test_killed_vllm_run_resumes_with_the_checkpoint_weights(warm_model, tmp_path, hf_model):
    from transformers import AutoModelForCausalLM

    from salt.train.checkpoint import latest_checkpoint
    from salt.train.config import from_dict

    cfg = run_cfg(warm_model, "vllm", steps=6, checkpoint_every=2, keep_checkpoints=2)
    cfg_path, out = tmp_path / "run.yaml", tmp_path / "run"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "salt.cli", "train", "--config", str(cfg_path), "--out", str(out)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while latest_checkpoint(out / "checkpoints") is None or not (out / "metrics.jsonl").is_file() \
                or (out / "metrics.jsonl").read_text().count("\n") < 3:
            assert proc.poll() is None, "the run ended before the kill"
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (out / "DONE").exists(), "killed too late: the run had already finished"
    ckpt = latest_checkpoint(out / "checkpoints")
    resumed = probe_trainer_cls(float64=True)(from_dict(cfg), out)
    resumed.run()
    first = resumed.probes[0]
    assert first["kind"] == "resume" and first["step"] == int(ckpt.name.split("_")[1]) >= 2
    # the engine's probe log-probs right after the resume equal the checkpoint's weights' ...
    base, tok = hf_model
    at_ckpt = AutoModelForCausalLM.from_pretrained(str(warm_model), dtype=torch.float32).eval()
    at_ckpt.load_state_dict(torch.load(ckpt / "model.pt", map_location="cpu"))
    engine_out = resumed.probe_outputs[0]
    gap = logprob_gap(engine_out.logprobs, recompute_logprobs(at_ckpt, engine_out, pad_id_of(tok), 1.0))
    initial = logprob_gap(engine_out.logprobs, recompute_logprobs(base, engine_out, pad_id_of(tok), 1.0))
    print(f"after the resume from {ckpt.name}: engine vs checkpoint (float32) max {gap['max_abs']:.3g}; after "
          f"each push max {max(p['max_now'] for p in resumed.probes):.3g} (vs float64: "
          f"{max(p['max_exact'] for p in resumed.probes):.3g}); "
          f"vs the initial weights the engine loaded at start {initial['max_abs']:.3g}")
    assert gap["max_abs"] <= TOL and first["max_now"] <= TOL, (gap, first)
    assert initial["max_abs"] > 100 * TOL  # without the push after the resume the engine would hold these
    assert all(p["max_now"] <= TOL for p in resumed.probes), [(p["step"], p["max_now"]) for p in resumed.probes]
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 7))
    assert (out / "DONE").exists()
