"""Rollouts with Hugging Face ``model.generate`` (the CPU default; also works on one GPU).

Prompts are tokenised with left padding, repeated ``n`` times each (grouped by prompt), and
generated in chunks of at most ``batch_size`` rollouts. Sampling uses exactly temperature and
top-p: the model's own ``generation_config`` (a Hub model may carry top_k, repetition_penalty,
min_p ...) is replaced for the call by a clean one, and one logits processor
(:class:`_LogprobRecorder`) applies temperature and top-p and records the sampled tokens'
log-probs step by step (no ``output_logits``: memory O(batch x vocab), not O(batch x length x
vocab)), so the returned log-probs are those of the distribution the trainer recomputes. With a seed, sampling runs under a forked torch RNG seeded
with it, so results are reproducible and the caller's RNG stream is left untouched.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from transformers import LogitsProcessorList

from salt.rollout.base import RolloutBackend, RolloutOutput, check_generate_args, cut_at_eos


def unwrap_model(model: Any, accelerator: Any = None) -> Any:
    """The bare ``PreTrainedModel`` behind DDP / Accelerate / torch.compile wrappers."""
    if accelerator is not None:
        model = accelerator.unwrap_model(model)
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module  # DDP / DataParallel / DeepSpeed engine
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # torch.compile
        else:
            return model


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every id that ends a completion: the tokenizer's EOS and the model's generation EOS ids."""
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos is not None:
        ids.update(int(i) for i in gen_eos)
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id and the model's generation_config none either; set one")
    return ids


@contextlib.contextmanager
def _clean_generation_config(model: Any, eos_ids: set[int], pad_id: int, bos_id: int | None) -> Iterator[None]:
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig(
        eos_token_id=sorted(eos_ids), pad_token_id=pad_id, bos_token_id=bos_id
    )
    try:
        yield
    finally:
        model.generation_config = saved


class _LogprobRecorder:
    """A logits processor that applies temperature (and top-p) and records sampled-token log-probs.

    At every step it stores ``log_softmax(logits / T)`` of the current position; at the next call
    the token sampled from it is the last column of ``input_ids``, so only its log-prob (B,) is
    kept: memory stays O(B * V) instead of HF's O(B * T * V) ``output_logits``. ``finish`` gathers
    the last step. ``top_p`` (None = off) truncates with HF's own ``TopPLogitsWarper``; the recorded
    log-probs are taken before truncation (the RolloutOutput convention).
    """

    def __init__(self, temperature: float, top_p: float | None) -> None:
        from transformers.generation.logits_process import TopPLogitsWarper

        self.temperature = temperature
        self.top_p = TopPLogitsWarper(top_p) if top_p is not None and top_p < 1.0 else None
        self.pending: torch.Tensor | None = None  # (B, V) log-probs of the step being sampled
        self.recorded: list[torch.Tensor] = []  # T_new x (B,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.pending is not None:
            self.recorded.append(self.pending.gather(-1, input_ids[:, -1:]).squeeze(-1))  # (B,)
        scaled = scores.float() / self.temperature  # (B, V)
        self.pending = torch.log_softmax(scaled, dim=-1)
        return self.top_p(input_ids, scaled) if self.top_p is not None else scaled

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """(B, T_new) log-probs of ``new_tokens`` (the generated part of the sequences)."""
        if self.pending is not None and len(self.recorded) == new_tokens.shape[1] - 1:
            self.recorded.append(self.pending.gather(-1, new_tokens[:, -1:]).squeeze(-1))  # last step
        self.pending = None
        if len(self.recorded) != new_tokens.shape[1]:
            raise RuntimeError(f"recorded {len(self.recorded)} log-prob steps for {new_tokens.shape[1]} new tokens")
        return torch.stack(self.recorded, dim=1)  # (B, T_new)


