"""Rollouts per second on CPU: the product's HF rollout backend against its vLLM backend, same model.

    nice -n 19 ./.venv-vllm/bin/python benchmarks/vllm_throughput.py --shape toy
    nice -n 19 ./.venv-vllm/bin/python benchmarks/vllm_throughput.py --shape qwen2.5-0.5b --repeats 1

Both sides are the code the trainer runs: ``salt.rollout.hf.HFBackend`` (``rollout.backend: hf``:
``model.generate`` with the sampled tokens' log-probs recorded step by step, memory O(B x V)) and
``salt.rollout.vllm.VLLMBackend`` (``rollout.backend: vllm``: a colocated ``vllm.LLM``, float32,
``enforce_eager``, engine core in the process), each ``generate(prompts, n=G, max_new_tokens=N,
temperature=1, top_p=1, seed=0)`` returning a ``RolloutOutput`` with every token's log-prob.

One rollout batch is P prompts (24 tokens) x G samples of exactly N new tokens. EOS is ignored on
both sides without touching the backends: the EOS of the tokenizer saved with the model, and the
model's generation EOS, is the id V (one past the vocabulary), which no sampled token can be; every
completion's length is asserted to be N. Models are random (nothing is downloaded): ``toy``
is the embedded ``small`` toy Qwen2 (vocabulary 51, hidden 128, 4 layers), ``qwen2.5-0.5b`` a
randomly initialised Qwen2 of Qwen2.5-0.5B's shape (vocabulary 151,936, hidden 896, 24 layers, 14
heads, 2 KV heads, MLP 4864, tied embeddings); the tokenizer is a byte-level one (Qwen2's class)
of exactly V tokens built here, so every sampled id decodes. Each side runs in its own process (one after the
other), so each reports its own peak resident memory (VmHWM). The time of one batch is the best of
``--repeats`` after a short warm-up batch (4 new tokens), as wall time (``batch_s``) and as the
process's CPU time over all its threads (``batch_cpu_s``: on a shared, loaded machine the wall time
also counts the time the process waited for a core); the vLLM engine start is reported separately. Prints one JSON line per backend and a Markdown row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

QWEN05B = {"vocab_size": 151936, "hidden_size": 896, "num_hidden_layers": 24, "num_attention_heads": 14,
           "num_key_value_heads": 2, "intermediate_size": 4864, "tie_word_embeddings": True}
PROMPT_TOKENS = 24


def shape_tokenizer(vocab: int):
    """A byte-level BPE tokenizer (Qwen2's class, no merges) whose ``vocab`` ids all decode, and whose EOS
    (also pad and unknown) ``<|endoftext|>`` is the id ``vocab``: one past the model's vocabulary, so no
    sampled token can end a completion. The first ids are single byte-level characters ('!' ... '~'), so
    a prompt of those characters is one token per character."""
    from transformers import Qwen2Tokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())[:vocab]
    words = {c: i for i, c in enumerate(chars)}
    words.update({f"\u0120w{i}": i for i in range(len(chars), vocab)})
    tok = Qwen2Tokenizer(vocab=words, merges=[])
    assert tok.eos_token_id == vocab and len(tok) == vocab + 1, (tok.eos_token_id, len(tok))
    return tok


def scaled_shape(layers: int | None = None, hidden: int | None = None, vocab: int | None = None) -> dict:
    """Qwen2.5-0.5B's shape, optionally with fewer decoder layers, a narrower width or a smaller vocabulary.
    ``hidden`` keeps the 0.5B shape's proportions: heads of 64 dimensions (hidden / 64 heads, 2 of them KV
    heads) and an MLP of 4864 / 896 times the width, rounded to a multiple of 64."""
    cfg = dict(QWEN05B)
    if vocab:
        if vocab < 128:
            raise ValueError(f"--vocab {vocab}: at least 128 (the prompts are single byte-level characters)")
        cfg["vocab_size"] = vocab
    if layers:
        cfg["num_hidden_layers"] = layers
    if hidden:
        if hidden % 128:
            raise ValueError(f"--hidden {hidden}: must be a multiple of 128 (64-dim heads, 2 KV heads)")
        cfg.update(hidden_size=hidden, num_attention_heads=hidden // 64,
                   intermediate_size=64 * round(hidden * QWEN05B["intermediate_size"] / QWEN05B["hidden_size"] / 64))
    return cfg


def build_model(shape: str, out: Path, layers: int | None = None, hidden: int | None = None,
                vocab: int | None = None) -> tuple[int, int]:
    """Write the model and its EOS-free tokenizer to ``out``; returns (vocabulary size, parameters).
    ``layers`` / ``hidden`` / ``vocab``: the qwen2.5-0.5b shape with fewer decoder layers, a narrower width
    or a smaller vocabulary (sizes in between, ``scaled_shape``)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    from salt.train.toy_model import build_toy_model, train_toy_tokenizer

    torch.manual_seed(0)
    if shape == "toy":
        model = build_toy_model(train_toy_tokenizer(None), "small", seed=0, max_position_embeddings=512)
    else:
        cfg = Qwen2Config(**scaled_shape(layers, hidden, vocab), max_position_embeddings=1024, rms_norm_eps=1e-6, rope_theta=1e6,
                          torch_dtype="float32")
        model = Qwen2ForCausalLM(cfg)
    vocab = int(model.config.vocab_size)
    model.config.eos_token_id = vocab  # never sampled: EOS ignored
    model.config.pad_token_id, model.config.bos_token_id = 0, 1
    model.generation_config = GenerationConfig(eos_token_id=vocab, pad_token_id=0, bos_token_id=1)
    model.save_pretrained(out)
    shape_tokenizer(vocab).save_pretrained(out)
    return vocab, sum(p.numel() for p in model.parameters())


