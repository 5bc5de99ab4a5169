"""Cost of the LM-head Gram K = G G^T / B on one batch (methods.md 3.2), CPU.

Compares, on the same logits and hidden states:
  proxy   the published proxy as a training step runs it: the loss of the batch's forward is
          split per rollout and one autograd call per rollout goes back through the batch's
          shared (B, T, V) logits to the LM-head weight (dW = dz^T h); each g_i (V, H) is written
          into a dense (B, V*H) matrix, then K = G G^T / B.
  proxy_sliced  the cheapest way to run the same proxy: each rollout's autograd call sees only
          its own (T, V) logits slice, so it does 1/B of the batched call's work.
  exact   salt.algo.gram.lm_head_gram(method="exact")
  sketch  salt.algo.gram.lm_head_gram(method="sketch")

Every method runs in a fresh subprocess. The subprocess builds the batch, resets its peak-RSS
counter (Linux: writing "5" to /proc/self/clear_refs resets VmHWM), reads VmRSS, runs the
method once and reads VmHWM: "peak extra" = VmHWM - VmRSS before the call, i.e. the most
memory the call held on top of its inputs (allocator caches and temporaries included). The
time is the best (minimum, as timeit does: the least disturbed by other processes on a
shared machine) over --repeats calls in the same process; the median wall time and the best
CPU time (time.process_time, all threads; on a loaded machine the least load-dependent
number at --threads 1) are printed as well.

Usage:
  python benchmarks/gram_cost.py                 # B=16, T=64, V=32000, H=512
  python benchmarks/gram_cost.py --qwen          # V=151936, H=896, B=16, T=128 (no proxy)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import time

import torch


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim) and reset VmHWM to VmRSS, so that
    the measured peak counts every page the method touches, not only pages beyond old holes."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def make_batch(
    B: int, T: int, V: int, H: int, seed: int, logit_scale: float, temperature: float, mask: str = "full"
):
    """Deterministic batch without large temporaries.

    h ~ N(0, 1) (B, T, H); logits z = h W^T with W ~ N(0, logit_scale^2 / H) (V, H), built
    in vocabulary slices so W never exists whole; tokens sampled from softmax(z / T), as in a
    rollout. mask "full": every position counts; "ragged": rollout i keeps its first L_i
    positions, L_i uniform in [T/4, T] (responses of different lengths padded to T).
    Returns hidden, logits, tokens, mask.
    """
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, H, generator=gen)
    logits = torch.empty(B, T, V)
    flat, hflat = logits.view(B * T, V), hidden.view(B * T, H)  # (B*T, V), (B*T, H)
    for v0 in range(0, V, 8192):
        v1 = min(v0 + 8192, V)
        w = torch.randn(v1 - v0, H, generator=gen) * (logit_scale / math.sqrt(H))
        flat[:, v0:v1] = hflat @ w.T
    tokens = torch.empty(B * T, dtype=torch.long)
    for t0 in range(0, B * T, 128):
        p = torch.softmax(flat[t0 : t0 + 128] / temperature, dim=-1)
        tokens[t0 : t0 + 128] = torch.multinomial(p, 1, generator=gen).squeeze(1)
    if mask == "full":
        m = torch.ones(B, T)
    else:
        lengths = torch.randint(max(1, T // 4), T + 1, (B,), generator=gen)  # (B,)
        m = (torch.arange(T)[None, :] < lengths[:, None]).float()  # (B, T)
    return hidden, logits, tokens.view(B, T), m


def published_proxy(hidden, logits, tokens, mask, temperature):
    """The published proxy: per-rollout autograd through the batch's logits graph. (B, B).

    The logits stand for the training forward's output (a leaf here, so the forward itself is
    not timed); L_i = -sum_t m_it log softmax(z_it / T)[y_it] is taken from one batched
    log-softmax, and autograd.grad(L_i, z) is called once per rollout with the graph retained,
    as a per-sample-gradient loop over a batched forward does. dW_i = dz_i^T h (V, H).
    """
    B, T, V = logits.shape
    H = hidden.shape[-1]
    G = torch.empty(B, V * H)  # (B, V*H) dense features
    z = logits.detach().requires_grad_(True)  # (B, T, V)
    logp = torch.log_softmax(z / temperature, dim=-1).gather(2, tokens[..., None]).squeeze(2)  # (B, T)
    losses = -(mask * logp).sum(1)  # (B,)
    hflat = hidden.reshape(B * T, H)  # (B*T, H)
    for i in range(B):
        (dz,) = torch.autograd.grad(losses[i], z, retain_graph=True)  # (B, T, V), zero off rollout i
        torch.matmul((dz * temperature).reshape(B * T, V).T, hflat, out=G[i].view(V, H))  # (V, H)
    K = G @ G.T / B
    return 0.5 * (K + K.T)


def published_proxy_sliced(hidden, logits, tokens, mask, temperature):
    """Dense per-rollout LM-head gradients through autograd on each rollout's own logits slice,
    then G G^T / B. (B, B)."""
    B, T, V = logits.shape
    H = hidden.shape[-1]
    G = torch.empty(B, V * H)  # (B, V*H) dense features
    for i in range(B):
        z = logits[i].detach().requires_grad_(True)  # (T, V)
        logp = torch.log_softmax(z / temperature, dim=-1).gather(1, tokens[i][:, None]).squeeze(1)
        loss = -(mask[i] * logp).sum()
        (dz,) = torch.autograd.grad(loss, z)  # (T, V) = m (p - e_y) / T
        torch.matmul((dz * temperature).T, hidden[i], out=G[i].view(V, H))  # (V, H)
    K = G @ G.T / B
    return 0.5 * (K + K.T)


def worker(args) -> None:
    from salt.algo.gram import lm_head_gram

    torch.set_num_threads(args.threads)
    hidden, logits, tokens, mask = make_batch(
        args.B, args.T, args.V, args.H, args.seed, args.logit_scale, args.temperature, args.mask
    )
    if args.method == "proxy":
        run = lambda: published_proxy(hidden, logits, tokens, mask, args.temperature)  # noqa: E731
    elif args.method == "proxy_sliced":
        run = lambda: published_proxy_sliced(hidden, logits, tokens, mask, args.temperature)  # noqa: E731
    else:
        run = lambda: lm_head_gram(  # noqa: E731
            hidden, logits, tokens, mask, args.temperature, args.method,
            chunk_size=args.chunk_size, sketch_dim=args.sketch_dim, seed=args.seed,
        )
    _reset_peak()
    base = _status_kib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    K = run()
    times, cpu = [time.perf_counter() - t0], [time.process_time() - c0]
    peak = _status_kib("VmHWM")
    for _ in range(args.repeats - 1):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    p_y = torch.softmax(logits[0] / args.temperature, -1).gather(1, tokens[0][:, None]).mean()
    print(json.dumps({
        "method": args.method, "seconds": min(times), "median_seconds": statistics.median(times),
        "times": times, "cpu_seconds": min(cpu),
        "peak_extra_mib": (peak - base) / 1024, "peak_total_mib": peak / 1024,
        "inputs_mib": base / 1024, "mean_p_y": float(p_y), "K": K.double().tolist(),
    }))


def rel_fro(K: torch.Tensor, ref: torch.Tensor) -> float:
    return float((K - ref).norm() / ref.norm())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qwen", action="store_true", help="Qwen2.5-0.5B-sized head, exact and sketch only")
    ap.add_argument("--methods", default=None, help="comma list from proxy,proxy_sliced,exact,sketch")
    ap.add_argument("--B", type=int, default=16)
    ap.add_argument("--T", type=int, default=None)
    ap.add_argument("--V", type=int, default=None)
    ap.add_argument("--H", type=int, default=None)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--mask", choices=("full", "ragged"), default="full",
                    help="full: all B*T tokens count; ragged: response lengths uniform in [T/4, T]")
    ap.add_argument("--logit-scale", dest="logit_scale", type=float, default=4.0)
    ap.add_argument("--chunk-size", dest="chunk_size", type=int, default=512)
    ap.add_argument("--sketch-dim", dest="sketch_dim", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the summary here")
    ap.add_argument("--worker", dest="method", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.T = args.T or (128 if args.qwen else 64)
    args.V = args.V or (151936 if args.qwen else 32000)
    args.H = args.H or (896 if args.qwen else 512)
    if args.method is not None:
        worker(args)
        return 0
    methods = (args.methods or ("exact,sketch" if args.qwen else "proxy,proxy_sliced,exact,sketch")).split(",")
    dense_bytes = args.B * args.V * args.H * 4
    print(f"B={args.B} T={args.T} V={args.V} H={args.H} mask={args.mask} threads={args.threads} "
          f"chunk_size={args.chunk_size} sketch_dim={args.sketch_dim}")
    print(f"dense features G (B x V*H float32) = {dense_bytes / 2**30:.2f} GiB")
    load_before = os.getloadavg()
    results = {}
    for method in methods:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", method]
        for key in ("B", "T", "V", "H", "temperature", "threads", "repeats", "seed", "mask"):
            cmd += [f"--{key}", str(getattr(args, key))]
        cmd += ["--logit-scale", str(args.logit_scale), "--chunk-size", str(args.chunk_size),
                "--sketch-dim", str(args.sketch_dim)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
    ref_name = "proxy" if "proxy" in results else "exact"
    ref = torch.tensor(results[ref_name]["K"])
    print(f"mean p(y) of the sampled tokens: {results[methods[0]]['mean_p_y']:.3f}")
    print(f"{'method':8s} {'best s':>9s} {'median s':>9s} {'cpu s':>9s} {'peak extra MiB':>15s} "
          f"{'peak total MiB':>15s} "
          f"{'rel. Frobenius err vs ' + ref_name:>28s} {'speedup':>8s} {'cpu speedup':>11s} {'mem ratio':>9s}")
    summary = {"args": {k: v for k, v in vars(args).items() if k != "method"}, "methods": {}}
    for method, r in results.items():
        err = rel_fro(torch.tensor(r["K"]), ref)
        speed = results[ref_name]["seconds"] / r["seconds"]
        cpu_speed = results[ref_name]["cpu_seconds"] / r["cpu_seconds"]
        mem = results[ref_name]["peak_extra_mib"] / max(r["peak_extra_mib"], 1e-9)
        print(f"{method:8s} {r['seconds']:9.3f} {r['median_seconds']:9.3f} {r['cpu_seconds']:9.3f} "
              f"{r['peak_extra_mib']:15.1f} {r['peak_total_mib']:15.1f} "
              f"{err:28.2e} {speed:8.1f} {cpu_speed:11.1f} {mem:9.1f}")
        summary["methods"][method] = {k: v for k, v in r.items() if k != "K"} | {"rel_err": err}
    load_after = os.getloadavg()
    print(f"load average (1, 5, 15 min) before {load_before} after {load_after}")
    summary["load_before"], summary["load_after"] = load_before, load_after
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
