"""Proxy validation (methods.md 3.6): does the LM-head Gram track the geometry of deeper gradients?

``salt validate-proxy --model DIR --data JSONL --out DIR [--n-prompts P] [--group-size G]``

On the same rollouts of a small model it builds

* the LM-head Gram K_lm (``salt.algo.gram.streaming_lm_head_gram``, exact), and
* the Gram K_blk of per-sample gradients of the LAST TRANSFORMER BLOCK's parameters, computed
  with autograd one rollout at a time for L_i = -sum_t m_it log softmax(z_it / T)[y_it]
  (the same unweighted per-rollout loss whose LM-head gradient is SALT's feature),

and reports the Pearson correlation of the off-diagonal (i < j) entries of the two cosine Grams
against two nulls:

* ``permutation``: the rows and columns of the last-block cosine Gram permuted at random
  (the same entries, the correspondence between rollouts destroyed);
* ``gaussian``: Gaussian noise features with the norms of the last-block gradients.

Each null is drawn ``null_samples`` times (seeded); ``p_value`` is the fraction of null draws
whose correlation is at least the observed one (with the +1 correction).
Writes ``DIR/proxy.json`` and logs its numbers to MLflow.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from salt import tracking as tr
from salt.algo.gram import streaming_lm_head_gram
from salt.algo.gram_metrics import cosine_gram
from salt.rollout import make_backend
from salt.tasks.prompts import build_prompt
from salt.tasks.toy import generate_problems
from salt.train.batch import RolloutBatch, to_tensors
from salt.train.forward import policy_forward
from salt.tasks.rows import read_rows
from salt.train.head import output_head
from salt.utils import atomic_write_text, seed_everything


def _offdiag(C: torch.Tensor) -> torch.Tensor:
    """Upper-triangle entries (i < j) of a square matrix, (B (B - 1) / 2,)."""
    i, j = torch.triu_indices(C.shape[0], C.shape[0], offset=1)
    return C[i, j]


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two vectors (0 when either is constant)."""
    x = x.double() - x.double().mean()
    y = y.double() - y.double().mean()
    den = float(x.norm() * y.norm())
    return float((x @ y) / den) if den > 0 else 0.0


def last_block_gradients(model: Any, tb: Any, temperature: float) -> torch.Tensor:
    """(B, D) per-rollout gradients of the last transformer block, one backward per rollout."""
    block = model.model.layers[-1]
    params = [p for p in block.parameters() if p.requires_grad]
    rows = []
    model.eval()  # no dropout: the gradient of the deterministic forward
    for i in range(len(tb)):
        part = tb.index(slice(i, i + 1))
        fwd = policy_forward(model, part, temperature, with_features=False)
        loss = -(fwd.logp * part.mask).sum()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1).double()
                               for g, p in zip(grads, params)]))
    return torch.stack(rows)  # (B, D)


