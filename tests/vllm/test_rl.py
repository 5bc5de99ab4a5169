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
# The learning comparison: STEPS steps of GRPO+SALT at lr LR from the session's warm-up, P x G = 8 x 8, the
# weights pushed to the engine after every step (HF rollouts, lr 1e-4: held-out pass@1 0.345 -> 0.428 in 30
# steps; 3e-4 stays flat and 1e-3 collapses to 0.01 (with 5 / 10 lr warm-up steps): benchmarks/README.md)
STEPS = 30
LR = 1e-4
EVAL_PROBLEMS, EVAL_SAMPLES = 200, 8  # held-out pass@1: 200 level-1 `test` problems x 8 samples at T = 1
WINDOW = 10  # the reward comparison: the rollouts of the last WINDOW steps
Z = 3.0  # |z| bound of the comparisons


def run_cfg(model_dir: Path, backend: str, **train) -> dict:
    return {
        "seed": 0,
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": {"train": "toy:rl", "toy_rows": 256},
        "rollout": {"backend": backend, "group_size": 8, "prompts_per_step": 8, "max_new_tokens": 8,
                    "temperature": 1.0, "vllm": dict(ENGINE)},
        "algorithm": {"advantage": "grpo", "loss": {"name": "grpo"}, "salt": {"enabled": True}},
        "train": {"steps": STEPS, "lr": LR, "checkpoint_every": 0,
                  "log_samples_every": 0, "eval_every": 0, "num_threads": 1, "progress": False, **train},
        "tracking": {"enabled": False},
    }


def held_out(model_dir: Path) -> list[int]:
    """Per held-out problem, how many of its EVAL_SAMPLES samples are correct (T = 1, HF generation,
    fixed seed: the same problems and sampling seed for every model)."""
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
    return [sum(s.reward >= 1.0 for s in scores[i * EVAL_SAMPLES:(i + 1) * EVAL_SAMPLES]) for i in range(len(rows))]


def two_proportion_z(k1: float, n1: int, k2: float, n2: int) -> float:
    """z of the difference of two proportions k1 / n1 - k2 / n2 (pooled standard error; 0 when both are 0 or 1)."""
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    return (k1 / n1 - k2 / n2) / se if se > 0 else 0.0


