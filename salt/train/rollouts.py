"""Rollout collection: the training rows and their seeded prompt stream, VIP's rollouts per prompt
(success predictor and allocation), generation of this rank's share, scoring, DAPO overlong shaping
and dynamic sampling refills, the count of rollouts generated, and the greedy evaluation.

With dynamic sampling each generation batch draws :func:`gen_batch_prompts` prompts; groups with
non-constant rewards (``dynamic_sampling.metric: reward``, ours) or accuracies (``acc``, verl's DAPO
recipe; :func:`salt.algo.dapo.informative_groups`) are kept in draw order until ``prompts_per_step`` (P) are filled (the first P
are trained on, the rest discarded), for at most ``max_gen_batches`` rounds. When no round yields
an informative group, the first round's first P groups are trained on.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from salt import metric_names as mn
from salt.algo.allocation import SuccessPredictor, allocate_rollouts, embed_prompts, published_allocation
from salt.algo.dapo import informative_groups, overlong_penalty
from salt.tasks import rewards
from salt.tasks.prompts import build_prompt
from salt.tasks.rows import read_rows
from salt.tasks.toy import generate_problems
from salt.train.batch import RolloutBatch
from salt.train.collectives import all_gather_objects, sum_over_ranks
from salt.train.config import RunConfig
from salt.train.stepping import Timer, step_seed


def load_rows(spec: str, cfg: RunConfig, n_toy: int | None = None, key: str = "data.train") -> list[dict]:
    """Rows from a JSONL path (every row validated by :func:`salt.tasks.rows.read_rows`: the first
    bad one raises ``DatasetError`` naming ``FILE:LINE``) or ``toy:<split>`` (``n_toy`` rows, default
    ``data.toy_rows``, of ``data.toy_levels``, generated in-process with data seed ``cfg.seed``; the
    held-out ``toy:test`` split uses data seed 0 so that every run is scored on the same problems)."""
    if spec.startswith("toy:"):
        split = spec.split(":", 1)[1]
        return generate_problems(n_toy or cfg.data.toy_rows, split, seed=0 if split == "test" else cfg.seed,
                                 levels=tuple(cfg.data.toy_levels))
    return read_rows(spec, what=key)


class PromptSampler:
    """Endless seeded stream of rows: pass e uses permutation(seed, e); state = position."""

    def __init__(self, rows: list[dict], seed: int, shuffle: bool = True) -> None:
        self.rows, self.seed, self.shuffle, self.position = rows, int(seed), shuffle, 0
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> list[int]:
        if epoch != self._perm_epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(step_seed(self.seed, epoch, "data"))
                self._perm = torch.randperm(len(self.rows), generator=g).tolist()
            else:
                self._perm = list(range(len(self.rows)))
            self._perm_epoch = epoch
        return self._perm

    def take(self, k: int) -> list[dict]:
        out = []
        for _ in range(k):
            epoch, i = divmod(self.position, len(self.rows))
            out.append(self.rows[self._order(epoch)[i]])
            self.position += 1
        return out


def gen_batch_prompts(cfg: RunConfig) -> int:
    """Prompts drawn per generation batch: ``ceil(gen_batch_factor * P)`` with dynamic sampling
    (a 1e-9 tolerance keeps e.g. 1.1 * 10 at 11), else ``P``."""
    P = cfg.rollout.prompts_per_step
    ds = cfg.algorithm.dynamic_sampling
    if not ds.enabled:
        return P
    return max(P, math.ceil(ds.gen_batch_factor * P - 1e-9))


class RolloutCollector:
    """Draws prompts, allocates, generates, scores and shapes the rollouts of one step.

    State (checkpointed by :mod:`salt.train.run_io`): ``sampler.position``, ``generated`` (rollouts
    generated so far) and the VIP ``predictor``.
    """

    def __init__(self, cfg: RunConfig, backend: Any, tokenizer: Any, world: int, rank: int) -> None:
        self.cfg, self.backend, self.tokenizer, self.world, self.rank = cfg, backend, tokenizer, world, rank
        self.sampler = PromptSampler(load_rows(cfg.data.train, cfg), cfg.seed, cfg.data.shuffle)
        self.generated = 0
        self.predictor = None
        self._embedded: tuple[tuple[str, ...], torch.Tensor] | None = None  # the last prompts embedded
        v = cfg.algorithm.vip
        if v.enabled:
            self.predictor = SuccessPredictor(max_history=v.history or None, prior_mean=v.prior_mean, acc_clip=v.acc_clip,
                                              pin_observed=v.pin_observed)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """VIP's prompt embeddings. A step embeds its prompts to allocate and again to update the
        predictor with the same list: the second call returns the first one's tensor (same numbers,
        one MiniLM pass fewer per step)."""
        key = tuple(texts)
        if self._embedded is None or self._embedded[0] != key:
            self._embedded = (key, embed_prompts(texts, backend=self.cfg.algorithm.vip.embedding))
        return self._embedded[1]

    def allocate(self, rows: list[dict]) -> list[int]:
        """Rollouts per prompt: uniform, or VIP from predicted success."""
        cfg = self.cfg
        if self.predictor is None:
            return [cfg.generate_n] * len(rows)
        v = cfg.algorithm.vip
        p = self.predictor.predict(self.embed([r["prompt"] for r in rows]))
        if v.allocation == "published":
            n = published_allocation(p, cfg.vip_budget(), lower=v.lower, upper=v.upper, rule=v.rule, gamma=v.gamma)
        else:
            n = allocate_rollouts(p, cfg.vip_budget(), lower=v.lower, upper=v.upper, rule=v.rule)
        return [int(x) for x in n.tolist()]

    def generate(self, rows: list[dict], counts: list[int], seed: int, timer: Timer) -> RolloutBatch:
        """Generate ``counts[j]`` rollouts for ``rows[j]`` and score them (this rank's share, then gathered)."""
        cfg = self.cfg
        mine = list(range(len(rows)))[self.rank:: self.world] if self.world > 1 else list(range(len(rows)))
        recs: list[dict] = []
        with timer("generate"):
            by_n: dict[int, list[int]] = {}
            for j in mine:
                if counts[j] > 0:
                    by_n.setdefault(counts[j], []).append(j)
            for n, js in sorted(by_n.items()):
                prompts = [build_prompt(rows[j], self.tokenizer, cfg.data.system_prompt) for j in js]
                out = self.backend.generate(prompts, n, cfg.rollout.max_new_tokens, cfg.rollout.temperature,
                                            cfg.rollout.top_p, seed=step_seed(seed, n, "generate") + self.rank)
                for k, j in enumerate(js):
                    for i in range(k * n, (k + 1) * n):
                        recs.append(dict(j=j, prompt=prompts[k], prompt_ids=out.prompt_ids[k],
                                         ids=out.completion_ids[i], finish=out.finish_reasons[i], text=out.texts[i]))
        with timer("reward"):
            rw = cfg.reward
            results = rewards.score_batch([rows[r["j"]] for r in recs], [r["text"] for r in recs],
                                          math_fallback=rw.math_fallback, code_credit=rw.code_credit) if recs else []
            for r, res in zip(recs, results):
                r["score"] = float(res.reward)
        if self.world > 1:
            recs = [r for part in all_gather_objects(recs) for r in part]
        recs.sort(key=lambda r: r["j"])  # stable: keeps each prompt's rollouts in order
        prompt_of = {r["j"]: (r["prompt"], r["prompt_ids"]) for r in recs}
        js = sorted(prompt_of)
        gid = {j: g for g, j in enumerate(js)}
        scores = torch.tensor([r["score"] for r in recs], dtype=torch.float32)
        return RolloutBatch(
            rows=[rows[j] for j in js], prompts=[prompt_of[j][0] for j in js],
            prompt_ids=[prompt_of[j][1] for j in js],
            group_ids=torch.tensor([gid[r["j"]] for r in recs], dtype=torch.long),
            completion_ids=[r["ids"] for r in recs], finish_reasons=[r["finish"] for r in recs],
            texts=[r["text"] for r in recs], scores=scores, rewards=scores.clone(),
        )

    def shape_rewards(self, batch: RolloutBatch) -> RolloutBatch:
        """DAPO overlong shaping (identity when off)."""
        o = self.cfg.algorithm.overlong
        if o.enabled:
            batch.rewards = batch.scores + overlong_penalty(batch.lengths, self.cfg.rollout.max_new_tokens, o.buffer, o.factor)
        return batch

    def update_predictor(self, batch: RolloutBatch) -> None:
        """Feed VIP's success predictor each prompt's observed accuracy."""
        acc = torch.zeros(len(batch.rows), dtype=torch.float64)
        cnt = torch.zeros(len(batch.rows), dtype=torch.float64)
        acc.index_add_(0, batch.group_ids, (batch.scores >= 1.0).double())
        cnt.index_add_(0, batch.group_ids, torch.ones(len(batch), dtype=torch.float64))
        seen = cnt > 0
        emb = self.embed([r["prompt"] for r in batch.rows])
        self.predictor.update(emb[seen], (acc[seen] / cnt[seen]))

    def collect(self, seed: int, timer: Timer) -> tuple[RolloutBatch, dict[str, float]]:
        """Allocation + generation + rewards, with DAPO dynamic sampling refills (module docstring).

        Metrics: ``data/gen_batches`` (rounds), ``data/prompts`` (groups trained on),
        ``data/prompts_generated`` (prompts drawn), ``train/accuracy_generated``."""
        P = self.cfg.rollout.prompts_per_step
        ds = self.cfg.algorithm.dynamic_sampling
        n_draw = gen_batch_prompts(self.cfg)
        kept: list[RolloutBatch] = []
        n_kept = 0
        first: RolloutBatch | None = None
        gen_batches = 0
        generated_scores: list[torch.Tensor] = []
        while True:
            rows = self.sampler.take(n_draw)
            counts = self.allocate(rows)
            batch = self.shape_rewards(self.generate(rows, counts, step_seed(seed, gen_batches, "gen-batch"), timer))
            gen_batches += 1
            self.generated += len(batch)
            generated_scores.append(batch.scores)
            if self.predictor is not None:
                self.update_predictor(batch)
            if first is None:
                first = batch
            if not ds.enabled:
                kept.append(batch)
                break
            keep = informative_groups(batch.scores, batch.rewards, batch.group_ids, ds.metric)
            sub = batch.select(torch.nonzero(keep).flatten()).compact_groups()
            if len(sub):
                kept.append(sub)
                n_kept += len(sub.rows)
            if n_kept >= P or gen_batches >= ds.max_gen_batches:
                break
        if ds.enabled:
            if n_kept == 0:  # nothing informative: train on the first batch (all advantages 0)
                kept = [first]
            batch = RolloutBatch.concat(kept)
            if len(batch.rows) > P:
                batch = batch.select(torch.nonzero(batch.group_ids < P).flatten()).compact_groups()
        else:
            batch = kept[0]
        all_scores = torch.cat(generated_scores)
        metrics = {
            mn.DATA_GEN_BATCHES: float(gen_batches),
            mn.DATA_PROMPTS: float(len(batch.rows)),
            mn.DATA_PROMPTS_GENERATED: float(gen_batches * n_draw),
            mn.TRAIN_ACCURACY_GENERATED: float((all_scores >= 1.0).float().mean()) if all_scores.numel() else 0.0,
        }
        return batch, metrics

    @torch.no_grad()
    def greedy_accuracy(self, rows: list[dict], seed: int) -> dict[str, float]:
        """Greedy accuracy on ``rows`` (this rank's share, summed over ranks)."""
        rows = rows[self.rank:: self.world]
        prompts = [build_prompt(r, self.tokenizer, self.cfg.data.system_prompt) for r in rows]
        out = self.backend.generate(prompts, 1, self.cfg.rollout.max_new_tokens, 0.0, 1.0, seed=seed)
        res = rewards.score_batch(rows, out.texts)
        t = torch.tensor([sum(float(r.reward >= 1.0) for r in res), len(res)], dtype=torch.float64)
        sum_over_ranks(t)
        return {mn.EVAL_ACCURACY: float(t[0] / max(t[1], 1.0))}
