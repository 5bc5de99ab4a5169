"""One optimizer step on a mini-batch: forward, Gram and SALT coefficients, policy loss, backward,
clipping, optimizer and scheduler step; one function per SALT scope (``global``: one Gram over the
whole mini-batch of all ranks; ``micro``: one Gram per micro-batch). Also the settings
the update reads (:class:`UpdateSettings`) and the optimizer / LR schedule (:func:`make_optimizer`).

Memory: the LM head runs in token chunks (:mod:`salt.train.head`) and the Gram forms its logits
from the hidden states and the head weight (:func:`salt.train.gram.lm_gram`), so no (tokens x
vocabulary) tensor is stored; in both scopes one micro-batch's graph is alive at a time.

Each rank forwards its contiguous slice in micro-batches and backpropagates the loss scaled by its
share of the global normaliser (times the world size for engines that average gradients: see
:mod:`salt.train.strategy`), so the result equals the single-process step on the same mini-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from salt import metric_names as mn
from salt.algo.gram.options import DEFAULTS as GRAM_DEFAULTS, GramOptions
from salt.algo.losses import LossConfig, compute_policy_loss
from salt.train.batch import TensorBatch
from salt.train.collectives import max_over_ranks, rank_slice, sum_over_ranks, world
from salt.train.config import RunConfig
from salt.train.forward import ForwardOut, micro_slices, policy_forward
from salt.train.head import DEFAULT_HEAD_CHUNK
from salt.train.gram import gram_record, lm_gram, salt_coefficients, with_err_bound
from salt.train.stepping import Timer, mean_metrics, step_seed
from salt.train.strategy import GradientStrategy, Single


@dataclass
class UpdateSettings:
    """The run config's keys that :func:`update_minibatch` reads, resolved once: the loss as a
    :class:`~salt.algo.losses.LossConfig` (Dr. GRPO's ``norm_len`` filled in), the Gram and SALT options."""

    loss_cfg: LossConfig
    temperature: float
    micro_batch_size: int
    max_grad_norm: float
    salt_enabled: bool
    salt_diagnostics: bool
    gram: str
    scope: str
    micro_weight: str = "tokens"  # train.micro_batch_weight (loss_weight)
    head_chunk: int = DEFAULT_HEAD_CHUNK
    salt_options: dict = field(default_factory=dict)
    gram_options: GramOptions = GRAM_DEFAULTS  # algorithm.salt's Gram options (the seed is set per Gram)

    @staticmethod
    def from_config(cfg: RunConfig) -> "UpdateSettings":
        loss_cfg = LossConfig(**dict(cfg.algorithm.loss))
        if loss_cfg.agg_mode == "seq-mean-token-sum-norm" and loss_cfg.norm_len is None:
            loss_cfg.norm_len = cfg.rollout.max_new_tokens  # Dr. GRPO: the generation budget
        s = cfg.algorithm.salt
        return UpdateSettings(
            loss_cfg=loss_cfg, temperature=cfg.rollout.temperature, micro_batch_size=cfg.train.micro_batch_size,
            max_grad_norm=cfg.train.max_grad_norm, salt_enabled=s.enabled, salt_diagnostics=s.diagnostics,
            gram=s.gram, scope=s.scope, micro_weight=cfg.train.micro_batch_weight,
            head_chunk=cfg.train.head_chunk_size, salt_options=dict(s.options),
            gram_options=GramOptions(chunk_size=s.chunk_size, sketch_dim=s.sketch_dim, tol=s.gram_tol,
                                     support_eps=s.support_eps, tail_dim=s.tail_dim, sparse_samples=s.sparse_samples),
        )


def make_optimizer(model: Any, cfg: RunConfig, total_updates: int) -> tuple[Any, Any]:
    """AdamW (or SGD) and a LambdaLR: linear warm-up, then constant / cosine / linear decay."""
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.AdamW(params, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)

    def factor(i: int) -> float:
        if t.warmup_steps and i < t.warmup_steps:
            return (i + 1) / t.warmup_steps
        if t.scheduler == "constant":
            return 1.0
        span = max(1, total_updates - t.warmup_steps)
        frac = min(1.0, (i - t.warmup_steps) / span)
        return 0.5 * (1 + math.cos(math.pi * frac)) if t.scheduler == "cosine" else 1.0 - frac

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


MICRO_BATCH_WEIGHTS = ("tokens", "sequences")


def loss_weight(mask: torch.Tensor, agg_mode: str, micro_weight: str = "tokens") -> float:
    """The share of the mini-batch's loss normaliser a set of rows carries: each micro-batch's loss
    (aggregated over its own rows) is scaled by its weight / the whole mini-batch's weight.

    ``token-mean`` with ``tokens`` (ours): the token count, so the sum over micro-batches is one
    token-mean over the mini-batch. With ``sequences`` (the published actor, verl's dp_actor:
    ``policy_loss * micro_sequences / mini_batch_sequences``): each micro-batch's own token-mean weighted
    by its number of sequences. Per-sequence modes weigh by sequences under both (equal results)."""
    return float(mask.sum()) if agg_mode == "token-mean" and micro_weight == "tokens" else float(mask.shape[0])


class _Passes:
    """The forward/backward passes of one rank on its slice ``local`` of a mini-batch.

    Pass ``i`` of ``n`` synchronises gradients only when it is the last (``strategy.no_sync``);
    ranks with fewer micro-batches add zero-weight one-row passes (:meth:`pad`) when the strategy
    needs the same number of passes on every rank. ``losses`` collects (loss weight, tokens, metrics).
    ``head`` is the LM head's full (weight, bias), fetched once when a Gram is built.
    """

    def __init__(self, model: Any, strategy: GradientStrategy, settings: UpdateSettings, timer: Timer,
                 mb: TensorBatch, local: TensorBatch, micros: list[slice], n_pad: int) -> None:
        self.model, self.strategy, self.settings, self.timer = model, strategy, settings, timer
        self.local, self.micros, self.n_pad = local, micros, n_pad
        self.n = len(micros) + n_pad
        self.head: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.total_weight = loss_weight(mb.mask, settings.loss_cfg.agg_mode, settings.micro_weight)
        self.entropy_grad = settings.loss_cfg.entropy_coef > 0
        self.losses: list[tuple[float, float, dict[str, float]]] = []

    def sync(self, i: int) -> Any:
        return self.strategy.no_sync(self.model, i == self.n - 1)

    def forward(self, part: TensorBatch, features: bool, head: bool = True) -> ForwardOut:
        return policy_forward(self.model, part, self.settings.temperature, features, self.entropy_grad,
                              self.settings.head_chunk, head)

    def _policy_loss(self, part: TensorBatch, fwd: ForwardOut, coef: torch.Tensor) -> tuple[torch.Tensor, dict]:
        # old_logp None: one on-policy pass (see Trainer.update), the sampling policy is this one
        old = part.old_logp if part.old_logp is not None else fwd.logp.detach()
        return compute_policy_loss(self.settings.loss_cfg, fwd.logp, old, coef, part.mask,
                                   ref_logp=part.ref_logp, entropy=fwd.entropy)

    def backward(self, part: TensorBatch, fwd: ForwardOut, coef: torch.Tensor, i: int) -> None:
        """Pass ``i``: the policy loss of ``part`` with coefficients ``coef``, scaled by its share."""
        loss, m = self._policy_loss(part, fwd, coef)
        w = loss_weight(part.mask, self.settings.loss_cfg.agg_mode, self.settings.micro_weight)
        m[mn.LOSS] = float(loss.detach())
        self.losses.append((w, float(part.mask.sum()), m))
        with self.timer("backward"):
            self.strategy.backward(self.model, loss * (w / self.total_weight * self.strategy.grad_scale), i == self.n - 1)

    def pad(self, i: int) -> None:
        """A zero-weight pass over one local row: keeps the ranks' collectives in step."""
        part = self.local.index(slice(0, 1))
        with self.timer("forward"):
            fwd = self.forward(part, False)
        loss, _ = self._policy_loss(part, fwd, part.advantages)
        with self.timer("backward"):
            self.strategy.backward(self.model, loss * 0.0, i == self.n - 1)


def _salt(p: _Passes, hidden: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, rows: TensorBatch,
          positions: torch.Tensor, seed: int, gather: bool, geo: list, coef_out: list | None,
          gram_out: dict | None) -> torch.Tensor:
    """The Gram of one scope's unit (gathered over ranks when ``gather``), SALT's coefficients for
    ``rows`` (the rollouts of that Gram: the whole mini-batch or one micro-batch), and their records:
    geometry metrics into ``geo``, the coefficients into ``coef_out``, the first Gram into ``gram_out``
    (``positions``: the rows of the mini-batch it covers)."""
    with p.timer("gram"):
        K = lm_gram(hidden, p.head, tokens, mask, p.settings, seed, gather=gather, info=(ginfo := {}))
    # scope micro: each micro-batch's own draw for the random subspace / the published LOBPCG start
    salt_seed = seed if gather else step_seed(seed, int(positions[0]), "salt-micro")
    with p.timer("decompose"):
        coef, gm = salt_coefficients(K, rows.advantages.to(K.device), rows.group_ids.to(K.device), p.settings, salt_seed)
    geo.append(with_err_bound(gm, ginfo))
    if coef_out is not None:
        coef_out.append(coef.detach().cpu())
    if gram_out is not None and not gram_out:
        gram_out.update(gram_record(K, positions, rows.advantages, coef, rows.group_ids))
    return coef


def _global_scope(p: _Passes, mb: TensorBatch, seed: int, diagnostics: bool, geo: list,
                  coef_out: list | None, gram_out: dict | None) -> None:
    """Scope ``global``: one Gram over the whole mini-batch, then forward + backward per micro-batch.

    The Gram's inputs come from a no-grad pass over this rank's micro-batches that runs the
    decoder only (no LM head) and keeps the final hidden states (N_local x H); the Gram forms its
    logits from them and the head weight. Over several ranks the hidden states stay on their rank
    (:func:`salt.train.gram.lm_gram`: the distributed estimator exchanges per-rollout feature
    blocks). Memory: one micro-batch's graph plus this rank's hidden states and the Gram's working
    set; extra compute: one no-grad decoder forward per micro-batch (the head is not run in it).
    """
    W, rank = world()
    local, micros = p.local, p.micros
    coef = local.advantages
    if diagnostics:
        hidden = None  # (b_local, T, H): written micro-batch by micro-batch (no second copy from a cat)
        with torch.no_grad(), p.timer("forward"):
            for k in range(p.n):  # padded passes too: sharded engines gather weights in each forward
                part = local.index(micros[k]) if k < len(micros) else local.index(slice(0, 1))
                o = p.forward(part, True, head=False)
                if k < len(micros):
                    if hidden is None:
                        hidden = o.hidden.new_empty((len(local),) + tuple(o.hidden.shape[1:]))
                    hidden[micros[k]] = o.hidden
        coef_all = _salt(p, hidden, local.tokens, local.mask, mb, torch.arange(len(mb)), seed, True, geo,
                         coef_out, gram_out)
        del hidden
        coef = coef_all[rank_slice(len(mb), W, rank)].to(local.advantages.dtype)
    for i, s in enumerate(micros):
        part = local.index(s)
        with p.sync(i):
            with p.timer("forward"):
                o = p.forward(part, False)
            p.backward(part, o, coef[s], i)
    for j in range(p.n_pad):
        with p.sync(len(micros) + j):
            p.pad(len(micros) + j)


def _micro_scope(p: _Passes, mb: TensorBatch, seed: int, diagnostics: bool, geo: list,
                 coef_out: list | None, gram_out: dict | None) -> None:
    """Scope ``micro``: one Gram per micro-batch per rank, memory bounded by the micro-batch."""
    W, rank = world()
    for i, s in enumerate(p.micros):
        part = p.local.index(s)
        with p.sync(i):
            with p.timer("forward"):
                o = p.forward(part, diagnostics)
            coef = part.advantages
            if diagnostics:
                pos = torch.arange(s.start, s.stop) + rank_slice(len(mb), W, rank).start  # (b,) rows of mb
                coef = _salt(p, o.hidden, part.tokens, part.mask, part, pos, seed, False, geo, coef_out, gram_out)
            p.backward(part, o, coef, i)
    for j in range(p.n_pad):
        with p.sync(len(p.micros) + j):
            p.pad(len(p.micros) + j)


def _reduce_metrics(losses: list[tuple[float, float, dict[str, float]]], geo: list[dict[str, float]],
                    scope: str) -> dict[str, float]:
    """Loss metrics over micro-batches and ranks: the loss values weighted by their share of the
    loss normaliser, maxima by max, every other metric (a masked token mean) by its token count;
    Gram metrics averaged over Grams (and ranks, for scope ``micro``)."""
    keys = sorted({k for _, _, m in losses for k in m})
    by_loss_weight = set(mn.LOSS_WEIGHTED_KEYS)
    buf = torch.zeros(len(keys) + 2, dtype=torch.float64)
    for w, ntok, m in losses:
        buf[-2] += w
        buf[-1] += ntok
        for j, k in enumerate(keys):
            buf[j] += (w if k in by_loss_weight else ntok) * m.get(k, 0.0)
    sum_over_ranks(buf)
    metrics = {mn.train(k): float(buf[j] / (buf[-2] if k in by_loss_weight else buf[-1]).clamp_min(1e-12))
               for j, k in enumerate(keys)}
    for k in [k for k in keys if k.endswith("_max")]:
        mx = torch.tensor([max(m.get(k, float("-inf")) for _, _, m in losses)], dtype=torch.float64)
        metrics[mn.train(k)] = float(max_over_ranks(mx))
    if scope == "micro" and world()[0] > 1 and geo:
        gkeys = sorted(geo[0])
        g = torch.tensor([sum(m[k] for m in geo) for k in gkeys] + [len(geo)], dtype=torch.float64)
        sum_over_ranks(g)
        metrics.update({k: float(g[j] / g[-1]) for j, k in enumerate(gkeys)})
    else:
        metrics.update(mean_metrics(geo))
    return metrics


def update_minibatch(model: Any, optimizer: Any, scheduler: Any, mb: TensorBatch, settings: UpdateSettings,
                     seed: int, timer: Timer | None = None, coef_out: list | None = None,
                     strategy: GradientStrategy | None = None, gram_out: dict | None = None,
                     diagnostics: bool | None = None) -> dict[str, float]:
    """One optimizer step on the GLOBAL mini-batch ``mb`` (every rank passes the same ``mb``).

    ``strategy`` (default: one process, the model as is) says how the ranks' gradients meet; for a
    wrapped one, ``model``, ``optimizer`` and ``scheduler`` are what its ``prepare`` returned.

    ``coef_out``, when given, receives the coefficients that went to the loss: for scope
    ``global`` one (len(mb),) tensor for the whole mini-batch, for ``micro`` one per micro-batch.

    ``gram_out``, when given (an empty dict) and the Gram is built (SALT on or diagnostics), is
    filled with the first Gram of this call, on CPU: ``gram`` (B, B) float64, ``positions`` (B,)
    the rows of ``mb`` it covers, ``advantages`` (B,), ``advantages_final`` (B,) the coefficients
    that went to the loss, ``group_ids`` (B,). Scope ``global``: the whole mini-batch (B =
    len(mb)); ``micro``: this rank's first micro-batch. It only copies tensors (no RNG is used).

    ``diagnostics`` (None: ``settings.salt_diagnostics``) says whether a run without SALT builds the
    Gram in this call (``algorithm.salt.diagnostics_every``); with SALT on the Gram is always built.

    Returns:
        metrics: loss metrics (``train/*``, weighted means over the mini-batch), ``salt/*`` and
        ``geom/*`` (means over Grams), ``train/update_norm`` (pre-clip gradient norm).
    """
    timer = timer or Timer()
    strategy = strategy or Single()
    W, rank = world()
    device = next(model.parameters()).device
    local = mb.index(rank_slice(len(mb), W, rank)).to(device)
    if len(local) == 0:
        raise ValueError(f"mini-batch of {len(mb)} rollouts cannot feed {W} ranks; raise prompts per mini-batch")
    micros = micro_slices(len(local), settings.micro_batch_size)
    n_pad = 0
    if strategy.even_passes:
        first = rank_slice(len(mb), W, 0)  # rank 0 holds the largest slice
        n_pad = len(micro_slices(first.stop - first.start, settings.micro_batch_size)) - len(micros)
    passes = _Passes(model, strategy, settings, timer, mb, local, micros, n_pad)
    diagnostics = settings.salt_enabled or (settings.salt_diagnostics if diagnostics is None else diagnostics)
    geo: list[dict[str, float]] = []
    model.train()
    if diagnostics:
        passes.head = strategy.head_weight(model)  # a collective for sharded strategies: once per call
    scope = _global_scope if settings.scope == "global" else _micro_scope
    scope(passes, mb, seed, diagnostics, geo, coef_out, gram_out)
    with timer("optimizer"):
        max_norm = settings.max_grad_norm if settings.max_grad_norm > 0 else float("inf")
        norm = strategy.step(model, optimizer, scheduler, max_norm)
    metrics = _reduce_metrics(passes.losses, geo, settings.scope)
    metrics[mn.TRAIN_UPDATE_NORM] = float(norm)
    metrics[mn.TRAIN_LR] = float(scheduler.get_last_lr()[0])
    return metrics