def paired_z(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean paired difference a - b and its z (the mean over its standard error)."""
    d = [x - y for x, y in zip(a, b)]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    return mean, (mean / se if se > 0 else 0.0)


def test_rl_with_vllm_rollouts_tracks_the_trainer_and_learns_like_hf(warm_model, tmp_path):
    """STEPS steps from the warm-up with vLLM rollouts (the engine probed after every push) and the same run
    (same seed, so the same prompts at every step; each backend samples with its own RNG) with HF rollouts.

    The probes: after every push ``max_now`` <= TOL (module docstring); the steps move the probe log-probs
    by far more than TOL, so an engine left on the previous weights would fail.

    Both learn: held-out pass@1 (EVAL_PROBLEMS x EVAL_SAMPLES, the same problems and sampling seed for every
    model) rises over the warm-up's, by more than Z standard errors of the per-problem paired difference.
    Like HF: two-proportion z of the vLLM run against the HF run, |z| < Z, on (a) held-out pass@1 (n =
    EVAL_PROBLEMS x EVAL_SAMPLES samples each) and (b) the training reward of the last WINDOW steps (n =
    WINDOW x 64 rollouts each; the toy reward is 0 or 1). The pooled two-proportion standard error treats
    the samples as independent; on the same problems it is at least the sampling error of the difference
    (the between-problem spread cancels), so the bound is conservative for the evaluation's sampling error.
    It does not model the run-to-run spread of RL itself (the two runs' policies differ through their
    samples). Measured values: benchmarks/README.md, "The vLLM tests".
    """
    from salt.train.config import from_dict
    from salt.train.trainer import Trainer

    t0 = time.perf_counter()
    vllm_run = probe_trainer_cls(float64=True)(from_dict(run_cfg(warm_model, "vllm")), tmp_path / "vllm")
    vllm_run.run()
    t_vllm = time.perf_counter() - t0
    # the engine after every push (one per step) against the trainer's current weights
    syncs = [p for p in vllm_run.probes if p["kind"] == "sync"]
    assert len(syncs) == STEPS
    print(f"engine vs trainer after {len(syncs)} pushes: vs the trainer's float32 log-probs max "
          f"{max(p['max_now'] for p in vllm_run.probes):.3g} (largest probe mean {max(p['gap_now'] for p in syncs):.3g}); vs the "
          f"float64 log-probs of the same weights max {max(p['max_exact'] for p in vllm_run.probes):.3g}; the "
          f"trainer's own float32 - float64 up to {max(p['floor'] for p in syncs):.3g}; vs the weights before the "
          f"step: min {min(p['gap_old'] for p in syncs):.3g}, median {sorted(p['gap_old'] for p in syncs)[STEPS // 2]:.3g}")
    assert all(p["max_now"] <= TOL for p in vllm_run.probes), \
        [(p["step"], round(p["max_now"], 8), round(p["max_exact"], 8)) for p in vllm_run.probes]
    # the steps move the policy far beyond the tolerance: an engine left on the previous weights fails above
    assert sum(p["gap_old"] > 100 * TOL for p in syncs) >= STEPS // 2, [p["gap_old"] for p in syncs]

    t0 = time.perf_counter()
    Trainer(from_dict(run_cfg(warm_model, "hf")), tmp_path / "hf").run()
    t_hf = time.perf_counter() - t0
    r_v = [r["reward/mean"] for r in read_jsonl(tmp_path / "vllm" / "metrics.jsonl")]
    r_h = [r["reward/mean"] for r in read_jsonl(tmp_path / "hf" / "metrics.jsonl")]
    assert len(r_v) == len(r_h) == STEPS
    c_w, c_v, c_h = held_out(warm_model), held_out(tmp_path / "vllm" / "final"), held_out(tmp_path / "hf" / "final")
    n_eval, n_window = EVAL_PROBLEMS * EVAL_SAMPLES, WINDOW * 64
    p_w, p_v, p_h = sum(c_w) / n_eval, sum(c_v) / n_eval, sum(c_h) / n_eval
    (g_v, z_gv), (g_h, z_gh) = paired_z(c_v, c_w), paired_z(c_h, c_w)
    z_eval = two_proportion_z(sum(c_v), n_eval, sum(c_h), n_eval)
    w_v, w_h = sum(r_v[-WINDOW:]) * 64, sum(r_h[-WINDOW:]) * 64  # correct rollouts in the window
    z_reward = two_proportion_z(w_v, n_window, w_h, n_window)
    print(f"held-out pass@1: warm-up {p_w:.4f}, vllm {p_v:.4f} (gain {g_v / EVAL_SAMPLES:+.4f}, z {z_gv:.2f}), "
          f"hf {p_h:.4f} (gain {g_h / EVAL_SAMPLES:+.4f}, z {z_gh:.2f}); vllm vs hf z {z_eval:+.2f}. "
          f"Reward of the last {WINDOW} steps vllm {w_v / n_window:.4f} hf {w_h / n_window:.4f} (first {WINDOW}: "
          f"vllm {sum(r_v[:WINDOW]) / WINDOW:.4f} hf {sum(r_h[:WINDOW]) / WINDOW:.4f}), z {z_reward:+.2f}. "
          f"Run seconds vllm {t_vllm:.0f} (with the probes) hf {t_hf:.0f}. Rewards vllm "
          f"{[round(r, 3) for r in r_v]} hf {[round(r, 3) for r in r_h]}")
    # both learn
    assert z_gv > Z and z_gh > Z, (p_w, p_v, z_gv, p_h, z_gh)
    # and the vLLM run learns like the HF run
    assert abs(z_eval) < Z, (p_v, p_h, z_eval)
    assert abs(z_reward) < Z, (w_v / n_window, w_h / n_window, z_reward)


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