def prompts_of(P: int, tok) -> list[str]:
    """P prompts of PROMPT_TOKENS random single-character tokens ('!' ... '~')."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, min(94, tok.eos_token_id), (P, PROMPT_TOKENS), generator=g).tolist()
    prompts = [tok.decode(row) for row in ids]
    assert [tok(p)["input_ids"] for p in prompts] == ids, "a prompt does not tokenise one token per character"
    return prompts


def peak_rss_gib() -> float:
    """This process's peak resident memory (VmHWM), GiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError("no VmHWM in /proc/self/status")


def time_side(side: str, path: Path, P: int, G: int, N: int, repeats: int, share: float) -> dict:
    """Build one backend on the model at ``path`` and time its rollout batches (run in a child process)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    vocab = tok.eos_token_id  # the model's vocabulary; the EOS id is one past it
    prompts = prompts_of(P, tok)
    t0 = time.perf_counter()
    if side == "hf":
        from salt.rollout.hf import HFBackend

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        backend = HFBackend(model, tok)
    else:
        from salt.rollout.vllm import VLLMBackend, vllm_options

        opts = vllm_options({"vllm": {"dtype": "float32", "enforce_eager": True, "gpu_memory_utilization": share,
                                      "max_model_len": PROMPT_TOKENS + N + 8}})
        backend = VLLMBackend(str(path), tok, opts, seed=0, eos_ids={vocab})
    start = time.perf_counter() - t0

    def batch(n_new: int) -> None:
        out = backend.generate(prompts, n=G, max_new_tokens=n_new, temperature=1.0, top_p=1.0, seed=0)
        lengths = {len(c) for c in out.completion_ids} | {len(lp) for lp in out.logprobs}
        assert lengths == {n_new} and len(out.completion_ids) == P * G, (lengths, len(out.completion_ids))

    batch(4)  # warm-up: a short batch of the same shape
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        batch(N)
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    res = {"backend": side, "batch_s": best, "batch_cpu_s": best_cpu, "start_s": start, "peak_rss_gib": round(peak_rss_gib(), 2),
           "torch_threads": torch.get_num_threads()}
    if side == "vllm":
        import vllm

        res["vllm"] = vllm.__version__
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=("toy", "qwen2.5-0.5b"), default="toy")
    ap.add_argument("--prompts", type=int, default=8, help="P")
    ap.add_argument("--group", type=int, default=8, help="G")
    ap.add_argument("--new-tokens", type=int, default=256, help="N")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-share", type=float, default=None,
                    help="rollout.vllm.gpu_memory_utilization (a share of the system memory on CPU); "
                         "default 0.1 toy, 0.3 0.5b (0.15 left no room for the KV cache: the engine held 4.0 GiB before it)")
    ap.add_argument("--layers", type=int, default=None,
                    help="qwen2.5-0.5b only: this many decoder layers instead of 24 (a model between the two shapes)")
    ap.add_argument("--hidden", type=int, default=None,
                    help="qwen2.5-0.5b only: this width instead of 896, proportions kept (64-dim heads, MLP 5.43x)")
    ap.add_argument("--vocab", type=int, default=None,
                    help="qwen2.5-0.5b only: this vocabulary size instead of 151,936")
    ap.add_argument("--side", choices=("hf", "vllm"), help=argparse.SUPPRESS)  # internal: one side in a child
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    share = args.memory_share or (0.1 if args.shape == "toy" else 0.3)
    if args.side:
        res = time_side(args.side, Path(args.model_dir), args.prompts, args.group, args.new_tokens, args.repeats, share)
        print(json.dumps(res), flush=True)
        return
    tmp = Path(tempfile.mkdtemp(prefix="vllm_bench_"))
    try:
        if (args.layers or args.hidden or args.vocab) and args.shape != "qwen2.5-0.5b":
            ap.error("--layers, --hidden and --vocab apply to --shape qwen2.5-0.5b only")
        vocab, params = build_model(args.shape, tmp, args.layers, args.hidden, args.vocab)
        label = args.shape + "".join(f" ({v} {k})" for k, v in (("layers", args.layers), ("hidden", args.hidden),
                                                                 ("vocab", args.vocab)) if v)
        rollouts = args.prompts * args.group
        meta = {"shape": label, "parameters": params, "vocab": vocab, "P": args.prompts, "G": args.group,
                "new_tokens": args.new_tokens, "repeats": args.repeats, "cpus": os.cpu_count(),
                "machine": platform.processor() or platform.machine()}
        res = {}
        for side in ("hf", "vllm"):
            load = os.getloadavg()[0]
            cmd = [sys.executable, __file__, "--side", side, "--model-dir", str(tmp), "--shape", args.shape,
                   "--prompts", str(args.prompts), "--group", str(args.group), "--new-tokens", str(args.new_tokens),
                   "--repeats", str(args.repeats), "--memory-share", str(share)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            r.update(load_avg_1m_before=round(load, 2), load_avg_1m_after=round(os.getloadavg()[0], 2))
            r["rollouts_per_s"] = rollouts / r["batch_s"]
            r["tokens_per_s"] = rollouts * args.new_tokens / r["batch_s"]
            res[side] = r
            print(json.dumps({**meta, **r}), flush=True)
        hf, vl = res["hf"], res["vllm"]
        print(f"| {label} | {params / 1e6:.1f} M | {args.prompts} x {args.group} x {args.new_tokens} | "
              f"{hf['rollouts_per_s']:.3f} | {vl['rollouts_per_s']:.3f} | {vl['rollouts_per_s'] / hf['rollouts_per_s']:.2f}x | "
              f"{hf['batch_cpu_s']:.0f} / {vl['batch_cpu_s']:.0f} s | {vl['start_s']:.0f} s | "
              f"{hf['peak_rss_gib']:.1f} / {vl['peak_rss_gib']:.1f} GiB | "
              f"{hf['load_avg_1m_before']}-{hf['load_avg_1m_after']} / {vl['load_avg_1m_before']}-{vl['load_avg_1m_after']} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
