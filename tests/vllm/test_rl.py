"""RL with ``rollout.backend: vllm`` on the real engine: the engine holds the trainer's weights after every
push, the run learns like the HF backend's on the same seed, and a killed run resumes with the
checkpoint's weights in the engine.

Probe tolerance: after every push, the engine's log-probs of the probe batch are compared with the
trainer's current weights' EXACT log-probs (the trainer's forward in float64,
``probe_trainer_cls(float64=True)``: ``max_exact``) and must be within TOL = 1e-5: what is left is the
engine's own float32 rounding. Against the trainer's float32 forward (``max_now``) the two sides'
roundings add up (``floor`` = the trainer's own |float32 - float64|); that number is printed, not
asserted (see README "vLLM on CPU").
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

TOL = 1e-5
STEPS = 30
LR = 1e-3  # GRPO+SALT from the `small` warm-up learns within STEPS at this rate (see the learning test)
EVAL_PROBLEMS, EVAL_SAMPLES = 200, 8
Z = 3.0  # the sampling-error bound of the learning comparison: |difference| <= 3 standard errors


def run_cfg(model_dir: Path, backend: str, **train) -> dict:
    return {
        "seed": 0,
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {"train": "toy:rl", "toy_rows": 256},
        "rollout": {"backend": backend, "group_size": 8, "prompts_per_step": 8, "max_new_tokens": 8,
                    "temperature": 1.0, "vllm": dict(ENGINE)},
        "algorithm": {"advantage": "grpo", "loss": {"name": "grpo"}, "salt": {"enabled": True}},
        "train": {"steps": STEPS, "lr": LR, "checkpoint_every": 0, "log_samples_every": 0, "eval_every": 0,
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


def window_gain(r: list[float], k: int) -> tuple[float, float]:
    """Mean of the last ``k`` values minus the mean of the first ``k``, and its standard error (each
    window's spread over its steps)."""
    def mean_var(x: list[float]) -> tuple[float, float]:
        m = sum(x) / len(x)
        return m, sum((v - m) ** 2 for v in x) / (len(x) - 1)

    (m0, v0), (m1, v1) = mean_var(r[:k]), mean_var(r[-k:])
    return m1 - m0, math.sqrt(v0 / k + v1 / k)


def test_rl_with_vllm_rollouts_tracks_the_trainer_and_learns_like_hf(warm_model, tmp_path):
    """STEPS steps of GRPO+SALT (P = 8, G = 8, lr LR) from the `small` warm-up, once with vLLM rollouts
    (the engine probed after every push) and once with HF rollouts, same seed, same prompts per step.

    The probes: ``max_exact`` <= 1e-5 after every push (module docstring), and a stale engine would fail
    (the steps move the probe log-probs by far more than that).

    The learning comparison (the samples differ: each backend has its own sampler): with K = STEPS // 3,
    the reward gain of a run is the mean reward of its last K steps minus that of its first K; the
    held-out gain is the paired (per-problem) difference of sampled pass@1 (EVAL_PROBLEMS held-out
    problems x EVAL_SAMPLES samples at T = 1, HF generation, fixed seed) between the final weights and
    the warm-up. Learning happens: both runs' reward gains and held-out gains exceed Z = 3 standard
    errors (reward: the two windows' step-to-step spread; held-out: the per-problem differences).
    Like HF: the vLLM run's reward gain minus the HF run's (paired by step, since both see the same
    prompts: the windows of the per-step difference) and its final held-out pass@1 minus the HF run's
    (paired by problem) are each within Z standard errors of 0 (a normal-approximation bound on the
    mean of the paired differences).
    """
    from salt.train.config import from_dict
    from salt.train.trainer import Trainer

    vllm_run = probe_trainer_cls(float64=True)(from_dict(run_cfg(warm_model, "vllm")), tmp_path / "vllm")
    vllm_run.run()
    # the engine after every push (one per step) against the trainer's current weights
    syncs = [p for p in vllm_run.probes if p["kind"] == "sync"]
    assert len(syncs) == STEPS
    print(f"engine vs trainer after {len(syncs)} pushes: vs the exact (float64) log-probs max "
          f"{max(p['max_exact'] for p in syncs):.3g}; vs the trainer's float32 forward max "
          f"{max(p['max_now'] for p in syncs):.3g} (the trainer's own float32 rounding up to "
          f"{max(p['floor'] for p in syncs):.3g}); vs the weights before the step: "
          f"min {min(p['gap_old'] for p in syncs):.3g}, median {sorted(p['gap_old'] for p in syncs)[STEPS // 2]:.3g}")
    assert all(p["max_exact"] <= TOL for p in vllm_run.probes), \
        [(p["step"], round(p["max_exact"], 8), round(p["max_now"], 8)) for p in vllm_run.probes]
    # the steps move the policy far beyond the tolerance: an engine left on the previous weights fails above
    assert sum(p["gap_old"] > 100 * TOL for p in syncs) >= STEPS // 2, [p["gap_old"] for p in syncs]

    Trainer(from_dict(run_cfg(warm_model, "hf")), tmp_path / "hf").run()
    r_v = [r["reward/mean"] for r in read_jsonl(tmp_path / "vllm" / "metrics.jsonl")]
    r_h = [r["reward/mean"] for r in read_jsonl(tmp_path / "hf" / "metrics.jsonl")]
    k = STEPS // 3
    (g_v, se_v), (g_h, se_h) = window_gain(r_v, k), window_gain(r_h, k)
    g_d, se_d = window_gain([v - h for v, h in zip(r_v, r_h)], k)
    p_w, p_v, p_h = held_out(warm_model), held_out(tmp_path / "vllm" / "final"), held_out(tmp_path / "hf" / "final")
    (l_v, lse_v), (l_h, lse_h), (pass_d, pass_se) = paired(p_v, p_w), paired(p_h, p_w), paired(p_v, p_h)
    avg = lambda x: sum(x) / len(x)  # noqa: E731
    print(f"reward gain (last {k} - first {k} steps) vllm {g_v:+.3f} (SE {se_v:.3f}), hf {g_h:+.3f} (SE {se_h:.3f}), "
          f"difference {g_d:+.3f} (SE {se_d:.3f}); held-out pass@1 warm-up {avg(p_w):.3f}, vllm {avg(p_v):.3f} "
          f"(gain {l_v:+.3f}, SE {lse_v:.3f}), hf {avg(p_h):.3f} (gain {l_h:+.3f}, SE {lse_h:.3f}), vllm - hf "
          f"{pass_d:+.3f} (SE {pass_se:.3f}); rewards vllm {[round(r, 3) for r in r_v]} hf {[round(r, 3) for r in r_h]}")
    # learning happens, in both
    assert g_h > Z * se_h and l_h > Z * lse_h, (g_h, se_h, l_h, lse_h)
    assert g_v > Z * se_v and l_v > Z * lse_v, (g_v, se_v, l_v, lse_v)
    # and the vLLM run learns like the HF run
    assert abs(g_d) <= Z * se_d, (g_d, se_d)
    assert abs(pass_d) <= Z * pass_se, (pass_d, pass_se)


def test_killed_vllm_run_resumes_with_the_checkpoint_weights(warm_model, tmp_path, hf_model):
    from transformers import AutoModelForCausalLM

    from salt.train.checkpoint import latest_checkpoint
    from salt.train.config import from_dict

    cfg = run_cfg(warm_model, "vllm", steps=6, checkpoint_every=2, keep_checkpoints=2, lr=1e-4)
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
    gap = logprob_gap(engine_out.logprobs, recompute_logprobs(at_ckpt, engine_out, pad_id_of(tok), 1.0, float64=True))
    initial = logprob_gap(engine_out.logprobs, recompute_logprobs(base, engine_out, pad_id_of(tok), 1.0))
    print(f"after the resume from {ckpt.name}: engine vs checkpoint max {gap['max_abs']:.3g}; "
          f"vs the initial weights the engine loaded at start {initial['max_abs']:.3g}")
    assert gap["max_abs"] <= TOL and first["max_exact"] <= TOL, (gap, first)
    assert initial["max_abs"] > 100 * TOL  # without the push after the resume the engine would hold these
    assert all(p["max_exact"] <= TOL for p in resumed.probes)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl")] == list(range(1, 7))
    assert (out / "DONE").exists()
