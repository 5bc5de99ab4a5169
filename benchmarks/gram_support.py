"""Accuracy and cost of the ``support`` LM-head Gram (``gram: auto``) against the float64 exact
Gram and against the LM-head forward on the same batch (issue 11), CPU.

Synthetic batch like a policy's: h ~ N(0, 1) (B, T, H), head W ~ N(0, 1/H) (V, H) and a bias
b_v = -log(1 + rank_v) over a random ranking of the vocabulary (a Zipf(1) unigram prior, so the
tail is heavy and top candidates are shared across positions as in a real LM); logits
z = s h W^T + b with the scale s bisected so that the mean token entropy of softmax(z) at T = 1
is the target (0.3, 1, 3 nats); ``flat`` is the worst case z = 0. Tokens are sampled from
softmax(z); ragged masks (response lengths uniform in [T/4, T]); rewards random in {0, 1},
groups of 8 rollouts, GRPO advantages.

Per entropy, in one process (so the ratios compare like with like on a shared machine):
  forward    torch.matmul(h, W^T) over all B*T positions: the N x V x H matmul that makes the
             logits, and (once) the same over the valid tokens only;
  support    lm_head_gram(hidden, logits, tokens, mask, method="auto") on the given logits
             (auto picks "support" at these sizes), its error bound; forward and support are
             called alternately, --repeats times each, best wall and best CPU time of each;
  streaming  streaming_lm_head_gram(hidden, W, tokens, mask, bias=b): the same estimator from
             h and W in token chunks (it computes its own logits: compare with the forward);
  reference  float64 exact Gram sum_v X_v X_v^T, X_v (B, H) = sum_t d_tv h_t per rollout, built
             in vocabulary chunks of 4096 from float64 logits recomputed from h and W.
Errors: relative Frobenius error vs the reference; SALT's final coefficients
(salt.algo.decomposition.decompose, default SaltConfig) max |A_hat - A_ref| / max |A| and k.
Peak extra memory of the streaming call: VmHWM - VmRSS around it (Linux).

Usage:
  python benchmarks/gram_support.py --case a --threads 1     # B=16 T=64 V=32000 H=512
  python benchmarks/gram_support.py --case b --threads 1     # B=32 T=128 V=151936 H=896
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gram_cost import _reset_peak, _status_kib  # noqa: E402

CASES = {"a": dict(B=16, T=64, V=32000, H=512), "b": dict(B=32, T=128, V=151936, H=896)}


def mean_entropy(z: torch.Tensor) -> float:
    logp = torch.log_softmax(z, dim=-1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def make_batch(B, T, V, H, entropy, seed):
    """hidden (B, T, H), W (V, H), bias (V,), scale s, logits (B, T, V) float32, tokens, mask."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen)
    W = torch.randn(V, H, generator=gen) / math.sqrt(H)
    rank = torch.randperm(V, generator=gen)
    bias = -torch.log1p(rank.float())
    hflat = hidden.reshape(B * T, H)
    if entropy == "flat":
        s, W, bias = 0.0, torch.zeros(V, H), torch.zeros(V)
    else:
        sample = hflat[torch.randperm(B * T, generator=gen)[:256]] @ W.T  # (256, V)
        lo, hi = 0.0, 64.0
        for _ in range(40):  # entropy falls as s grows
            s = 0.5 * (lo + hi)
            if mean_entropy(s * sample + bias) > float(entropy):
                lo = s
            else:
                hi = s
        s = 0.5 * (lo + hi)
        W = W * s
    logits = (hflat @ W.T + bias).reshape(B, T, V)
    tokens = torch.empty(B * T, dtype=torch.long)
    for t0 in range(0, B * T, 256):
        p = torch.softmax(logits.reshape(B * T, V)[t0 : t0 + 256], dim=-1)
        tokens[t0 : t0 + 256] = torch.multinomial(p, 1, generator=gen).squeeze(1)
    lengths = torch.randint(max(1, T // 4), T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
    rewards = torch.randint(0, 2, (B,), generator=gen).double()
    return hidden, W, bias, s, logits, tokens.view(B, T), mask, rewards


def reference_gram(hidden, W, bias, tokens, mask, chunk=4096):
    """float64 exact K = G G^T / B, G_i = sum_t m_t (p_t - e_y) h_t^T, by vocabulary chunks."""
    B, T, H = hidden.shape
    V = W.shape[0]
    h = hidden.reshape(B * T, H).double()
    m = mask.reshape(B * T).double()
    y = tokens.reshape(B * T)
    Wd, bd = W.double(), bias.double()
    lse = torch.empty(B * T, dtype=torch.float64)
    for t0 in range(0, B * T, 512):
        lse[t0 : t0 + 512] = torch.logsumexp(h[t0 : t0 + 512] @ Wd.T + bd, dim=1)
    hw = (h * m[:, None]).view(B, T, H)
    K = torch.zeros(B, B, dtype=torch.float64)
    for v0 in range(0, V, chunk):
        v1 = min(v0 + chunk, V)
        D = torch.exp(h @ Wd[v0:v1].T + bd[v0:v1] - lse[:, None])  # (B*T, c)
        hit = (y >= v0) & (y < v1)
        D[torch.nonzero(hit).squeeze(1), y[hit] - v0] -= 1.0
        F = torch.einsum("btv,bth->bvh", D.view(B, T, -1), hw).reshape(B, -1)
        K += F @ F.T
    return K / B


def grpo_adv(rewards, G=8):
    r = rewards.view(-1, G)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-6)).reshape(-1)