def proxy_statistics(K_lm: torch.Tensor, F_blk: torch.Tensor, null_samples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Correlation of the cosine Grams of K_lm (B, B) and of features F_blk (B, D), with both nulls."""
    B = K_lm.shape[0]
    K_blk = F_blk @ F_blk.T / B  # (B, B)
    C_lm, C_blk = cosine_gram(K_lm.double()), cosine_gram(K_blk)
    x = _offdiag(C_lm)
    r = pearson(x, _offdiag(C_blk))
    g = torch.Generator().manual_seed(int(seed))
    perm_r, gauss_r = [], []
    norms = F_blk.norm(dim=1, keepdim=True)  # (B, 1)
    for _ in range(null_samples):
        p = torch.randperm(B, generator=g)
        perm_r.append(pearson(x, _offdiag(C_blk[p][:, p])))
        z = torch.randn(F_blk.shape, generator=g, dtype=torch.float64)
        z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-30) * norms  # same norms as the real features
        gauss_r.append(pearson(x, _offdiag(cosine_gram(z @ z.T / B))))

    def summary(vals: list[float]) -> dict[str, float]:
        t = torch.tensor(vals, dtype=torch.float64)
        return {"mean": float(t.mean()), "std": float(t.std()) if len(vals) > 1 else 0.0,
                "p_value": float(((t >= r).sum() + 1) / (len(vals) + 1))}

    return {
        "pearson": r,
        "null_permutation": summary(perm_r),
        "null_gaussian": summary(gauss_r),
        "n_rollouts": B,
        "n_pairs": int(x.numel()),
        "block_params": int(F_blk.shape[1]),
        "pairs": {"lm_head": x.tolist(), "last_block": _offdiag(C_blk).tolist()},
    }


def validate_proxy(model_dir: str, data: str, out_dir: str, n_prompts: int = 8, group_size: int = 8,
                   max_new_tokens: int = 16, temperature: float = 1.0, seed: int = 0, null_samples: int = 200,
                   tracking: dict | None = None) -> dict[str, Any]:
    """Generate ``n_prompts x group_size`` rollouts and compare the two Grams; returns the result dict."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    seed_everything(seed)
    if data.startswith("toy:"):
        rows = generate_problems(n_prompts, data.split(":", 1)[1], seed=seed)
    else:
        rows = read_rows(data, what="--data")  # every row validated (salt.tasks.rows): FILE:LINE errors
    if len(rows) < n_prompts:
        raise ValueError(f"--data {data} has {len(rows)} rows, fewer than --n-prompts {n_prompts}")
    rows = rows[:n_prompts]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    prompts = [build_prompt(r, tok) for r in rows]
    out = make_backend({"backend": "hf"}, model, tok).generate(prompts, group_size, max_new_tokens, temperature, 1.0, seed=seed)
    zeros = torch.zeros(len(out.texts))
    batch = RolloutBatch(rows=rows, prompts=prompts, prompt_ids=out.prompt_ids, group_ids=torch.tensor(out.group_ids),
                         completion_ids=out.completion_ids, finish_reasons=out.finish_reasons, texts=out.texts,
                         scores=zeros, rewards=zeros, advantages=zeros)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    tb = to_tensors(batch, pad)
    model.eval()
    with torch.no_grad():
        fwd = policy_forward(model, tb, temperature)
        head = output_head(model)
        bias = None if head.bias is None else head.bias.double()
        K_lm = streaming_lm_head_gram(fwd.hidden.double(), head.weight.double(), tb.tokens, tb.mask, temperature,
                                      "exact", bias=bias)
    F_blk = last_block_gradients(model, tb, temperature)
    result = proxy_statistics(K_lm, F_blk, null_samples=null_samples, seed=seed)
    result.update({"model": str(model_dir), "data": data, "n_prompts": n_prompts, "group_size": group_size,
                   "max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed,
                   "null_samples": null_samples, "seconds": time.perf_counter() - t0})
    out_path = Path(out_dir)
    out_path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_path / "proxy.json", json.dumps(result, indent=1))
    if tracking is None or tracking.get("enabled", True):
        run = tr.start_run(tracking or {}, run_name=f"proxy-{Path(model_dir).name}", out_dir=out_path,
                           params={k: result[k] for k in ("model", "data", "n_prompts", "group_size", "max_new_tokens",
                                                          "temperature", "seed", "null_samples")},
                           tags={"kind": "proxy_validation"})
        tr.log_metrics(run, {"proxy/pearson": result["pearson"],
                             "proxy/null_permutation_mean": result["null_permutation"]["mean"],
                             "proxy/null_permutation_p": result["null_permutation"]["p_value"],
                             "proxy/null_gaussian_mean": result["null_gaussian"]["mean"],
                             "proxy/null_gaussian_p": result["null_gaussian"]["p_value"]}, step=0)
        tr.log_artifacts(run, out_path / "proxy.json")
        tr.end_run(run)
    return result


def cli_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="salt validate-proxy", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF model dir (tokenizer alongside); small models only")
    ap.add_argument("--data", required=True, help="JSONL rows (ARCHITECTURE.md schema) or toy:test / toy:train")
    ap.add_argument("--out", required=True, help="output dir for proxy.json")
    ap.add_argument("--n-prompts", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--null-samples", type=int, default=200, help="draws of each null distribution")
    ap.add_argument("--tracking-uri", default=None, help="MLflow URI (default: $MLFLOW_TRACKING_URI or sqlite:///results/mlflow.db)")
    ap.add_argument("--experiment", default="salt-proxy")
    ap.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    args = ap.parse_args(argv)
    if not Path(args.model, "config.json").is_file():
        print(f"salt validate-proxy: --model {args.model} has no config.json; pass a Hugging Face model dir", file=sys.stderr)
        return 2
    if not args.data.startswith("toy:") and not Path(args.data).is_file():
        print(f"salt validate-proxy: --data {args.data} does not exist; create it with `salt prepare-data`", file=sys.stderr)
        return 2
    if args.n_prompts < 1 or args.group_size < 1 or args.n_prompts * args.group_size < 3:
        print("salt validate-proxy: need --n-prompts x --group-size >= 3 rollouts for off-diagonal pairs", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    tracking = {"enabled": not args.no_tracking, "uri": args.tracking_uri, "experiment": args.experiment}
    res = validate_proxy(args.model, args.data, args.out, args.n_prompts, args.group_size, args.max_new_tokens,
                         args.temperature, args.seed, args.null_samples, tracking)
    print(json.dumps({k: res[k] for k in ("pearson", "null_permutation", "null_gaussian", "n_rollouts")}))
    return 0