class HFBackend(RolloutBackend):
    """Batched ``model.generate`` on the trainer's own model (no weight copy: ``sync_weights`` is a no-op).

    Args:
        model: a causal LM (possibly wrapped by DDP / Accelerate; unwrapped for generation).
        tokenizer: its tokenizer; needs a pad token or an EOS token (used as pad).
        accelerator: optional ``accelerate.Accelerator`` used to unwrap the model.
        batch_size: max rollouts per ``generate`` call (None: all at once).
        add_special_tokens: passed to the tokenizer for the prompts (BOS for the toy tokenizer).
    """

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, accelerator: Any = None, batch_size: int | None = None,
                 add_special_tokens: bool = True) -> None:
        if batch_size is not None and int(batch_size) < 1:
            raise ValueError(f"rollout batch_size must be >= 1 or null, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.accelerator = accelerator
        self.batch_size = None if batch_size is None else int(batch_size)
        self.add_special_tokens = add_special_tokens

    def sync_weights(self, model: Any) -> None:
        """Generation reads the trainer's parameters directly; only the reference is updated."""
        self.model = model

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, max_new_tokens: int, temperature: float = 1.0,
                 top_p: float = 1.0, seed: int | None = None) -> RolloutOutput:
        check_generate_args(prompts, n, max_new_tokens, temperature, top_p)
        model = unwrap_model(self.model, self.accelerator)
        tok = self.tokenizer
        eos_ids = eos_token_ids(model, tok)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else min(eos_ids)
        prompt_ids = [tok(p, add_special_tokens=self.add_special_tokens)["input_ids"] for p in prompts]
        if any(len(ids) == 0 for ids in prompt_ids):
            raise ValueError("an empty prompt tokenised to zero tokens; every prompt needs at least one token")
        # (P * n) rollouts, grouped: prompt j -> rows j*n .. j*n+n-1
        expanded = [ids for ids in prompt_ids for _ in range(n)]
        greedy = float(temperature) == 0.0
        scale = 1.0 if greedy else float(temperature)
        device = next(model.parameters()).device
        chunk = self.batch_size or len(expanded)

        was_training = model.training
        model.eval()
        completions: list[list[int]] = []
        logprobs: list[list[float]] = []
        reasons: list[str] = []
        rng_ctx = torch.random.fork_rng(devices=[device] if device.type == "cuda" else []) if seed is not None \
            else contextlib.nullcontext()
        try:
            with rng_ctx, _clean_generation_config(model, eos_ids, pad_id, getattr(tok, "bos_token_id", None)):
                if seed is not None:
                    torch.manual_seed(int(seed))
                for start in range(0, len(expanded), chunk):
                    batch = expanded[start:start + chunk]
                    width = max(len(ids) for ids in batch)
                    # left padding: (B, width)
                    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                    attention = torch.zeros((len(batch), width), dtype=torch.long)
                    for i, ids in enumerate(batch):
                        input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
                        attention[i, width - len(ids):] = 1
                    recorder = _LogprobRecorder(scale, None if greedy else float(top_p))
                    # temperature and top-p are applied by the recorder itself, so HF's own warpers stay off
                    sampling = {} if greedy else {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
                    sequences = model.generate(
                        input_ids=input_ids.to(device), attention_mask=attention.to(device),
                        max_new_tokens=int(max_new_tokens), do_sample=not greedy,
                        logits_processor=LogitsProcessorList([recorder]), **sampling,
                    )
                    new_tokens = sequences[:, width:]  # (B, T_new)
                    tok_logp = recorder.finish(new_tokens).cpu()  # (B, T_new)
                    new_tokens = new_tokens.cpu()
                    for i in range(len(batch)):
                        ids, reason = cut_at_eos(new_tokens[i].tolist(), eos_ids)
                        completions.append(ids)
                        logprobs.append(tok_logp[i, : len(ids)].tolist())
                        reasons.append(reason)
        finally:
            model.train(was_training)
        texts = tok.batch_decode(completions, skip_special_tokens=True)
        return RolloutOutput(prompt_ids=prompt_ids, completion_ids=completions, logprobs=logprobs,
                             finish_reasons=reasons, texts=texts, n=int(n))
