"""Peak memory and wall time of one training step (``update_minibatch``) at the 0.5B head shape,
today's code against another revision, and the projection to Qwen2.5-7B at ``config/paper.yaml``.

Model: a randomly initialised Qwen2 with Qwen2.5-0.5B's head and layer shapes (vocabulary 151,936,
hidden 896, intermediate 4,864, 14 heads / 2 KV heads, tied embeddings) and 2 decoder layers, float32,
CPU. Mini-batch: ``--rollouts`` rollouts (one group) of a 16-token prompt and T response tokens,
micro-batch ``--micro``, SGD, Gram ``auto`` (the default), token-mean DAPO-style loss.

Arms: ``decoder`` (forward + backward of the decoder alone, loss on its last hidden state: what
the step needs besides the head), ``off`` (SALT and its diagnostics off: no Gram), ``micro`` and
``global`` (SALT on, scope micro / global).

"Head" memory = the arm's peak minus the decoder's own memory at the moment the head runs: the
decoder arm's RSS when the forward of its last micro-batch has returned (``live``: the parameters'
gradients of the earlier micro-batches plus this micro-batch's activations saved for the backward,
as they are while the arm's head runs; the step's peak is in the head's backward of the last
micro-batch). The older definition, the arm's peak minus the decoder arm's *peak*, is printed too
("above decoder peak"): it is what the head adds to the step's peak, but it is not the head's
memory, since the decoder arm peaks at another moment (at T <= 1024 when the embedding's dense
(V, H) gradient of the last micro-batch is added, after its activations are freed; at T = 4096 in
its own backward), so it counts the decoder's activations into the head at small T.

Every case runs in its own ``nice -n 19`` subprocess that builds the model and batch, resets its
peak-RSS counter (``/proc/self/clear_refs``), runs one step and reads VmHWM: "peak" = VmHWM - VmRSS
before the step (the parameter gradients, 0.55 GiB, are part of it). ``--code DIR`` runs the step
with the package of another checkout (e.g. today's code exported by ``git worktree add``); the
script itself only uses the API both share. A case whose peak is predicted (linear in T from the
smaller T of the same arm) above ``--cap-gib`` is not run and is reported as extrapolated.

Usage:
  python benchmarks/step_memory.py run --tokens 1024 --arm global [--code DIR]   # one case, JSON
  python benchmarks/step_memory.py table [--old DIR] [--tokens 256 1024 4096] [--repeats 3] --out F.jsonl
  python benchmarks/step_memory.py markdown --merge F.jsonl ...                   # the table again
  python benchmarks/step_memory.py projection                                     # Qwen2.5-7B, paper.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GIB = 1024**3
ARMS = ("decoder", "off", "micro", "global")


def _model(vocab: int, layers: int):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=896, intermediate_size=4864, num_hidden_layers=layers,
                      num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=8192,
                      tie_word_embeddings=True, use_cache=False)
    return Qwen2ForCausalLM(cfg).float()


def _batch(rollouts: int, prompt: int, tokens: int, vocab: int):
    import torch

    from salt.train.batch import TensorBatch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (rollouts, prompt + tokens), generator=g)
    attn = torch.ones_like(ids)
    return TensorBatch(input_ids=ids, attention_mask=attn, position_ids=attn.cumsum(1) - 1,
                       tokens=ids[:, prompt:].clone(), mask=torch.ones(rollouts, tokens),
                       group_ids=torch.zeros(rollouts, dtype=torch.long),
                       advantages=torch.randn(rollouts, generator=g))


def _settings(arm: str, micro: int, head_chunk: int | None = None):
    import dataclasses

    from salt.algo.losses import LossConfig
    from salt.train.update import UpdateSettings

    kw = dict(loss_cfg=LossConfig(name="dapo", agg_mode="token-mean"), temperature=1.0, micro_batch_size=micro,
              max_grad_norm=1.0, salt_enabled=arm in ("micro", "global"), salt_diagnostics=False, gram="auto",
              scope="micro" if arm == "micro" else "global")
    gram = dict(chunk_size=4096, sketch_dim=256, tol=1e-3, support_eps=1e-6, tail_dim=0, sparse_samples=1024)
    names = {f.name for f in dataclasses.fields(UpdateSettings)}
    if "chunk_size" in names:  # code before the one Gram options object: two fields and a dict of the others
        kw.update(chunk_size=gram.pop("chunk_size"), sketch_dim=gram.pop("sketch_dim"), gram_options=gram)
    else:
        from salt.algo.gram import GramOptions

        kw["gram_options"] = GramOptions(**gram)
    if head_chunk is not None:  # the new code's train.head_chunk_size (today's code has no such key)
        kw["head_chunk"] = head_chunk
    return UpdateSettings(**{k: v for k, v in kw.items() if k in names})


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status (Linux only)")


def _reset_peak() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def run_case(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from salt.train.stepping import Timer
    from salt.train.update import update_minibatch

    model = _model(args.vocab, args.layers)
    tb = _batch(args.rollouts, args.prompt, args.tokens, args.vocab)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0)
    timer = Timer()
    live: list[float] = []  # RSS above base whenever the decoder's forward returns
    decoder = model.model
    decoder.register_forward_hook(lambda *_: live.append((_status_kib("VmRSS") - base) * 1024 / GIB))
    _reset_peak()
    base = _status_kib("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    if args.arm == "decoder":
        model.train()
        for s in range(0, len(tb), args.micro):
            p = tb.index(slice(s, s + args.micro))
            h = model.model(input_ids=p.input_ids, attention_mask=p.attention_mask, position_ids=p.position_ids,
                            use_cache=False).last_hidden_state
            h[:, -args.tokens - 1:-1].float().pow(2).mean().backward()
        metrics = {}
    else:
        metrics = update_minibatch(model, opt, sched, tb, _settings(args.arm, args.micro, args.head_chunk), seed=0, timer=timer)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = _status_kib("VmHWM")
    import salt.train.update as upd

    return {"arm": args.arm, "tokens": args.tokens, "rollouts": args.rollouts, "micro": args.micro,
            "peak_gib": (peak - base) * 1024 / GIB, "live_gib": live[-1] if live else None,
            "seconds": seconds, "cpu_seconds": cpu, "threads": args.threads, "head_chunk": args.head_chunk,
            "stages": {k: round(v, 2) for k, v in timer.t.items()},
            "n_eff": metrics.get("salt/n_eff"), "code": str(Path(upd.__file__).resolve().parents[2])}


def _spawn(tokens: int, arm: str, code: Path, a) -> dict:
    cmd = ["nice", "-n", "19", sys.executable, str(Path(__file__).resolve()), "run", "--tokens", str(tokens),
           "--arm", arm, "--rollouts", str(a.rollouts), "--micro", str(a.micro), "--threads", str(a.threads)]
    env = {**os.environ, "PYTHONPATH": str(code)}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(code))
    if out.returncode != 0:
        raise RuntimeError(f"case {arm} T={tokens} ({code}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(a) -> None:
    """Every case, ``--repeats`` times, old and new interleaved (so that the machine's load falls on
    both alike): for each repeat, for each T, for each arm, new then old (old then new on odd
    repeats). T above ``--repeat-max-tokens`` runs once. Each result is appended to ``--out`` (JSON
    lines) as it finishes."""
    codes = ({} if a.only_old else {"new": ROOT}) | ({"old": Path(a.old).resolve()} if a.old else {})
    rows: dict = {}
    done: dict = {}  # (name, arm) -> [(T, peak)] of the first repeat, for the linear prediction
    out = Path(a.out)
    for rep in range(a.repeats):
        for T in a.tokens:
            if rep and T > a.repeat_max_tokens:
                continue
            for arm in a.arms:
                names = list(codes) if rep % 2 == 0 else list(codes)[::-1]
                for name in names:
                    if name == "old" and arm == "decoder":
                        continue
                    key = (name, arm, T)
                    meas = done.get((name, arm), [])
                    if len(meas) >= 2:  # linear prediction from the two largest measured T
                        (t1, p1), (t2, p2) = meas[-2:]
                        pred = p2 + (p2 - p1) / (t2 - t1) * (T - t2)
                        if pred > a.cap_gib:
                            if rep == 0:
                                r = {"peak_gib": pred, "seconds": None, "extrapolated": True}
                                rows.setdefault(key, []).append(r)
                                with out.open("a") as fh:
                                    fh.write(json.dumps({"key": "/".join(map(str, key)), **r}) + "\n")
                                print(f"{name} {arm} T={T}: predicted {pred:.2f} GiB > cap, extrapolated", flush=True)
                            continue
                    r = _spawn(T, arm, ROOT if name == "new" else codes[name], a)
                    r["rep"] = rep
                    rows.setdefault(key, []).append(r)
                    if rep == 0:
                        done.setdefault((name, arm), []).append((T, r["peak_gib"]))
                    with out.open("a") as fh:
                        fh.write(json.dumps({"key": "/".join(map(str, key)), **r}) + "\n")
                    print(f"rep {rep} {name} {arm} T={T}: {r['peak_gib']:.2f} GiB {r['cpu_seconds']:.1f} s CPU "
                          f"{r['seconds']:.1f} s wall", flush=True)
    print(markdown(rows, a))


def _median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    k = len(xs) // 2
    return xs[k] if len(xs) % 2 else (xs[k - 1] + xs[k]) / 2


def markdown(rows: dict, a) -> str:
    """``rows``: (name, arm, T) -> list of results. Peak and time: medians over repeats; the time is
    the step's CPU seconds (all threads; wall time in brackets, which the machine's load inflates);
    the ratio: the median of new / old CPU seconds over the repeats that ran both (interleaved pairs)."""
    fmt = lambda x, f: "-" if x is None else format(x, f)  # noqa: E731

    def med(key, field):
        return _median([r.get(field) for r in rows.get(key, [])])

    def cell(key):
        rs = rows.get(key)
        if not rs:
            return "-"
        if rs[0].get("extrapolated"):
            return f"{rs[0]['peak_gib']:.2f} (extrap.)"
        cpu = med(key, "cpu_seconds")
        return f"{med(key, 'peak_gib'):.2f} / {fmt(cpu, '.1f')} s CPU ({med(key, 'seconds'):.0f} s wall, x{len(rs)})"

    def ratio(arm, T):
        old = {r.get("rep"): r["cpu_seconds"] for r in rows.get(("old", arm, T), []) if r.get("cpu_seconds")}
        new = {r.get("rep"): r["cpu_seconds"] for r in rows.get(("new", arm, T), []) if r.get("cpu_seconds")}
        rs = [new[k] / old[k] for k in new if k in old]
        return "-" if not rs else f"{_median(rs):.2f} ({len(rs)})"

    lines = [f"| T (x {a.rollouts} rollouts, micro {a.micro}) | arm | old: peak GiB / step | new: peak GiB / step |"
             " step time new / old (pairs) | head GiB old | head GiB new | head MB/token old | head MB/token new |"
             " new / old head | above decoder peak GiB old / new |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for T in a.tokens:
        live, dpeak = med(("new", "decoder", T), "live_gib"), med(("new", "decoder", T), "peak_gib")
        for arm in ARMS:
            if arm == "decoder":
                lines.append(f"| {T} | decoder | - | {cell(('new', arm, T))}, live {fmt(live, '.2f')} | - | - | - | - |"
                             " - | - | - |")
                continue
            heads, above = [], []
            for name in ("old", "new"):
                rs = rows.get((name, arm, T))
                pk = None if not rs else (rs[0]["peak_gib"] if rs[0].get("extrapolated") else med((name, arm, T), "peak_gib"))
                heads.append(None if pk is None or live is None else pk - live)
                above.append(None if pk is None or dpeak is None else pk - dpeak)
            mb = [None if h is None else h * GIB / 1e6 / (T * a.micro) for h in heads]
            rel = None if None in heads else heads[1] / heads[0]
            lines.append(f"| {T} | {arm} | {cell(('old', arm, T))} | {cell(('new', arm, T))} | {ratio(arm, T)} |"
                         f" {fmt(heads[0], '.2f')} | {fmt(heads[1], '.2f')} | {fmt(mb[0], '.3f')} | {fmt(mb[1], '.3f')} |"
                         f" {fmt(rel, '.1%')} | {fmt(above[0], '.2f')} / {fmt(above[1], '.2f')} |")
    return "\n".join(lines)


def projection() -> str:
    """Qwen2.5-Math-7B per GPU at paper.yaml: FSDP v2 over 8 GPUs, fp32 master + bf16 compute,
    gradient checkpointing, AdamW, micro-batch 8, responses 8192 (prompts up to 2048), 32 prompts x 16
    rollouts per mini-batch (64 rollouts per GPU)."""
    P, V, H, L, I = 7.62e9, 152064, 3584, 28, 18944
    gpus, micro, resp, prompt, per_gpu = 8, 8, 8192, 2048, 32 * 16 // 8
    GB = 1e9
    states = P * (4 + 4 + 8) / gpus  # fp32 params, grads, Adam moments, sharded
    gathered = 2 * (P / L) * 2 + 2 * V * H * 2  # two bf16 layers in flight + the root's embedding and head
    tok = micro * (resp + prompt)
    ckpt = L * tok * H * 2  # checkpointed layer inputs, bf16
    layer = tok * (I * 2 * 3 + H * 2 * 8)  # one layer's recomputed activations in its backward, bf16
    rtok = micro * resp
    head_old = 4 * rtok * V * 4  # logits, log_softmax, exp, their gradients: float32 (tokens x V)
    head_new = 2 * 512 * 8192 * 4 + V * H * 4  # two float32 (chunk x vocab block) tiles + the float32 weight gradient
    gram_w = V * H * 4  # the head weight's full float32 copy for the streaming Gram
    dense = micro * V * H * 4 + resp * V * 4  # published arm: dense features (B, V, H) + one rollout's d
    base = states + gathered + ckpt + layer
    rows = [("no SALT (GRPO, DAPO, ...)", base + head_old, base + head_new),
            ("published SALT (micro, dense)", base + head_old + dense + rtok * H * 2, base + head_new + gram_w + dense
             + rtok * H * 2)]
    hid_local = per_gpu * resp * H * 2  # the global scope's no-grad pass: hidden states of this GPU's rollouts
    n_micro = per_gpu // micro
    B = gpus * per_gpu
    N = B * resp
    gram_glob = N * H * 2 + N * H * 4 * 2 + N * H * 8  # gathered bf16, float32 hw and h, float64 hidden side
    glob_old = states + gathered + n_micro * (ckpt + head_old) + layer  # every micro-batch's graph kept
    glob_new = base + head_new + hid_local + gram_w
    # the distributed Gram (salt.algo.gram.distributed), per GPU, between the no-grad pass and the
    # training passes: this GPU's tokens only (Nr), feature blocks of c ids exchanged all-to-all
    Nr = per_gpu * resp
    c = max(1, 2**25 // Nr)  # ids per block: an (Nr, c) block of columns holds at most 2^25 numbers
    dist = dict(
        hw=Nr * H * 4,  # float32 mask-weighted hidden states (also the logits' left factor: 0/1 mask)
        hw_build=Nr * H * 4,  # transient while it is built: the unweighted float32 copy
        candidates=Nr * 16 * 20,  # ~16 candidate ids per token (1 nat; 7.5 at 0.3) x (int64 t, int64 v, fp32 p)
        token_vectors=Nr * 8 * 6 + per_gpu * Nr * 8,  # lse, eps, sums of p^2, mass, beta + the rollout map
        columns=2 * 2**25 * 4,  # one (Nr, c) block of p and its logits
        features=(3 * per_gpu * c * H + 2 * B * -(-c // gpus) * H) * 4,  # local F, send buffers, received
        hidden_gram=H * H * (8 + 4 + 8),  # X^T X float64 (all-reduced), its float32 copy, eigvalsh work
        rollout_eig=2048 * H * 8 + 2048**2 * 8,  # one rollout's float64 X_i and X_i X_i^T (<= 2,048 tokens)
    )
    gram_dist = states + gathered + hid_local + gram_w + sum(dist.values())  # FSDP's gathered layers counted too
    rows.append(("ours (global, auto): the training step and this GPU's Gram inputs", glob_old, glob_new))
    rows.append((f"ours (global, auto): the Gram phase, distributed support over N = {N / 1e6:.1f}M tokens "
                 f"(this GPU's {Nr / 1e3:.0f}k)", glob_old + gram_glob, gram_dist))
    out = ["| arm | today GB / GPU | new GB / GPU | fits 80 GB (new) |", "|---|---|---|---|"]
    for name, old, new in rows:
        out.append(f"| {name} | {old / GB:.0f} | {new / GB:.0f} | {'yes' if new <= 80 * GB else 'no'} |")
    parts = dict(states=states, gathered=gathered, checkpoints=ckpt, layer_backward=layer, head_old=head_old,
                 head_new=head_new, gram_weight=gram_w, dense_features=dense, hidden_local=hid_local,
                 gathered_gram_inputs=gram_glob)
    out.append("")
    out.append("parts (GB): " + ", ".join(f"{k} {v / GB:.1f}" for k, v in parts.items()))
    out.append(f"distributed Gram, per GPU (GB; blocks of c = {c} ids): "
               + ", ".join(f"{k} {v / GB:.2f}" for k, v in dist.items()) + f"; sum {sum(dist.values()) / GB:.1f}")
    for u in (8192, 32768):  # the support sizes of the "On paper" table: 1 nat, 3 nats
        feat = B * u * H * 4 / gpus  # float32 feature numbers each GPU receives over the call
        blocks = -(-u // c)
        out.append(f"exchanged per GPU at u + r = {u}: features {feat / GB:.1f} GB, {blocks} (B, B) float64 "
                   f"all-reduces {blocks * B * B * 8 / GB:.2f} GB, the vocabulary's levels {V * 4 / GB:.4f} GB, "
                   f"X^T X {H * H * 8 / GB:.2f} GB (the gathered form moved {N * H * 2 / GB:.0f} GB of bf16 hidden "
                   f"states to every GPU)")
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cmd", choices=("run", "table", "markdown", "projection"))
    ap.add_argument("--tokens", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--arm", choices=ARMS, default="global")
    ap.add_argument("--arms", choices=ARMS, nargs="+", default=list(ARMS), help="table: the arms to run")
    ap.add_argument("--rollouts", type=int, default=2)
    ap.add_argument("--micro", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--head-chunk", type=int, default=None, help="run: train.head_chunk_size (default: the code's)")
    ap.add_argument("--old", help="a checkout of the code to compare with (its repository root)")
    ap.add_argument("--only-old", action="store_true", help="table: run only the --old cases")
    ap.add_argument("--merge", nargs="*", default=[], help="markdown: JSON files written by --out to merge")
    ap.add_argument("--cap-gib", type=float, default=6.0, help="table: skip (extrapolate) a case predicted above this")
    ap.add_argument("--repeats", type=int, default=3, help="table: repeats of each case (old and new interleaved)")
    ap.add_argument("--repeat-max-tokens", type=int, default=1024, help="table: larger T run once")
    ap.add_argument("--out", default="/tmp/step_memory.jsonl")
    a = ap.parse_args(argv)
    if a.cmd == "run":
        a.tokens = a.tokens[0]
        print(json.dumps(run_case(a)))
    elif a.cmd == "table":
        table(a)
    elif a.cmd == "markdown":  # the table of several --out files (JSON lines, e.g. streams run one after another)
        rows: dict = {}
        for f in a.merge:
            for line in Path(f).read_text().splitlines():
                r = json.loads(line)
                name, arm, T = r.pop("key").split("/")
                rows.setdefault((name, arm, int(T)), []).append(r)
        print(markdown(rows, a))
    else:
        print(projection())


if __name__ == "__main__":
    main()
