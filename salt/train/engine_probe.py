"""Does the rollout engine hold the trainer's current weights? The probes shared by the CPU tests of
the real vLLM engine (``tests/vllm/``) and the GPU checks (``salt gpu-check``: ``vllm_vs_hf``,
``vllm_rl_sync``).

A probe asks the engine for completions of a fixed batch of toy prompts (fixed sampling seed) and
recomputes the log-probs of the sampled tokens with the trainer's model (the trainer's own
``compute_logprobs``): an engine that holds the trainer's weights gives the same numbers (within
float32 rounding on CPU, bf16 rounding on a GPU). :func:`probe_trainer_cls` probes after every
weight push and after a resume (the trainer's hook :meth:`~salt.train.trainer.Trainer.on_engine_weights`),
and also against the weights before the step, so that a stale engine is told apart from a synced one.
"""

from __future__ import annotations

from typing import Any

PROBE_SEED = 4321
PROBE_PROMPTS = 16


def toy_prompts(tokenizer: Any, n: int, split: str = "test", seed: int = 0) -> tuple[list[dict], list[str]]:
    """``n`` toy problems of ``split`` (data seed ``seed``) and their prompts."""
    from salt.tasks.prompts import build_prompt
    from salt.tasks.toy import generate_problems

    rows = generate_problems(n, split, seed=seed)
    return rows, [build_prompt(r, tokenizer) for r in rows]


def pad_id_of(tok: Any) -> int:
    return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id


def rollout_batch(out: Any, rows: list[dict] | None = None, rewards: list[float] | None = None) -> Any:
    """A :class:`~salt.train.batch.RolloutBatch` of a RolloutOutput (advantages 0 unless rewards given)."""
    import torch

    from salt.algo.advantages import compute_advantages
    from salt.train.batch import RolloutBatch

    P = len(out.prompt_ids)
    gids = torch.tensor(out.group_ids, dtype=torch.long)
    r = torch.tensor(rewards if rewards is not None else [0.0] * len(out.completion_ids), dtype=torch.float32)
    return RolloutBatch(
        rows=rows if rows is not None else [{} for _ in range(P)], prompts=[""] * P, prompt_ids=out.prompt_ids,
        group_ids=gids, completion_ids=out.completion_ids,
        finish_reasons=out.finish_reasons, texts=out.texts, scores=r, rewards=r.clone(),
        advantages=compute_advantages(r, gids, "grpo"),
    )


def recompute_logprobs(model: Any, out: Any, pad_id: int, temperature: float, micro: int = 64,
                       float64: bool = False) -> list[list[float]]:
    """The trainer's log-probs (``compute_logprobs``) of a RolloutOutput's completions, per rollout.

    ``float64``: the forward of a float64 copy of the model (the weights' log-probs without the
    reference's own float32 rounding, so that a comparison measures the engine's error alone)."""
    import copy

    import torch

    if float64:
        model = copy.deepcopy(model).double()
    from salt.train.batch import to_tensors
    from salt.train.forward import compute_logprobs

    device = next(model.parameters()).device
    tb = to_tensors(rollout_batch(out), pad_id)
    with torch.no_grad():
        lp = compute_logprobs(model, tb.to(device), temperature, micro).float().cpu()  # (N, T)
    return [lp[i, : len(ids)].tolist() for i, ids in enumerate(out.completion_ids)]


def logprob_gap(a: Any, b: Any) -> dict[str, float]:
    """Mean / max absolute difference of two per-rollout log-prob lists of equal shapes."""
    if len(a) != len(b):
        raise ValueError(f"logprob_gap: {len(a)} rollouts against {len(b)}")
    diffs = []
    for i, (x, y) in enumerate(zip(a, b)):
        if len(x) != len(y):
            raise ValueError(f"logprob_gap: rollout {i} has {len(x)} log-probs against {len(y)}")
        diffs += [abs(float(u) - float(v)) for u, v in zip(x, y)]
    if not diffs:
        raise ValueError("logprob_gap: no tokens to compare")
    return {"mean_abs": sum(diffs) / len(diffs), "max_abs": max(diffs), "tokens": float(len(diffs))}


def probe_trainer_cls(float64: bool = False) -> type:
    """A Trainer that, after every rollout-weight push and after a resume, compares the engine with the
    trainer's weights (``probes``: one dict per probe).

    Each probe: ``gap_now`` / ``max_now`` (mean / max |engine - trainer| log-prob over the probe
    batch's tokens), after an update also ``gap_old`` (against the weights before the step) and
    ``drift`` (how far the step moved the trainer's own log-probs), and ``step`` / ``kind``
    (``"sync"`` or ``"resume"``). ``float64``: also ``max_exact``, the max |engine - trainer| with the
    trainer's log-probs computed in float64 (the weights' exact log-probs: the engine's own float32
    error alone), and ``floor``, the max |float32 - float64| of the trainer's own log-probs on the
    same tokens (the trainer's float32 rounding, which ``max_now`` adds to the engine's)."""
    from salt.train.trainer import Trainer

    class ProbeTrainer(Trainer):
        """Overrides the one hook :meth:`Trainer.on_engine_weights`; every stage is the trainer's own."""

        def __init__(self, cfg: Any, out_dir: Any) -> None:
            super().__init__(cfg, out_dir)
            self.probes: list[dict[str, Any]] = []
            self.probe_outputs: list[Any] = []  # the engine's probe completions, one per probe
            self._before: dict | None = None  # the weights of the previous probe: before this step's update
            self._probe_prompts: list[str] | None = None

        def _logprobs(self, out: Any) -> list[list[float]]:
            return recompute_logprobs(self.unwrapped(), out, self.pad_id, self.cfg.rollout.temperature)

        def probe_output(self) -> Any:
            if self._probe_prompts is None:
                _, self._probe_prompts = toy_prompts(self.tokenizer, PROBE_PROMPTS, seed=1)
            return self.backend.generate(self._probe_prompts, 2, self.cfg.rollout.max_new_tokens,
                                         self.cfg.rollout.temperature, 1.0, seed=PROBE_SEED)

        def probe(self, kind: str) -> dict[str, Any]:
            out = self.probe_output()
            self.probe_outputs.append(out)
            now = self._logprobs(out)
            gap = logprob_gap(out.logprobs, now)
            rec: dict[str, Any] = {"kind": kind, "gap_now": gap["mean_abs"], "max_now": gap["max_abs"],
                                   "tokens": gap["tokens"]}
            if float64:
                exact = recompute_logprobs(self.unwrapped(), out, self.pad_id, self.cfg.rollout.temperature,
                                           float64=True)
                rec["floor"] = logprob_gap(now, exact)["max_abs"]
                rec["max_exact"] = logprob_gap(out.logprobs, exact)["max_abs"]
            if self._before is not None:
                model = self.unwrapped()
                current = {k: v.detach().clone() for k, v in model.state_dict().items()}
                model.load_state_dict(self._before)
                old = self._logprobs(out)
                model.load_state_dict(current)
                rec["gap_old"] = logprob_gap(out.logprobs, old)["mean_abs"]
                rec["drift"] = logprob_gap(now, old)["mean_abs"]  # how far the step moved the policy
            return rec

        def on_engine_weights(self, kind: str, step: int | None) -> None:
            # "resume": the engine as loaded vs the trainer; "sync": after an update's push
            self.probes.append({**self.probe(kind), "step": step})
            # the weights the engine holds now are the next update's "before" (one update per push)
            self._before = {k: v.detach().clone() for k, v in self.unwrapped().state_dict().items()}

    return ProbeTrainer