CPU = {}  # best CPU time (time.process_time) of the last best_of call, by label


def best_of(fn, repeats, label=None):
    """Best wall time over ``repeats`` calls (and the best CPU time into CPU[label])."""
    best, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    if label:
        CPU[label] = best_cpu
    return best, out


def best_of_interleaved(fns, repeats, labels):
    """Each repeat calls every fn once, in order; best wall time per fn (and best CPU time into
    CPU[label]). Returns (best wall times, last outputs)."""
    n = len(fns)
    best, best_cpu, outs = [float("inf")] * n, [float("inf")] * n, [None] * n
    for _ in range(repeats):
        for k, fn in enumerate(fns):
            t0, c0 = time.perf_counter(), time.process_time()
            outs[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
            best_cpu[k] = min(best_cpu[k], time.process_time() - c0)
    for k, label in enumerate(labels):
        CPU[label] = best_cpu[k]
    return best, outs


def run_case(args, entropy) -> dict:
    from salt.algo.decomposition import SaltConfig, decompose
    from salt.algo.gram import lm_head_gram, streaming_lm_head_gram

    c = CASES[args.case]
    B, T, V, H = c["B"], c["T"], c["V"], c["H"]
    hidden, W, bias, s, logits, tokens, mask, rewards = make_batch(B, T, V, H, entropy, args.seed)
    ent = mean_entropy(logits.reshape(B * T, V)[mask.reshape(-1) > 0][:512]) if entropy != "flat" else math.log(V)
    hflat = hidden.reshape(B * T, H)
    out = torch.empty(B * T, V)
    valid = mask.reshape(-1) > 0
    hval = hflat[valid].contiguous()
    out_v = torch.empty(hval.shape[0], V)
    info = {}
    # forward and estimator interleaved, repeat by repeat (a shared machine's load hits both alike)
    (t_fwd, t_sup), (_, K) = best_of_interleaved(
        [lambda: torch.matmul(hflat, W.T, out=out),
         lambda: lm_head_gram(hidden, logits, tokens, mask, 1.0, args.method, seed=args.seed, tol=args.tol,
                              tail_dim=args.tail_dim, sparse_samples=args.samples, chunk_size=args.chunk_size,
                              info=info)],
        args.repeats, ("forward", "support"))
    t_fwd_v, _ = best_of(lambda: torch.matmul(hval, W.T, out=out_v), 1)
    del out, out_v
    info_s = {}
    _reset_peak()
    base = _status_kib("VmRSS")
    stream_method = "sparse" if info["method"] == "sparse" else "support"
    t_str, Ks = best_of(lambda: streaming_lm_head_gram(hidden, W, tokens, mask, 1.0, bias=bias, seed=args.seed,
                                                       tol=args.tol, tail_dim=args.tail_dim, info=info_s,
                                                       method=stream_method, sparse_samples=args.samples,
                                                       chunk_size=args.chunk_size),
                        1, "stream")
    peak_extra = (_status_kib("VmHWM") - base) / 1024
    peak_total = _status_kib("VmHWM") / 1024
    A = grpo_adv(rewards)
    row0 = {"entropy_target": entropy, "entropy": ent, "scale": s, "N_valid": int(valid.sum()),
            "t_forward": t_fwd, "t_forward_valid": t_fwd_v, "t_support": t_sup, "t_stream": t_str,
            "method": info["method"], "err_bound": info["err_bound"], "support_size": info.get("support_size"),
            "tail_mass": info.get("tail_mass"), "err_kind": info.get("err_kind", "deterministic"),
            "sparse_entries": info.get("sparse_entries"), "samples": info.get("tail_rows"),
            "stream_err_bound": info_s.get("err_bound"), "stream_peak_extra_mib": peak_extra,
            "stream_peak_total_mib": peak_total, "cpu_forward": CPU["forward"], "cpu_support": CPU["support"],
            "cpu_stream": CPU["stream"]}
    if args.no_reference:
        return row0
    ref = reference_gram(hidden, W, bias, tokens, mask)
    r_ref = decompose(ref, A, SaltConfig())
    row = {**row0, "k_ref": r_ref.k}
    for name, Kx in (("support", K), ("stream", Ks)):
        r = decompose(Kx.double(), A, SaltConfig())
        row[f"err_{name}"] = float((Kx.double() - ref).norm() / ref.norm())
        row[f"coef_{name}"] = float((r.advantages - r_ref.advantages).abs().max() / A.abs().max())
        row[f"k_{name}"] = r.k
    if args.coverage:  # the sparse estimate against the truth over sampling seeds, same batch
        # two truths: the float64 reference (from float64 logits) and the exact Gram of the given
        # float32 logits in float64 (the estimator's own error; the estimate does not cover the
        # rounding of the float32 logits themselves)
        ref32 = lm_head_gram(hidden.double(), logits.double(), tokens, mask, 1.0, "exact", chunk_size=args.chunk_size)
        row["err_exact_given_logits"] = float((ref32 - ref).norm() / ref.norm())
        for tag, truth in (("", ref), ("_given", ref32)):
            hits, ratios, errs = 0, [], []
            for sd in range(args.coverage):
                ic = {}
                Kx = lm_head_gram(hidden, logits, tokens, mask, 1.0, "sparse", seed=1000 + sd,
                                  sparse_samples=args.samples, chunk_size=args.chunk_size, info=ic)
                e = float((Kx.double() - truth).norm() / truth.norm())
                hits += e <= ic["err_bound"]
                ratios.append(ic["err_bound"] / e)
                errs.append(e)
            ratios.sort()
            row.update({f"cov{tag}_hits": hits, "cov_trials": args.coverage, f"cov{tag}_ratio_min": ratios[0],
                        f"cov{tag}_ratio_median": ratios[len(ratios) // 2], f"cov{tag}_err_max": max(errs)})
    if args.sketch:
        Kc = lm_head_gram(hidden, logits, tokens, mask, 1.0, "sketch", sketch_dim=256, seed=args.seed,
                          chunk_size=args.chunk_size)
        r = decompose(Kc.double(), A, SaltConfig())
        row["err_sketch256"] = float((Kc.double() - ref).norm() / ref.norm())
        row["coef_sketch256"] = float((r.advantages - r_ref.advantages).abs().max() / A.abs().max())
        row["k_sketch256"] = r.k
    return row


def table_row(r: dict) -> str:
    """One markdown row of a result dict (``support_size`` is None when auto ran ``exact``)."""
    err = (f"{r['err_support']:.1e} | {r['coef_support']:.1e} | {r['k_support']} ({r['k_ref']})"
           if "k_ref" in r else "- | - | -")
    u = r["support_size"] if r["support_size"] is not None else f"{r['method']}"
    if r["method"] == "sparse":  # mean |S_t| per token, the union of the S_t, sampled ids
        u = f"sparse: {r['sparse_entries'] / r['N_valid']:.1f} / {r['support_size']} / {r['samples']}"
    tm = f"{r['tail_mass']:.1e}" if r["tail_mass"] is not None else "-"
    kind = "est." if r.get("err_kind") == "probabilistic" else "bound"
    return (f"| {r['entropy_target']} ({r['entropy']:.2f}) | {r['N_valid']} | {u} | {tm} | {r['err_bound']:.1e} {kind} | {err} "
            f"| {r['t_forward']:.3f} | {r['t_support']:.3f} | {100 * r['t_support'] / r['t_forward']:.1f}%, "
            f"{100 * r['cpu_support'] / r['cpu_forward']:.1f}% | {r['t_stream']:.3f} | "
            f"{100 * r['t_stream'] / r['t_forward']:.0f}%, {100 * r['cpu_stream'] / r['cpu_forward']:.0f}% "
            f"| {r['stream_peak_extra_mib']:.0f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=tuple(CASES), default="a")
    ap.add_argument("--entropies", default="0.3,1,3,flat")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tail-dim", dest="tail_dim", type=int, default=256, help="support: tail sketch rows (0: none)")
    ap.add_argument("--method", default="auto", help="lm_head_gram method timed against the forward (auto, sparse, support)")
    ap.add_argument("--samples", type=int, default=1024, help="sparse: ids sampled for the correction (sparse_samples)")
    ap.add_argument("--chunk-size", dest="chunk_size", type=int, default=512,
                    help="token block of the exact Gram and the streamed passes (the results in benchmarks/README.md "
                         "were made at 512; training's default, algorithm.salt.chunk_size, is 4096)")
    ap.add_argument("--coverage", type=int, default=0,
                    help="sparse: this many sampling seeds on each batch, true error vs the estimate (needs the reference)")
    ap.add_argument("--sketch", action="store_true", help="also the count sketch with 256 buckets")
    ap.add_argument("--no-reference", dest="no_reference", action="store_true",
                    help="skip the float64 reference (cost and bound only; case b's reference takes minutes)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--table", default=None, help="only print the table of a saved --json file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"case {args.case}: {CASES[args.case]} threads={args.threads} tol={args.tol} tail_dim={args.tail_dim} "
          f"load={os.getloadavg()} {time.strftime('%Y-%m-%d %H:%M:%S')}")
    rows = []
    if args.table:  # re-print the table of a saved --json file
        rows = json.load(open(args.table))
        args.entropies = ""
    hdr = ("| entropy (nats) | N valid | support ids u (or backend; sparse: mean size of S_t / union / sampled ids) | tail mass | bound or estimate | rel. err | coef err / max|A| | k (ref) "
           "| forward s | auto s | auto / forward (wall, CPU) | stream s | stream / forward (wall, CPU) | stream peak extra MiB |")
    for e in filter(None, args.entropies.split(",")):
        r = run_case(args, e)
        rows.append(r)
        print(json.dumps(r), flush=True)
    print(hdr)
    print("|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|")
    for r in rows:
        print(table_row(r))
    print(f"load after {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
