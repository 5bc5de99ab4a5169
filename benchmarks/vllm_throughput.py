"""Rollouts per second on CPU: HF ``generate`` against the vLLM engine (vLLM's CPU build), same model.

    ./.venv-vllm/bin/python benchmarks/vllm_throughput.py --shape toy
    nice -n 10 ./.venv-vllm/bin/python benchmarks/vllm_throughput.py --shape qwen2.5-0.5b --repeats 1

One rollout batch is P prompts x G samples of exactly N new tokens (EOS ignored on both sides, so
both produce the same number of tokens), with each sampled token's log-prob (what a rollout needs):
HF ``model.generate(do_sample=True, num_return_sequences=G, output_scores=True)`` with the
log-probs gathered from the scores, against ``vllm.LLM.generate`` with ``SamplingParams(n=G,
logprobs=0, ignore_eos=True)``. Models are random (nothing is downloaded): ``toy`` is the embedded
``small`` toy Qwen2 (vocabulary 258, hidden 128, 4 layers), ``qwen2.5-0.5b`` a randomly
initialised Qwen2 of Qwen2.5-0.5B's shape (vocabulary 151,936, hidden 896, 24 layers, 14 heads, 2
KV heads, MLP 4864, tied embeddings). float32 on both sides; vLLM with ``enforce_eager``, its
engine core in this process. The time of one batch is the best of ``--repeats`` after a short warm-up
batch (4 new tokens); the engine start is reported separately. Prints one JSON line per backend and a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

QWEN05B = {"vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
           "num_key_value_heads": 2, "intermediate_size": 4864, "tie_word_embeddings": True}


def build_model(shape: str, out: Path) -> tuple[int, int]:
    """Write the model to ``out``; returns (vocabulary size, parameters)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from salt.train.toy_model import build_toy_model, train_toy_tokenizer

    torch.manual_seed(0)
    if shape == "toy":
        tok = train_toy_tokenizer(None)
        model = build_toy_model(tok, "small", seed=0, max_position_embeddings=512)
        tok.save_pretrained(out)
    else:
        cfg = Qwen2Config(**QWEN05B, max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1e6,
                          torch_dtype="float32")
        model = Qwen2ForCausalLM(cfg)
    model.save_pretrained(out)
    return int(model.config.vocab_size), sum(p.numel() for p in model.parameters())


def prompts_of(P: int, vocab: int, length: int = 24) -> list[list[int]]:
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(3, min(vocab, 250), (P, length), generator=g).tolist()


def best_of(fn, N: int, repeats: int) -> float:
    fn(4)  # warm-up: a short batch of the same shape (4 new tokens)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(N)
        best = min(best, time.perf_counter() - t0)
    return best


def run_hf(path: Path, prompts: list[list[int]], G: int, N: int, repeats: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    ids = torch.tensor(prompts)

    def batch(N: int) -> None:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, num_return_sequences=G, max_new_tokens=N,
                                 min_new_tokens=N, output_scores=True, return_dict_in_generate=True,
                                 pad_token_id=0)
            seq = out.sequences[:, ids.shape[1]:]
            assert seq.shape == (len(prompts) * G, N), seq.shape
            scores = torch.stack(out.scores, 1).float().log_softmax(-1)
            scores.gather(-1, seq[..., None])

    return {"batch_s": best_of(batch, N, repeats), "start_s": 0.0}


def run_vllm(path: Path, prompts: list[list[int]], G: int, N: int, repeats: int, share: float) -> dict:
    import vllm

    t0 = time.perf_counter()
    llm = vllm.LLM(model=str(path), skip_tokenizer_init=True, dtype="float32", enforce_eager=True, seed=0,
                   gpu_memory_utilization=share, max_model_len=len(prompts[0]) + N + 8)
    start = time.perf_counter() - t0
    requests = [{"prompt_token_ids": p} for p in prompts]

    def batch(N: int) -> None:
        params = vllm.SamplingParams(n=G, temperature=1.0, top_p=1.0, max_tokens=N, min_tokens=N, ignore_eos=True,
                                     logprobs=0, detokenize=False, seed=0)
        outs = llm.generate(requests, params, use_tqdm=False)
        assert all(len(c.token_ids) == N for o in outs for c in o.outputs)

    return {"batch_s": best_of(batch, N, repeats), "start_s": start, "vllm": vllm.__version__}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=("toy", "qwen2.5-0.5b"), default="toy")
    ap.add_argument("--prompts", type=int, default=8, help="P")
    ap.add_argument("--group", type=int, default=8, help="G")
    ap.add_argument("--new-tokens", type=int, default=256, help="N")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-share", type=float, default=None,
                    help="vLLM gpu_memory_utilization (a share of the system memory on CPU); default 0.1 toy, 0.25 0.5b")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for HF (default: torch's)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    share = args.memory_share or (0.1 if args.shape == "toy" else 0.25)
    tmp = Path(tempfile.mkdtemp(prefix="vllm_bench_"))
    try:
        vocab, params = build_model(args.shape, tmp)
        prompts = prompts_of(args.prompts, vocab)
        rollouts = args.prompts * args.group
        load = os.getloadavg()
        res = {"hf": run_hf(tmp, prompts, args.group, args.new_tokens, args.repeats)}
        print(json.dumps({"partial": "hf", **res["hf"], "load_avg_1m": os.getloadavg()[0]}), flush=True)
        res["vllm"] = run_vllm(tmp, prompts, args.group, args.new_tokens, args.repeats, share)
        meta = {"shape": args.shape, "parameters": params, "P": args.prompts, "G": args.group,
                "new_tokens": args.new_tokens, "repeats": args.repeats, "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "load_avg_1m_before": round(load[0], 2),
                "load_avg_1m_after": round(os.getloadavg()[0], 2), "machine": platform.processor() or platform.machine()}
        for name, r in res.items():
            r["rollouts_per_s"] = rollouts / r["batch_s"]
            r["tokens_per_s"] = rollouts * args.new_tokens / r["batch_s"]
            print(json.dumps({"backend": name, **meta, **r}))
        speed = res["vllm"]["rollouts_per_s"] / res["hf"]["rollouts_per_s"]
        print(f"| {args.shape} | {params / 1e6:.1f} M | {args.prompts} x {args.group} x {args.new_tokens} | "
              f"{res['hf']['rollouts_per_s']:.2f} | {res['vllm']['rollouts_per_s']:.2f} | {speed:.2f}x | "
              f"{res['vllm']['start_s']:.0f} s | {meta['load_avg_1m_before']} / {meta['load_avg_1m_after']} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
